//! The torrent task: the single owner of one torrent's state (picker, peers, choker, storage
//! handle, tracker tiers). Peer drivers, the session and helper tasks talk to it only through
//! channels; it publishes a [`TorrentStatus`] snapshot for readers.
//!
//! Data path: peer driver → `PeerEvent::Block` → picker bookkeeping → block kept in a piece
//! buffer → when the piece is whole, a verify task hashes it on the blocking pool, writes it to
//! storage and marks it complete → `Internal::PieceDone` → `have` to every peer.
//! Only verified data is ever written.
//!
//! Peer admission (per-host caps, eviction of idle peers, the bounded address book) is decided
//! in `peers`; who to blame for a piece that failed its hash, in `smart_ban`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::{mpsc, watch, Semaphore};

mod connections;
mod discovery;
mod extensions;
mod goals;
mod pieces;
mod quiet;
mod requests;
mod stats;

use stats::Rate;

use super::announce::{self, AnnounceResult, Announcer};
use super::peers::{self, ban_key, host_key, BookEntry, EvictCandidate, HostKey, MAX_KNOWN_PEERS};
use super::record::Keeper;
use super::smart_ban::{block_digest, BlockDigest, SmartBan};
use super::sources::{self, DhtSchedule};
use super::{now, IncomingPeer, PeerSlot, TorrentCommand, TorrentParams};
use crate::choker::{self, Choker, PeerSample};
use crate::hash;
use crate::metainfo::Metainfo;
use crate::peer::{self, Connection, PeerCommand, PeerContext, PeerEvent, PeerKey, PeerShared};
use crate::picker::{BlockOutcome, PiecePicker};
use crate::queue::GoalReached;
use crate::selection::{FilePriority, PiecePriorities};
use crate::status::{FileStatus, PeerExtensionFlags, PeerStatus, TorrentState};
use crate::storage::{Layout, Storage, StorageError};
use crate::tracker::{AnnounceRequest, Event, TrackerTiers};
use crate::types::{Bitfield, BlockRef, PeerId, PieceIndex, BLOCK_SIZE};
use crate::wire::{Handshake, Message};

/// Requests in flight to one peer at first, before its rate is known.
const INITIAL_DEPTH: usize = 64;
/// Never fewer than this many requests in flight to an unchoking peer.
const MIN_DEPTH: usize = 16;
/// Upper bound per peer (libtorrent's default cap is 500).
const MAX_DEPTH: usize = 256;
/// Seconds of a peer's rate we try to keep requested (libtorrent uses 3 s).
const QUEUE_SECONDS: f64 = 2.0;
/// Top up a peer's pipeline only when at least this many slots are free, so requests go out
/// in batches rather than one message per received block.
const REFILL_BATCH: usize = 8;
/// Pieces waiting for hashing/writing may hold at most this many bytes before we stop asking
/// for more: the bound that keeps memory flat when the disk is slower than the network.
const VERIFY_BACKLOG_CAP: u64 = 16 * 1024 * 1024;
/// Peer events (mostly blocks) queued for the torrent task, over all its peers.
const PEER_EVENT_QUEUE: usize = 512;
/// Pieces hashed at the same time.
const VERIFY_PARALLELISM: usize = 2;
/// A peer that sent nothing we asked for in this long is snubbed: its requests go elsewhere.
const SNUB_TIMEOUT: Duration = Duration::from_secs(30);
/// A request unanswered for this long (while the peer sends other blocks) is given back.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// A peer must have choked us this long before we ask it for its allowed-fast pieces (BEP 6).
/// A peer with a free slot unchokes right after our interest (we do, and so does libtorrent),
/// while its grant arrives first: asking for granted pieces at once would start up to ten
/// scattered pieces for nothing (and break a sequential download's order). The one-second
/// tick asks once this has passed.
const ALLOWED_FAST_WAIT: Duration = Duration::from_secs(3);
/// How long a piece a peer rejected is not asked of it again (unless it unchokes us first).
/// A few seconds: enough for the block to go elsewhere, short next to the request timeout.
const REJECT_MEMORY: Duration = Duration::from_secs(5);
/// A connection that lasted this long counts as good: its address's backoff starts over.
const GOOD_CONNECTION: Duration = Duration::from_secs(60);
/// How often verified pieces are recorded durably (data flushed first).
const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// Peers asked of trackers.
const NUM_WANT: u32 = 100;
/// Fewer connected peers than this while downloading counts as starving: we re-announce early.
const STARVING_PEERS: usize = 5;
/// How long shutdown waits for in-flight pieces, a flush and an announce to finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(1);
/// Redial a peer that dropped or failed after this long, doubling with each failure…
const RECONNECT_BACKOFF: Duration = Duration::from_millis(500);
/// …up to this.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(120);

/// Results of helper tasks, fed back into the torrent task.
///
/// Large payloads are boxed: an unbounded tokio channel allocates its slots 32 at a time, sized
/// by the largest message, and every torrent has one (10,000 idle torrents paid 6 KiB each).
enum Internal {
    PieceDone(Box<PieceDone>),
    AnnounceDone {
        tiers: Box<TrackerTiers>,
        event: Event,
        result: Box<AnnounceResult>,
    },
    /// The connection and its slot, boxed: the queue is sized by its largest message (tokio
    /// allocates 32 slots at a time, for every torrent, busy or not).
    Connected {
        conn: Box<(Connection, PeerSlot)>,
        outgoing: bool,
    },
    /// Boxed, as `Connected`.
    Flushed(Box<Result<(), StorageError>>),
    /// Addresses a DHT search found (more may follow).
    DhtPeers(Vec<SocketAddr>),
    /// A DHT search ended, having found this many addresses.
    DhtDone(usize),
    /// Boxed, as `Connected`.
    ConnectFailed(Box<(SocketAddr, String)>),
    /// Storage took (or refused) a new set of skipped files.
    SkipApplied(Box<Result<(), StorageError>>),
}

/// A piece hashed (and written if sound).
struct PieceDone {
    piece: PieceIndex,
    bytes: u64,
    /// Who sent each block, in block order (empty if the piece was incomplete).
    senders: Vec<SocketAddr>,
    /// Digest of each block: for failed pieces, and for pieces smart ban was waiting on.
    digests: Option<Vec<BlockDigest>>,
    result: Result<bool, StorageError>,
}

struct Peer {
    addr: SocketAddr,
    transport: String,
    encryption: crate::peer::Encryption,
    client: String,
    outgoing: bool,
    tx: mpsc::Sender<PeerCommand>,
    shared: Arc<PeerShared>,
    peer_id: PeerId,
    bitfield: Bitfield,
    peer_choking: bool,
    peer_interested: bool,
    am_interested: bool,
    /// Outstanding requests and when they were sent.
    requests: HashMap<BlockRef, Instant>,
    /// Whether we choke it (authoritative; the writer mirrors it).
    am_choking: bool,
    connected_at: Instant,
    depth: usize,
    /// Requests the peer queues for us (its `reqq`); the pipeline never goes deeper.
    request_limit: usize,
    window_down: u64,
    download_rate: Rate,
    last_uploaded: u64,
    upload_rate: Rate,
    last_block: Instant,
    /// Last payload either way, or interest change: eviction takes the longest idle.
    last_active: Instant,
    snubbed: bool,
    /// BEP 10 extensions it speaks, and their per-peer state.
    ext: extensions::PeerExtensions,
    /// Both handshakes offer the fast extension (BEP 6).
    fast: bool,
    /// Both handshakes offer the extension protocol (BEP 10).
    extension_protocol: bool,
    /// When it last choked us (or connected, choking as every connection starts).
    choked_at: Instant,
    /// Pieces it serves us while it chokes us (BEP 6 allowed-fast; at most
    /// [`peer::proto::MAX_ALLOWED_FAST_RECEIVED`], deduplicated by the connection).
    allowed_fast: Vec<PieceIndex>,
    /// Pieces it rejected a request for, and when: not asked of it again until it unchokes us
    /// or [`REJECT_MEMORY`] passes, so a peer that rejects does not get the same blocks
    /// straight back, yet a sole source that rejected once (a full queue) is asked again.
    rejected: HashMap<PieceIndex, Instant>,
    _permit: PeerSlot,
}

#[derive(Default)]
struct KnownPeer {
    connected: bool,
    connecting: bool,
    failures: u32,
    next_try: Option<Instant>,
    /// Learned only from an incoming connection (its port is ephemeral): never dialled.
    incoming_only: bool,
    /// It had every piece when last seen: not worth dialling while we seed.
    seed: bool,
    /// When it entered the book (a sequence number): the oldest go first when it is full.
    added: u64,
}

struct PieceBuf {
    /// Each block and who sent it.
    blocks: Vec<Option<(Bytes, SocketAddr)>>,
}

pub(super) struct Torrent {
    metainfo: Arc<Metainfo>,
    p: TorrentParams,
    layout: Arc<Layout>,
    storage: Arc<dyn Storage>,
    picker: PiecePicker,
    choker: Choker,
    rng: StdRng,
    peers: HashMap<PeerKey, Peer>,
    known: HashMap<SocketAddr, KnownPeer>,
    /// Sequence for [`KnownPeer::added`].
    known_seq: u64,
    /// Failed pieces waiting for a verdict on who sent the bad blocks.
    smart_ban: SmartBan,
    /// Peers banned for the session for sending bad data, by [`ban_key`].
    banned: HashSet<HostKey>,
    /// Pieces we verified but can no longer read (a data file deleted or truncated while we
    /// served it): never claimed again in status or announces.
    lost: Bitfield,
    pieces: HashMap<PieceIndex, PieceBuf>,
    verify_backlog: u64,
    verifying: usize,
    verify_slots: Arc<Semaphore>,
    next_key: PeerKey,
    /// Made with the first connection and dropped when the last peer is gone: an idle
    /// torrent holds no channel (tokio allocates slots 32 at a time).
    peer_events: Option<PeerEvents>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    announcer: Announcer,
    dht_schedule: DhtSchedule,
    /// The next LSD announce (`None`: due as soon as LSD runs).
    next_lsd: Option<Instant>,
    /// Changes when a discovery service starts (a quiet torrent sleeps until then).
    discovery_started: Option<watch::Receiver<()>>,
    sent_completed: bool,
    paused: bool,
    /// The queue's gate is closed: waiting for a slot (`Queued`).
    queued: bool,
    /// Stopped seeding at this goal (`Finished`) until resumed.
    finished: Option<GoalReached>,
    /// The torrent's record: all-time totals, seeding time, goals.
    keeper: Keeper,
    /// When seeding time was last counted.
    last_tick: Instant,
    error: Option<String>,
    dirty: bool,
    flushing: bool,
    last_flush: Instant,
    last_rechoke: Option<Instant>,
    window_down: u64,
    uploaded: u64,
    download_rate: Rate,
    upload_rate: Rate,
    downloaded: u64,
    wasted: u64,
    /// The user's choice as last applied to the picker and storage (one entry per file).
    file_priorities: Vec<FilePriority>,
    sequential: bool,
    /// It just completed and its files go to this completed folder: the task stops its
    /// peers and storage and hands over to the move (see `super::relocate`).
    move_to: Option<PathBuf>,
}

/// The queue from every connection's reader to the torrent task.
struct PeerEvents {
    tx: mpsc::Sender<(PeerKey, PeerEvent)>,
    rx: mpsc::Receiver<(PeerKey, PeerEvent)>,
}

impl PeerEvents {
    fn new() -> Self {
        // Bounded tightly: mostly blocks (16 KiB each), so this caps what readers can queue
        // ahead of a busy torrent task (8 MiB); a full channel pauses the readers, not the task.
        let (tx, rx) = mpsc::channel(PEER_EVENT_QUEUE);
        PeerEvents { tx, rx }
    }
}

/// The next peer event (never, without a connection).
async fn next_peer_event(events: &mut Option<PeerEvents>) -> Option<(PeerKey, PeerEvent)> {
    match events {
        Some(e) => e.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// The next start of a discovery service (never, without discovery).
async fn discovery_change(rx: &mut Option<watch::Receiver<()>>) {
    if let Some(rx) = rx {
        if rx.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Why the live phase ended.
pub(super) enum Exit {
    /// Shut down (or the session dropped the torrent).
    Shutdown,
    /// Complete, with its files bound for this folder: peers and storage are stopped.
    Move(PathBuf),
}

/// What the move takes over from a stopped live phase.
pub(super) struct Stopped {
    pub p: TorrentParams,
    pub keeper: Keeper,
    pub storage: Arc<dyn Storage>,
    /// Known peer addresses, dialled again once the torrent is live at its new place.
    pub peers: Vec<SocketAddr>,
}

impl Torrent {
    pub(super) fn new(
        p: TorrentParams,
        metainfo: Arc<Metainfo>,
        layout: Arc<Layout>,
        storage: Arc<dyn Storage>,
        have: Bitfield,
        keeper: Keeper,
        completing: bool,
    ) -> Self {
        let mut p = p;
        let mut keeper = keeper;
        let queued = !*p.may_run.borrow_and_update();
        if metainfo.info.private {
            // BEP 27: a magnet's metadata may turn out private; from now on trackers only.
            p.discovery = None;
        }
        // A fixed seed (simulations) gives every torrent its own, reproducible stream.
        let seed = p.rng_seed.map(|s| {
            s ^ u64::from_be_bytes(metainfo.info_hash.0[..8].try_into().expect("8 of 20 bytes"))
        });
        let mut picker = match seed {
            Some(s) => PiecePicker::with_seed(&layout, &have, s),
            None => PiecePicker::new(&layout, &have),
        };
        let selection = p.selection.get();
        let file_priorities = selection.priorities_for(&layout);
        picker.set_priorities(&PiecePriorities::from_files(&layout, &file_priorities));
        picker.set_sequential(selection.sequential);
        remember_selection(&mut keeper, &file_priorities, selection.sequential);
        // A goal reached stays reached across restarts, but only while the wanted data is
        // whole: a torrent that lost data downloads it again.
        if !picker.is_complete() && keeper.record.finished.take().is_some() {
            tracing::info!(name = %metainfo.info.name, "data incomplete: seeding goal reset");
        }
        let finished = keeper.record.finished;
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let announcer = Announcer::new(metainfo.announce_tiers.clone(), now(), rand::random());
        let mut known = HashMap::new();
        for addr in &p.extra_peers {
            known.insert(*addr, KnownPeer::default());
        }
        let lost = Bitfield::new(layout.piece_count() as usize);
        // Complete at start (every wanted piece there): `completed` was announced before,
        // unless it completed just now and moved first (then it is announced from here).
        let sent_completed = picker.is_complete() && !completing;
        let at = std::time::SystemTime::now();
        p.publish(|s| {
            // Shown with the completion, so a reader (`--on-complete`) sees both at once.
            s.download_dir = p.download_dir.clone();
            if completing && s.completed_at.is_none() {
                s.completed_at = Some(at);
            }
        });
        Torrent {
            layout,
            storage,
            picker,
            choker: Choker::new(),
            rng: seed.map_or_else(StdRng::from_entropy, |s| {
                StdRng::seed_from_u64(s.rotate_left(1))
            }),
            peers: HashMap::new(),
            known,
            known_seq: 0,
            smart_ban: SmartBan::default(),
            banned: HashSet::new(),
            lost,
            pieces: HashMap::new(),
            verify_backlog: 0,
            verifying: 0,
            verify_slots: Arc::new(Semaphore::new(VERIFY_PARALLELISM)),
            next_key: 1,
            peer_events: None,
            internal_tx,
            internal_rx,
            announcer,
            dht_schedule: DhtSchedule::new(now()),
            next_lsd: None,
            discovery_started: p.discovery.as_ref().map(|d| d.started()),
            sent_completed,
            paused: false,
            queued,
            finished,
            keeper,
            last_tick: now(),
            error: None,
            dirty: false,
            flushing: false,
            last_flush: now(),
            last_rechoke: None,
            window_down: 0,
            uploaded: 0,
            download_rate: Rate::default(),
            upload_rate: Rate::default(),
            downloaded: 0,
            wasted: 0,
            file_priorities,
            sequential: selection.sequential,
            move_to: None,
            metainfo,
            p,
        }
    }

    /// Take apart a stopped torrent for the move.
    pub(super) fn into_stopped(self) -> Stopped {
        let peers = self.known.keys().copied().collect();
        Stopped {
            p: self.p,
            keeper: self.keeper,
            storage: self.storage,
            peers,
        }
    }

    /// The folder its files go to on completion, if not there already.
    fn move_target(&self) -> Option<PathBuf> {
        let to = self
            .keeper
            .record
            .completed_dir
            .clone()
            .or_else(|| self.p.completed_dir.borrow().clone())?;
        // Absolute: it is kept in the record, and a relative one would change with the
        // working folder.
        let abs = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let to = abs(&to);
        (to != abs(&self.p.download_dir)).then_some(to)
    }

    /// Nothing left to download: every wanted piece is verified (all of them, unless the user
    /// skipped files). We then seed what we have.
    fn is_seed(&self) -> bool {
        self.picker.is_complete()
    }

    /// Transferring: not paused, failed, queued or finished.
    fn active(&self) -> bool {
        !self.paused && self.error.is_none() && !self.queued && self.finished.is_none()
    }

    /// Run until shut down; `held` are commands that arrived while checking, taken first.
    pub(super) async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<TorrentCommand>,
        held: Vec<TorrentCommand>,
    ) -> Exit {
        // The periodic work runs once a second while anything moves, and a quiet torrent
        // sleeps until its next scheduled job (see `quiet`). The first tick is at once.
        let wake = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(wake);
        sources::learn_dht_nodes(&self.p.discovery, &self.metainfo.dht_nodes);
        // Storage was opened with the choice as it was then; it may have changed since, while
        // checking (and a backend that cannot skip files says so here).
        self.apply_skipped();
        for cmd in held {
            match cmd {
                // Checking answers a shutdown itself; kept here only for completeness.
                TorrentCommand::Shutdown(reply) => {
                    Box::pin(self.shutdown()).await;
                    let _ = reply.send(());
                    return Exit::Shutdown;
                }
                cmd => self.on_command(cmd),
            }
        }
        self.publish();
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(TorrentCommand::Shutdown(reply)) => {
                        Box::pin(self.shutdown()).await;
                        let _ = reply.send(());
                        return Exit::Shutdown;
                    }
                    None => { Box::pin(self.shutdown()).await; return Exit::Shutdown; }
                    Some(cmd) => self.on_command(cmd),
                },
                // Before peer events: under a steady stream of blocks the once-a-second work
                // (rates, status, rechoke, timeouts, flush) must still run.
                () = &mut wake => {
                    self.on_tick().await;
                    let at = self.next_wake(now());
                    wake.as_mut().reset(at.into());
                }
                Ok(()) = self.p.may_run.changed() => self.on_gate(),
                () = discovery_change(&mut self.discovery_started) => {
                    if self.active() {
                        self.discover(now());
                    }
                }
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal).await,
                Some((key, event)) = next_peer_event(&mut self.peer_events) => {
                    self.on_peer_event(key, event);
                    // Drain a burst without going back through select!.
                    for _ in 0..256 {
                        let Some(events) = self.peer_events.as_mut() else { break };
                        match events.rx.try_recv() {
                            Ok((key, event)) => self.on_peer_event(key, event),
                            Err(_) => break,
                        }
                    }
                }
            }
            // Something happened (peers to dial, an announce answered, a command): a quiet
            // torrent may have work sooner than it planned. Only ever earlier, so a stream of
            // events cannot hold the tick off.
            let at = tokio::time::Instant::from_std(self.next_wake(now()));
            if at < wake.deadline() {
                wake.as_mut().reset(at);
            }
            if let Some(to) = self.move_to.take() {
                Box::pin(self.drain()).await;
                return Exit::Move(to);
            }
        }
    }

    fn on_command(&mut self, cmd: TorrentCommand) {
        match cmd {
            TorrentCommand::Incoming(incoming) => {
                let IncomingPeer {
                    stream,
                    addr,
                    handshake,
                    transport,
                    permit,
                    encryption,
                } = *incoming;
                if !self.active()
                    || self.banned.contains(&ban_key(addr))
                    || self
                        .known
                        .get(&addr)
                        .is_some_and(|k| k.connected || k.connecting)
                {
                    return;
                }
                if self.host_connections(addr) >= self.p.limits.max_per_host {
                    tracing::debug!(%addr, "incoming peer refused: per-host cap");
                    return;
                }
                if !self.make_room_for_incoming(now()) {
                    return;
                }
                self.known_seq += 1;
                let added = self.known_seq;
                // Bounded by the peer slots (the entry goes when the connection does), so it
                // may go over the book's size for a while.
                let known = self.known.entry(addr).or_insert_with(|| KnownPeer {
                    incoming_only: true,
                    added,
                    ..Default::default()
                });
                known.connecting = true;
                let ours = Handshake::new(self.metainfo.info_hash, self.p.peer_id);
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    match peer::handshake_incoming(stream, ours, &handshake).await {
                        Ok(stream) => {
                            let conn = Connection {
                                stream,
                                addr,
                                remote: handshake,
                                transport,
                                encryption,
                            };
                            let _ = tx.send(Internal::Connected {
                                conn: Box::new((conn, permit)),
                                outgoing: false,
                            });
                        }
                        Err(e) => {
                            let _ =
                                tx.send(Internal::ConnectFailed(Box::new((addr, e.to_string()))));
                        }
                    }
                });
            }
            TorrentCommand::AddPeers(addrs) => {
                self.add_known(addrs);
                self.dial_new_now();
            }
            // BEP 27: a private torrent takes peers from its trackers only.
            TorrentCommand::LocalPeers(addrs) if !self.metainfo.info.private => {
                self.add_known(addrs);
                self.dial_new_now();
            }
            TorrentCommand::LocalPeers(_) => {}
            TorrentCommand::Pause => {
                self.count_seeding(now());
                self.paused = true;
                self.close_all_peers();
                self.save_record_soon();
                self.publish();
            }
            TorrentCommand::Resume => self.on_resume(),
            TorrentCommand::SetSeedGoals(goals) => {
                self.keeper.record.goals = goals;
                self.save_record_soon();
                self.publish();
            }
            TorrentCommand::SelectionChanged => self.on_selection_changed(),
            TorrentCommand::SaveRecord => self.save_record_soon(),
            TorrentCommand::SetCompletedDir(dir) => {
                super::set_completed_dir(&self.p, &mut self.keeper, dir)
            }
            TorrentCommand::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// The user changed file priorities or the order: tell the picker (dropping pieces no
    /// longer wanted, with their requests), storage (which files to keep hidden) and peers
    /// (interest may change either way).
    fn on_selection_changed(&mut self) {
        let selection = self.p.selection.get();
        let priorities = selection.priorities_for(&self.layout);
        let was_complete = self.picker.is_complete();
        let dropped = self
            .picker
            .set_priorities(&PiecePriorities::from_files(&self.layout, &priorities));
        self.picker.set_sequential(selection.sequential);
        let skip_changed = priorities
            .iter()
            .zip(&self.file_priorities)
            .any(|(a, b)| (*a == FilePriority::Skip) != (*b == FilePriority::Skip));
        self.file_priorities = priorities;
        self.sequential = selection.sequential;
        if remember_selection(&mut self.keeper, &self.file_priorities, self.sequential) {
            self.save_record_soon();
        }
        if !dropped.is_empty() {
            for piece in &dropped {
                self.pieces.remove(piece);
            }
            for peer in self.peers.values_mut() {
                let mut cancels = Vec::new();
                peer.requests.retain(|b, _| {
                    let keep = !dropped.contains(&b.piece);
                    if !keep {
                        cancels.push(Message::Cancel {
                            index: b.piece,
                            begin: b.begin,
                            length: b.length,
                        });
                    }
                    keep
                });
                if !cancels.is_empty() {
                    let _ = peer.tx.try_send(PeerCommand::Send(cancels));
                }
            }
        }
        if skip_changed {
            self.apply_skipped();
        }
        if self.active() {
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for key in keys {
                self.update_interest(key);
            }
            if self.picker.is_complete() && !was_complete {
                self.on_complete();
            }
        }
        self.publish();
    }

    /// Hand the skipped files to storage (off the task: un-skipping may finalize files).
    fn apply_skipped(&self) {
        let skipped: Vec<bool> = self
            .file_priorities
            .iter()
            .map(|&p| p == FilePriority::Skip)
            .collect();
        let storage = self.storage.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = storage.set_skipped_files(skipped).await;
            let _ = tx.send(Internal::SkipApplied(Box::new(result)));
        });
    }

    fn close_all_peers(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.remove_peer(key, "closed by us");
        }
    }

    fn ban(&mut self, addr: SocketAddr) {
        // Kept apart from `known`: forgetting an address entry must not forget the ban.
        let key = ban_key(addr);
        self.banned.insert(key);
        let keys: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| ban_key(p.addr) == key)
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            self.remove_peer(key, "banned");
        }
    }

    /// Forget a peer: its requests go back to the picker, its address may be redialled later.
    /// Dropping its command sender ends the connection's writer, and with it the connection;
    /// its final `Closed` event then finds no peer and is ignored.
    fn remove_peer(&mut self, key: PeerKey, reason: &str) {
        let Some(peer) = self.peers.remove(&key) else {
            return;
        };
        tracing::debug!(addr = %peer.addr, %reason, "peer disconnected");
        let _ = peer.tx.try_send(PeerCommand::Close);
        self.uploaded += peer.shared.uploaded.load(Ordering::Relaxed) - peer.last_uploaded;
        self.picker.release_peer(key);
        self.picker.remove_peer_bitfield(&peer.bitfield);
        if let Some(k) = self.known.get_mut(&peer.addr) {
            k.connected = false;
            if k.incoming_only {
                self.known.remove(&peer.addr);
            } else {
                // A connection that lasted resets the backoff; one that the peer keeps
                // closing right after the handshake backs off like a failed dial.
                if now().duration_since(peer.connected_at) >= GOOD_CONNECTION {
                    k.failures = 0;
                }
                k.failures += 1;
                k.next_try = Some(now() + reconnect_delay(k.failures));
            }
        }
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::PieceDone(done) => {
                let PieceDone {
                    piece,
                    bytes,
                    senders,
                    digests,
                    result,
                } = *done;
                self.verifying -= 1;
                self.verify_backlog -= bytes;
                match result {
                    Ok(true) => {
                        if let Some(good) = digests {
                            for addr in self.smart_ban.on_verified(piece, &good) {
                                tracing::warn!(%addr, piece, "banning peer: its block of a failed piece differs from the verified data");
                                self.ban(addr);
                            }
                        }
                        self.picker.on_piece_verified(piece);
                        self.dirty = true;
                        for peer in self.peers.values() {
                            let _ = peer
                                .tx
                                .try_send(PeerCommand::Send(vec![Message::Have(piece)]));
                        }
                        if self.is_seed() {
                            self.on_complete();
                        }
                    }
                    Ok(false) => {
                        tracing::warn!(piece, senders = ?senders, "piece failed its hash check");
                        self.wasted += bytes;
                        self.picker.on_piece_failed(piece);
                        self.on_piece_failed(piece, senders, digests);
                    }
                    Err(e) => {
                        tracing::error!(piece, error = %e, "storage failed; pausing torrent");
                        self.picker.on_piece_failed(piece);
                        self.error = Some(format!("storage error: {e}"));
                        self.close_all_peers();
                        // Record what was verified before the error.
                        self.start_flush();
                        self.publish();
                    }
                }
                self.refill_all();
            }
            Internal::AnnounceDone {
                tiers,
                event,
                result,
            } => {
                let peers = self.announcer.finish(*tiers, event, *result, now());
                self.add_known(peers);
                self.dial_new_now();
                // `completed` waits for a running announce; send it now, not at the next wake.
                if self.active() && self.is_seed() && !self.sent_completed {
                    self.discover(now());
                }
                self.publish();
            }
            Internal::Connected { conn, outgoing } => {
                let (conn, permit) = *conn;
                self.on_connected(conn, permit, outgoing)
            }
            Internal::Flushed(result) => self.on_flushed(*result),
            Internal::DhtPeers(peers) => {
                self.add_known(peers);
                self.dial_new_now();
            }
            Internal::DhtDone(found) => {
                let seeding = self.is_seed();
                self.dht_schedule.finish(now(), found, seeding);
            }
            Internal::SkipApplied(result) => match *result {
                Ok(()) => {}
                Err(StorageError::NotSupported(what)) => {
                    tracing::warn!(
                        what,
                        "this storage backend cannot keep skipped files hidden; they are not \
                         downloaded, but may appear at their final path"
                    );
                }
                Err(e) => {
                    tracing::error!(error = %e, "storage failed applying skipped files; pausing torrent");
                    self.error = Some(format!("storage error: {e}"));
                    self.close_all_peers();
                    self.publish();
                }
            },
            Internal::ConnectFailed(failed) => {
                let (addr, reason) = *failed;
                tracing::debug!(%addr, %reason, "connection failed");
                if let Some(k) = self.known.get_mut(&addr) {
                    k.connecting = false;
                    k.failures += 1;
                    k.next_try = Some(now() + reconnect_delay(k.failures));
                    if k.incoming_only {
                        self.known.remove(&addr);
                    }
                }
            }
        }
    }

    fn on_connected(&mut self, conn: Connection, permit: PeerSlot, outgoing: bool) {
        let addr = conn.addr;
        // Two peers that dial each other at once (both learnt the other, e.g. through PEX) each
        // see two connections. Both must keep the same one, or each drops the one the other
        // kept and they redial forever: keep the connection dialled by the lower peer id.
        let mut replaces = None;
        let duplicate = match self
            .peers
            .iter()
            .find(|(_, p)| p.peer_id == conn.remote.peer_id)
        {
            None => false,
            Some((key, existing)) => {
                let dialer = |dialled_by_us: bool| {
                    if dialled_by_us {
                        self.p.peer_id.0
                    } else {
                        conn.remote.peer_id.0
                    }
                };
                // The same host only: a peer id alone is easy to claim.
                if existing.addr.ip() == addr.ip()
                    && existing.outgoing != outgoing
                    && dialer(outgoing) < dialer(existing.outgoing)
                {
                    replaces = Some(*key);
                    false
                } else {
                    true
                }
            }
        };
        let refuse = !self.active()
            || duplicate
            || (self.peers.len() >= self.p.max_peers && replaces.is_none())
            || self.banned.contains(&ban_key(addr));
        let known = self.known.entry(addr).or_default();
        known.connecting = false;
        if refuse {
            if known.incoming_only {
                self.known.remove(&addr);
            } else if outgoing {
                // Refused after dialling (full, or a duplicate): back off like a failed dial.
                known.failures += 1;
                known.next_try = Some(now() + reconnect_delay(known.failures));
            }
            return; // dropping the stream closes it
        }
        if let Some(old) = replaces {
            self.remove_peer(old, "duplicate connection (both dialled)");
        }
        let known = self.known.entry(addr).or_default();
        known.connected = true;
        let key = self.next_key;
        self.next_key += 1;
        let (tx, rx) = mpsc::channel(1024);
        let shared = Arc::new(PeerShared::default());
        shared.am_choking.store(true, Ordering::Relaxed);
        let piece_count = self.layout.piece_count() as usize;
        let have = self.picker.have().clone();
        let ctx = PeerContext {
            key,
            layout: self.layout.clone(),
            storage: self.storage.clone(),
            events: self
                .peer_events
                .get_or_insert_with(PeerEvents::new)
                .tx
                .clone(),
            shared: shared.clone(),
            initial_bitfield: Some(have),
            info_hash: self.metainfo.info_hash,
            peer_id: self.p.peer_id,
            download_limit: self.p.download_limit.clone(),
            upload_limit: self.p.upload_limit.clone(),
            extended_handshake: self.our_extended_handshake(),
        };
        // Our handshake always offers BEP 6: the peer's bit decides.
        let fast = conn.remote.supports_fast();
        tracing::info!(%addr, outgoing, transport = %conn.transport, encryption = %conn.encryption, client = %String::from_utf8_lossy(&conn.remote.peer_id.0[..8]), fast, "peer connected");
        self.peers.insert(
            key,
            Peer {
                addr,
                transport: conn.transport.clone(),
                encryption: conn.encryption,
                client: stats::client_name(&conn.remote.peer_id),
                outgoing,
                tx,
                shared,
                peer_id: conn.remote.peer_id,
                bitfield: Bitfield::new(piece_count),
                peer_choking: true,
                choked_at: now(),
                peer_interested: false,
                am_interested: false,
                requests: HashMap::new(),
                am_choking: true,
                connected_at: now(),
                depth: INITIAL_DEPTH,
                request_limit: usize::MAX,
                window_down: 0,
                download_rate: Rate::default(),
                last_uploaded: 0,
                upload_rate: Rate::default(),
                last_block: now(),
                last_active: now(),
                snubbed: false,
                ext: extensions::PeerExtensions::default(),
                fast,
                extension_protocol: conn.remote.supports_extensions(),
                allowed_fast: Vec::new(),
                rejected: HashMap::new(),
                _permit: permit,
            },
        );
        tokio::spawn(peer::run_peer(conn, ctx, rx));
    }

    fn on_peer_event(&mut self, key: PeerKey, event: PeerEvent) {
        if !self.peers.contains_key(&key) {
            return; // already removed
        }
        match event {
            PeerEvent::Closed(reason) => {
                self.remove_peer(key, &reason.to_string());
                self.refill_all();
            }
            PeerEvent::Bitfield(bf) => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                // The first bitfield, or a later one (aria2 sends them instead of haves):
                // pieces only ever add up, like haves, so availability stays consistent.
                for p in bf.iter_ones() {
                    if peer.bitfield.set(p) {
                        self.picker.add_peer_have(p as u32);
                    }
                }
                self.update_interest(key);
            }
            PeerEvent::Have(piece) => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                if peer.bitfield.set(piece as usize) {
                    self.picker.add_peer_have(piece);
                    let needed =
                        self.picker.is_wanted(piece) && !self.picker.have().get(piece as usize);
                    if needed && !peer.am_interested {
                        peer.am_interested = true;
                        let _ = peer
                            .tx
                            .try_send(PeerCommand::Send(vec![Message::Interested]));
                    }
                    self.fill_requests(key);
                }
            }
            PeerEvent::Choke => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.peer_choking = true;
                peer.choked_at = now();
                // BEP 6: a fast peer rejects each request it will not serve (and serves its
                // allowed-fast ones), so its requests stay until answered; one that answers
                // neither loses them at the request timeout or when it counts as snubbed.
                if !peer.fast {
                    // BEP 3: a choke discards every pending request.
                    peer.requests.clear();
                    self.picker.release_peer(key);
                    self.refill_all();
                }
            }
            PeerEvent::Unchoke => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.peer_choking = false;
                peer.rejected.clear();
                peer.last_block = now();
                self.fill_requests(key);
            }
            PeerEvent::Interested => {
                let unchoked = self.peers.values().filter(|p| !p.am_choking).count();
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.peer_interested = true;
                peer.last_active = now();
                // Free upload slot (regular or optimistic): don't make a new peer wait for the
                // next rechoke.
                if peer.am_choking && unchoked < choker::REGULAR_SLOTS + 1 && self.error.is_none() {
                    peer.am_choking = false;
                    let _ = peer.tx.try_send(PeerCommand::SetChoking(false));
                }
            }
            PeerEvent::NotInterested => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.peer_interested = false;
                peer.last_active = now();
            }
            PeerEvent::RequestLimit(n) => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.request_limit = (n as usize).max(1);
            }
            PeerEvent::Block(block, data) => self.on_block(key, block, data),
            PeerEvent::Rejected(block) => self.on_rejected(key, block),
            PeerEvent::AllowedFast(piece) => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                // The connection passes each piece once and at most a bounded number.
                peer.allowed_fast.push(piece);
                if peer.peer_choking {
                    self.fill_requests(key);
                }
            }
            PeerEvent::ReadFailed(block, error) => self.on_read_failed(block, error),
            PeerEvent::Extended { id, payload } => self.on_extended(key, id, payload),
        }
    }

    async fn on_tick(&mut self) {
        let now = now();
        self.download_rate.add_second(self.window_down);
        self.window_down = 0;
        let mut window_up = 0;
        for (key, peer) in self.peers.iter_mut() {
            peer.download_rate.add_second(peer.window_down);
            peer.window_down = 0;
            let up = peer.shared.uploaded.load(Ordering::Relaxed);
            let delta = up - peer.last_uploaded;
            peer.last_uploaded = up;
            peer.upload_rate.add_second(delta);
            if delta > 0 {
                peer.last_active = now;
            }
            window_up += delta;
            let wanted = (peer.download_rate.get() * QUEUE_SECONDS / BLOCK_SIZE as f64) as usize;
            peer.depth = if peer.download_rate.get() < 1.0 {
                INITIAL_DEPTH
            } else {
                wanted.clamp(MIN_DEPTH, MAX_DEPTH)
            };
            if !peer.snubbed
                && !peer.requests.is_empty()
                && now.duration_since(peer.last_block) > SNUB_TIMEOUT
            {
                // Snubbed: hand its requests to others; it keeps one probe request at most.
                tracing::debug!(addr = %peer.addr, "peer snubbed us");
                peer.snubbed = true;
                peer.requests.clear();
                self.picker.release_peer(*key);
            }
            peer.rejected
                .retain(|_, at| now.duration_since(*at) < REJECT_MEMORY);
            // Requests silently dropped by the peer (e.g. over its queue limit) would hold a
            // pipeline slot and a partial piece forever: give them back after a while.
            if !peer.snubbed {
                let picker = &mut self.picker;
                peer.requests.retain(|block, sent| {
                    let live = now.duration_since(*sent) < REQUEST_TIMEOUT;
                    if !live {
                        picker.release(*key, *block);
                    }
                    live
                });
            }
        }
        self.uploaded += window_up;
        self.upload_rate.add_second(window_up);

        if self.active() {
            // Re-evaluate interest (pieces we completed may have made peers boring).
            let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
            for key in keys {
                self.update_interest(key);
            }
            if self
                .last_rechoke
                .is_none_or(|t| now.duration_since(t) >= choker::RECHOKE_INTERVAL)
            {
                self.rechoke(now);
            }
            self.connect_more(now);
            self.discover(now);
            self.send_pex(now);
        }
        if self.dirty && now.duration_since(self.last_flush) >= FLUSH_INTERVAL {
            self.start_flush();
        }
        self.count_seeding(now);
        self.keeper.set_run_totals(self.downloaded, self.uploaded);
        self.keeper.save_if_due(now);
        self.publish();
    }

    fn rechoke(&mut self, now: Instant) {
        self.last_rechoke = Some(now);
        let samples: Vec<PeerSample> = self
            .peers
            .iter()
            .map(|(k, p)| PeerSample {
                key: *k,
                interested: p.peer_interested,
                download_rate: p.download_rate.bytes_per_second(),
                upload_rate: p.upload_rate.bytes_per_second(),
            })
            .collect();
        let seeding = self.is_seed();
        let unchoked = self.choker.rechoke(now, &samples, seeding, &mut self.rng);
        for (k, p) in self.peers.iter_mut() {
            let choke = !unchoked.contains(k);
            if choke != p.am_choking {
                p.am_choking = choke;
                let _ = p.tx.try_send(PeerCommand::SetChoking(choke));
            }
        }
    }

    fn on_complete(&mut self) {
        tracing::info!(name = %self.metainfo.info.name, "download complete");
        self.start_flush();
        self.publish();
        let mut seeds = Vec::new();
        for (key, peer) in self.peers.iter_mut() {
            if peer.am_interested {
                peer.am_interested = false;
                let _ = peer
                    .tx
                    .try_send(PeerCommand::Send(vec![Message::NotInterested]));
            }
            if peer.bitfield.is_full() {
                seeds.push((*key, peer.addr));
            }
        }
        // Two seeds have nothing to say to each other; don't dial them again while seeding.
        for (key, addr) in seeds {
            self.remove_peer(key, "both seeds");
            if let Some(k) = self.known.get_mut(&addr) {
                k.seed = true;
            }
        }
        // Once per torrent (also when un-skipped files complete it again later). An announce
        // in flight (e.g. `started`, when the download was quick) defers it to the next tick.
        if !self.sent_completed {
            if let Some(to) = self.move_target() {
                // Shown complete and announced from the new place, once the files are there
                // (so `--on-complete` gets the path they end up at).
                self.move_to = Some(to);
                return;
            }
            // For the user (`--on-complete`), the moment it completed, whether or not the
            // announce can go now.
            if self.p.status.borrow().completed_at.is_none() {
                let at = std::time::SystemTime::now();
                self.p.publish(|s| s.completed_at = Some(at));
            }
            self.sent_completed = self.announce(Event::Completed);
        }
        self.save_record_soon();
    }

    async fn shutdown(&mut self) {
        self.drain().await;
        if let Some(tiers) = self.announcer.take_for_stop() {
            let req = self.announce_request(Event::Stopped);
            announce::announce_stopped(&self.p.tracker, tiers, req).await;
        }
    }

    /// Close every peer, let work in flight finish (bounded), flush, save the record.
    async fn drain(&mut self) {
        self.close_all_peers();
        // Let pieces being hashed and written, a running flush and a running announce finish,
        // briefly: the whole stop must fit the session's budget.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        while self.verifying > 0 || self.flushing || self.announcer.in_flight() {
            match tokio::time::timeout_at(deadline, self.internal_rx.recv()).await {
                Ok(Some(Internal::Flushed(result))) => self.on_flushed(*result),
                Ok(Some(Internal::AnnounceDone {
                    tiers,
                    event,
                    result,
                })) => self.announcer.restore(*tiers, event, &result),
                Ok(Some(Internal::PieceDone(done))) => {
                    let PieceDone {
                        piece,
                        bytes,
                        result,
                        ..
                    } = *done;
                    // A smart-ban verdict no longer matters: every peer is gone.
                    self.verifying -= 1;
                    self.verify_backlog -= bytes;
                    if let Ok(true) = result {
                        self.picker.on_piece_verified(piece);
                    }
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        if !self.flushing {
            self.flushing = true;
            let result = self.storage.flush().await;
            self.on_flushed(result);
        }
        self.count_seeding(now());
        self.keeper.set_run_totals(self.downloaded, self.uploaded);
        self.keeper.save_now(now()).await;
        self.publish();
    }
}

/// Exponential backoff: 0.5 s, 1 s, 2 s, … capped at two minutes.
fn reconnect_delay(failures: u32) -> Duration {
    (RECONNECT_BACKOFF * 2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_RECONNECT_BACKOFF)
}

/// Keep the user's file choice and order in the torrent's record (restored at the next add);
/// true if it changed.
fn remember_selection(keeper: &mut Keeper, priorities: &[FilePriority], sequential: bool) -> bool {
    let bytes: Vec<u8> = if priorities.iter().all(|p| *p == FilePriority::Normal) {
        // All wanted, the default: nothing to keep.
        Vec::new()
    } else {
        priorities.iter().map(|p| p.to_byte()).collect()
    };
    let changed = keeper.record.file_priorities != bytes || keeper.record.sequential != sequential;
    keeper.record.file_priorities = bytes;
    keeper.record.sequential = sequential;
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_then_caps() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(500));
        assert_eq!(reconnect_delay(2), Duration::from_secs(1));
        assert_eq!(reconnect_delay(4), Duration::from_secs(4));
        assert_eq!(reconnect_delay(40), MAX_RECONNECT_BACKOFF);
    }
}
/// Every torrent holds its task's future and its queues for its whole life, idle or not:
/// their sizes are what 10,000 idle torrents cost (see `bench/scale.py rest`).
#[cfg(test)]
mod footprint {
    fn future_of<A, B, C, D, R>(_: &impl Fn(A, B, C, D) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn what_every_torrent_holds_stays_small() {
        // tokio allocates channel slots 32 at a time, sized by the largest message.
        assert!(std::mem::size_of::<super::super::TorrentCommand>() <= 64);
        assert!(std::mem::size_of::<super::Internal>() <= 32);
        // The task's own future (phases are boxed): was 8 KiB.
        let task = future_of(&super::super::run_torrent);
        // Parameters, record keeper and phase boxed too: was 2.4 KiB.
        assert!(task <= 768, "run_torrent's future is {task} bytes");
    }
}
