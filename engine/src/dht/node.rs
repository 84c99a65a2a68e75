//! The DHT node (BEP 5) as a state machine: datagrams and commands in, datagrams, search
//! results and a next deadline out. Sans-IO: no socket, no clock, no spawned task; the driver
//! in `dht/mod.rs` passes `now` and carries the bytes (quinn-proto's shape).
//!
//! It owns the routing table, the write-token secrets, the peer store (who announced what to
//! us), our queries in flight and the iterative lookups. It never resolves names or touches a
//! file: bootstrap addresses come in resolved, the state file is the driver's.
//!
//! Bounds: queries in flight ([`MAX_IN_FLIGHT`]), lookups' candidates ([`MAX_CANDIDATES`]) and
//! queries ([`MAX_LOOKUP_QUERIES`]) and lifetime ([`LOOKUP_DEADLINE`]), the peer store
//! ([`MAX_PEERS_PER_HASH`], [`MAX_HASHES`], [`MAX_STORED_PEERS`], [`PEER_TTL`]), the outbox
//! ([`MAX_OUTBOX`]), and the queries answered per source address ([`ANSWER_RATE`],
//! [`ANSWER_BURST`], so we are no amplifier), with at most [`MAX_LIMITED_SOURCES`] sources
//! tracked.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha1::{Digest, Sha1};

use super::krpc::{self, Body, Contact, Id, Query, Response, Want, ID_LEN};
use super::table::{Insert, Table, K};

/// Lookup parallelism: BEP 5 and Kademlia use 3; a little more makes lookups on a lossy network
/// end sooner at a small cost.
pub const ALPHA: usize = 4;

/// A query unanswered this long has failed. Answers on the public DHT take well under a second;
/// mainline and libtorrent give up after about 2 s before trying others.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Our queries in flight at once, across every lookup and ping.
pub const MAX_IN_FLIGHT: usize = 256;

/// Candidates one lookup keeps (closest first); more than enough to find the K closest.
pub const MAX_CANDIDATES: usize = 64;

/// Queries one lookup may send, announces included.
pub const MAX_LOOKUP_QUERIES: usize = 200;

/// Longest a lookup runs; lookups normally end in a few round trips.
pub const LOOKUP_DEADLINE: Duration = Duration::from_secs(60);

/// Lookups running at once (bootstrap and refreshes included); later ones wait their turn.
pub const MAX_LOOKUPS: usize = 16;

/// Waiting lookups kept; beyond this a new one ends at once with nothing found.
pub const MAX_WAITING_LOOKUPS: usize = 1024;

/// BEP 5: peers announced to us are forgotten after 30 minutes without a new announce.
pub const PEER_TTL: Duration = Duration::from_secs(30 * 60);

/// Peers stored per info-hash (the oldest makes room). libtorrent keeps up to 500; we only need
/// to answer with [`krpc::MAX_VALUES_SENT`].
pub const MAX_PEERS_PER_HASH: usize = 200;

/// Info-hashes stored at once; announces for further ones are refused until some expire.
pub const MAX_HASHES: usize = 2000;

/// Peers stored in all (about 60 bytes each: a few hundred KiB at most).
pub const MAX_STORED_PEERS: usize = 10_000;

/// BEP 5: tokens stay valid about 10 minutes: the secret changes every 5, the previous one is
/// still accepted.
pub const SECRET_ROTATION: Duration = Duration::from_secs(5 * 60);

/// Queries answered per second per source IP, and the burst allowed. A get_peers answer is a few
/// times its query's size; this caps what a spoofed source can make us send at a few KiB/s.
pub const ANSWER_RATE: f64 = 20.0;
/// See [`ANSWER_RATE`].
pub const ANSWER_BURST: f64 = 100.0;

/// Source addresses whose answer budget is tracked; when full and none is idle, queries from
/// new sources are not answered (rather than tracking without bound).
pub const MAX_LIMITED_SOURCES: usize = 4096;

/// Datagrams waiting to be sent; beyond this new ones are dropped (UDP may drop them anyway).
pub const MAX_OUTBOX: usize = 1024;

/// How often the node looks after itself: secrets, peer expiry, pings of questionable nodes,
/// bucket refreshes, a new bootstrap when the table is empty.
pub const MAINTENANCE: Duration = Duration::from_secs(15);

/// Questionable nodes pinged per maintenance round.
const PINGS_PER_ROUND: usize = 4;

/// Bytes of SHA-1(secret, IP) given as a write token: 64 bits cannot be guessed within a
/// token's 10-minute life, and short tokens keep answers small (libtorrent's are 4 bytes).
pub const TOKEN_LEN: usize = 8;

/// Tunables of a [`Node`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Most distinct addresses one lookup reports.
    pub max_peers_per_search: usize,
    /// Whether the node has an IPv6 socket (BEP 32); without one, IPv6 is ignored.
    pub ipv6: bool,
}

/// A lookup's handle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// What the node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// New distinct peers found by a `get_peers` lookup.
    Peers {
        /// The lookup.
        lookup: LookupId,
        /// Addresses not reported before by this lookup.
        peers: Vec<SocketAddr>,
    },
    /// A `get_peers` lookup ended (its announces answered or timed out).
    Done {
        /// The lookup.
        lookup: LookupId,
        /// Distinct peers it reported.
        found: usize,
    },
    /// The bootstrap lookups (one per address family) ended; `nodes` are in the routing tables
    /// now.
    Bootstrapped {
        /// Nodes in the tables.
        nodes: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    /// A ping to learn (or check) a node for the table.
    Ping,
    /// A `find_node` / `get_peers` of a lookup.
    Lookup(LookupId),
    /// An `announce_peer` of a lookup.
    Announce(LookupId),
}

#[derive(Debug)]
struct Pending {
    to: SocketAddr,
    deadline: Instant,
    purpose: Purpose,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CandState {
    Fresh,
    Asked,
    Answered { token: Option<Vec<u8>> },
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate {
    /// Unknown for bootstrap addresses until they answer.
    id: Option<Id>,
    addr: SocketAddr,
    state: CandState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LookupKind {
    /// `find_node`; `bootstrap` reports [`Event::Bootstrapped`] at the end.
    FindNode { bootstrap: bool },
    /// `get_peers`, then `announce_peer` on `announce` when given.
    GetPeers { announce: Option<u16> },
}

#[derive(Debug)]
enum Phase {
    Search,
    Announce { waiting: usize },
}

#[derive(Debug)]
struct Lookup {
    target: Id,
    kind: LookupKind,
    /// The family it runs in (BEP 32: each family is its own DHT).
    v6: bool,
    candidates: Vec<Candidate>,
    /// Every address ever made a candidate, so none is asked twice.
    seen: HashSet<SocketAddr>,
    in_flight: usize,
    queries: usize,
    peers: HashSet<SocketAddr>,
    phase: Phase,
    deadline: Instant,
}

impl Lookup {
    fn sort(&mut self) {
        let target = self.target;
        // Known ids by distance; bootstrap addresses (no id yet) last.
        self.candidates
            .sort_by_key(|c| (c.id.is_none(), c.id.map(|id| id.distance(&target))));
    }

    /// Indices of the K closest candidates with a known id that have not failed.
    fn window(&self) -> Vec<usize> {
        self.candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.id.is_some() && c.state != CandState::Failed)
            .take(K)
            .map(|(i, _)| i)
            .collect()
    }

    fn add_candidate(&mut self, id: Option<Id>, addr: SocketAddr) {
        if addr.is_ipv6() != self.v6
            || self.seen.len() >= MAX_LOOKUP_QUERIES * 2
            || !self.seen.insert(addr)
        {
            return;
        }
        self.candidates.push(Candidate {
            id,
            addr,
            state: CandState::Fresh,
        });
        self.sort();
        if self.candidates.len() > MAX_CANDIDATES {
            // Drop the farthest candidate nobody is waiting on.
            if let Some(i) = self
                .candidates
                .iter()
                .rposition(|c| c.state != CandState::Asked)
            {
                self.candidates.remove(i);
            }
        }
    }
}

#[derive(Debug, Default)]
struct PeerStore {
    by_hash: HashMap<Id, Vec<(SocketAddr, Instant)>>,
    total: usize,
}

impl PeerStore {
    /// Stores (or refreshes) `peer` for `hash`; false when a cap refuses it.
    fn add(&mut self, hash: Id, peer: SocketAddr, now: Instant) -> bool {
        if !self.by_hash.contains_key(&hash) && self.by_hash.len() >= MAX_HASHES {
            return false;
        }
        let full = self.total >= MAX_STORED_PEERS;
        let list = self.by_hash.entry(hash).or_default();
        if let Some(e) = list.iter_mut().find(|(a, _)| *a == peer) {
            e.1 = now;
            return true;
        }
        if list.len() >= MAX_PEERS_PER_HASH {
            if let Some(oldest) = list
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
            {
                list[oldest] = (peer, now);
            }
            return true;
        }
        if full {
            if list.is_empty() {
                self.by_hash.remove(&hash);
            }
            return false;
        }
        list.push((peer, now));
        self.total += 1;
        true
    }

    /// Up to `n` peers of `hash` of one family, most recently announced first.
    fn get(&self, hash: &Id, n: usize, v6: bool, now: Instant) -> Vec<SocketAddr> {
        let Some(list) = self.by_hash.get(hash) else {
            return Vec::new();
        };
        let mut live: Vec<&(SocketAddr, Instant)> = list
            .iter()
            .filter(|(a, t)| a.is_ipv6() == v6 && now.saturating_duration_since(*t) < PEER_TTL)
            .collect();
        live.sort_by_key(|(_, t)| std::cmp::Reverse(*t));
        live.into_iter().take(n).map(|(a, _)| *a).collect()
    }

    fn expire(&mut self, now: Instant) {
        let mut total = 0;
        self.by_hash.retain(|_, list| {
            list.retain(|(_, t)| now.saturating_duration_since(*t) < PEER_TTL);
            total += list.len();
            !list.is_empty()
        });
        self.total = total;
    }
}

/// Token buckets per source IP.
#[derive(Debug, Default)]
struct Limiter {
    sources: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.sources.contains_key(&ip) && self.sources.len() >= MAX_LIMITED_SOURCES {
            // Forget sources whose budget has refilled: they are indistinguishable from new.
            self.sources.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * ANSWER_RATE
                    < ANSWER_BURST
            });
            if self.sources.len() >= MAX_LIMITED_SOURCES {
                return false;
            }
        }
        let (tokens, at) = self.sources.entry(ip).or_insert((ANSWER_BURST, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * ANSWER_RATE)
            .min(ANSWER_BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The DHT node. See the module docs.
#[derive(Debug)]
pub struct Node {
    own: Id,
    /// Routing tables: IPv4, IPv6 (BEP 32 keeps the families apart).
    tables: [Table; 2],
    rng: StdRng,
    secret: [u8; ID_LEN],
    previous_secret: [u8; ID_LEN],
    secret_since: Instant,
    store: PeerStore,
    pending: HashMap<Vec<u8>, Pending>,
    lookups: BTreeMap<LookupId, Lookup>,
    /// Lookups waiting for a free slot (see [`MAX_LOOKUPS`]).
    waiting: VecDeque<(LookupId, Id, LookupKind, bool)>,
    next_lookup: u64,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<Event>,
    limiter: Limiter,
    bootstrap: Vec<SocketAddr>,
    next_maintenance: Instant,
    config: NodeConfig,
}

impl Node {
    /// A node with a random id drawn from `seed` (tests pass a fixed seed).
    pub fn new(config: NodeConfig, now: Instant, seed: u64) -> Node {
        let mut rng = StdRng::seed_from_u64(seed);
        let own = Id(rng.gen());
        Node {
            own,
            tables: [Table::new(own, now), Table::new(own, now)],
            secret: rng.gen(),
            previous_secret: rng.gen(),
            rng,
            secret_since: now,
            store: PeerStore::default(),
            pending: HashMap::new(),
            lookups: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_lookup: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
            limiter: Limiter::default(),
            bootstrap: Vec::new(),
            next_maintenance: now + MAINTENANCE,
            config,
        }
    }

    /// Our node id.
    pub fn id(&self) -> Id {
        self.own
    }

    fn table(&self, v6: bool) -> &Table {
        &self.tables[usize::from(v6)]
    }

    fn table_mut(&mut self, v6: bool) -> &mut Table {
        &mut self.tables[usize::from(v6)]
    }

    /// The families the node runs: IPv4, and IPv6 when it has a socket for it.
    fn families(&self) -> &'static [bool] {
        if self.config.ipv6 {
            &[false, true]
        } else {
            &[false]
        }
    }

    /// Joins the network through `nodes` (resolved bootstrap routers and saved nodes): a
    /// `find_node` lookup of our own id per family. They are tried again whenever a table is
    /// empty. Reports [`Event::Bootstrapped`] when the lookups end.
    pub fn bootstrap(&mut self, nodes: Vec<SocketAddr>, now: Instant) {
        for n in nodes {
            if n.is_ipv6() && !self.config.ipv6 {
                continue;
            }
            if !self.bootstrap.contains(&n) && self.bootstrap.len() < super::MAX_SAVED_NODES {
                self.bootstrap.push(n);
            }
        }
        // IPv6 first: a lookup with no contacts ends at once, and the report waits for the last.
        for v6 in self.families().iter().rev() {
            let has_contacts =
                self.bootstrap.iter().any(|a| a.is_ipv6() == *v6) || self.table(*v6).len(now) > 0;
            // IPv4 always runs, so a bootstrap with nothing at all still reports its end.
            if !v6 || has_contacts {
                self.start(self.own, LookupKind::FindNode { bootstrap: true }, *v6, now);
            }
        }
    }

    /// Pings `addr` (a node learnt outside the DHT); it joins the table if it answers.
    pub fn add_node(&mut self, addr: SocketAddr, now: Instant) {
        let usable = addr.port() != 0 && !addr.ip().is_unspecified();
        if usable && (addr.is_ipv4() || self.config.ipv6) {
            self.send_query(addr, &Query::Ping, Purpose::Ping, now);
        }
    }

    /// Starts a `get_peers` lookup of `info_hash` in one family (`v6`); with `announce`,
    /// announces that port to the closest nodes that gave a token once the search ends.
    pub fn get_peers(
        &mut self,
        info_hash: Id,
        announce: Option<u16>,
        v6: bool,
        now: Instant,
    ) -> LookupId {
        self.start(info_hash, LookupKind::GetPeers { announce }, v6, now)
    }

    /// Stops a lookup; no more events come for it.
    pub fn cancel(&mut self, lookup: LookupId) {
        self.lookups.remove(&lookup);
        self.waiting.retain(|(id, _, _, _)| *id != lookup);
        for p in self.pending.values_mut() {
            if matches!(p.purpose, Purpose::Lookup(l) | Purpose::Announce(l) if l == lookup) {
                // Still counted in flight until it answers or times out; then nobody cares.
                p.purpose = Purpose::Ping;
            }
        }
    }

    /// Nodes in the tables that are not bad, IPv4 first, good ones first (for the state file).
    pub fn live_nodes(&self, now: Instant) -> Vec<SocketAddr> {
        self.tables.iter().flat_map(|t| t.live_nodes(now)).collect()
    }

    /// Nodes in the tables that are not bad.
    pub fn node_count(&self, now: Instant) -> usize {
        self.tables.iter().map(|t| t.len(now)).sum()
    }

    /// Lookups running or waiting.
    pub fn lookup_count(&self) -> usize {
        self.lookups.len() + self.waiting.len()
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.outbox.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_maintenance;
        for p in self.pending.values() {
            t = t.min(p.deadline);
        }
        for l in self.lookups.values() {
            t = t.min(l.deadline);
        }
        t
    }

    fn start(&mut self, target: Id, kind: LookupKind, v6: bool, now: Instant) -> LookupId {
        let id = LookupId(self.next_lookup);
        self.next_lookup += 1;
        if self.lookups.len() >= MAX_LOOKUPS {
            if self.waiting.len() >= MAX_WAITING_LOOKUPS {
                self.finish(id, kind, 0, now);
            } else {
                self.waiting.push_back((id, target, kind, v6));
            }
            return id;
        }
        self.run(id, target, kind, v6, now);
        id
    }

    fn run(&mut self, id: LookupId, target: Id, kind: LookupKind, v6: bool, now: Instant) {
        let mut l = Lookup {
            target,
            kind,
            v6,
            candidates: Vec::new(),
            seen: HashSet::new(),
            in_flight: 0,
            queries: 0,
            peers: HashSet::new(),
            phase: Phase::Search,
            deadline: now + LOOKUP_DEADLINE,
        };
        for c in self.table(v6).closest(&target, K * 2, now) {
            l.add_candidate(Some(c.id), c.addr);
        }
        if l.candidates.len() < K || matches!(kind, LookupKind::FindNode { bootstrap: true }) {
            for a in &self.bootstrap {
                l.add_candidate(None, *a);
            }
        }
        if let LookupKind::GetPeers { .. } = kind {
            // Peers announced to us count too: in a small DHT we may be the closest node.
            let local = self
                .store
                .get(&target, self.config.max_peers_per_search, v6, now);
            self.report_peers(id, &mut l, local);
        }
        self.lookups.insert(id, l);
        self.step(id, now);
    }

    fn report_peers(&mut self, id: LookupId, l: &mut Lookup, values: Vec<SocketAddr>) {
        let mut fresh = Vec::new();
        for v in values {
            if l.peers.len() >= self.config.max_peers_per_search.max(1) {
                break;
            }
            if l.peers.insert(v) {
                fresh.push(v);
            }
        }
        if !fresh.is_empty() {
            self.events.push_back(Event::Peers {
                lookup: id,
                peers: fresh,
            });
        }
    }

    /// Sends what a lookup may send now, and ends it when its search and announces are over.
    fn step(&mut self, id: LookupId, now: Instant) {
        let Some(mut l) = self.lookups.remove(&id) else {
            return;
        };
        if now >= l.deadline {
            return self.finish(id, l.kind, l.peers.len(), now);
        }
        if let Phase::Announce { waiting } = l.phase {
            if waiting == 0 {
                return self.finish(id, l.kind, l.peers.len(), now);
            }
            self.lookups.insert(id, l);
            return;
        }
        let query = match l.kind {
            LookupKind::FindNode { .. } => Query::FindNode { target: l.target },
            LookupKind::GetPeers { .. } => Query::GetPeers {
                info_hash: l.target,
            },
        };
        // Bootstrap addresses (no id yet) go first: nothing else is known at the start.
        let unknown: Vec<usize> = l
            .candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.id.is_none() && c.state == CandState::Fresh)
            .map(|(i, _)| i)
            .collect();
        let window = l.window();
        let mut done = !window.is_empty()
            && window
                .iter()
                .all(|&i| matches!(l.candidates[i].state, CandState::Answered { .. }))
            && (window.len() >= K || l.in_flight == 0)
            && unknown.is_empty();
        if !done {
            for i in unknown.into_iter().chain(window) {
                if l.in_flight >= ALPHA
                    || l.queries >= MAX_LOOKUP_QUERIES
                    || self.pending.len() >= MAX_IN_FLIGHT
                {
                    break;
                }
                if l.candidates[i].state != CandState::Fresh {
                    continue;
                }
                let to = l.candidates[i].addr;
                if self.send_query(to, &query, Purpose::Lookup(id), now) {
                    l.candidates[i].state = CandState::Asked;
                    l.in_flight += 1;
                    l.queries += 1;
                } else {
                    l.candidates[i].state = CandState::Failed;
                }
            }
            // Nothing asked and nothing to ask: the search cannot go further.
            let waiting_for_slot = self.pending.len() >= MAX_IN_FLIGHT;
            done = l.in_flight == 0 && !waiting_for_slot;
        }
        if !done {
            self.lookups.insert(id, l);
            return;
        }
        // The search is over: announce to the closest nodes that gave a token.
        if let LookupKind::GetPeers {
            announce: Some(port),
        } = l.kind
        {
            let targets: Vec<(SocketAddr, Vec<u8>)> = l
                .window()
                .into_iter()
                .filter_map(|i| match &l.candidates[i].state {
                    CandState::Answered { token: Some(t) } => {
                        Some((l.candidates[i].addr, t.clone()))
                    }
                    _ => None,
                })
                .collect();
            let mut waiting = 0;
            for (to, token) in targets {
                let q = Query::AnnouncePeer {
                    info_hash: l.target,
                    port,
                    implied_port: false,
                    token,
                };
                if self.send_query(to, &q, Purpose::Announce(id), now) {
                    waiting += 1;
                }
            }
            if waiting > 0 {
                l.phase = Phase::Announce { waiting };
                self.lookups.insert(id, l);
                return;
            }
        }
        self.finish(id, l.kind, l.peers.len(), now);
    }

    fn finish(&mut self, id: LookupId, kind: LookupKind, found: usize, now: Instant) {
        self.lookups.remove(&id);
        match kind {
            LookupKind::GetPeers { .. } => self.events.push_back(Event::Done { lookup: id, found }),
            LookupKind::FindNode { bootstrap: true } => {
                // One report when the last family's bootstrap ends.
                let boot = LookupKind::FindNode { bootstrap: true };
                let more = self.lookups.values().any(|l| l.kind == boot)
                    || self.waiting.iter().any(|w| w.2 == boot);
                if !more {
                    let nodes = self.node_count(now);
                    self.events.push_back(Event::Bootstrapped { nodes });
                }
            }
            LookupKind::FindNode { bootstrap: false } => {}
        }
    }

    /// Starts waiting lookups while there is room.
    fn start_waiting(&mut self, now: Instant) {
        while self.lookups.len() < MAX_LOOKUPS {
            let Some((id, target, kind, v6)) = self.waiting.pop_front() else {
                break;
            };
            self.run(id, target, kind, v6, now);
        }
    }

    /// Queues a query; false when too many are in flight.
    fn send_query(&mut self, to: SocketAddr, q: &Query, purpose: Purpose, now: Instant) -> bool {
        if self.pending.len() >= MAX_IN_FLIGHT || self.outbox.len() >= MAX_OUTBOX {
            return false;
        }
        let tid = loop {
            let t: [u8; 4] = self.rng.gen();
            if !self.pending.contains_key(&t[..]) {
                break t.to_vec();
            }
        };
        let bytes = krpc::encode_query(&tid, &self.own, q, false);
        self.pending.insert(
            tid,
            Pending {
                to,
                deadline: now + QUERY_TIMEOUT,
                purpose,
            },
        );
        self.outbox.push_back((to, bytes));
        true
    }

    fn send(&mut self, to: SocketAddr, bytes: Vec<u8>) {
        if self.outbox.len() < MAX_OUTBOX {
            self.outbox.push_back((to, bytes));
        }
    }

    fn token(&self, secret: &[u8; ID_LEN], ip: &IpAddr) -> Vec<u8> {
        let mut h = Sha1::new();
        h.update(secret);
        match ip {
            IpAddr::V4(v4) => h.update(v4.octets()),
            IpAddr::V6(v6) => h.update(v6.octets()),
        }
        h.finalize()[..TOKEN_LEN].to_vec()
    }

    fn token_ok(&self, token: &[u8], ip: &IpAddr) -> bool {
        token == self.token(&self.secret, ip).as_slice()
            || token == self.token(&self.previous_secret, ip).as_slice()
    }

    /// One received datagram. Anything malformed is dropped (a malformed query with a usable
    /// transaction id is answered with error 203); nothing here can panic on input.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        if from.port() == 0 || (from.is_ipv6() && !self.config.ipv6) {
            return;
        }
        let msg = match krpc::decode(bytes) {
            Ok(m) => m,
            Err(krpc::KrpcError::Malformed {
                tid: Some(tid),
                query: true,
                reason,
            }) => {
                if self.limiter.allow(from.ip(), now) {
                    self.send(from, krpc::encode_error(&tid, krpc::code::PROTOCOL, reason));
                }
                return;
            }
            Err(_) => return,
        };
        match msg.body {
            Body::Query {
                id,
                query,
                read_only,
                want,
            } => self.handle_query(from, msg.tid, (id, read_only, want), query, now),
            Body::Response(r) => self.handle_reply(from, &msg.tid, Some(r), now),
            Body::Error { .. } => self.handle_reply(from, &msg.tid, None, now),
        }
    }

    /// The K closest nodes to `target` of the families `want` asks for (BEP 32), or else of
    /// the querier's own family.
    fn closest_for(&self, target: &Id, want: Option<Want>, v6: bool, now: Instant) -> Vec<Contact> {
        let want = want.unwrap_or(Want { v4: !v6, v6 });
        let mut nodes = Vec::new();
        if want.v4 {
            nodes.extend(self.table(false).closest(target, K, now));
        }
        if want.v6 && self.config.ipv6 {
            nodes.extend(self.table(true).closest(target, K, now));
        }
        nodes
    }

    fn handle_query(
        &mut self,
        from: SocketAddr,
        tid: Vec<u8>,
        (id, read_only, want): (Id, bool, Option<Want>),
        query: Query,
        now: Instant,
    ) {
        let ip = from.ip();
        let v6 = from.is_ipv6();
        if !self.limiter.allow(ip, now) {
            return;
        }
        let to = from;
        let reply = match query {
            Query::Ping => krpc::encode_response(&tid, &self.own, &Response::default()),
            Query::FindNode { target } => {
                let r = Response {
                    nodes: self.closest_for(&target, want, v6, now),
                    ..Response::default()
                };
                krpc::encode_response(&tid, &self.own, &r)
            }
            Query::GetPeers { info_hash } => {
                let r = Response {
                    id: None,
                    nodes: self.closest_for(&info_hash, want, v6, now),
                    values: self.store.get(&info_hash, krpc::MAX_VALUES_SENT, v6, now),
                    token: Some(self.token(&self.secret, &ip)),
                };
                krpc::encode_response(&tid, &self.own, &r)
            }
            Query::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.token_ok(&token, &ip) {
                    krpc::encode_error(&tid, krpc::code::PROTOCOL, "bad token")
                } else {
                    let port = if implied_port { from.port() } else { port };
                    if self.store.add(info_hash, SocketAddr::new(ip, port), now) {
                        krpc::encode_response(&tid, &self.own, &Response::default())
                    } else {
                        krpc::encode_error(&tid, krpc::code::GENERIC, "peer store full")
                    }
                }
            }
            Query::Unknown(_) => {
                krpc::encode_error(&tid, krpc::code::METHOD_UNKNOWN, "method unknown")
            }
        };
        self.send(to, reply);
        if read_only {
            // BEP 43: read-only nodes never enter a routing table.
            return;
        }
        self.table_mut(v6).heard_query(&id, from, now);
        let already = self.pending.values().any(|p| p.to == from);
        if !already && self.table(v6).would_take(&id, now) {
            // A stranger who queried us: it joins once it answers a ping (a spoofed source
            // never does). This is how the first node of a network learns the others.
            self.send_query(from, &Query::Ping, Purpose::Ping, now);
        }
    }

    /// A response (`r` is `Some`) or an error (`None`) with transaction id `tid`.
    fn handle_reply(&mut self, from: SocketAddr, tid: &[u8], r: Option<Response>, now: Instant) {
        match self.pending.get(tid) {
            Some(p) if p.to == from => {}
            // Unknown, or from another address than we asked: ignored (spoofing defence).
            _ => return,
        }
        let Some(p) = self.pending.remove(tid) else {
            return;
        };
        let responder = r.as_ref().and_then(|r| r.id);
        if let Some(id) = responder {
            if let Insert::Full { ping: Some(old) } = self
                .table_mut(from.is_ipv6())
                .heard_response(Contact { id, addr: from }, now)
            {
                if !self.pending.values().any(|q| q.to == old) {
                    self.send_query(old, &Query::Ping, Purpose::Ping, now);
                }
            }
        }
        match p.purpose {
            Purpose::Ping => {}
            Purpose::Lookup(lid) => {
                if let Some(mut l) = self.lookups.remove(&lid) {
                    l.in_flight = l.in_flight.saturating_sub(1);
                    if let Some(c) = l.candidates.iter_mut().find(|c| c.addr == from) {
                        match &r {
                            // A response without an id cannot be announced to or ranked.
                            Some(resp) if responder.is_some() => {
                                c.id = responder;
                                c.state = CandState::Answered {
                                    token: resp.token.clone(),
                                };
                            }
                            _ => c.state = CandState::Failed,
                        }
                    }
                    l.sort();
                    if let Some(resp) = r {
                        for n in resp.nodes {
                            if n.id != self.own && n.addr.port() != 0 {
                                l.add_candidate(Some(n.id), n.addr);
                            }
                        }
                        if matches!(l.kind, LookupKind::GetPeers { .. }) {
                            self.report_peers(lid, &mut l, resp.values);
                        }
                    }
                    self.lookups.insert(lid, l);
                }
                self.step(lid, now);
            }
            Purpose::Announce(lid) => {
                if let Some(l) = self.lookups.get_mut(&lid) {
                    if let Phase::Announce { waiting } = &mut l.phase {
                        *waiting = waiting.saturating_sub(1);
                    }
                }
                self.step(lid, now);
            }
        }
        self.start_waiting(now);
    }

    /// Expires queries and lookups, and runs maintenance when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<Vec<u8>> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| t.clone())
            .collect();
        let mut touched = Vec::new();
        for tid in expired {
            let Some(p) = self.pending.remove(&tid) else {
                continue;
            };
            self.table_mut(p.to.is_ipv6()).failed(&p.to);
            match p.purpose {
                Purpose::Ping => {}
                Purpose::Lookup(lid) => {
                    if let Some(l) = self.lookups.get_mut(&lid) {
                        l.in_flight = l.in_flight.saturating_sub(1);
                        if let Some(c) = l.candidates.iter_mut().find(|c| c.addr == p.to) {
                            c.state = CandState::Failed;
                        }
                    }
                    touched.push(lid);
                }
                Purpose::Announce(lid) => {
                    if let Some(l) = self.lookups.get_mut(&lid) {
                        if let Phase::Announce { waiting } = &mut l.phase {
                            *waiting = waiting.saturating_sub(1);
                        }
                    }
                    touched.push(lid);
                }
            }
        }
        touched.extend(
            self.lookups
                .iter()
                .filter(|(_, l)| l.deadline <= now)
                .map(|(id, _)| *id),
        );
        // Lookups that waited for a free query slot may go on now.
        touched.extend(self.lookups.keys().copied());
        touched.sort();
        touched.dedup();
        for lid in touched {
            self.step(lid, now);
        }
        if now >= self.next_maintenance {
            self.next_maintenance = now + MAINTENANCE;
            self.maintain(now);
        }
        self.start_waiting(now);
    }

    fn maintain(&mut self, now: Instant) {
        if now.saturating_duration_since(self.secret_since) >= SECRET_ROTATION {
            self.previous_secret = self.secret;
            self.secret = self.rng.gen();
            self.secret_since = now;
        }
        self.store.expire(now);
        for &v6 in self.families() {
            for addr in self.table(v6).questionable(PINGS_PER_ROUND, now) {
                if !self.pending.values().any(|p| p.to == addr) {
                    self.send_query(addr, &Query::Ping, Purpose::Ping, now);
                }
            }
            let busy = self
                .lookups
                .values()
                .any(|l| l.v6 == v6 && matches!(l.kind, LookupKind::FindNode { .. }));
            if busy {
                continue;
            }
            if self.table(v6).len(now) == 0 {
                if self.bootstrap.iter().any(|a| a.is_ipv6() == v6) {
                    self.start(self.own, LookupKind::FindNode { bootstrap: true }, v6, now);
                }
            } else {
                let random = self.rng.gen();
                if let Some(target) = self.table_mut(v6).stale_bucket(now, random) {
                    self.start(target, LookupKind::FindNode { bootstrap: false }, v6, now);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
