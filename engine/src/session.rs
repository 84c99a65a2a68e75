//! The session: one listening port for every torrent, the torrent tasks, and the routing of
//! incoming connections to them by info-hash.
//!
//! The session owns no torrent state: each torrent is a task (see `torrent.rs`) reached through
//! a bounded command channel and observed through a `watch` snapshot.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::dht::{Bootstrap, Dht, DhtConfig};
use crate::lsd::Lsd;
use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use crate::peer;
use crate::queue::{self, QueueEntry, QueueKind, QueueLimits, QueueMove, SeedGoals};
use crate::ratelimit::RateLimiter;
use crate::recheck::HashBudget;
use crate::selection::{
    FilePriority, PiecePriorities, SelectionError, SharedSelection, TorrentOptions,
};
use crate::status::{TorrentState, TorrentStatus};
use crate::storage::{DeletedData, Layout, StorageBackend, StorageError, StorageSpec};
use crate::torrent::peers::{host_key, HostKey};
use crate::torrent::record::{Keeper, RecordFile, RecordWriter, TorrentRecord};
use crate::torrent::sources::{Discovery, DiscoverySlot};
use crate::torrent::{
    initial_status, run_torrent, saved_metadata, IncomingPeer, PeerLimits, PeerSlot, Source,
    StatusLog, TorrentCommand, TorrentParams,
};
use crate::tracker::TrackerClient;
use crate::transport::{Listener, Transport, TransportError};
use crate::types::{InfoHash, PeerId};

/// Incoming connections still in their handshake, session-wide. Kept apart from the peer slots
/// so silent sockets cannot starve real peers (or our own dials) of slots.
const MAX_HALF_OPEN_INCOMING: usize = 64;
/// Incoming handshakes in progress from one host: an eighth of [`MAX_HALF_OPEN_INCOMING`], so
/// one host opening silent sockets cannot take the whole budget from everyone else.
const MAX_HALF_OPEN_PER_HOST: usize = MAX_HALF_OPEN_INCOMING / 8;
/// Default connections per host per torrent: hosts behind one NAT (a household, a campus) may
/// run several clients, so one is too few (libtorrent's default); a few still keep one host
/// from filling a torrent's 50 slots.
pub const DEFAULT_MAX_PEERS_PER_HOST: usize = 3;

/// One in this many session-wide peer slots is kept for our own dials: incoming peers (which
/// anyone can open) may not take them all. The same share as per torrent.
const DIAL_RESERVE_DIVISOR: usize = crate::torrent::peers::DIAL_RESERVE_DIVISOR;

/// The DHT routing table in the state folder.
pub const DHT_STATE_FILE: &str = "dht.nodes";
/// How long saving the DHT routing table and closing its socket may take at shutdown.
const DHT_STOP_TIMEOUT: Duration = Duration::from_secs(1);

/// How many following ports are tried when the asked one is taken.
const PORT_ATTEMPTS: u16 = 50;

/// What a session is started with.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Where downloads go.
    pub download_dir: PathBuf,
    /// Where resume state goes.
    pub state_dir: PathBuf,
    /// Address to listen on; if its port is taken, the next free one is used (port 0: any).
    pub listen: SocketAddr,
    /// Peers added to every torrent (tracker-less use and tests).
    pub extra_peers: Vec<SocketAddr>,
    /// Connections per torrent.
    pub max_peers_per_torrent: usize,
    /// Connections for the whole session.
    pub max_peers_total: usize,
    /// Our peer id (random by default).
    pub peer_id: PeerId,
    /// Payload bytes/s received by the whole session (0: unlimited).
    pub download_limit: u64,
    /// Payload bytes/s sent by the whole session (0: unlimited).
    pub upload_limit: u64,
    /// Bytes of pieces that rechecks of all torrents may hold at once (read, being hashed).
    pub recheck_memory: u64,
    /// Connections per host per torrent (an IPv4 address or an IPv6 /64), counting handshakes
    /// in progress; incoming handshakes per host are capped session-wide as well.
    pub max_peers_per_host: usize,
    /// Count loopback peers by address like any other host. Off by default: distinct local
    /// peers on 127.0.0.1 (local setups, tests) then count per address and port, as for bans.
    pub loopback_as_host: bool,
    /// Run a DHT node (BEP 5) bootstrapping from these; `None` (the default) runs none. Its
    /// routing table is kept in `<state>/dht.nodes`.
    pub dht: Option<Bootstrap>,
    /// Local service discovery (BEP 14) on the LAN's multicast group; off by default.
    pub lsd: bool,
    /// Peer exchange (BEP 11) with connected peers; on by default.
    pub pex: bool,
    /// Seed for torrents' random choices; `None` (the default): from the OS. Simulations fix
    /// it so a swarm replays the same way.
    pub rng_seed: Option<u64>,
    /// Default seeding goal: stop seeding at this all-time ratio (see
    /// [`TorrentStatus::ratio`]); `None` (the default): no goal. Torrents may override it.
    pub seed_ratio: Option<f64>,
    /// Default seeding goal: stop after seeding this long, over every run; `None` (the
    /// default): no goal. Torrents may override it.
    pub seed_time: Option<Duration>,
    /// Torrents downloading at once (magnets fetching metadata count); the rest wait
    /// `Queued`. `None` (the engine's default): no limit; the client sets its own.
    pub max_active_downloads: Option<usize>,
    /// Complete torrents seeding at once; the rest wait `Queued`. `None` (the default): no
    /// limit.
    pub max_active_seeds: Option<usize>,
    /// Move each torrent's files here when it completes (every wanted piece verified), keeping
    /// their relative paths, and seed from there; `None` (the default): they stay. A torrent
    /// may have its own ([`TorrentHandle::set_completed_dir`]). Only files the storage backend
    /// vouches it wrote move, never over a name taken there (see
    /// [`StorageBackend::move_data`](crate::StorageBackend::move_data)).
    pub completed_dir: Option<PathBuf>,
    /// Message stream encryption (MSE/PE) for incoming and outgoing connections; `Prefer`
    /// by default.
    pub encryption: peer::EncryptionPolicy,
}

impl SessionConfig {
    /// Defaults: port 6881 on all interfaces, 50 peers per torrent, 300 in all.
    pub fn new(download_dir: PathBuf, state_dir: PathBuf) -> Self {
        SessionConfig {
            download_dir,
            state_dir,
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 6881),
            extra_peers: Vec::new(),
            max_peers_per_torrent: 50,
            max_peers_total: 300,
            peer_id: PeerId::generate(),
            download_limit: 0,
            upload_limit: 0,
            recheck_memory: HashBudget::DEFAULT_BYTES,
            max_peers_per_host: DEFAULT_MAX_PEERS_PER_HOST,
            loopback_as_host: false,
            dht: None,
            lsd: false,
            pex: true,
            rng_seed: None,
            seed_ratio: None,
            seed_time: None,
            max_active_downloads: None,
            max_active_seeds: None,
            completed_dir: None,
            encryption: peer::EncryptionPolicy::default(),
        }
    }
}

/// Why the session could not do something.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No port could be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The first address tried.
        addr: SocketAddr,
        /// The last error.
        source: TransportError,
    },
    /// The torrent is already in the session.
    #[error("torrent {0} is already loaded")]
    Duplicate(InfoHash),
    /// The session is shutting down.
    #[error("session is shutting down")]
    Closed,
    /// The options given at add do not fit the torrent.
    #[error(transparent)]
    Selection(#[from] SelectionError),
}

/// What a torrent is added from: a parsed `.torrent`, or a magnet link whose metadata the
/// torrent fetches from peers (and keeps in the state folder, so it is fetched only once).
#[derive(Clone, Debug)]
pub enum AddTorrent {
    /// A parsed `.torrent` file.
    Metainfo(Metainfo),
    /// A magnet link.
    Magnet(Magnet),
}

impl AddTorrent {
    /// The torrent's identity.
    pub fn info_hash(&self) -> InfoHash {
        match self {
            AddTorrent::Metainfo(m) => m.info_hash,
            AddTorrent::Magnet(m) => m.info_hash,
        }
    }

    /// The name to show before anything else is known (a magnet's `dn`, or its hash).
    pub fn display_name(&self) -> String {
        match self {
            AddTorrent::Metainfo(m) => m.info.name.clone(),
            AddTorrent::Magnet(m) => m.display_name(),
        }
    }
}

impl From<Metainfo> for AddTorrent {
    fn from(m: Metainfo) -> Self {
        AddTorrent::Metainfo(m)
    }
}

impl From<Magnet> for AddTorrent {
    fn from(m: Magnet) -> Self {
        AddTorrent::Magnet(m)
    }
}

/// A handle on one torrent in the session.
#[derive(Clone)]
pub struct TorrentHandle {
    info_hash: InfoHash,
    status: watch::Receiver<TorrentStatus>,
    commands: mpsc::Sender<TorrentCommand>,
    selection: SharedSelection,
}

impl TorrentHandle {
    /// The torrent's identity.
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }
    /// The latest status snapshot.
    pub fn status(&self) -> TorrentStatus {
        self.status.borrow().clone()
    }
    /// Read the status in place (no copy of its peer, file and tracker lists); `f` must be
    /// quick, the torrent cannot publish meanwhile.
    pub fn with_status<R>(&self, f: impl FnOnce(&TorrentStatus) -> R) -> R {
        f(&self.status.borrow())
    }
    /// A receiver that wakes on every status change.
    pub fn subscribe(&self) -> watch::Receiver<TorrentStatus> {
        self.status.clone()
    }
    /// Stop transferring, keeping everything.
    pub async fn pause(&self) {
        let _ = self.commands.send(TorrentCommand::Pause).await;
    }
    /// Resume after a pause.
    pub async fn resume(&self) {
        let _ = self.commands.send(TorrentCommand::Resume).await;
    }
    /// Add peer addresses to try.
    pub async fn add_peers(&self, peers: Vec<SocketAddr>) {
        let _ = self.commands.send(TorrentCommand::AddPeers(peers)).await;
    }
    /// Choose files: one priority per file, in torrent order. Skipped files are not fetched
    /// (pieces they share with wanted files are) and never appear at their final path;
    /// un-skipping one later finishes it normally. Refused for a list of the wrong length, or
    /// while a magnet's metadata (and so its file list) is unknown. Shown in
    /// [`FileStatus::priority`](crate::FileStatus::priority) once the torrent applied it.
    pub async fn set_file_priorities(
        &self,
        priorities: Vec<FilePriority>,
    ) -> Result<(), SelectionError> {
        self.selection.set_priorities(priorities)?;
        let _ = self.commands.send(TorrentCommand::SelectionChanged).await;
        Ok(())
    }
    /// Fetch pieces in order from the first wanted one (for playing while downloading), or
    /// rarest first again. Shown in [`TorrentStatus::sequential`].
    pub async fn set_sequential(&self, on: bool) {
        self.selection.set_sequential(on);
        let _ = self.commands.send(TorrentCommand::SelectionChanged).await;
    }
    /// Set this torrent's own seeding goals (kept in its record). A finished torrent stays
    /// finished until resumed, whatever its new goals.
    pub async fn set_seed_goals(&self, goals: SeedGoals) {
        let _ = self
            .commands
            .send(TorrentCommand::SetSeedGoals(goals))
            .await;
    }
    /// Give this torrent its own completed folder (kept in its record), or `None` to follow
    /// the session's ([`SessionConfig::completed_dir`]). Takes effect when it next completes;
    /// a torrent already complete stays where it is. Shown in
    /// [`TorrentStatus::completed_dir`].
    pub async fn set_completed_dir(&self, dir: Option<PathBuf>) {
        let _ = self
            .commands
            .send(TorrentCommand::SetCompletedDir(dir))
            .await;
    }
}

struct Entry {
    /// What it was added from (a recheck starts it again from the same).
    source: Source,
    /// Known to be private (BEP 27), from its `.torrent` or once a magnet's metadata came.
    private: Arc<std::sync::atomic::AtomicBool>,
    /// The user's file choice (kept across a recheck).
    selection: SharedSelection,
    handle: TorrentHandle,
    task: JoinHandle<()>,
    /// The queue's gate (see [`queue::plan`]).
    gate: watch::Sender<bool>,
    /// Its place in the queue, shared with the task (which keeps it in the record).
    position: Arc<AtomicU64>,
    /// When it was first added (unix seconds): orders torrents kept at one position.
    added_at: u64,
    /// Its record file (forgotten on removal).
    record: RecordFile,
}

/// What changed since a reader last asked (see [`Session::status_changes`]).
#[derive(Clone, Debug)]
pub struct StatusChanges {
    /// The torrents to look at again, each once; `None`: look at every torrent.
    pub changed: Option<Vec<InfoHash>>,
    /// Pass this to the next call.
    pub next: u64,
}

/// How long a stop waits, after the torrents, for their records to be written.
const RECORDS_SETTLE: Duration = Duration::from_secs(10);

struct Shared {
    config: SessionConfig,
    transport: Arc<dyn Transport>,
    backend: Arc<dyn StorageBackend>,
    tracker: TrackerClient,
    /// Writes every torrent's record (in groups when many queue up, as at stop).
    records: RecordWriter,
    /// Which torrents' status changed, for readers that show them all.
    status_log: Arc<StatusLog>,
    torrents: Mutex<HashMap<InfoHash, Entry>>,
    peer_slots: Arc<Semaphore>,
    /// The part of `peer_slots` incoming connections may hold (see [`DIAL_RESERVE_DIVISOR`]).
    incoming_slots: Arc<Semaphore>,
    half_open: Arc<Semaphore>,
    /// Incoming handshakes in progress per host (entries removed at zero).
    half_open_hosts: Mutex<HashMap<HostKey, usize>>,
    listen_port: u16,
    download_limit: Arc<RateLimiter>,
    upload_limit: Arc<RateLimiter>,
    hash_budget: HashBudget,
    /// DHT and LSD, once started (taken at shutdown).
    discovery: DiscoverySlot,
    /// The task starting them (and routing what LSD hears).
    discovery_task: Mutex<Option<JoinHandle<()>>>,
    /// Limits on active torrents.
    queue_limits: Mutex<QueueLimits>,
    /// Default seeding goals (ratio, time), read by every torrent at each check.
    seed_defaults: watch::Sender<(Option<f64>, Option<Duration>)>,
    /// The completed folder torrents without their own move to (see `set_completed_dir`).
    completed_dir: watch::Sender<Option<PathBuf>>,
    /// Told when a torrent's state changes kind, one is added or removed, or the queue
    /// changes: the scheduler then runs [`queue::plan`].
    reschedule: Arc<Notify>,
    /// The scheduler task.
    scheduler_task: Mutex<Option<JoinHandle<()>>>,
    /// Dials for every torrent under the encryption policy and answers incoming streams.
    dialer: Arc<peer::Dialer>,
}

/// A running BitTorrent session.
pub struct Session {
    shared: Arc<Shared>,
    listener: JoinHandle<()>,
}

impl Session {
    /// Bind the listening port and start accepting peers.
    pub async fn start(
        config: SessionConfig,
        transport: Arc<dyn Transport>,
        backend: Arc<dyn StorageBackend>,
        tracker: TrackerClient,
    ) -> Result<Session, SessionError> {
        let listener = bind(&*transport, config.listen).await?;
        let listen_port = listener.local_addr().port();
        tracing::info!(
            port = listen_port,
            transport = transport.name(),
            "listening"
        );

        let queue_limits = QueueLimits {
            downloads: config.max_active_downloads,
            seeds: config.max_active_seeds,
        };
        let seed_defaults = (config.seed_ratio, config.seed_time);
        let completed_dir = config
            .completed_dir
            .clone()
            .map(|d| std::path::absolute(&d).unwrap_or(d));
        let shared = Arc::new(Shared {
            peer_slots: Arc::new(Semaphore::new(config.max_peers_total)),
            incoming_slots: Arc::new(Semaphore::new(
                config.max_peers_total - config.max_peers_total / DIAL_RESERVE_DIVISOR,
            )),
            half_open: Arc::new(Semaphore::new(MAX_HALF_OPEN_INCOMING)),
            half_open_hosts: Mutex::new(HashMap::new()),
            download_limit: Arc::new(RateLimiter::new(config.download_limit)),
            upload_limit: Arc::new(RateLimiter::new(config.upload_limit)),
            hash_budget: HashBudget::new(config.recheck_memory),
            dialer: Arc::new(peer::Dialer::new(config.encryption)),
            config,
            transport,
            backend,
            tracker,
            records: RecordWriter::start(),
            status_log: Arc::default(),
            torrents: Mutex::new(HashMap::new()),
            listen_port,
            discovery: DiscoverySlot::default(),
            discovery_task: Mutex::new(None),
            queue_limits: Mutex::new(queue_limits),
            seed_defaults: watch::Sender::new(seed_defaults),
            completed_dir: watch::Sender::new(completed_dir),
            reschedule: Arc::new(Notify::new()),
            scheduler_task: Mutex::new(None),
        });
        let scheduler = tokio::spawn(run_scheduler(shared.clone()));
        *shared
            .scheduler_task
            .lock()
            .expect("lock poisoned only by a panic") = Some(scheduler);
        let task = tokio::spawn(start_discovery(shared.clone()));
        *shared
            .discovery_task
            .lock()
            .expect("lock poisoned only by a panic") = Some(task);
        let listener = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Session { shared, listener })
    }

    /// The port actually listened on.
    pub fn listen_port(&self) -> u16 {
        self.shared.listen_port
    }

    /// The DHT node's UDP address, if one runs.
    pub fn dht_addr(&self) -> Option<SocketAddr> {
        self.shared.discovery.dht().map(|d| d.local_addr())
    }

    /// Change the session-wide rate limits in bytes/s (0: unlimited).
    pub fn set_rate_limits(&self, download: u64, upload: u64) {
        self.shared.download_limit.set_rate(download);
        self.shared.upload_limit.set_rate(upload);
    }

    /// The session-wide rate limits in bytes/s as (download, upload); 0 means unlimited.
    pub fn rate_limits(&self) -> (u64, u64) {
        (
            self.shared.download_limit.rate(),
            self.shared.upload_limit.rate(),
        )
    }

    /// Add a torrent; it starts checking (or, from a magnet, fetching its metadata), then
    /// downloading or seeding.
    pub fn add(&self, torrent: impl Into<AddTorrent>) -> Result<TorrentHandle, SessionError> {
        self.add_with(torrent, TorrentOptions::default())
    }

    /// [`Session::add`] with the user's choices: file priorities and sequential order. A
    /// `.torrent`'s priorities must have one entry per file ([`SessionError::Selection`]
    /// otherwise); a magnet's are checked when its metadata arrives.
    pub fn add_with(
        &self,
        torrent: impl Into<AddTorrent>,
        options: TorrentOptions,
    ) -> Result<TorrentHandle, SessionError> {
        let (source, file_count) = match torrent.into() {
            AddTorrent::Metainfo(m) => {
                let n = m.info.layout.files.len();
                (Source::Metainfo(Arc::new(m)), Some(n))
            }
            AddTorrent::Magnet(m) => (Source::Magnet(m), None),
        };
        if let Some(expected) = file_count {
            let got = options.file_priorities.len();
            if got != 0 && got != expected {
                return Err(SelectionError::WrongLength { expected, got }.into());
            }
        }
        self.add_inner(source, false, SharedSelection::new(options, file_count))
    }

    /// Stop one torrent gracefully and start it again, hashing all its data whatever the resume
    /// state says. Returns the new handle, or `None` if the torrent is not in the session.
    pub async fn recheck(&self, info_hash: InfoHash) -> Option<TorrentHandle> {
        let entry = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic")
            .remove(&info_hash)?;
        self.shared.status_log.note(info_hash);
        let source = entry.source.clone();
        let selection = entry.selection.clone();
        stop_torrent(entry, Duration::from_secs(4)).await;
        self.add_inner(source, true, selection).ok()
    }

    fn add_inner(
        &self,
        source: Source,
        force_recheck: bool,
        selection: SharedSelection,
    ) -> Result<TorrentHandle, SessionError> {
        let mut torrents = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic");
        let info_hash = source.info_hash();
        if torrents.contains_key(&info_hash) {
            return Err(SessionError::Duplicate(info_hash));
        }
        // The record: read here, before the task starts, so the queue knows its place at once
        // (small and capped; a damaged one is ignored with a warning).
        let record_file = RecordFile::new(
            &self.shared.config.state_dir,
            &info_hash,
            &self.shared.records,
        );
        let (record, saved) = match record_file.load() {
            Some(r) => (r, true),
            None => {
                let last = torrents
                    .values()
                    .map(|e| e.position.load(Ordering::Relaxed))
                    .max();
                (TorrentRecord::fresh(last.map_or(0, |p| p + 1)), false)
            }
        };
        selection.restore(&record.file_priorities, record.sequential);
        let mut status = initial_status(&source);
        let chosen = selection.get();
        status.sequential = chosen.sequential;
        if let Source::Metainfo(m) = &source {
            // What is wanted is known from the start (the live phase keeps it up to date).
            let layout = &m.info.layout;
            let priorities = chosen.priorities_for(layout);
            // The files are known from the start too: a torrent that stops in error before it
            // runs (a file in the way) still lists them, so one can be skipped and rechecked.
            status.files = layout
                .files
                .iter()
                .zip(&priorities)
                .map(|(f, p)| crate::status::FileStatus {
                    path: f.path.clone(),
                    length: f.length,
                    have_bytes: 0,
                    priority: *p,
                })
                .collect();
            let wanted = PiecePriorities::from_files(layout, &priorities);
            status.wanted_bytes = wanted
                .wanted
                .iter_ones()
                .map(|p| u64::from(layout.piece_len(p as u32)))
                .sum();
        }
        status.all_time_downloaded = record.downloaded;
        status.all_time_uploaded = record.uploaded;
        status.added_at = record.added_at;
        status.seeding_time = Duration::from_secs(record.seeding_secs);
        status.seed_goals = record.goals;
        status.queue_position = record.queue_position;
        // Where its files are: moved to a completed folder earlier, or the session's folder.
        let download_dir = record
            .download_dir
            .clone()
            .unwrap_or_else(|| self.shared.config.download_dir.clone());
        status.download_dir = download_dir.clone();
        status.completed_dir = record.completed_dir.clone();
        let position = Arc::new(AtomicU64::new(record.queue_position));
        let added_at = record.added_at;
        let keeper = Keeper::new(record_file.clone(), record, saved, position.clone());
        // Closed until the queue says otherwise (right after this add).
        let (gate, may_run) = watch::channel(false);
        // BEP 27: a private torrent finds peers through its trackers only.
        let discovery = (!source.is_private()).then(|| self.shared.discovery.clone());
        let private = Arc::new(std::sync::atomic::AtomicBool::new(source.is_private()));
        let (status_tx, status_rx) = watch::channel(status);
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let c = &self.shared.config;
        let params = TorrentParams {
            info_hash,
            force_recheck,
            backend: self.shared.backend.clone(),
            transport: self.shared.transport.clone(),
            tracker: self.shared.tracker.clone(),
            peer_id: c.peer_id,
            listen_port: self.shared.listen_port,
            download_dir,
            completed_dir: self.shared.completed_dir.subscribe(),
            state_dir: c.state_dir.clone(),
            extra_peers: c.extra_peers.clone(),
            max_peers: c.max_peers_per_torrent,
            limits: PeerLimits::from_config(c),
            peer_slots: self.shared.peer_slots.clone(),
            status: status_tx,
            status_log: self.shared.status_log.clone(),
            download_limit: self.shared.download_limit.clone(),
            upload_limit: self.shared.upload_limit.clone(),
            hash_budget: self.shared.hash_budget.clone(),
            pex: c.pex,
            rng_seed: c.rng_seed,
            private: private.clone(),
            discovery,
            selection: selection.clone(),
            may_run,
            state_changed: self.shared.reschedule.clone(),
            seed_defaults: self.shared.seed_defaults.subscribe(),
            dialer: self.shared.dialer.clone(),
        };
        let task = tokio::spawn(run_torrent(
            Box::new(params),
            source.clone(),
            cmd_rx,
            Box::new(keeper),
        ));
        let handle = TorrentHandle {
            info_hash,
            status: status_rx,
            commands: cmd_tx,
            selection: selection.clone(),
        };
        torrents.insert(
            info_hash,
            Entry {
                source,
                private,
                selection,
                handle: handle.clone(),
                task,
                gate,
                position,
                added_at,
                record: record_file,
            },
        );
        self.shared.status_log.note(info_hash);
        self.shared.reschedule.notify_one();
        Ok(handle)
    }

    /// The torrents whose status changed, or that were added or removed, since `since` (a
    /// [`StatusChanges::next`] from an earlier call; `None` the first time): a reader that
    /// shows every torrent visits those only. `changed` is `None` when the reader must look at
    /// every torrent (its first call, or it fell too far behind).
    pub fn status_changes(&self, since: Option<u64>) -> StatusChanges {
        let (changed, next) = self.shared.status_log.since(since);
        StatusChanges { changed, next }
    }

    /// The torrent of `info_hash`, if it is in the session.
    pub fn torrent(&self, info_hash: &InfoHash) -> Option<TorrentHandle> {
        let torrents = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic");
        torrents.get(info_hash).map(|e| e.handle.clone())
    }

    /// Visit every torrent without copying the list (adds and removals wait meanwhile, so
    /// `f` must be quick).
    pub fn for_each_torrent(&self, mut f: impl FnMut(&TorrentHandle)) {
        let torrents = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic");
        for e in torrents.values() {
            f(&e.handle);
        }
    }

    /// Every torrent in the session.
    pub fn torrents(&self) -> Vec<TorrentHandle> {
        let torrents = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic");
        torrents.values().map(|e| e.handle.clone()).collect()
    }

    /// Stop and remove one torrent (its data stays; its record, with its all-time totals and
    /// goals, is forgotten).
    pub async fn remove(&self, info_hash: InfoHash) -> bool {
        self.take_out(info_hash).await.is_some()
    }

    /// Take a torrent out of the session: stop it, forget its record, let the queue move on.
    /// Returns what it was added from, its file choice, and the folder its files are in (they
    /// may have moved to a completed folder; empty: the session's download folder).
    async fn take_out(
        &self,
        info_hash: InfoHash,
    ) -> Option<(Source, crate::selection::Selection, PathBuf)> {
        let entry = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic")
            .remove(&info_hash)?;
        self.shared.status_log.note(info_hash);
        let source = entry.source.clone();
        let selection = entry.selection.get();
        let record = entry.record.clone();
        let download_dir = entry.handle.status.borrow().download_dir.clone();
        stop_torrent(entry, Duration::from_secs(4)).await;
        let _ = tokio::task::spawn_blocking(move || record.forget()).await;
        self.shared.reschedule.notify_one();
        Some((source, selection, download_dir))
    }

    /// Stop and remove one torrent, then delete the data it wrote: its incomplete data and
    /// resume state, the finished files storage vouches it wrote, the metadata kept for a
    /// magnet, and folders of its paths left empty (see the storage contract,
    /// [`StorageBackend::delete_data`]). Files it did not write (found in place, or replaced
    /// since) are kept and listed in [`DeletedData::kept`]; the download folder itself and
    /// anything outside the torrent's own paths are never touched. `Ok(None)` if the torrent
    /// is not in the session.
    pub async fn remove_with_data(
        &self,
        info_hash: InfoHash,
    ) -> Result<Option<DeletedData>, StorageError> {
        let Some((source, skipped, download_dir)) = self.take_out(info_hash).await else {
            return Ok(None);
        };
        let c = &self.shared.config;
        let (metadata_path, saved) = saved_metadata(&c.state_dir, info_hash).await;
        let layout = match (&source, saved) {
            (Source::Metainfo(m), _) => Arc::new(m.info.layout.clone()),
            (Source::Magnet(_), Some(m)) => Arc::new(m.info.layout.clone()),
            // Metadata never arrived: no file of it can exist, only incomplete data by hash.
            (Source::Magnet(_), None) => Arc::new(Layout::new(1, Vec::new())),
        };
        let spec = StorageSpec {
            info_hash,
            skipped_files: skipped.skipped_for(&layout),
            layout,
            download_dir: if download_dir.as_os_str().is_empty() {
                c.download_dir.clone()
            } else {
                download_dir
            },
            state_dir: c.state_dir.clone(),
        };
        let mut deleted = self.shared.backend.delete_data(spec).await?;
        // Written by the engine itself when a magnet's metadata arrived.
        let removed = tokio::task::spawn_blocking({
            let path = metadata_path.clone();
            move || std::fs::remove_file(path)
        })
        .await;
        if let Ok(Ok(())) = removed {
            deleted.removed.push(metadata_path);
        }
        Ok(Some(deleted))
    }

    /// Move a torrent in the queue; `false` if it is not in the session. Positions are
    /// renumbered 0, 1, 2, … in the new order and kept in each torrent's record.
    pub fn queue_move(&self, info_hash: InfoHash, how: QueueMove) -> bool {
        let torrents = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic");
        let order = queue_order(&torrents);
        let Some(index) = order.iter().position(|(h, _)| *h == info_hash) else {
            return false;
        };
        for (i, (_, entry)) in queue::moved(order, index, how).into_iter().enumerate() {
            let old = entry.position.swap(i as u64, Ordering::Relaxed);
            if old != i as u64 {
                // If its queue is full the position is still written at its next save.
                let _ = entry.handle.commands.try_send(TorrentCommand::SaveRecord);
            }
        }
        self.shared.reschedule.notify_one();
        true
    }

    /// Change the limits on active downloads and seeds (`None`: no limit).
    pub fn set_queue_limits(&self, limits: QueueLimits) {
        *self
            .shared
            .queue_limits
            .lock()
            .expect("lock poisoned only by a panic") = limits;
        self.shared.reschedule.notify_one();
    }

    /// The session's default seeding goals (ratio, time), which torrents with
    /// `Goal::Global` follow.
    pub fn seed_goal_defaults(&self) -> (Option<f64>, Option<Duration>) {
        *self.shared.seed_defaults.borrow()
    }

    /// Change the default seeding goals (`None`: no goal). Seeding torrents that follow them
    /// check the new ones within a second; finished torrents stay finished until resumed.
    pub fn set_seed_goal_defaults(&self, ratio: Option<f64>, time: Option<Duration>) {
        self.shared.seed_defaults.send_replace((ratio, time));
    }

    /// The session's completed folder (see [`SessionConfig::completed_dir`]).
    pub fn completed_dir(&self) -> Option<PathBuf> {
        self.shared.completed_dir.borrow().clone()
    }

    /// Change the session's completed folder (`None`: finished torrents stay where they are).
    /// Torrents without their own folder use the new one when they next complete; the caller
    /// checks it as for [`SessionConfig::completed_dir`] (not the state folder, for one).
    pub fn set_completed_dir(&self, dir: Option<PathBuf>) {
        let dir = dir.map(|d| std::path::absolute(&d).unwrap_or(d));
        self.shared.completed_dir.send_replace(dir);
    }

    /// The limits on active downloads and seeds.
    pub fn queue_limits(&self) -> QueueLimits {
        *self
            .shared
            .queue_limits
            .lock()
            .expect("lock poisoned only by a panic")
    }

    /// Stop every torrent gracefully (flush, resume state, `stopped`), bounded by `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        self.listener.abort();
        let entries: Vec<Entry> = self
            .shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic")
            .drain()
            .map(|(_, e)| e)
            .collect();
        let task = self
            .shared
            .discovery_task
            .lock()
            .expect("lock poisoned only by a panic")
            .take();
        if let Some(task) = task {
            task.abort();
        }
        let scheduler = self
            .shared
            .scheduler_task
            .lock()
            .expect("lock poisoned only by a panic")
            .take();
        if let Some(task) = scheduler {
            task.abort();
        }
        // The DHT and LSD stop alongside the torrents (nothing a stopping torrent does needs
        // them), so the whole stop stays within `timeout` plus the DHT's own short bound.
        let discovery = self.shared.discovery.take();
        futures::future::join(
            futures::future::join_all(entries.into_iter().map(|e| stop_torrent(e, timeout))),
            stop_discovery(discovery),
        )
        .await;
        // A torrent cut off by `timeout` may have left its last record in the writer's queue:
        // let it land (bounded, for a file system that hangs).
        if tokio::time::timeout(RECORDS_SETTLE, self.shared.records.settled())
            .await
            .is_err()
        {
            tracing::warn!(
                "torrent records still being written at exit; the last changes may be lost"
            );
        }
    }
}

/// Torrents in queue order: by position, then date added, then info-hash (positions kept by
/// records may tie; the order must not depend on a map's).
fn queue_order(torrents: &HashMap<InfoHash, Entry>) -> Vec<(InfoHash, &Entry)> {
    let mut order: Vec<(InfoHash, &Entry)> = torrents.iter().map(|(h, e)| (*h, e)).collect();
    order.sort_by_key(|(h, e)| (e.position.load(Ordering::Relaxed), e.added_at, h.0));
    order
}

/// What slot a torrent wants, from its published state.
fn queue_kind(s: &TorrentStatus) -> QueueKind {
    // Complete for the user: every wanted piece is in (files may be skipped; a magnet
    // without metadata knows no pieces and is a download).
    let complete = s.pieces_total > 0 && s.wanted_have_bytes >= s.wanted_bytes;
    match s.state {
        TorrentState::FetchingMetadata | TorrentState::Downloading => QueueKind::Download,
        TorrentState::Seeding => QueueKind::Seed,
        TorrentState::Queued if complete => QueueKind::Seed,
        TorrentState::Queued => QueueKind::Download,
        TorrentState::Checking { .. } => QueueKind::Checking,
        TorrentState::Paused | TorrentState::Finished(_) | TorrentState::Error(_) => {
            QueueKind::Inactive
        }
    }
}

/// The queue's scheduler: whenever told (a state changed kind, a torrent came or went, the
/// queue or its limits changed), run [`queue::plan`] over every torrent and open or close
/// their gates. One task, so decisions never race; `Notify` keeps one wake-up while it works,
/// so none is lost.
async fn run_scheduler(shared: Arc<Shared>) {
    loop {
        shared.reschedule.notified().await;
        let limits = *shared
            .queue_limits
            .lock()
            .expect("lock poisoned only by a panic");
        let torrents = shared
            .torrents
            .lock()
            .expect("lock poisoned only by a panic");
        let order = queue_order(&torrents);
        let entries: Vec<QueueEntry> = order
            .iter()
            .enumerate()
            .map(|(i, (_, e))| QueueEntry {
                position: i as u64,
                kind: queue_kind(&e.handle.status.borrow()),
                running: *e.gate.borrow(),
            })
            .collect();
        for ((_, e), allowed) in order.iter().zip(queue::plan(&entries, limits)) {
            e.gate
                .send_if_modified(|open| std::mem::replace(open, allowed) != allowed);
        }
    }
}

/// Start the DHT node (on the listening port number, or where uTP holds that UDP port, on
/// another one: the adapter says which) and LSD, in the background: a DHT bootstrap may wait on
/// name resolution, and nothing else should. A service that cannot start is logged, not fatal.
/// Peers LSD hears of go to the torrent they name, unless it is private.
async fn start_discovery(shared: Arc<Shared>) {
    let config = &shared.config;
    if let Some(bootstrap) = &config.dht {
        let ip = match config.listen.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        let mut c = DhtConfig::new(SocketAddr::new(IpAddr::V4(ip), shared.listen_port));
        c.bootstrap = bootstrap.clone();
        c.state_file = Some(config.state_dir.join(DHT_STATE_FILE));
        match Dht::start(c).await {
            Ok(dht) => {
                tracing::info!(addr = %dht.local_addr(), "DHT node running");
                shared.discovery.set_dht(Arc::new(dht));
            }
            Err(e) => tracing::warn!(error = %e, "DHT off: the node could not start"),
        }
    }
    if config.lsd {
        match Lsd::start(shared.listen_port).await {
            Ok((lsd, mut heard)) => {
                shared.discovery.set_lsd(Arc::new(lsd));
                while let Some(peer) = heard.recv().await {
                    let target = {
                        let torrents = shared
                            .torrents
                            .lock()
                            .expect("lock poisoned only by a panic");
                        torrents
                            .get(&peer.0)
                            .filter(|e| !e.private.load(std::sync::atomic::Ordering::Relaxed))
                            .map(|e| e.handle.commands.clone())
                    };
                    if let Some(commands) = target {
                        let _ = commands.try_send(TorrentCommand::LocalPeers(vec![peer.1]));
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "local service discovery off"),
        }
    }
}

/// Save the DHT routing table and close the socket, once the torrents let go of the node;
/// stop LSD.
async fn stop_discovery(discovery: Discovery) {
    if let Some(lsd) = discovery.lsd {
        if let Ok(lsd) = Arc::try_unwrap(lsd) {
            lsd.shutdown().await;
        }
    }
    let Some(mut dht) = discovery.dht else {
        return;
    };
    for _ in 0..50 {
        match Arc::try_unwrap(dht) {
            Ok(d) => {
                match tokio::time::timeout(DHT_STOP_TIMEOUT, d.shutdown()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "DHT state not saved"),
                    Err(_) => tracing::warn!("DHT did not stop in time"),
                }
                return;
            }
            Err(still_shared) => {
                dht = still_shared;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    tracing::warn!("DHT still in use at shutdown; its routing table is not saved");
}

async fn stop_torrent(entry: Entry, timeout: Duration) {
    // One budget for queueing the command and for the stop itself: the command channel may be
    // full, and the task may be busy opening storage.
    let _ = tokio::time::timeout(timeout, async {
        let (tx, rx) = oneshot::channel();
        if entry
            .handle
            .commands
            .send(TorrentCommand::Shutdown(tx))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    })
    .await;
    entry.task.abort();
    // Wait (briefly) until the task is gone, so its storage is dropped before the same torrent
    // is opened again (recheck): two storages of one torrent would race on its files.
    let _ = tokio::time::timeout(Duration::from_millis(500), entry.task).await;
}

async fn bind(
    transport: &dyn Transport,
    addr: SocketAddr,
) -> Result<Box<dyn Listener>, SessionError> {
    let attempts = if addr.port() == 0 { 1 } else { PORT_ATTEMPTS };
    let mut last = None;
    for i in 0..attempts {
        let Some(port) = addr.port().checked_add(i) else {
            break;
        };
        match transport.listen(SocketAddr::new(addr.ip(), port)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(SessionError::Listen {
        addr,
        source: last.unwrap_or(TransportError::NotSupported("no port available")),
    })
}

async fn accept_loop(mut listener: Box<dyn Listener>, shared: Arc<Shared>) {
    loop {
        let (stream, addr, via) = match listener.accept_labeled().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let Ok(half_open) = shared.half_open.clone().try_acquire_owned() else {
                return; // too many handshakes in progress
            };
            let host = host_key(addr, shared.config.loopback_as_host);
            let Some(host_share) = HalfOpenShare::take(&shared, host) else {
                tracing::debug!(%addr, "too many handshakes in progress from this host");
                return;
            };
            // An MSE handshake names its torrent by a hash of the info-hash: ours are looked
            // up when it arrives.
            let lookup: peer::mse::SkeyLookup = {
                let shared = shared.clone();
                Box::new(move |wanted| {
                    let torrents = shared
                        .torrents
                        .lock()
                        .expect("lock poisoned only by a panic");
                    torrents
                        .keys()
                        .find(|ih| peer::mse::skey_hash(ih) == *wanted)
                        .copied()
                })
            };
            let accepted = shared
                .dialer
                .accept(stream, peer::FIRST_BYTE_TIMEOUT, lookup)
                .await;
            let (stream, handshake, encryption) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "incoming handshake failed");
                    return;
                }
            };
            let commands = {
                let torrents = shared
                    .torrents
                    .lock()
                    .expect("lock poisoned only by a panic");
                torrents
                    .get(&handshake.info_hash)
                    .map(|e| e.handle.commands.clone())
            };
            drop(half_open);
            drop(host_share);
            let Ok(incoming) = shared.incoming_slots.clone().try_acquire_owned() else {
                return; // the incoming share is full: the rest is kept for our dials
            };
            let Ok(session) = shared.peer_slots.clone().try_acquire_owned() else {
                return; // session full
            };
            let permit = PeerSlot::incoming(session, incoming);
            let Some(commands) = commands else {
                tracing::debug!(%addr, info_hash = %handshake.info_hash, "incoming peer for unknown torrent");
                return;
            };
            let transport = via.unwrap_or_else(|| shared.transport.name().to_string());
            let _ = commands
                .send(TorrentCommand::Incoming(Box::new(IncomingPeer {
                    stream,
                    addr,
                    handshake,
                    transport,
                    permit,
                    encryption,
                })))
                .await;
        });
    }
}

/// One host's share of the half-open budget, given back on drop.
struct HalfOpenShare {
    shared: Arc<Shared>,
    host: HostKey,
}

impl HalfOpenShare {
    /// A share for `host`, or `None` if it already holds [`MAX_HALF_OPEN_PER_HOST`].
    fn take(shared: &Arc<Shared>, host: HostKey) -> Option<Self> {
        let mut hosts = shared
            .half_open_hosts
            .lock()
            .expect("lock poisoned only by a panic");
        let n = hosts.entry(host).or_insert(0);
        if *n >= MAX_HALF_OPEN_PER_HOST {
            return None;
        }
        *n += 1;
        Some(HalfOpenShare {
            shared: shared.clone(),
            host,
        })
    }
}

impl Drop for HalfOpenShare {
    fn drop(&mut self) {
        let mut hosts = self
            .shared
            .half_open_hosts
            .lock()
            .expect("lock poisoned only by a panic");
        if let MapEntry::Occupied(mut e) = hosts.entry(self.host) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::GoalReached;

    #[test]
    fn queue_kinds_from_states() {
        let mut s = TorrentStatus::new("t".into(), InfoHash([1; 20]), 100, 4);
        let kind = |s: &TorrentStatus, state: TorrentState| {
            let mut s = s.clone();
            s.state = state;
            queue_kind(&s)
        };
        assert_eq!(kind(&s, TorrentState::Downloading), QueueKind::Download);
        assert_eq!(
            kind(&s, TorrentState::FetchingMetadata),
            QueueKind::Download
        );
        assert_eq!(kind(&s, TorrentState::Seeding), QueueKind::Seed);
        assert_eq!(
            kind(&s, TorrentState::Checking { progress: 0.5 }),
            QueueKind::Checking
        );
        for inactive in [
            TorrentState::Paused,
            TorrentState::Finished(GoalReached::Ratio),
            TorrentState::Error("disk".into()),
        ] {
            assert_eq!(kind(&s, inactive), QueueKind::Inactive);
        }
        // Queued: a download until every piece is in, then a seed; a magnet without
        // metadata (no pieces known) is a download.
        assert_eq!(kind(&s, TorrentState::Queued), QueueKind::Download);
        s.pieces_have = 4;
        s.wanted_have_bytes = 100;
        assert_eq!(kind(&s, TorrentState::Queued), QueueKind::Seed);
        // Files skipped: complete once the wanted pieces are in, though others are missing
        // (counted as a download, it would take a download slot, seed, and flap).
        s.pieces_have = 2;
        s.wanted_bytes = 50;
        s.wanted_have_bytes = 50;
        assert_eq!(kind(&s, TorrentState::Queued), QueueKind::Seed);
        s.wanted_have_bytes = 25;
        assert_eq!(kind(&s, TorrentState::Queued), QueueKind::Download);
        let magnet = TorrentStatus::new("m".into(), InfoHash([2; 20]), 0, 0);
        assert_eq!(kind(&magnet, TorrentState::Queued), QueueKind::Download);
    }
}
