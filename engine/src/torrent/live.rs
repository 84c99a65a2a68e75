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
use tokio::sync::{mpsc, Semaphore};

mod extensions;

use super::announce::{self, AnnounceResult, Announcer};
use super::peers::{self, ban_key, host_key, BookEntry, EvictCandidate, HostKey, MAX_KNOWN_PEERS};
use super::smart_ban::{block_digest, BlockDigest, SmartBan};
use super::sources::{self, DhtSchedule};
use super::{PeerSlot, TorrentCommand, TorrentParams};
use crate::choker::{self, Choker, PeerSample};
use crate::hash;
use crate::metainfo::Metainfo;
use crate::peer::{self, Connection, PeerCommand, PeerContext, PeerEvent, PeerKey, PeerShared};
use crate::picker::{BlockOutcome, PiecePicker};
use crate::status::{FileStatus, PeerStatus, TorrentState};
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
enum Internal {
    PieceDone {
        piece: PieceIndex,
        bytes: u64,
        /// Who sent each block, in block order (empty if the piece was incomplete).
        senders: Vec<SocketAddr>,
        /// Digest of each block: for failed pieces, and for pieces smart ban was waiting on.
        digests: Option<Vec<BlockDigest>>,
        result: Result<bool, StorageError>,
    },
    AnnounceDone {
        tiers: TrackerTiers,
        event: Event,
        result: AnnounceResult,
    },
    Connected {
        conn: Connection,
        permit: PeerSlot,
        outgoing: bool,
    },
    Flushed(Result<(), StorageError>),
    /// Addresses a DHT search found (more may follow).
    DhtPeers(Vec<SocketAddr>),
    /// A DHT search ended, having found this many addresses.
    DhtDone(usize),
    ConnectFailed {
        addr: SocketAddr,
        reason: String,
    },
}

struct Peer {
    addr: SocketAddr,
    transport: String,
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
    download_rate: f64,
    last_uploaded: u64,
    upload_rate: f64,
    last_block: Instant,
    /// Last payload either way, or interest change: eviction takes the longest idle.
    last_active: Instant,
    snubbed: bool,
    /// BEP 10 extensions it speaks, and their per-peer state.
    ext: extensions::PeerExtensions,
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
    events_tx: mpsc::Sender<(PeerKey, PeerEvent)>,
    events_rx: mpsc::Receiver<(PeerKey, PeerEvent)>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: mpsc::UnboundedReceiver<Internal>,
    announcer: Announcer,
    dht_schedule: DhtSchedule,
    sent_completed: bool,
    paused: bool,
    error: Option<String>,
    dirty: bool,
    flushing: bool,
    last_flush: Instant,
    last_rechoke: Option<Instant>,
    window_down: u64,
    uploaded: u64,
    download_rate: f64,
    upload_rate: f64,
    downloaded: u64,
    wasted: u64,
}

impl Torrent {
    pub(super) fn new(
        p: TorrentParams,
        metainfo: Arc<Metainfo>,
        layout: Arc<Layout>,
        storage: Arc<dyn Storage>,
        have: Bitfield,
    ) -> Self {
        let mut p = p;
        if metainfo.info.private {
            // BEP 27: a magnet's metadata may turn out private; from now on trackers only.
            p.discovery = None;
        }
        let picker = PiecePicker::new(&layout, &have);
        // Bounded tightly: mostly blocks (16 KiB each), so this caps what readers can queue ahead
        // of a busy torrent task (8 MiB); a full channel pauses the readers, not the task.
        let (events_tx, events_rx) = mpsc::channel(PEER_EVENT_QUEUE);
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let announcer = Announcer::new(
            metainfo.announce_tiers.clone(),
            Instant::now(),
            rand::random(),
        );
        let mut known = HashMap::new();
        for addr in &p.extra_peers {
            known.insert(*addr, KnownPeer::default());
        }
        let lost = Bitfield::new(layout.piece_count() as usize);
        let sent_completed = have.is_full();
        Torrent {
            layout,
            storage,
            picker,
            choker: Choker::new(),
            rng: StdRng::from_entropy(),
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
            events_tx,
            events_rx,
            internal_tx,
            internal_rx,
            announcer,
            dht_schedule: DhtSchedule::new(Instant::now()),
            sent_completed,
            paused: false,
            error: None,
            dirty: false,
            flushing: false,
            last_flush: Instant::now(),
            last_rechoke: None,
            window_down: 0,
            uploaded: 0,
            download_rate: 0.0,
            upload_rate: 0.0,
            downloaded: 0,
            wasted: 0,
            metainfo,
            p,
        }
    }

    fn is_seed(&self) -> bool {
        self.picker.have().is_full()
    }

    fn active(&self) -> bool {
        !self.paused && self.error.is_none()
    }

    pub(super) async fn run(&mut self, mut commands: mpsc::Receiver<TorrentCommand>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.publish();
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(TorrentCommand::Shutdown(reply)) => {
                        self.shutdown().await;
                        let _ = reply.send(());
                        return;
                    }
                    None => { self.shutdown().await; return; }
                    Some(cmd) => self.on_command(cmd),
                },
                // Before peer events: under a steady stream of blocks the once-a-second work
                // (rates, status, rechoke, timeouts, flush) must still run.
                _ = tick.tick() => self.on_tick().await,
                Some(internal) = self.internal_rx.recv() => self.on_internal(internal).await,
                Some((key, event)) = self.events_rx.recv() => {
                    self.on_peer_event(key, event);
                    // Drain a burst without going back through select!.
                    for _ in 0..256 {
                        match self.events_rx.try_recv() {
                            Ok((key, event)) => self.on_peer_event(key, event),
                            Err(_) => break,
                        }
                    }
                }
            }
        }
    }

    fn on_command(&mut self, cmd: TorrentCommand) {
        match cmd {
            TorrentCommand::Incoming {
                stream,
                addr,
                handshake,
                transport,
                permit,
            } => {
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
                if !self.make_room_for_incoming(Instant::now()) {
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
                            };
                            let _ = tx.send(Internal::Connected {
                                conn,
                                permit,
                                outgoing: false,
                            });
                        }
                        Err(e) => {
                            let _ = tx.send(Internal::ConnectFailed {
                                addr,
                                reason: e.to_string(),
                            });
                        }
                    }
                });
            }
            TorrentCommand::AddPeers(addrs) => {
                self.add_known(addrs);
                self.dial_new_now();
            }
            TorrentCommand::Pause => {
                self.paused = true;
                self.close_all_peers();
                self.publish();
            }
            TorrentCommand::Resume => {
                self.paused = false;
                self.publish();
            }
            TorrentCommand::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    pub(super) fn add_known(&mut self, addrs: Vec<SocketAddr>) {
        let own = self.p.listen_port;
        // More than the book holds would only evict each other.
        for addr in addrs.into_iter().take(MAX_KNOWN_PEERS) {
            if addr.port() == 0
                || (addr.ip().is_loopback() && addr.port() == own)
                    && !self.p.extra_peers.contains(&addr)
            {
                continue;
            }
            // A tracker handing back an address we only knew from an incoming connection makes
            // it dialable.
            if let Some(k) = self.known.get_mut(&addr) {
                k.incoming_only = false;
                continue;
            }
            if self.known.len() >= MAX_KNOWN_PEERS {
                let extra = &self.p.extra_peers;
                let victim = peers::choose_book_victim(self.known.iter().map(|(a, k)| BookEntry {
                    addr: *a,
                    failures: k.failures,
                    added: k.added,
                    pinned: k.connected || k.connecting || extra.contains(a),
                }));
                match victim {
                    Some(v) => {
                        self.known.remove(&v);
                    }
                    None => continue,
                }
            }
            self.known_seq += 1;
            self.known.insert(
                addr,
                KnownPeer {
                    added: self.known_seq,
                    ..Default::default()
                },
            );
        }
    }

    /// Dial addresses the moment a peer source hands them over: waiting for the next tick
    /// cost up to a second before the first byte of every download.
    fn dial_new_now(&mut self) {
        if self.active() {
            self.connect_more(Instant::now());
        }
    }

    /// Connections to `addr`'s host, counting handshakes in progress.
    fn host_connections(&self, addr: SocketAddr) -> usize {
        let loopback = self.p.limits.loopback_as_host;
        let host = host_key(addr, loopback);
        self.peers
            .values()
            .filter(|p| host_key(p.addr, loopback) == host)
            .count()
            + self
                .known
                .iter()
                .filter(|(a, k)| k.connecting && host_key(**a, loopback) == host)
                .count()
    }

    /// Whether an incoming peer may take a slot, evicting an idle peer if that makes one.
    /// Incoming peers never take the slots kept for our dials.
    fn make_room_for_incoming(&mut self, now: Instant) -> bool {
        let incoming = self.peers.values().filter(|p| !p.outgoing).count();
        let incoming_full = incoming >= peers::max_incoming(self.p.max_peers);
        if self.peers.len() < self.p.max_peers && !incoming_full {
            return true;
        }
        let candidates: Vec<EvictCandidate> = self
            .peers
            .iter()
            .map(|(k, p)| EvictCandidate {
                key: *k,
                interesting: p.am_interested,
                interested: p.peer_interested,
                incoming: !p.outgoing,
                age: now.saturating_duration_since(p.connected_at),
                idle: now.saturating_duration_since(p.last_active),
            })
            .collect();
        match peers::choose_eviction(&candidates, incoming_full) {
            Some(key) => {
                self.remove_peer(key, "evicted (idle) for a new peer");
                true
            }
            None => false,
        }
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
                if peer.connected_at.elapsed() >= GOOD_CONNECTION {
                    k.failures = 0;
                }
                k.failures += 1;
                k.next_try = Some(Instant::now() + reconnect_delay(k.failures));
            }
        }
    }

    async fn on_internal(&mut self, msg: Internal) {
        match msg {
            Internal::PieceDone {
                piece,
                bytes,
                senders,
                digests,
                result,
            } => {
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
                            self.on_complete().await;
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
                let peers = self.announcer.finish(tiers, event, result, Instant::now());
                self.add_known(peers);
                self.dial_new_now();
            }
            Internal::Connected {
                conn,
                permit,
                outgoing,
            } => self.on_connected(conn, permit, outgoing),
            Internal::Flushed(result) => self.on_flushed(result),
            Internal::DhtPeers(peers) => {
                self.add_known(peers);
                self.dial_new_now();
            }
            Internal::DhtDone(found) => {
                let seeding = self.is_seed();
                self.dht_schedule.finish(Instant::now(), found, seeding);
            }
            Internal::ConnectFailed { addr, reason } => {
                tracing::debug!(%addr, %reason, "connection failed");
                if let Some(k) = self.known.get_mut(&addr) {
                    k.connecting = false;
                    k.failures += 1;
                    k.next_try = Some(Instant::now() + reconnect_delay(k.failures));
                    if k.incoming_only {
                        self.known.remove(&addr);
                    }
                }
            }
        }
    }

    /// Smart ban: a piece from one host alone is that host's fault; a shared one is recorded
    /// until the piece verifies and shows whose blocks were wrong.
    fn on_piece_failed(
        &mut self,
        piece: PieceIndex,
        senders: Vec<SocketAddr>,
        digests: Option<Vec<BlockDigest>>,
    ) {
        let hosts: HashSet<HostKey> = senders.iter().map(|a| ban_key(*a)).collect();
        if hosts.len() == 1 {
            let addr = senders[0];
            tracing::warn!(%addr, piece, "banning peer: sole source of a piece that failed its hash");
            self.ban(addr);
            return;
        }
        if let Some(digests) = digests {
            let blocks: Vec<(SocketAddr, BlockDigest)> = senders.into_iter().zip(digests).collect();
            self.smart_ban.record_failure(piece, &blocks);
        }
    }

    /// Storage could not read data we advertised: the file was deleted, truncated or became
    /// unreadable while we served it. Stop serving and stop claiming those pieces; the user
    /// restores the data and rechecks.
    fn on_read_failed(&mut self, block: BlockRef, error: StorageError) {
        if self.error.is_some() {
            return;
        }
        let start = self.layout.piece_range(block.piece).start + block.begin as u64;
        let end = start + block.length as u64;
        let files: Vec<usize> = self
            .layout
            .files_for_piece(block.piece)
            .into_iter()
            .filter(|&f| {
                let file = &self.layout.files[f];
                file.offset < end && start < file.offset + file.length
            })
            .collect();
        for &f in &files {
            for p in self.layout.pieces_for_file(f) {
                self.lost.set(p as usize);
            }
        }
        let names: Vec<String> = files
            .iter()
            .map(|&f| self.layout.files[f].path.display().to_string())
            .collect();
        let what = match &error {
            StorageError::Missing => "missing or truncated".to_string(),
            e => e.to_string(),
        };
        let msg = format!(
            "data lost while seeding: {} {what}; restore it and recheck",
            names.join(", ")
        );
        tracing::error!(piece = block.piece, error = %error, "{msg}");
        self.error = Some(msg);
        self.close_all_peers();
        self.publish();
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
                if existing.outgoing != outgoing && dialer(outgoing) < dialer(existing.outgoing) {
                    replaces = Some(*key);
                    false
                } else {
                    true
                }
            }
        };
        let refuse = !self.active()
            || duplicate
            || self.peers.len() >= self.p.max_peers
            || self.banned.contains(&ban_key(addr));
        let known = self.known.entry(addr).or_default();
        known.connecting = false;
        if refuse {
            if known.incoming_only {
                self.known.remove(&addr);
            } else if outgoing {
                // Refused after dialling (full, or a duplicate): back off like a failed dial.
                known.failures += 1;
                known.next_try = Some(Instant::now() + reconnect_delay(known.failures));
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
            events: self.events_tx.clone(),
            shared: shared.clone(),
            initial_bitfield: Some(have),
            info_hash: self.metainfo.info_hash,
            peer_id: self.p.peer_id,
            download_limit: self.p.download_limit.clone(),
            upload_limit: self.p.upload_limit.clone(),
            extended_handshake: self.our_extended_handshake(),
        };
        tracing::info!(%addr, outgoing, transport = %conn.transport, client = %String::from_utf8_lossy(&conn.remote.peer_id.0[..8]), "peer connected");
        self.peers.insert(
            key,
            Peer {
                addr,
                transport: conn.transport.clone(),
                client: client_name(&conn.remote.peer_id),
                outgoing,
                tx,
                shared,
                peer_id: conn.remote.peer_id,
                bitfield: Bitfield::new(piece_count),
                peer_choking: true,
                peer_interested: false,
                am_interested: false,
                requests: HashMap::new(),
                am_choking: true,
                connected_at: Instant::now(),
                depth: INITIAL_DEPTH,
                request_limit: usize::MAX,
                window_down: 0,
                download_rate: 0.0,
                last_uploaded: 0,
                upload_rate: 0.0,
                last_block: Instant::now(),
                last_active: Instant::now(),
                snubbed: false,
                ext: extensions::PeerExtensions::default(),
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
                    if !self.picker.have().get(piece as usize) && !peer.am_interested {
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
                // BEP 3: a choke discards every pending request.
                peer.requests.clear();
                self.picker.release_peer(key);
                self.refill_all();
            }
            PeerEvent::Unchoke => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.peer_choking = false;
                peer.last_block = Instant::now();
                self.fill_requests(key);
            }
            PeerEvent::Interested => {
                let unchoked = self.peers.values().filter(|p| !p.am_choking).count();
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.peer_interested = true;
                peer.last_active = Instant::now();
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
                peer.last_active = Instant::now();
            }
            PeerEvent::RequestLimit(n) => {
                let peer = self.peers.get_mut(&key).expect("checked above");
                peer.request_limit = (n as usize).max(1);
            }
            PeerEvent::Block(block, data) => self.on_block(key, block, data),
            PeerEvent::ReadFailed(block, error) => self.on_read_failed(block, error),
            PeerEvent::Extended { id, payload } => self.on_extended(key, id, payload),
        }
    }

    fn update_interest(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        let interesting = self.picker.is_interesting(&peer.bitfield);
        if interesting != peer.am_interested {
            peer.am_interested = interesting;
            let msg = if interesting {
                Message::Interested
            } else {
                Message::NotInterested
            };
            let _ = peer.tx.try_send(PeerCommand::Send(vec![msg]));
        }
        if interesting {
            self.fill_requests(key);
        }
    }

    fn on_block(&mut self, key: PeerKey, block: BlockRef, data: Bytes) {
        let peer = self.peers.get_mut(&key).expect("caller checked");
        let addr = peer.addr;
        // Only blocks we asked this peer for count: a peer must not be able to slip data into
        // pieces others are filling (that would get honest peers blamed for bad hashes).
        let outcome = if peer.requests.remove(&block).is_some() {
            self.picker.on_block(key, block)
        } else {
            BlockOutcome::Unexpected
        };
        match outcome {
            BlockOutcome::Unexpected => {
                self.wasted += data.len() as u64;
            }
            BlockOutcome::Accepted {
                cancel,
                piece_complete,
            } => {
                peer.last_block = Instant::now();
                peer.last_active = peer.last_block;
                peer.snubbed = false;
                peer.window_down += data.len() as u64;
                self.window_down += data.len() as u64;
                self.downloaded += data.len() as u64;
                for other in cancel {
                    if let Some(p) = self.peers.get_mut(&other) {
                        if p.requests.remove(&block).is_some() {
                            let _ = p.tx.try_send(PeerCommand::Send(vec![Message::Cancel {
                                index: block.piece,
                                begin: block.begin,
                                length: block.length,
                            }]));
                        }
                    }
                }
                let piece_len = self.layout.piece_len(block.piece);
                let buf = self.pieces.entry(block.piece).or_insert_with(|| PieceBuf {
                    blocks: vec![None; piece_len.div_ceil(BLOCK_SIZE) as usize],
                });
                let slot = (block.begin / BLOCK_SIZE) as usize;
                if let Some(s) = buf.blocks.get_mut(slot) {
                    *s = Some((data, addr));
                }
                if piece_complete {
                    if let Some(buf) = self.pieces.remove(&block.piece) {
                        self.verify(block.piece, buf);
                    }
                }
            }
        }
        self.fill_requests(key);
    }

    /// Hash the piece off the runtime, write it, mark it complete; report back.
    fn verify(&mut self, piece: PieceIndex, buf: PieceBuf) {
        let bytes = self.layout.piece_len(piece) as u64;
        self.verifying += 1;
        self.verify_backlog += bytes;
        let storage = self.storage.clone();
        let expected = self.metainfo.info.pieces[piece as usize];
        let slots = self.verify_slots.clone();
        let tx = self.internal_tx.clone();
        // Smart ban waits for this piece's good version: digest its blocks too.
        let digest_if_good = self.smart_ban.is_tracked(piece);
        tokio::spawn(async move {
            let blocks: Option<Vec<(Bytes, SocketAddr)>> = buf.blocks.into_iter().collect();
            let (blocks, senders): (Vec<Bytes>, Vec<SocketAddr>) =
                blocks.map(|b| b.into_iter().unzip()).unwrap_or_default();
            let mut digests = None;
            let result = async {
                // Blocks missing here would be a picker bug; treat the piece as bad, not fatal.
                if blocks.is_empty() {
                    return Ok(false);
                }
                // The permit bounds hashing (CPU) only; writes and fsyncs overlap freely, bounded
                // by the verify backlog cap.
                let permit = slots.acquire_owned().await;
                let (ok, blocks, block_digests) = tokio::task::spawn_blocking(move || {
                    let ok = hash::sha1_chunks(&blocks) == expected;
                    let d = (!ok || digest_if_good)
                        .then(|| blocks.iter().map(|b| block_digest(b)).collect::<Vec<_>>());
                    (ok, blocks, d)
                })
                .await
                .map_err(|e| StorageError::Io {
                    path: PathBuf::new(),
                    source: std::io::Error::other(e),
                })?;
                drop(permit);
                digests = block_digests;
                if !ok {
                    return Ok(false);
                }
                storage.write(piece, 0, blocks).await?;
                storage.mark_complete(piece).await?;
                Ok(true)
            }
            .await;
            let _ = tx.send(Internal::PieceDone {
                piece,
                bytes,
                senders,
                digests,
                result,
            });
        });
    }

    fn refill_all(&mut self) {
        let keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        for key in keys {
            self.fill_requests(key);
        }
    }

    fn fill_requests(&mut self, key: PeerKey) {
        if !self.active() || self.is_seed() || self.verify_backlog > VERIFY_BACKLOG_CAP {
            return;
        }
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        if peer.peer_choking || !peer.am_interested {
            return;
        }
        let depth = if peer.snubbed {
            1
        } else {
            peer.depth.min(peer.request_limit)
        };
        let free = depth.saturating_sub(peer.requests.len());
        if free == 0 || (free < REFILL_BATCH.min(depth) && !peer.requests.is_empty()) {
            return;
        }
        let now = Instant::now();
        let mut picked = Vec::with_capacity(free);
        self.picker.pick(key, &peer.bitfield, free, &mut picked);
        if picked.is_empty() {
            return;
        }
        let msgs = picked
            .iter()
            .map(|b| {
                peer.requests.insert(*b, now);
                Message::Request {
                    index: b.piece,
                    begin: b.begin,
                    length: b.length,
                }
            })
            .collect();
        if peer.tx.try_send(PeerCommand::Send(msgs)).is_err() {
            // Writer backed up or gone: give the blocks back.
            for b in picked {
                peer.requests.remove(&b);
                self.picker.release(key, b);
            }
        }
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        // Rates: exponential average over roughly the last few seconds.
        const ALPHA: f64 = 0.5;
        self.download_rate = self.download_rate * (1.0 - ALPHA) + self.window_down as f64 * ALPHA;
        self.window_down = 0;
        let mut window_up = 0;
        for (key, peer) in self.peers.iter_mut() {
            peer.download_rate =
                peer.download_rate * (1.0 - ALPHA) + peer.window_down as f64 * ALPHA;
            peer.window_down = 0;
            let up = peer.shared.uploaded.load(Ordering::Relaxed);
            let delta = up - peer.last_uploaded;
            peer.last_uploaded = up;
            peer.upload_rate = peer.upload_rate * (1.0 - ALPHA) + delta as f64 * ALPHA;
            if delta > 0 {
                peer.last_active = now;
            }
            window_up += delta;
            let wanted = (peer.download_rate * QUEUE_SECONDS / BLOCK_SIZE as f64) as usize;
            peer.depth = if peer.download_rate < 1.0 {
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
        self.upload_rate = self.upload_rate * (1.0 - ALPHA) + window_up as f64 * ALPHA;

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
            let starving = self.starving(now);
            if self.announcer.due(now) || starving {
                self.announce(self.announcer.regular_event());
            }
            self.search_dht(now, starving);
            self.send_pex(now);
            sources::announce_lsd(&self.p.discovery, self.metainfo.info_hash);
        }
        if self.dirty && now.duration_since(self.last_flush) >= FLUSH_INTERVAL {
            self.start_flush();
        }
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
                download_rate: p.download_rate as u64,
                upload_rate: p.upload_rate as u64,
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

    fn connect_more(&mut self, now: Instant) {
        let mut budget = self.p.max_peers.saturating_sub(
            self.peers.len() + self.known.values().filter(|k| k.connecting).count(),
        );
        if budget == 0 {
            return;
        }
        let seed = self.is_seed();
        let loopback = self.p.limits.loopback_as_host;
        let mut per_host: HashMap<HostKey, usize> = HashMap::new();
        for a in self.peers.values().map(|p| p.addr).chain(
            self.known
                .iter()
                .filter(|(_, k)| k.connecting)
                .map(|(a, _)| *a),
        ) {
            *per_host.entry(host_key(a, loopback)).or_default() += 1;
        }
        // Peers that dialled us and told us their listening port (BEP 10 `p`): that address
        // is already connected, however we learnt it (PEX, a tracker).
        let listening: HashSet<SocketAddr> = self
            .peers
            .values()
            .filter_map(|p| p.listen_addr())
            .collect();
        let candidates: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|(a, k)| {
                !k.connected
                    && !listening.contains(*a)
                    && !k.connecting
                    && !k.incoming_only
                    && !self.banned.contains(&ban_key(**a))
                    && k.next_try.is_none_or(|t| now >= t)
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in candidates {
            if budget == 0 {
                break;
            }
            // Seeding, another seed has nothing for us and wants nothing from us.
            if seed && self.known.get(&addr).is_some_and(|k| k.seed) {
                continue;
            }
            let host = per_host.entry(host_key(addr, loopback)).or_default();
            if *host >= self.p.limits.max_per_host {
                continue;
            }
            *host += 1;
            let Ok(permit) = self.p.peer_slots.clone().try_acquire_owned() else {
                break;
            };
            let permit = PeerSlot::outgoing(permit);
            budget -= 1;
            let known = self.known.get_mut(&addr).expect("candidate from known");
            known.connecting = true;
            let transport = self.p.transport.clone();
            let ours = Handshake::new(self.metainfo.info_hash, self.p.peer_id);
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let result = async {
                    let (stream, via) = transport
                        .connect_labeled(addr)
                        .await
                        .map_err(|e| e.to_string())?;
                    let (stream, remote) = peer::handshake_outgoing(stream, ours)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>((stream, remote, via))
                }
                .await;
                let msg = match result {
                    Ok((stream, remote, via)) => Internal::Connected {
                        conn: Connection {
                            stream,
                            addr,
                            remote,
                            transport: via,
                        },
                        permit,
                        outgoing: true,
                    },
                    Err(reason) => Internal::ConnectFailed { addr, reason },
                };
                let _ = tx.send(msg);
            });
        }
    }

    fn announce_request(&self, event: Event) -> AnnounceRequest {
        let have = self.picker.have();
        // Pieces whose data vanished while seeding are left to download again, not claimed.
        let left: u64 = (0..self.layout.piece_count())
            .filter(|i| !have.get(*i as usize) || self.lost.get(*i as usize))
            .map(|i| self.layout.piece_len(i) as u64)
            .sum();
        AnnounceRequest {
            info_hash: self.metainfo.info_hash,
            peer_id: self.p.peer_id,
            port: self.p.listen_port,
            uploaded: self.uploaded,
            downloaded: self.downloaded,
            left,
            event,
            num_want: Some(if event == Event::Stopped { 0 } else { NUM_WANT }),
            key: self.announcer.key(),
        }
    }

    /// Few peers and nobody left to dial while downloading: ask the tracker early (BEP 3 lets
    /// us, within its `min interval`; we also wait at least [`STARVING_ANNOUNCE_GAP`]).
    fn starving(&self, now: Instant) -> bool {
        self.announcer.early_allowed(now)
            && !self.is_seed()
            && self.peers.len() < STARVING_PEERS
            && !self
                .known
                .values()
                .any(|k| !k.connected && !k.connecting && !k.incoming_only)
    }

    /// Ask the DHT for peers (and announce us) when due.
    fn search_dht(&mut self, now: Instant, early: bool) {
        let Some(dht) = self.p.discovery.as_ref().and_then(|d| d.dht()) else {
            return;
        };
        if !self.dht_schedule.begin(now, early) {
            return;
        }
        let peers_tx = self.internal_tx.clone();
        let done_tx = self.internal_tx.clone();
        sources::spawn_dht_search(
            dht,
            self.metainfo.info_hash,
            self.p.listen_port,
            move |peers| peers_tx.send(Internal::DhtPeers(peers)).is_ok(),
            move |found| {
                let _ = done_tx.send(Internal::DhtDone(found));
            },
        );
    }

    fn announce(&mut self, event: Event) {
        let Some(tiers) = self.announcer.begin(Instant::now()) else {
            return;
        };
        let req = self.announce_request(event);
        let tx = self.internal_tx.clone();
        announce::spawn_announce(
            self.p.tracker.clone(),
            tiers,
            req,
            move |tiers, event, result| {
                let _ = tx.send(Internal::AnnounceDone {
                    tiers,
                    event,
                    result,
                });
            },
        );
    }

    async fn on_complete(&mut self) {
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
        if !self.sent_completed {
            self.sent_completed = true;
            self.announce(Event::Completed);
        }
    }

    /// Flush in a spawned task (fsyncs must not stall the torrent task); one at a time. What
    /// completes meanwhile stays `dirty` and goes into the next flush.
    fn start_flush(&mut self) {
        if self.flushing {
            return;
        }
        self.flushing = true;
        self.dirty = false;
        self.last_flush = Instant::now();
        let storage = self.storage.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = storage.flush().await;
            let _ = tx.send(Internal::Flushed(result));
        });
    }

    fn on_flushed(&mut self, result: Result<(), StorageError>) {
        self.flushing = false;
        if let Err(e) = result {
            tracing::error!(error = %e, "flush failed; pausing torrent");
            self.error = Some(format!("storage error: {e}"));
            self.close_all_peers();
        }
    }

    async fn shutdown(&mut self) {
        self.close_all_peers();
        // Let pieces being hashed and written, a running flush and a running announce finish,
        // briefly: the whole stop must fit the session's budget.
        let deadline = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
        while self.verifying > 0 || self.flushing || self.announcer.in_flight() {
            match tokio::time::timeout_at(deadline, self.internal_rx.recv()).await {
                Ok(Some(Internal::Flushed(result))) => self.on_flushed(result),
                Ok(Some(Internal::AnnounceDone { tiers, .. })) => self.announcer.restore(tiers),
                Ok(Some(Internal::PieceDone {
                    piece,
                    bytes,
                    result,
                    ..
                })) => {
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
        self.publish();
        if let Some(tiers) = self.announcer.take_for_stop() {
            let req = self.announce_request(Event::Stopped);
            announce::announce_stopped(&self.p.tracker, tiers, req).await;
        }
    }

    /// Verified pieces we can still read: the picker's minus any lost while seeding.
    fn readable_pieces(&self) -> std::borrow::Cow<'_, Bitfield> {
        let have = self.picker.have();
        if self.lost.count_ones() == 0 {
            return std::borrow::Cow::Borrowed(have);
        }
        let mut readable = have.clone();
        for p in self.lost.iter_ones() {
            readable.clear(p);
        }
        std::borrow::Cow::Owned(readable)
    }

    fn publish(&self) {
        let have = self.readable_pieces();
        let have = have.as_ref();
        let have_bytes: u64 = if have.is_full() {
            self.layout.total_length
        } else {
            have.iter_ones()
                .map(|i| self.layout.piece_len(i as u32) as u64)
                .sum()
        };
        let state = if let Some(e) = &self.error {
            TorrentState::Error(e.clone())
        } else if self.paused {
            TorrentState::Paused
        } else if have.is_full() {
            TorrentState::Seeding
        } else {
            TorrentState::Downloading
        };
        let uploaded = self.uploaded;
        let total = self.layout.piece_count().max(1) as f32;
        let peers = self
            .peers
            .values()
            .map(|p| PeerStatus {
                addr: p.addr,
                transport: p.transport.clone(),
                client: p.client.clone(),
                outgoing: p.outgoing,
                download_rate: p.download_rate as u64,
                upload_rate: p.upload_rate as u64,
                am_choking: p.am_choking,
                am_interested: p.am_interested,
                peer_choking: p.peer_choking,
                peer_interested: p.peer_interested,
                snubbed: p.snubbed,
                progress: p.bitfield.count_ones() as f32 / total,
            })
            .collect();
        let files = self.file_progress();
        let trackers = self.announcer.status();
        self.p.status.send_modify(|s| {
            s.state = state;
            s.have_bytes = have_bytes;
            s.pieces_have = have.count_ones() as u32;
            s.download_rate = self.download_rate as u64;
            s.upload_rate = self.upload_rate as u64;
            s.downloaded = self.downloaded;
            s.uploaded = uploaded;
            s.wasted = self.wasted;
            s.peers_connected = self.peers.len();
            s.peers_known = self.known.len();
            s.tracker_error = self.announcer.error().cloned();
            s.peers = peers;
            s.files = files;
            s.trackers = trackers;
            s.next_announce = self.announcer.next();
            s.peers_banned = self.banned.len();
            s.pieces = have.clone();
        });
    }
}

impl Torrent {
    /// Verified bytes per file.
    fn file_progress(&self) -> Vec<FileStatus> {
        let have = self.readable_pieces();
        let have = have.as_ref();
        let pl = self.layout.piece_length as u64;
        self.layout
            .files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let have_bytes = if have.is_full() {
                    f.length
                } else {
                    self.layout
                        .pieces_for_file(i)
                        .filter(|p| have.get(*p as usize))
                        .map(|p| {
                            let start = (p as u64 * pl).max(f.offset);
                            let end = ((p as u64 + 1) * pl).min(f.offset + f.length);
                            end.saturating_sub(start)
                        })
                        .sum()
                };
                FileStatus {
                    path: f.path.clone(),
                    length: f.length,
                    have_bytes,
                }
            })
            .collect()
    }
}

/// Exponential backoff: 0.5 s, 1 s, 2 s, … capped at two minutes.
fn reconnect_delay(failures: u32) -> Duration {
    (RECONNECT_BACKOFF * 2u32.saturating_pow(failures.saturating_sub(1).min(16)))
        .min(MAX_RECONNECT_BACKOFF)
}

/// A readable client name from a peer id: Azureus style `-XX1234-` becomes `XX 1234`.
fn client_name(id: &PeerId) -> String {
    let b = &id.0;
    if b[0] == b'-' && b[7] == b'-' && b[1..7].iter().all(|c| c.is_ascii_alphanumeric()) {
        let code = String::from_utf8_lossy(&b[1..3]);
        let version = String::from_utf8_lossy(&b[3..7]);
        return format!("{code} {version}");
    }
    let printable: String = b
        .iter()
        .take(8)
        .map(|&c| if c.is_ascii_graphic() { c as char } else { '.' })
        .collect();
    printable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names() {
        let mut id = [b'x'; 20];
        id[..8].copy_from_slice(b"-lt2080-");
        assert_eq!(client_name(&PeerId(id)), "lt 2080");
        id[..8].copy_from_slice(b"M7-2-2--");
        assert_eq!(client_name(&PeerId(id)), "M7-2-2--");
        id[0] = 0;
        assert_eq!(client_name(&PeerId(id)), ".7-2-2--");
    }

    #[test]
    fn reconnect_backoff_doubles_then_caps() {
        assert_eq!(reconnect_delay(1), Duration::from_millis(500));
        assert_eq!(reconnect_delay(2), Duration::from_secs(1));
        assert_eq!(reconnect_delay(4), Duration::from_secs(4));
        assert_eq!(reconnect_delay(40), MAX_RECONNECT_BACKOFF);
    }
}
