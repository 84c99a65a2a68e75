//! One torrent's task and its lifecycle. The task is the single owner of the torrent's state;
//! the session, peer drivers and helper tasks talk to it only through channels, and it
//! publishes a [`TorrentStatus`] snapshot for readers.
//!
//! The lifecycle is an enum of per-state structs ([`Phase`]): a torrent added from a magnet
//! starts in `FetchingMetadata` (no piece count, no storage: only the info-hash), one added
//! from a `.torrent` (or whose metadata was fetched before) in `Checking`; both go on to `Live`
//! (downloading, seeding or paused) or `Failed`. Each phase runs until it hands over to the
//! next one, or until the session shuts the torrent down.
//!
//! Modules: `fetch` (metadata from peers, BEP 9), `check` (storage opened, resume state
//! trusted or data hashed), `live` (peers, requests, pieces, choking), `relocate` (a complete
//! torrent's files moved to its completed folder), `announce` (trackers, one
//! source of peer addresses), `peers` (address book and admission), `smart_ban` (who sent bad
//! data).

mod announce;
mod check;
mod fetch;
mod live;
pub(crate) mod peers;
pub(crate) mod record;
mod relocate;
mod smart_ban;
pub(crate) mod sources;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch, Notify, OwnedSemaphorePermit, Semaphore};

use crate::magnet::Magnet;
use crate::metainfo::Metainfo;
use crate::recheck::HashBudget;
use crate::selection::SharedSelection;
use crate::status::{TorrentState, TorrentStatus};
use crate::storage::StorageBackend;
use crate::tracker::TrackerClient;
use crate::transport::{BoxStream, Transport};
use crate::types::{InfoHash, PeerId};
use crate::wire::Handshake;

/// Commands from the session.
pub enum TorrentCommand {
    /// An incoming connection whose handshake named this torrent (boxed: every torrent's
    /// command queue is sized by its largest command, and this one is rare).
    Incoming(Box<IncomingPeer>),
    /// Add peer addresses to try.
    AddPeers(Vec<SocketAddr>),
    /// Addresses local service discovery heard of (never used by a private torrent).
    LocalPeers(Vec<SocketAddr>),
    /// Stop transferring (keep state).
    Pause,
    /// Resume after [`TorrentCommand::Pause`], or seed again after a goal was reached.
    Resume,
    /// The user's file choice or order changed (read it from [`TorrentParams::selection`]).
    SelectionChanged,
    /// The torrent's own seeding goals.
    SetSeedGoals(crate::queue::SeedGoals),
    /// Write the record soon (the session changed its queue position).
    SaveRecord,
    /// The torrent's own completed folder (`None`: the session's).
    SetCompletedDir(Option<PathBuf>),
    /// Stop: flush, save resume state, announce `stopped`; reply when done.
    Shutdown(oneshot::Sender<()>),
}

/// An incoming connection whose handshake named a torrent.
pub struct IncomingPeer {
    /// Stream positioned after the peer's handshake.
    pub stream: BoxStream,
    /// Remote address.
    pub addr: SocketAddr,
    /// The peer's handshake.
    pub handshake: Handshake,
    /// Transport name.
    pub transport: String,
    /// Session-wide peer slot.
    pub permit: PeerSlot,
    /// How the stream is protected (the MSE exchange, if any, is over).
    pub encryption: crate::peer::Encryption,
}

/// A connection's hold on the session's peer slots, given back when it is dropped.
pub struct PeerSlot {
    _session: OwnedSemaphorePermit,
    /// Incoming connections also hold one of the slots incoming peers may use, so peers that
    /// dial us can never take the slots our own dials need, session-wide.
    _incoming: Option<OwnedSemaphorePermit>,
}

impl PeerSlot {
    /// A slot for a connection we dial.
    pub(crate) fn outgoing(session: OwnedSemaphorePermit) -> Self {
        PeerSlot {
            _session: session,
            _incoming: None,
        }
    }

    /// A slot for a connection that dialled us.
    pub(crate) fn incoming(session: OwnedSemaphorePermit, incoming: OwnedSemaphorePermit) -> Self {
        PeerSlot {
            _session: session,
            _incoming: Some(incoming),
        }
    }
}

/// Everything a torrent task needs from its session.
pub(crate) struct TorrentParams {
    pub info_hash: InfoHash,
    /// Opens connections under the session's encryption policy (shared by every dial site).
    pub dialer: Arc<crate::peer::Dialer>,
    pub backend: Arc<dyn StorageBackend>,
    pub transport: Arc<dyn Transport>,
    pub tracker: TrackerClient,
    pub peer_id: PeerId,
    pub listen_port: u16,
    /// Where its files are (changes when they move to the completed folder).
    pub download_dir: PathBuf,
    /// The session's completed folder, which the user may change (the record may name the
    /// torrent's own).
    pub completed_dir: watch::Receiver<Option<PathBuf>>,
    pub state_dir: PathBuf,
    pub extra_peers: Vec<SocketAddr>,
    pub max_peers: usize,
    pub limits: PeerLimits,
    pub peer_slots: Arc<Semaphore>,
    pub status: watch::Sender<TorrentStatus>,
    /// Told the torrent's info-hash at each change of its status (see [`StatusLog`]).
    pub status_log: Arc<StatusLog>,
    /// Hash existing data even if the resume state is trusted (a user-asked recheck).
    pub force_recheck: bool,
    /// Session-wide limit on payload received.
    pub download_limit: Arc<crate::ratelimit::RateLimiter>,
    /// Session-wide limit on payload sent.
    pub upload_limit: Arc<crate::ratelimit::RateLimiter>,
    /// Session-wide bound on the bytes of pieces being rechecked.
    pub hash_budget: HashBudget,
    /// Peer exchange (BEP 11) with peers that speak it (never for private torrents).
    pub pex: bool,
    /// Set once the torrent is known to be private (BEP 27): a magnet learns it with its
    /// metadata. The session reads it to keep LSD peers away.
    pub private: Arc<std::sync::atomic::AtomicBool>,
    /// Seed for the torrent's random choices (piece order, optimistic unchokes); `None`:
    /// from the OS. Fixed in simulations so a swarm replays the same way.
    pub rng_seed: Option<u64>,
    /// The session's DHT and LSD, if the torrent may use them (not private, BEP 27).
    pub discovery: Option<sources::DiscoverySlot>,
    /// The user's file priorities and order, shared with the handle that changes them.
    pub selection: SharedSelection,
    /// The queue's gate: closed, the torrent waits `Queued` (see `crate::queue`).
    pub may_run: watch::Receiver<bool>,
    /// Told whenever the published state changes kind, so the session's queue reconsiders.
    pub state_changed: Arc<Notify>,
    /// The session's default seeding goals (ratio, time); the user may change them.
    pub seed_defaults: watch::Receiver<(Option<f64>, Option<Duration>)>,
}

impl TorrentParams {
    /// Change the published status; tell the queue when the state changed kind.
    pub(crate) fn publish(&self, f: impl FnOnce(&mut TorrentStatus)) {
        let mut changed = false;
        self.status.send_modify(|s| {
            let before = std::mem::discriminant(&s.state);
            f(s);
            changed = before != std::mem::discriminant(&s.state);
        });
        self.status_log.note(self.info_hash);
        if changed {
            self.state_changed.notify_one();
        }
    }
}

/// Which torrents published a new status, in order, so a reader (the headless status lines,
/// the menu) visits those instead of all of them: at rest, 10,000 torrents checked every two
/// seconds cost most of the session's CPU. Torrents added and removed are noted too. Keeps
/// the latest [`STATUS_LOG_MAX`] notes; a reader further behind visits everything.
#[derive(Default)]
pub(crate) struct StatusLog {
    inner: std::sync::Mutex<StatusLogInner>,
}

#[derive(Default)]
struct StatusLogInner {
    /// The number of the next note.
    next: u64,
    /// The latest notes, the last numbered `next - 1`.
    recent: std::collections::VecDeque<InfoHash>,
}

/// Notes kept (a reader of 10,000 torrents every two seconds is never this far behind at rest;
/// busy torrents publish about once a second each). 64 K notes of 20 bytes: 1.3 MB at most.
const STATUS_LOG_MAX: usize = 65_536;

impl StatusLog {
    pub(crate) fn note(&self, info_hash: InfoHash) {
        let mut log = self.inner.lock().expect("lock poisoned only by a panic");
        log.recent.push_back(info_hash);
        log.next += 1;
        if log.recent.len() > STATUS_LOG_MAX {
            log.recent.pop_front();
        }
    }

    /// The torrents noted from note number `since` on (`None`: from the start), each once,
    /// and the number to ask from next time. `None` for the torrents: the reader is too far
    /// behind (or new); it must look at every torrent.
    pub(crate) fn since(&self, since: Option<u64>) -> (Option<Vec<InfoHash>>, u64) {
        let log = self.inner.lock().expect("lock poisoned only by a panic");
        let oldest = log.next - log.recent.len() as u64;
        let Some(since) = since.filter(|&s| s >= oldest && s <= log.next) else {
            return (None, log.next);
        };
        let mut seen = std::collections::HashSet::new();
        let changed = log
            .recent
            .iter()
            .skip((since - oldest) as usize)
            .filter(|h| seen.insert(**h))
            .copied()
            .collect();
        (Some(changed), log.next)
    }
}

/// Per-host limits from the session configuration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerLimits {
    /// Connections (and handshakes in progress) per host.
    pub max_per_host: usize,
    /// Loopback peers count by address like other hosts (see `SessionConfig`).
    pub loopback_as_host: bool,
}

impl PeerLimits {
    pub(crate) fn from_config(c: &crate::session::SessionConfig) -> Self {
        PeerLimits {
            max_per_host: c.max_peers_per_host.max(1),
            loopback_as_host: c.loopback_as_host,
        }
    }
}

/// What a torrent is added from.
#[derive(Clone)]
pub(crate) enum Source {
    /// A parsed `.torrent` (or metadata fetched earlier).
    Metainfo(Arc<Metainfo>),
    /// A magnet link: only the info-hash is certain until peers send the metadata.
    Magnet(Magnet),
}

impl Source {
    /// BEP 27 `private` (a magnet's is unknown until its metadata arrives).
    pub(crate) fn is_private(&self) -> bool {
        matches!(self, Source::Metainfo(m) if m.info.private)
    }

    pub(crate) fn info_hash(&self) -> InfoHash {
        match self {
            Source::Metainfo(m) => m.info_hash,
            Source::Magnet(m) => m.info_hash,
        }
    }
}

/// Where a torrent is in its life; each state owns what exists in it and nothing more.
enum Phase {
    /// A magnet without its metadata: peers are found and asked for the `info` dictionary.
    FetchingMetadata(fetch::FetchingMetadata),
    /// Metadata known: storage is opened and existing data checked.
    Checking(check::Checking),
    /// Transferring (downloading, seeding, or paused by the user), from what checking found.
    Live(check::Checked),
    /// Could not start (storage refused, metadata unusable); verified data is kept.
    Failed(String),
}

/// Run one torrent until shut down; `keeper` holds its record.
pub(crate) async fn run_torrent(
    mut params: Box<TorrentParams>,
    source: Source,
    mut commands: mpsc::Receiver<TorrentCommand>,
    mut keeper: Box<record::Keeper>,
) {
    // A new torrent's record is written at once, so its date and place survive a crash.
    keeper.save_soon(now());
    let mut phase = Box::new(match source {
        Source::Metainfo(metainfo) => Phase::Checking(check::Checking::new(metainfo)),
        Source::Magnet(magnet) => Phase::FetchingMetadata(fetch::FetchingMetadata::new(magnet)),
    });
    // Each phase's future (and the live torrent) is boxed, and so are the parameters, the
    // record keeper and the phase: the task's own future is sized by everything it holds
    // across an await, and every torrent has one for its whole life (10,000 idle torrents
    // paid 8 KiB each for states they were not in, then 2.4 KiB for slots the live torrent
    // had moved out of).
    loop {
        let next = match unbox(phase) {
            Phase::FetchingMetadata(fetch) => {
                Box::pin(fetch.run(&params, &mut commands, &mut keeper)).await
            }
            Phase::Checking(check) => Box::pin(check.run(&params, &mut commands)).await,
            Phase::Live(c) => {
                let metainfo = c.metainfo.clone();
                // Unboxed (not moved out of their boxes): the boxes are freed while it runs.
                let mut torrent = Box::new(live::Torrent::new(
                    unbox(params),
                    c.metainfo,
                    c.layout,
                    c.storage,
                    c.have,
                    unbox(keeper),
                    c.completing,
                ));
                torrent.add_known(c.peers);
                match Box::pin(torrent.run(&mut commands, c.held)).await {
                    live::Exit::Shutdown => return,
                    live::Exit::Move(to) => {
                        let stopped = torrent.into_stopped();
                        params = Box::new(stopped.p);
                        keeper = Box::new(stopped.keeper);
                        Box::pin(relocate::move_complete(
                            &mut params,
                            &mut keeper,
                            metainfo,
                            stopped.storage,
                            stopped.peers,
                            to,
                        ))
                        .await
                    }
                }
            }
            Phase::Failed(message) => {
                params.publish(|s| s.state = TorrentState::Error(message));
                Box::pin(wait_for_shutdown(&params, &mut commands, &mut keeper)).await;
                return;
            }
        };
        match next {
            Some(next) => phase = Box::new(next),
            None => return, // shut down
        }
    }
}

/// The value, its box freed now (moving out of `*b` keeps the allocation until `b` goes).
#[allow(clippy::boxed_local)] // taking the box is the point
fn unbox<T>(b: Box<T>) -> T {
    *b
}

/// Metadata fetched for a magnet earlier and kept in the state folder: its path, and the
/// metadata if it is there and sound.
pub(crate) async fn saved_metadata(
    state_dir: &std::path::Path,
    info_hash: InfoHash,
) -> (PathBuf, Option<Metainfo>) {
    let path = fetch::saved_path(state_dir, &info_hash);
    let metainfo = fetch::load_saved(path.clone(), info_hash)
        .await
        .ok()
        .flatten();
    (path, metainfo)
}

/// Now, from tokio's clock (which the simulator pauses and advances), as a std `Instant`: every
/// decision of a torrent takes its time from here, so simulated swarms run on simulated time.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// A failed torrent: nothing runs, but its record still takes new goals and queue places.
async fn wait_for_shutdown(
    params: &TorrentParams,
    commands: &mut mpsc::Receiver<TorrentCommand>,
    keeper: &mut record::Keeper,
) {
    while let Some(cmd) = commands.recv().await {
        match cmd {
            TorrentCommand::Shutdown(done) => {
                keeper.save_now(now()).await;
                let _ = done.send(());
                return;
            }
            TorrentCommand::SetSeedGoals(goals) => {
                keeper.record.goals = goals;
                keeper.save_soon(now());
                params.publish(|s| s.seed_goals = goals);
            }
            TorrentCommand::SaveRecord => {
                keeper.save_soon(now());
                let position = keeper.queue_position();
                params.publish(|s| s.queue_position = position);
            }
            TorrentCommand::SetCompletedDir(dir) => set_completed_dir(params, keeper, dir),
            _ => {}
        }
    }
}

/// Keep the torrent's own completed folder in its record and show it.
pub(crate) fn set_completed_dir(
    params: &TorrentParams,
    keeper: &mut record::Keeper,
    dir: Option<PathBuf>,
) {
    // Absolute: a relative one would change with the working folder (and records keep only
    // absolute folders).
    let dir = dir.map(|d| std::path::absolute(&d).unwrap_or(d));
    keeper.record.completed_dir = dir.clone();
    keeper.save_soon(now());
    params.publish(|s| s.completed_dir = dir);
}

/// A status for a torrent that has just been added.
pub(crate) fn initial_status(source: &Source) -> TorrentStatus {
    match source {
        Source::Metainfo(m) => TorrentStatus::new(
            m.info.name.clone(),
            m.info_hash,
            m.info.layout.total_length,
            m.info.layout.piece_count(),
        ),
        Source::Magnet(m) => {
            let mut s = TorrentStatus::new(m.display_name(), m.info_hash, 0, 0);
            s.state = TorrentState::FetchingMetadata;
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_log_names_each_changed_torrent_once_and_sends_laggards_to_a_full_look() {
        let log = StatusLog::default();
        let (a, b) = (InfoHash([1; 20]), InfoHash([2; 20]));
        // A first look is always a full one.
        let (all, next) = log.since(None);
        assert!(all.is_none());
        assert_eq!(log.since(Some(next)), (Some(Vec::new()), next));
        log.note(a);
        log.note(b);
        log.note(a);
        let (changed, next) = log.since(Some(next));
        assert_eq!(changed, Some(vec![a, b]));
        assert_eq!(log.since(Some(next)).0, Some(Vec::new()));
        // A reader further behind than the log keeps must look at everything.
        for _ in 0..=STATUS_LOG_MAX {
            log.note(b);
        }
        assert!(log.since(Some(next)).0.is_none());
        // So must one whose number is from elsewhere (the future).
        assert!(log.since(Some(u64::MAX)).0.is_none());
    }
}
