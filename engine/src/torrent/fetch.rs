//! The `FetchingMetadata` phase of a torrent added from a magnet link: find peers (the magnet's
//! `x.pe` and trackers, `--peer`, incoming connections), ask those that speak BEP 9 for the
//! `info` dictionary piece by piece, check it against the info-hash, keep it in the state
//! folder, and hand over to `Checking`. A restart finds the kept copy and never asks again.
//!
//! Connections here only exchange extended handshakes and `ut_metadata` messages; everything
//! else a peer sends is skipped unread (nothing can be checked before the piece count is
//! known). They are closed when the metadata is in, and the addresses handed to the live
//! phase, which dials them at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::now;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::announce::{self, AnnounceResult, Announcer};
use super::check::Checking;
use super::peers::{self, host_key, HostKey};
use super::record::Keeper;
use super::sources::{self, DhtSchedule};
use super::{IncomingPeer, PeerSlot, Phase, TorrentCommand, TorrentParams};
use crate::extension::{self, ExtendedHandshake, Extension, HANDSHAKE_ID};
use crate::magnet::Magnet;
use crate::metadata::{MetadataFetch, MetadataMessage, Progress};
use crate::metainfo::{Metainfo, MAX_TORRENT_SIZE};
use crate::peer;
use crate::status::TorrentState;
use crate::tracker::{AnnounceRequest, Event, TrackerTiers};
use crate::transport::BoxStream;
use crate::types::InfoHash;
use crate::wire::{self, Handshake, Message};

/// Connections (and dials in progress) while fetching metadata: a handful of peers gives
/// parallel pieces and spares; more would only cost handshakes we close again.
const MAX_FETCH_PEERS: usize = 16;
/// Largest frame read while fetching: a metadata piece (16 KiB plus its dictionary) or a
/// bitfield of a torrent with up to two million pieces. Anything longer ends the connection.
const MAX_FRAME: usize = 256 * 1024;
/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection that has not finished its extended handshake after this long is useless here.
const EXTENDED_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// In one-peer-at-a-time mode, a peer that sends no metadata piece for this long loses its turn.
const SOLO_STALL: Duration = Duration::from_secs(30);
/// …and one turn lasts at most this long (a liar trickling pieces cannot hold it for ever).
const SOLO_TURN: Duration = Duration::from_secs(120);
/// A peer that claims the size being fetched and sends no piece of it for this long is
/// dropped (it may come back after a backoff): silence or rejects must not hold the fetch on a
/// size only it claims.
const PEER_STALL: Duration = Duration::from_secs(30);
/// A peer that cannot give metadata now (no BEP 10, no `ut_metadata` or size yet, a liar) is
/// not redialled in this phase for this long.
const USELESS_BACKOFF: Duration = Duration::from_secs(300);
/// Events from connection tasks queued for the fetcher; a full queue holds back that peer's
/// reads, so a flood of messages costs memory nowhere.
const CONNECTION_EVENTS: usize = 256;
/// We send a keep-alive after this much silence on our side (BEP 3: about two minutes).
const KEEPALIVE: Duration = Duration::from_secs(60);
/// How long resolving the host names of a magnet's `x.pe` may take, each.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses kept while fetching (the live phase has its own, larger, book).
const MAX_KNOWN: usize = 500;
/// Commands queued to one connection (a few requests at a time).
const CONNECTION_QUEUE: usize = 16;
/// `left` in announces before the size is known: non-zero, so trackers count us as a leecher
/// and hand out seeds.
const UNKNOWN_LEFT: u64 = 16 * 1024;
/// Redial a failed address after this long, doubling with each failure.
const REDIAL: Duration = Duration::from_secs(2);
/// Our name in the extended handshake (`v`).
const CLIENT_NAME: &str = concat!("ZigTorrent ", env!("CARGO_PKG_VERSION"));

/// Where fetched metadata is kept: `<state>/metadata/<info-hash hex>.torrent`.
pub(crate) fn saved_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir
        .join("metadata")
        .join(format!("{}.torrent", info_hash.to_hex()))
}

/// A magnet whose metadata is not known yet.
pub(super) struct FetchingMetadata {
    magnet: Magnet,
}

impl FetchingMetadata {
    pub(super) fn new(magnet: Magnet) -> Self {
        FetchingMetadata { magnet }
    }

    /// Fetch (or load) the metadata; `None` if shut down meanwhile.
    pub(super) async fn run(
        self,
        params: &TorrentParams,
        commands: &mut mpsc::Receiver<TorrentCommand>,
        keeper: &mut Keeper,
    ) -> Option<Phase> {
        let path = saved_path(&params.state_dir, &params.info_hash);
        match load_saved(path.clone(), params.info_hash).await {
            Ok(Some(mut metainfo)) => {
                tracing::info!(name = %metainfo.info.name, "metadata loaded from the state folder");
                // The link's own trackers and peers still count: a restart of an `x.pe`-only
                // magnet must find its peers again.
                for tr in &self.magnet.trackers {
                    if !metainfo.announce_tiers.iter().flatten().any(|t| t == tr) {
                        metainfo.announce_tiers.push(vec![tr.clone()]);
                    }
                }
                let mut peers = self.magnet.peers.clone();
                peers.extend(resolve_all(self.magnet.peer_names.clone()).await);
                return Some(known(params, metainfo, peers));
            }
            Ok(None) => {}
            // A damaged copy is fetched again (and replaced).
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "saved metadata ignored"),
        }
        let mut fetcher = Fetcher::new(params, self.magnet, keeper);
        let (info, peers) = fetcher.run(commands).await?;
        let metainfo = match Metainfo::from_info_bytes(&info, &fetcher.magnet.trackers) {
            Ok(m) => m,
            Err(e) => {
                return Some(Phase::Failed(format!(
                    "the metadata peers sent matches the info-hash but is not a usable torrent: {e}"
                )))
            }
        };
        if let Err(e) =
            crate::durable::write_atomic_async(path.clone(), metainfo.to_torrent_bytes()).await
        {
            // Not fatal: the torrent runs, and a restart fetches the metadata again.
            tracing::warn!(path = %path.display(), error = %e, "could not keep the metadata");
        }
        tracing::info!(name = %metainfo.info.name, bytes = info.len(), "metadata fetched");
        // BEP 27: a private torrent keeps only what its trackers and the link gave.
        let private = metainfo.info.private;
        let peers = peers
            .into_iter()
            .filter(|(_, public)| !(private && *public))
            .map(|(a, _)| a)
            .collect();
        Some(known(params, metainfo, peers))
    }
}

/// The metadata is known: show its name and size, and go on to checking.
fn known(params: &TorrentParams, metainfo: Metainfo, peers: Vec<SocketAddr>) -> Phase {
    // Priorities given at add for a magnet can only be checked now.
    params
        .selection
        .learn_file_count(metainfo.info.layout.files.len());
    if metainfo.info.private {
        params
            .private
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
    params.publish(|s| {
        s.name = metainfo.info.name.clone();
        s.total_bytes = metainfo.info.layout.total_length;
        // Until the live phase applies the file choice: everything.
        s.wanted_bytes = s.total_bytes;
        s.pieces_total = metainfo.info.layout.piece_count();
        s.pieces = crate::types::Bitfield::new(s.pieces_total as usize);
        s.state = TorrentState::Checking { progress: 0.0 };
        s.peers.clear();
        s.peers_connected = 0;
    });
    Phase::Checking(Checking::new(Arc::new(metainfo)).with_peers(peers))
}

pub(super) async fn load_saved(
    path: PathBuf,
    info_hash: InfoHash,
) -> std::io::Result<Option<Metainfo>> {
    tokio::task::spawn_blocking(move || {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if bytes.len() > MAX_TORRENT_SIZE {
            return Err(std::io::Error::other("larger than any torrent we accept"));
        }
        let metainfo = Metainfo::from_bytes(&bytes).map_err(std::io::Error::other)?;
        if metainfo.info_hash != info_hash {
            return Err(std::io::Error::other("holds another torrent"));
        }
        Ok(Some(metainfo))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// What connection tasks tell the fetcher.
enum FetchEvent {
    Connected {
        stream: BoxStream,
        addr: SocketAddr,
        remote: Handshake,
        slot: PeerSlot,
    },
    DialFailed(SocketAddr),
    /// The peer's extended handshake.
    Handshaken {
        key: u64,
        ut_metadata: Option<u8>,
        size: Option<u32>,
        /// Its listening port (`p`): where a peer that dialled us can be dialled back.
        listen_port: Option<u16>,
    },
    Metadata {
        key: u64,
        msg: MetadataMessage,
    },
    Closed {
        key: u64,
        reason: String,
    },
    /// Addresses from a peer source: `public` for the DHT and LSD (never used by a private
    /// torrent), not for a magnet's `x.pe` host names.
    Found {
        addrs: Vec<SocketAddr>,
        public: bool,
    },
    /// A DHT search ended, having found this many addresses.
    DhtDone(usize),
    Announced {
        tiers: TrackerTiers,
        event: Event,
        result: AnnounceResult,
    },
}

#[derive(Default)]
struct Known {
    busy: bool,
    failures: u32,
    next_try: Option<Instant>,
    /// Learnt from the DHT or LSD: not handed to the live phase if the torrent turns out
    /// private (BEP 27).
    public: bool,
}

/// How a connection (or a dial) ended, for when to dial the address again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Failed or closed: again after a growing delay.
    Failed,
    /// It cannot give metadata (now): not again for [`USELESS_BACKOFF`].
    Useless,
    /// We paused: again when resumed.
    Paused,
}

struct Conn {
    addr: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    /// The peer's id for `ut_metadata` once its extended handshake said it has one.
    ut_metadata: Option<u8>,
    /// The `metadata_size` it claimed.
    size: Option<u32>,
    /// Its listening port (BEP 10 `p`).
    listen_port: Option<u16>,
    /// When it last sent a piece we kept (or became able to).
    progress: Instant,
    opened: Instant,
    task: tokio::task::JoinHandle<()>,
    _slot: PeerSlot,
}

struct Fetcher<'a> {
    p: &'a TorrentParams,
    /// The torrent's record (its goals may change while fetching).
    keeper: &'a mut Keeper,
    /// The queue's gate, as last seen: closed, nothing is fetched (`Queued`).
    queued: bool,
    may_run: tokio::sync::watch::Receiver<bool>,
    magnet: Magnet,
    assembler: MetadataFetch,
    known: HashMap<SocketAddr, Known>,
    conns: HashMap<u64, Conn>,
    dialing: usize,
    next_key: u64,
    events_tx: mpsc::UnboundedSender<FetchEvent>,
    events_rx: mpsc::UnboundedReceiver<FetchEvent>,
    /// Connection tasks' events: bounded, so a peer's flood waits on its own reads.
    conn_tx: mpsc::Sender<FetchEvent>,
    conn_rx: mpsc::Receiver<FetchEvent>,
    announcer: Announcer,
    dht_schedule: DhtSchedule,
    paused: bool,
    /// After a hash failure shared by several senders: one peer at a time sends the whole
    /// dictionary, so a liar is found (and dropped) at its next failure.
    one_at_a_time: bool,
    /// The peer asked in that mode, when it last sent a piece (or was chosen), and when its
    /// turn began.
    solo: Option<(u64, Instant, Instant)>,
}

impl<'a> Fetcher<'a> {
    fn new(p: &'a TorrentParams, magnet: Magnet, keeper: &'a mut Keeper) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (conn_tx, conn_rx) = mpsc::channel(CONNECTION_EVENTS);
        let tiers = magnet.trackers.iter().map(|t| vec![t.clone()]).collect();
        let mut may_run = p.may_run.clone();
        let queued = !*may_run.borrow_and_update();
        let mut f = Fetcher {
            p,
            keeper,
            queued,
            may_run,
            assembler: MetadataFetch::new(magnet.info_hash),
            known: HashMap::new(),
            conns: HashMap::new(),
            dialing: 0,
            next_key: 1,
            events_tx,
            events_rx,
            conn_tx,
            conn_rx,
            announcer: Announcer::new(tiers, now(), rand::random()),
            dht_schedule: DhtSchedule::new(now()),
            paused: false,
            one_at_a_time: false,
            solo: None,
            magnet,
        };
        let initial: Vec<SocketAddr> = f
            .magnet
            .peers
            .iter()
            .chain(&p.extra_peers)
            .copied()
            .collect();
        f.add_known(initial);
        if !f.magnet.peer_names.is_empty() {
            let names = f.magnet.peer_names.clone();
            let tx = f.events_tx.clone();
            tokio::spawn(async move {
                let found = resolve_all(names).await;
                let _ = tx.send(FetchEvent::Found {
                    addrs: found,
                    public: false,
                });
            });
        }
        f
    }

    /// Until the metadata is in: its bytes and the addresses worth dialling afterwards.
    async fn run(
        &mut self,
        commands: &mut mpsc::Receiver<TorrentCommand>,
    ) -> Option<(Bytes, Vec<(SocketAddr, bool)>)> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                cmd = commands.recv() => match cmd {
                    Some(TorrentCommand::Shutdown(reply)) => {
                        self.stop().await;
                        let _ = reply.send(());
                        return None;
                    }
                    None => { self.stop().await; return None; }
                    Some(cmd) => self.on_command(cmd),
                },
                _ = tick.tick() => self.on_tick(),
                Ok(()) = self.may_run.changed() => self.on_gate(),
                Some(event) = self.events_rx.recv() => {
                    if let Some(info) = self.on_event(event) {
                        return Some((info, self.handover()));
                    }
                }
                Some(event) = self.conn_rx.recv() => {
                    if let Some(info) = self.on_event(event) {
                        return Some((info, self.handover()));
                    }
                }
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
                    permit,
                    ..
                } = *incoming;
                if self.stopped() || self.conns.len() + self.dialing >= MAX_FETCH_PEERS {
                    return;
                }
                if self.host_count(addr) >= self.p.limits.max_per_host {
                    return;
                }
                // Its address (an ephemeral port) is not one to dial: it stays out of `known`.
                self.dialing += 1;
                let ours = Handshake::new(self.p.info_hash, self.p.peer_id);
                let tx = self.events_tx.clone();
                tokio::spawn(async move {
                    let event = match peer::handshake_incoming(stream, ours, &handshake).await {
                        Ok(stream) => FetchEvent::Connected {
                            stream,
                            addr,
                            remote: handshake,
                            slot: permit,
                        },
                        Err(_) => FetchEvent::DialFailed(addr),
                    };
                    let _ = tx.send(event);
                });
            }
            TorrentCommand::AddPeers(addrs) => {
                self.add_known(addrs);
                self.dial(now());
            }
            TorrentCommand::LocalPeers(addrs) => {
                self.add_known_from(addrs, true);
                self.dial(now());
            }
            TorrentCommand::Pause => {
                self.paused = true;
                self.close_all();
                self.publish();
            }
            TorrentCommand::Resume => {
                self.paused = false;
                self.dial(now());
                if !self.stopped() {
                    self.discover(now());
                }
                self.publish();
            }
            // Read when the metadata is in (`known`, then storage and the picker).
            TorrentCommand::SelectionChanged => {}
            TorrentCommand::SetSeedGoals(goals) => {
                self.keeper.record.goals = goals;
                self.keeper.save_soon(now());
                self.p.publish(|s| s.seed_goals = goals);
            }
            TorrentCommand::SaveRecord => {
                self.keeper.save_soon(now());
                let position = self.keeper.queue_position();
                self.p.publish(|s| s.queue_position = position);
            }
            TorrentCommand::SetCompletedDir(dir) => {
                super::set_completed_dir(self.p, self.keeper, dir)
            }
            TorrentCommand::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    /// The queue opened or closed our gate.
    fn on_gate(&mut self) {
        let queued = !*self.may_run.borrow_and_update();
        if queued == self.queued {
            return;
        }
        let was_stopped = self.stopped();
        self.queued = queued;
        if queued {
            self.close_all();
            if !was_stopped {
                self.announce_stopped_for_now(now());
            }
        } else if !self.stopped() {
            self.announcer.restart(now());
            self.dial(now());
            self.discover(now());
        }
        self.publish();
    }

    /// Paused by the user or waiting in the queue: no connections, no announces.
    fn stopped(&self) -> bool {
        self.paused || self.queued
    }

    fn on_tick(&mut self) {
        let now = now();
        if !self.stopped() {
            // Requests that timed out go to other peers; idle handshakes make room.
            let stale: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    c.ut_metadata.is_none()
                        && now.duration_since(c.opened) > EXTENDED_HANDSHAKE_TIMEOUT
                })
                .map(|(k, _)| *k)
                .collect();
            for key in stale {
                self.close(key, "no extended handshake", Ended::Useless);
            }
            // One peer at a time: one that stalls gives its turn to the next.
            if let Some((key, since, began)) = self.solo {
                if self.one_at_a_time
                    && (now.duration_since(since) > SOLO_STALL
                        || now.duration_since(began) > SOLO_TURN)
                {
                    self.solo = None;
                    self.close(key, "too slow sending the metadata", Ended::Useless);
                }
            }
            // A peer holding the size being fetched without sending any of it goes, so the
            // fetch can move on (to the size others claim, or to other peers).
            let current = self.assembler.size();
            let stalled: Vec<u64> = self
                .conns
                .iter()
                .filter(|(_, c)| {
                    !self.one_at_a_time
                        && c.size.is_some()
                        && c.size == current
                        && now.duration_since(c.progress) > PEER_STALL
                })
                .map(|(k, _)| *k)
                .collect();
            for key in stalled {
                self.close(key, "sent no metadata for 30 s", Ended::Useless);
            }
            let keys: Vec<u64> = self.conns.keys().copied().collect();
            for key in keys {
                self.pump(key, now);
            }
            self.dial(now);
            self.discover(now);
        }
        self.publish();
    }

    /// Ask every source that is due for peers (trackers, the DHT, LSD): each tick, and at once
    /// when the queue lets the torrent run, so it does not wait for its next tick.
    fn discover(&mut self, now: Instant) {
        let starving = self.conns.is_empty()
            && !self.known.values().any(|k| !k.busy)
            && self.announcer.early_allowed(now);
        if self.announcer.due(now) || starving {
            self.announce(now);
        }
        self.search_dht(now, self.conns.is_empty());
        let _ = sources::announce_lsd(&self.p.discovery, self.p.info_hash);
    }

    /// Returns the metadata once it is complete and verified.
    fn on_event(&mut self, event: FetchEvent) -> Option<Bytes> {
        let now = now();
        match event {
            FetchEvent::Connected {
                stream,
                addr,
                remote,
                slot,
            } => {
                self.dialing = self.dialing.saturating_sub(1);
                if self.stopped() {
                    self.release(addr, Ended::Paused);
                    return None;
                }
                if !remote.supports_extensions() {
                    // Cannot send metadata; it may still be a fine peer for the data.
                    self.release(addr, Ended::Useless);
                    return None;
                }
                let key = self.next_key;
                self.next_key += 1;
                let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
                let task = tokio::spawn(metadata_connection(
                    key,
                    stream,
                    self.p.listen_port,
                    remote.supports_fast(),
                    self.conn_tx.clone(),
                    rx,
                ));
                self.conns.insert(
                    key,
                    Conn {
                        addr,
                        tx,
                        ut_metadata: None,
                        size: None,
                        listen_port: None,
                        progress: now,
                        opened: now,
                        task,
                        _slot: slot,
                    },
                );
                self.publish();
            }
            FetchEvent::DialFailed(addr) => {
                self.dialing = self.dialing.saturating_sub(1);
                self.release(addr, Ended::Failed);
                self.dial(now);
            }
            FetchEvent::Handshaken {
                key,
                ut_metadata,
                size,
                listen_port,
            } => {
                let conn = self.conns.get_mut(&key)?;
                conn.listen_port = conn.listen_port.or(listen_port);
                if conn.size.is_some() {
                    // A later extended handshake changes nothing here (re-adding the peer would
                    // forget its requests, and their answers would look unrequested).
                    return None;
                }
                match (ut_metadata, size) {
                    (Some(id), Some(size)) => match self.assembler.add_peer(key, size) {
                        Ok(()) => {
                            conn.ut_metadata = Some(id);
                            conn.size = Some(size);
                            conn.progress = now;
                            self.pump(key, now);
                        }
                        Err(e) => {
                            tracing::warn!(addr = %conn.addr, error = %e, "metadata peer refused");
                            self.close(key, &e.to_string(), Ended::Useless);
                        }
                    },
                    _ => self.close(key, "peer cannot send metadata", Ended::Useless),
                }
            }
            FetchEvent::Metadata { key, msg } => {
                if !self.conns.contains_key(&key) {
                    return None;
                }
                match msg {
                    MetadataMessage::Data { piece, data, .. } => {
                        if let Some((k, t, _)) = self.solo.as_mut() {
                            if *k == key {
                                *t = now;
                            }
                        }
                        if let Some(conn) = self.conns.get_mut(&key) {
                            conn.progress = now;
                        }
                        match self.assembler.on_data(key, piece, data, now) {
                            Ok(Progress::Pending) => self.pump(key, now),
                            Ok(Progress::Complete(info)) => return Some(info),
                            Ok(Progress::HashMismatch { contributors }) => {
                                tracing::warn!(
                                    peers = contributors.len(),
                                    "metadata failed its hash check; fetching again"
                                );
                                // One sender alone is to blame. With several, nobody can be
                                // told apart: from now on one peer at a time sends the whole
                                // dictionary, so the next failure names its sender.
                                if let [only] = contributors[..] {
                                    self.close(
                                        only,
                                        "sent metadata that failed its hash",
                                        Ended::Useless,
                                    );
                                } else {
                                    self.one_at_a_time = true;
                                }
                                let keys: Vec<u64> = self.conns.keys().copied().collect();
                                for k in keys {
                                    self.pump(k, now);
                                }
                            }
                            Err(e) => self.close(key, &e.to_string(), Ended::Useless),
                        }
                    }
                    MetadataMessage::Reject { piece } => {
                        self.assembler.on_reject(key, piece);
                        self.pump_others(key, now);
                    }
                    // Answered with a reject by the connection itself.
                    MetadataMessage::Request { .. } => {}
                }
            }
            FetchEvent::Closed { key, reason } => {
                if let Some(conn) = self.conns.remove(&key) {
                    tracing::debug!(addr = %conn.addr, %reason, "metadata peer closed");
                    self.assembler.remove_peer(key);
                    self.release(conn.addr, Ended::Failed);
                    self.pump_others(key, now);
                    self.dial(now);
                    self.publish();
                }
            }
            FetchEvent::Found { addrs, public } => {
                self.add_known_from(addrs, public);
                self.dial(now);
            }
            FetchEvent::DhtDone(found) => self.dht_schedule.finish(now, found, false),
            FetchEvent::Announced {
                tiers,
                event,
                result,
            } => {
                let peers = self.announcer.finish(tiers, event, result, now);
                self.add_known(peers);
                self.dial(now);
            }
        }
        None
    }

    /// Send `key` the requests the assembler gives it.
    fn pump(&mut self, key: u64, now: Instant) {
        let Some(conn) = self.conns.get(&key) else {
            return;
        };
        let Some(id) = conn.ut_metadata else {
            return;
        };
        if self.one_at_a_time {
            // The lowest key among the peers that can send metadata is the one asked.
            let first = self
                .conns
                .iter()
                .filter(|(_, c)| c.ut_metadata.is_some())
                .map(|(k, _)| *k)
                .min();
            if first != Some(key) {
                return;
            }
            if self.solo.is_none_or(|(k, _, _)| k != key) {
                self.solo = Some((key, now, now));
            }
        }
        while let Some(piece) = self.assembler.next_request(key, now) {
            let msg = extended(id, MetadataMessage::Request { piece }.encode());
            if conn.tx.try_send(msg).is_err() {
                // Full: the assembler times the request out and gives it to someone else.
                break;
            }
        }
    }

    fn pump_others(&mut self, except: u64, now: Instant) {
        let keys: Vec<u64> = self
            .conns
            .keys()
            .copied()
            .filter(|k| *k != except)
            .collect();
        for k in keys {
            self.pump(k, now);
        }
    }

    fn close(&mut self, key: u64, reason: &str, ended: Ended) {
        if let Some(conn) = self.conns.remove(&key) {
            tracing::debug!(addr = %conn.addr, %reason, "metadata peer dropped");
            conn.task.abort();
            self.assembler.remove_peer(key);
            self.release(conn.addr, ended);
        }
    }

    fn close_all(&mut self) {
        let keys: Vec<u64> = self.conns.keys().copied().collect();
        for k in keys {
            self.close(k, "paused", Ended::Paused);
        }
    }

    /// `addr` is no longer in use; when to dial it again depends on how it ended.
    fn release(&mut self, addr: SocketAddr, ended: Ended) {
        if let Some(k) = self.known.get_mut(&addr) {
            k.busy = false;
            match ended {
                Ended::Failed => {
                    k.failures += 1;
                    k.next_try = Some(now() + REDIAL * 2u32.pow(k.failures.min(6)));
                }
                Ended::Useless => k.next_try = Some(now() + USELESS_BACKOFF),
                Ended::Paused => {}
            }
        }
    }

    fn add_known(&mut self, addrs: Vec<SocketAddr>) {
        self.add_known_from(addrs, false);
    }

    /// Take addresses into the book; when it is full, an entry not in use that failed most
    /// makes room (dead addresses from one source must not lock out the others).
    fn add_known_from(&mut self, addrs: Vec<SocketAddr>, public: bool) {
        for addr in addrs.into_iter().take(MAX_KNOWN) {
            if !peers::dialable(addr)
                || (addr.ip().is_loopback() && addr.port() == self.p.listen_port)
            {
                continue;
            }
            if let Some(k) = self.known.get_mut(&addr) {
                // Also named by a source a private torrent may use.
                k.public &= public;
                continue;
            }
            if self.known.len() >= MAX_KNOWN {
                let victim = self
                    .known
                    .iter()
                    .filter(|(_, k)| !k.busy && k.failures > 0)
                    .max_by_key(|(_, k)| k.failures)
                    .map(|(a, _)| *a);
                match victim {
                    Some(v) => {
                        self.known.remove(&v);
                    }
                    None => continue,
                }
            }
            self.known.insert(
                addr,
                Known {
                    public,
                    ..Known::default()
                },
            );
        }
    }

    fn host_count(&self, addr: SocketAddr) -> usize {
        let loopback = self.p.limits.loopback_as_host;
        let host = host_key(addr, loopback);
        self.conns
            .values()
            .map(|c| c.addr)
            .chain(self.known.iter().filter(|(_, k)| k.busy).map(|(a, _)| *a))
            .filter(|a| host_key(*a, loopback) == host)
            .count()
    }

    /// Dial known addresses until [`MAX_FETCH_PEERS`] connections are open or being opened.
    fn dial(&mut self, now: Instant) {
        if self.stopped() {
            return;
        }
        let loopback = self.p.limits.loopback_as_host;
        let mut per_host: HashMap<HostKey, usize> = HashMap::new();
        for a in self
            .conns
            .values()
            .map(|c| c.addr)
            .chain(self.known.iter().filter(|(_, k)| k.busy).map(|(a, _)| *a))
        {
            *per_host.entry(host_key(a, loopback)).or_default() += 1;
        }
        let candidates: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|(_, k)| !k.busy && k.next_try.is_none_or(|t| now >= t))
            .map(|(a, _)| *a)
            .collect();
        for addr in candidates {
            if self.conns.len() + self.dialing >= MAX_FETCH_PEERS {
                break;
            }
            let host = per_host.entry(host_key(addr, loopback)).or_default();
            if *host >= self.p.limits.max_per_host {
                continue;
            }
            let Ok(permit) = self.p.peer_slots.clone().try_acquire_owned() else {
                break;
            };
            *host += 1;
            let slot = PeerSlot::outgoing(permit);
            if let Some(k) = self.known.get_mut(&addr) {
                k.busy = true;
            }
            self.dialing += 1;
            let transport = self.p.transport.clone();
            let dialer = self.p.dialer.clone();
            let ours = Handshake::new(self.p.info_hash, self.p.peer_id);
            let tx = self.events_tx.clone();
            tokio::spawn(async move {
                let event = match dialer.dial(&*transport, addr, ours).await {
                    Ok(conn) => FetchEvent::Connected {
                        stream: conn.stream,
                        addr,
                        remote: conn.remote,
                        slot,
                    },
                    Err(_) => FetchEvent::DialFailed(addr),
                };
                let _ = tx.send(event);
            });
        }
    }

    fn search_dht(&mut self, now: Instant, early: bool) {
        let Some(dht) = self.p.discovery.as_ref().and_then(|d| d.dht()) else {
            return;
        };
        if !self.dht_schedule.begin(now, early) {
            return;
        }
        let peers_tx = self.events_tx.clone();
        let done_tx = self.events_tx.clone();
        sources::spawn_dht_search(
            dht,
            self.p.info_hash,
            self.p.listen_port,
            move |addrs| {
                peers_tx
                    .send(FetchEvent::Found {
                        addrs,
                        public: true,
                    })
                    .is_ok()
            },
            move |found| {
                let _ = done_tx.send(FetchEvent::DhtDone(found));
            },
        );
    }

    fn announce(&mut self, now: Instant) {
        let event = self.announcer.regular_event();
        let Some(tiers) = self.announcer.begin(now) else {
            return;
        };
        self.spawn_announce(tiers, event);
    }

    /// Tell trackers we stop for now (queued), if we told them we started.
    fn announce_stopped_for_now(&mut self, now: Instant) {
        if let Some(tiers) = self.announcer.stop_for_now(now) {
            self.spawn_announce(tiers, Event::Stopped);
        }
    }

    fn spawn_announce(&mut self, tiers: TrackerTiers, event: Event) {
        let req = self.announce_request(event);
        let tx = self.events_tx.clone();
        announce::spawn_announce(
            self.p.tracker.clone(),
            tiers,
            req,
            move |tiers, event, result| {
                let _ = tx.send(FetchEvent::Announced {
                    tiers,
                    event,
                    result,
                });
            },
        );
    }

    fn announce_request(&self, event: Event) -> AnnounceRequest {
        AnnounceRequest {
            info_hash: self.p.info_hash,
            peer_id: self.p.peer_id,
            port: self.p.listen_port,
            uploaded: 0,
            downloaded: 0,
            left: UNKNOWN_LEFT,
            event,
            num_want: Some(if event == Event::Stopped { 0 } else { 100 }),
            key: self.announcer.key(),
        }
    }

    /// Close every connection and give back the addresses worth dialling: every address a
    /// source gave, those we were connected to first (peers that dialled us will again).
    fn handover(&mut self) -> Vec<(SocketAddr, bool)> {
        // Where we dialled, or where a peer that dialled us listens: the live phase dials them
        // at once (it must not lose the peer that just gave us the metadata).
        let connected: Vec<SocketAddr> = self
            .conns
            .values()
            .filter_map(|c| {
                if self.known.contains_key(&c.addr) {
                    Some(c.addr)
                } else {
                    Some(SocketAddr::new(c.addr.ip(), c.listen_port?))
                }
            })
            .collect();
        for conn in self.conns.values() {
            conn.task.abort();
        }
        self.conns.clear();
        let rest = self
            .known
            .keys()
            .filter(|a| !connected.contains(a))
            .copied();
        connected
            .iter()
            .copied()
            .chain(rest)
            .filter(|a| peers::dialable(*a))
            .map(|a| (a, self.known.get(&a).is_some_and(|k| k.public)))
            .collect()
    }

    async fn stop(&mut self) {
        self.close_all();
        if self.announcer.in_flight() {
            let deadline = tokio::time::Instant::now() + announce::STOPPED_TIMEOUT;
            while let Ok(Some(event)) =
                tokio::time::timeout_at(deadline, self.events_rx.recv()).await
            {
                if let FetchEvent::Announced {
                    tiers,
                    event,
                    result,
                } = event
                {
                    self.announcer.restore(tiers, event, &result);
                    break;
                }
            }
        }
        if let Some(tiers) = self.announcer.take_for_stop() {
            let req = self.announce_request(Event::Stopped);
            announce::announce_stopped(&self.p.tracker, tiers, req).await;
        }
    }

    fn publish(&self) {
        let connected = self.conns.len();
        let known = self.known.len();
        let paused = self.paused;
        let queued = self.queued;
        let trackers = self.announcer.status();
        let error = self.announcer.error().cloned();
        let next = self.announcer.next();
        self.p.publish(|s| {
            s.state = if paused {
                TorrentState::Paused
            } else if queued {
                TorrentState::Queued
            } else {
                TorrentState::FetchingMetadata
            };
            s.peers_connected = connected;
            s.peers_known = known;
            s.trackers = trackers;
            s.tracker_error = error;
            s.next_announce = next;
        });
    }
}

/// Resolve `x.pe` host names, all at once, each within [`RESOLVE_TIMEOUT`] (at most a few
/// addresses per name).
async fn resolve_all(names: Vec<(String, u16)>) -> Vec<SocketAddr> {
    let lookups = names.into_iter().map(|(host, port)| async move {
        match tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        {
            Ok(Ok(addrs)) => addrs.take(4).collect(),
            _ => Vec::new(),
        }
    });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// An extension message with the peer's id for it.
fn extended(id: u8, payload: Bytes) -> Bytes {
    let mut out = BytesMut::new();
    extension::message(id, &payload).encode(&mut out);
    out.freeze()
}

/// One connection while fetching metadata: send our extended handshake (after a have-none when
/// the peer speaks BEP 6, which wants one of bitfield, have-all or have-none first), report
/// theirs, pass `ut_metadata` messages both ways, skip everything else. Ends on error, silence,
/// or abort.
async fn metadata_connection(
    key: u64,
    stream: BoxStream,
    listen_port: u16,
    fast: bool,
    events: mpsc::Sender<FetchEvent>,
    mut outgoing: mpsc::Receiver<Bytes>,
) {
    let reason: Result<(), String> = async {
        let (mut rd, mut wr) = tokio::io::split(stream);
        // Ours carries no `metadata_size`: we have none to give.
        let ours = ExtendedHandshake::ours(None, 250, Some(listen_port), CLIENT_NAME);
        let mut first = BytesMut::new();
        if fast {
            Message::HaveNone.encode(&mut first);
        }
        ours.to_message().encode(&mut first);
        wr.write_all(&first).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(32 * 1024);
        let mut their_metadata_id: Option<u8> = None;
        // Silence is measured on what the peer sends; our own writes do not keep it alive.
        let mut last_received = tokio::time::Instant::now();
        let mut last_sent = tokio::time::Instant::now();
        loop {
            let idle_at = last_received + IDLE_TIMEOUT;
            let keepalive_at = last_sent + KEEPALIVE;
            tokio::select! {
                out = outgoing.recv() => match out {
                    Some(bytes) => {
                        wr.write_all(&bytes).await.map_err(|e| e.to_string())?;
                        last_sent = tokio::time::Instant::now();
                    }
                    None => return Err("closed".to_string()),
                },
                _ = tokio::time::sleep_until(idle_at) => return Err("idle".into()),
                _ = tokio::time::sleep_until(keepalive_at) => {
                    wr.write_all(&[0, 0, 0, 0]).await.map_err(|e| e.to_string())?;
                    last_sent = tokio::time::Instant::now();
                }
                read = rd.read_buf(&mut buf) => {
                    match read {
                        Err(e) => return Err(e.to_string()),
                        Ok(0) => return Err("connection closed by peer".into()),
                        Ok(_) => last_received = tokio::time::Instant::now(),
                    }
                    while let Some(msg) = wire::decode(&mut buf, MAX_FRAME).map_err(|e| e.to_string())? {
                        let Message::Unknown { id: wire::EXTENDED, payload } = msg else {
                            continue;
                        };
                        let Some((&ext, body)) = payload.split_first() else {
                            return Err("empty extension message".into());
                        };
                        if ext == HANDSHAKE_ID {
                            let hs = ExtendedHandshake::parse(body).map_err(|e| e.to_string())?;
                            their_metadata_id = hs.ids.ut_metadata;
                            let _ = events
                                .send(FetchEvent::Handshaken {
                                    key,
                                    ut_metadata: hs.ids.ut_metadata,
                                    size: hs.metadata_size,
                                    listen_port: hs.port,
                                })
                                .await;
                        } else if Extension::from_local_id(ext) == Some(Extension::Metadata) {
                            let mut body = payload.clone();
                            body.advance(1);
                            let Some(msg) = MetadataMessage::decode(body).map_err(|e| e.to_string())? else {
                                continue; // a msg_type BEP 9 does not define: ignored
                            };
                            if let MetadataMessage::Request { piece } = msg {
                                // We have nothing yet: BEP 9 says reject.
                                if let Some(id) = their_metadata_id {
                                    let reject = MetadataMessage::Reject { piece }.encode();
                                    wr.write_all(&extended(id, reject)).await.map_err(|e| e.to_string())?;
                                }
                                continue;
                            }
                            if events.send(FetchEvent::Metadata { key, msg }).await.is_err() {
                                return Err("fetch over".into());
                            }
                        }
                    }
                    if buf.capacity() - buf.len() < 16 * 1024 {
                        buf.reserve(32 * 1024);
                    }
                }
            }
        }
    }
    .await;
    let reason = match reason {
        Ok(()) => "done".to_string(),
        Err(r) => r,
    };
    let _ = events.send(FetchEvent::Closed { key, reason }).await;
}
