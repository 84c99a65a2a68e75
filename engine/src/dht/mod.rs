//! The DHT (BEP 5) as a session service: our own node, a sans-IO core under a thin tokio driver.
//!
//! It owns one DHT node (one UDP socket and one driver task), the searches it runs for
//! torrents, and the state file that keeps the routing table across restarts. It never decides
//! which torrents may use the DHT (private torrents, BEP 27, are the caller's business) and never
//! dials peers: a search only yields addresses.
//!
//! Map: [`krpc`] reads and writes KRPC messages; [`table`] is the routing table; [`node`] is
//! the node itself (answers queries, runs lookups, keeps the peer store), taking datagrams and
//! `now`; this file binds the socket, resolves the bootstrap names, carries datagrams and
//! commands to the node, and keeps the state file.
//!
//! Why our own node: the `mainline` crate (8.0.1, used before) parses only 4-byte KRPC
//! transaction ids, while libtorrent, like most of the DHT, sends 2-byte ones, so it never
//! answered libtorrent's queries, and it is IPv4 only with a blocking thread per node;
//! `librqbit-dht` 9.1 was rejected earlier (on loopback a network of its nodes never forms, it
//! announces only near its own id, its searches do not end). Ours echoes any transaction id of
//! 1 to 16 bytes, treats loopback and private addresses like any other (no BEP 42 id check), so
//! several nodes on 127.0.0.1 form a network, and bounds everything it keeps (see [`node`]).
//!
//! Bounds here: one search yields at most [`DhtConfig::max_peers_per_search`] distinct addresses
//! and lasts at most [`SEARCH_DEADLINE`]; at most [`MAX_CONCURRENT_SEARCHES`] run at once (later
//! ones wait); the command queue holds [`COMMAND_QUEUE`]; the state file holds at most
//! [`MAX_SAVED_NODES`]. IPv6 (BEP 32) runs on a second, IPv6-only socket when the host has
//! IPv6 and the node listens on all interfaces. Not done: BEP 42 node ids, BEP 44 storage.

pub mod krpc;
pub mod node;
pub mod table;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::types::InfoHash;
use node::{Event, LookupId, Node, NodeConfig};

/// Longest one search may run (the node's lookup deadline); searches normally end within a few
/// query timeouts.
pub const SEARCH_DEADLINE: Duration = node::LOOKUP_DEADLINE;

/// Searches running at once; later ones wait in the node.
pub const MAX_CONCURRENT_SEARCHES: usize = node::MAX_LOOKUPS;

/// Commands (searches, added nodes) queued for the driver; a search that finds the queue full
/// ends at once with nothing found (the torrent's schedule searches again later).
pub const COMMAND_QUEUE: usize = 256;

/// The public routers tried with [`Bootstrap::PublicRouters`] (those libtorrent and
/// Transmission ship with).
pub const PUBLIC_ROUTERS: [&str; 4] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "router.utorrent.com:6881",
    "dht.libtorrent.org:25401",
];

/// Ceiling of [`DhtConfig::max_peers_per_search`]: each search's channel is that large.
pub const MAX_PEERS_PER_SEARCH: usize = 4096;

/// Longest a bootstrap name may take to resolve.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes kept in the state file and nodes queued by [`Dht::add_node`]; a routing table holds at
/// most 160 buckets of 8 (BEP 5 `K`), and a few hundred live nodes are plenty to rejoin.
pub const MAX_SAVED_NODES: usize = 256;

/// Largest state file read: `MAX_SAVED_NODES` lines of at most 48 bytes (an IPv6 address with
/// its port in brackets; IPv4 lines are at most 21)
/// plus the header, with room to spare.
const MAX_STATE_FILE_BYTES: u64 = 16 * 1024;

/// First line of the state file, so a file of another format is ignored rather than misread.
const STATE_FILE_HEADER: &str = "zigtorrent-dht-nodes 1";

/// Default for [`DhtConfig::max_peers_per_search`]: libtorrent's default `dht_max_peers_reply` is
/// 100 per node; a few hundred distinct addresses from one search is more than a torrent dials.
pub const DEFAULT_MAX_PEERS_PER_SEARCH: usize = 500;

/// Where a node looks for its first contacts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// [`PUBLIC_ROUTERS`].
    PublicRouters,
    /// Exactly these `HOST:PORT` nodes (`--dht-bootstrap`); names are resolved at start.
    Nodes(Vec<String>),
    /// Nobody: the first node of a new network (tests, a LAN). Other nodes join by bootstrapping
    /// from it.
    Nobody,
}

/// How to start a [`Dht`].
#[derive(Debug, Clone)]
pub struct DhtConfig {
    /// The IPv4 UDP address to bind. Give it the `--listen` port number: when uTP already holds
    /// that UDP port, the node binds an ephemeral port on the same IP instead and
    /// [`Dht::local_addr`] says which.
    pub listen: SocketAddr,
    /// The IPv6 UDP address to bind as well (BEP 32), if any; port 0 means "the port `listen`
    /// got", falling back to an ephemeral one. A host without IPv6 only logs that it is off.
    pub listen6: Option<SocketAddr>,
    /// First contacts; the nodes of `state_file` are always tried as well.
    pub bootstrap: Bootstrap,
    /// Keeps the routing table across restarts: read at start, written atomically at shutdown.
    pub state_file: Option<PathBuf>,
    /// Most distinct addresses one search yields.
    pub max_peers_per_search: usize,
}

impl DhtConfig {
    /// A node on `listen` with the public routers, no state file and the default limits; when
    /// `listen` is the unspecified IPv4 address (all interfaces), also on all IPv6 interfaces.
    pub fn new(listen: SocketAddr) -> DhtConfig {
        let all = listen.ip() == IpAddr::from([0u8; 4]);
        DhtConfig {
            listen,
            listen6: all.then_some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))),
            bootstrap: Bootstrap::PublicRouters,
            state_file: None,
            max_peers_per_search: DEFAULT_MAX_PEERS_PER_SEARCH,
        }
    }
}

/// Why the DHT could not start or save its state.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// [`DhtConfig::listen`] must be IPv4 (IPv6 goes in [`DhtConfig::listen6`]).
    #[error("the DHT's main socket is IPv4, not {0}")]
    Ipv6NotSupported(SocketAddr),
    /// Neither the asked port nor an ephemeral one could be bound.
    #[error("cannot bind the DHT's UDP socket on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The state file could not be read or written.
    #[error("DHT state file {path}: {source}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// A task (writing the state file, the driver) died.
    #[error("a DHT task failed: {0}")]
    Blocking(String),
}

/// A running DHT node. Dropping it stops the node too, but only [`Dht::shutdown`] saves the state
/// file and waits until the socket is closed.
pub struct Dht {
    local_addr: SocketAddr,
    local_addr6: Option<SocketAddr>,
    state_file: Option<PathBuf>,
    commands: mpsc::Sender<Command>,
    bootstrapped: watch::Receiver<Option<usize>>,
    /// Without [`Dht::shutdown`], the driver returns by itself once this handle (and with it the
    /// command queue) is dropped.
    driver: Mutex<Option<JoinHandle<()>>>,
    max_peers_per_search: usize,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// What the handle asks of the driver.
enum Command {
    Bootstrap(Vec<SocketAddr>),
    Search {
        info_hash: InfoHash,
        announce: Option<u16>,
        tx: mpsc::Sender<SocketAddr>,
    },
    AddNode(SocketAddr),
    NodeCount(oneshot::Sender<usize>),
    Shutdown(oneshot::Sender<Vec<SocketAddr>>),
}

impl Dht {
    /// Binds the socket and starts the node; it answers queries at once. Bootstrapping goes on
    /// in the background (names are resolved off the driver); searches started before it ends
    /// simply find less.
    pub async fn start(cfg: DhtConfig) -> Result<Dht, DhtError> {
        let listen = match cfg.listen {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => return Err(DhtError::Ipv6NotSupported(cfg.listen)),
        };
        let saved = match &cfg.state_file {
            Some(path) => read_state_file(path)?,
            None => Vec::new(),
        };
        let socket = bind(listen).await?;
        let local_addr = socket.local_addr().map_err(|source| DhtError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let socket6 = match cfg.listen6 {
            Some(SocketAddr::V6(want)) => {
                let port = if want.port() == 0 {
                    local_addr.port()
                } else {
                    want.port()
                };
                bind6(SocketAddr::new(IpAddr::V6(*want.ip()), port))
            }
            _ => None,
        };
        let local_addr6 = socket6.as_ref().and_then(|s| s.local_addr().ok());
        let names: Vec<String> = match &cfg.bootstrap {
            Bootstrap::PublicRouters => PUBLIC_ROUTERS.iter().map(|s| s.to_string()).collect(),
            Bootstrap::Nodes(nodes) => nodes.clone(),
            Bootstrap::Nobody => Vec::new(),
        };
        tracing::info!(%local_addr, ?local_addr6, saved = saved.len(), "DHT started");
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (boot_tx, bootstrapped) = watch::channel(None);
        let max_peers_per_search = cfg.max_peers_per_search.clamp(1, MAX_PEERS_PER_SEARCH);
        let node = Node::new(
            NodeConfig {
                max_peers_per_search,
                ipv6: socket6.is_some(),
            },
            tokio::time::Instant::now().into_std(),
            rand::random(),
        );
        let warn_unanswered = !names.is_empty() || !saved.is_empty();
        let sockets = Sockets {
            v4: socket,
            v6: socket6,
        };
        let driver = tokio::spawn(run_driver(sockets, node, rx, boot_tx, warn_unanswered));
        // Resolution may wait on DNS; the node answers queries meanwhile.
        let to_driver = commands.clone();
        tokio::spawn(async move {
            let mut addrs = saved;
            // All at once: searches wait for this (see the driver), so it must not take long.
            let lookups = names.iter().map(|name| async move {
                let lookup = tokio::net::lookup_host(name.as_str());
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(found)) => found.collect(),
                    _ => {
                        tracing::debug!(%name, "DHT bootstrap name did not resolve");
                        Vec::new()
                    }
                }
            });
            for found in futures::future::join_all(lookups).await {
                addrs.extend(found);
            }
            let _ = to_driver.send(Command::Bootstrap(addrs)).await;
        });
        Ok(Dht {
            local_addr,
            local_addr6,
            state_file: cfg.state_file,
            commands,
            bootstrapped,
            driver: Mutex::new(Some(driver)),
            max_peers_per_search,
        })
    }

    /// The IPv4 UDP address the node is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The IPv6 UDP address the node is bound to, if it runs on IPv6 too (BEP 32).
    pub fn local_addr6(&self) -> Option<SocketAddr> {
        self.local_addr6
    }

    /// One search for peers of `info_hash` (in each family the node runs): the receiver yields
    /// distinct addresses (at most `max_peers_per_search` per family) and closes when the search ends. With `announce_port`, the node
    /// then announces itself for that hash on that port (the TCP/uTP port; never the implied port,
    /// since the DHT socket may not be the one peers connect to), and the receiver closes after
    /// the announces are answered or timed out. Dropping the receiver stops the search.
    pub fn get_peers(
        &self,
        info_hash: InfoHash,
        announce_port: Option<u16>,
    ) -> mpsc::Receiver<SocketAddr> {
        // Large enough for every address one search may report, so the driver never waits on a
        // slow reader (it serves every search and query).
        let (tx, rx) = mpsc::channel(self.max_peers_per_search * 2);
        let cmd = Command::Search {
            info_hash,
            announce: announce_port,
            tx,
        };
        if self.commands.try_send(cmd).is_err() {
            // The sender is dropped with the command: the receiver closes, nothing found.
            tracing::debug!(%info_hash, "DHT busy or stopped; search skipped");
        }
        rx
    }

    /// Pings a node learnt outside the DHT (a `.torrent`'s `nodes` key, a PORT message); it joins
    /// the routing table (and so the state file) if it answers. IPv6 addresses are ignored
    /// unless the node runs on IPv6.
    pub fn add_node(&self, addr: SocketAddr) {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return;
        }
        let _ = self.commands.try_send(Command::AddNode(addr));
    }

    /// Nodes in the routing table that are not bad.
    pub async fn node_count(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::NodeCount(tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }

    /// Waits for the first bootstrap to finish; true when it found at least one node.
    pub async fn bootstrapped(&self) -> bool {
        let mut rx = self.bootstrapped.clone();
        let found = match rx.wait_for(Option::is_some).await {
            Ok(n) => n.unwrap_or(0) > 0,
            Err(_) => false,
        };
        found
    }

    /// Stops every search, saves the routing table to the state file (if any) and waits until the
    /// node's socket is closed, so the port can be bound again when this returns.
    pub async fn shutdown(self) -> Result<(), DhtError> {
        let (tx, rx) = oneshot::channel();
        let nodes = if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            rx.await.unwrap_or_default()
        } else {
            Vec::new()
        };
        let driver = self.driver.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(driver) = driver {
            // The socket is dropped when the driver returns.
            driver
                .await
                .map_err(|e| DhtError::Blocking(e.to_string()))?;
        }
        match &self.state_file {
            Some(path) if !nodes.is_empty() => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || write_state_file(&path, &nodes))
                    .await
                    .map_err(|e| DhtError::Blocking(e.to_string()))?
            }
            // An empty table says nothing new: keep the nodes saved before for the next start.
            _ => Ok(()),
        }
    }
}

/// Binds `listen`, or when its port is taken (uTP holds it), an ephemeral port on the same IP.
async fn bind(listen: SocketAddrV4) -> Result<UdpSocket, DhtError> {
    let err = |source| DhtError::Bind {
        addr: SocketAddr::V4(listen),
        source,
    };
    match UdpSocket::bind(listen).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() != 0 => {
            tracing::info!(%listen, "DHT port taken (uTP holds it); using an ephemeral port");
            UdpSocket::bind(SocketAddrV4::new(*listen.ip(), 0))
                .await
                .map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

/// An IPv6-only socket on `listen` (or an ephemeral port when that one is taken); `None`, logged,
/// when the host has no IPv6. IPv6-only, so it never takes the IPv4 socket's port number.
fn bind6(listen: SocketAddr) -> Option<UdpSocket> {
    let open = |addr: SocketAddr| -> std::io::Result<UdpSocket> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_only_v6(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        UdpSocket::from_std(s.into())
    };
    let got = match open(listen) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && listen.port() != 0 => {
            open(SocketAddr::new(listen.ip(), 0))
        }
        other => other,
    };
    match got {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::info!(%listen, "DHT runs on IPv4 only: no IPv6 socket ({e})");
            None
        }
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The driver's sockets: IPv4 always, IPv6 when the host has it.
struct Sockets {
    v4: UdpSocket,
    v6: Option<UdpSocket>,
}

impl Sockets {
    async fn send(&self, to: SocketAddr, bytes: &[u8]) {
        let socket = match (to, &self.v6) {
            (SocketAddr::V4(_), _) => &self.v4,
            (SocketAddr::V6(_), Some(v6)) => v6,
            (SocketAddr::V6(_), None) => return,
        };
        if let Err(e) = socket.send_to(bytes, to).await {
            tracing::trace!(%to, "DHT send failed: {e}");
        }
    }

    /// The next datagram from either socket.
    async fn recv(
        &self,
        buf4: &mut [u8],
        buf6: &mut [u8],
    ) -> (std::io::Result<(usize, SocketAddr)>, bool) {
        match &self.v6 {
            None => (self.v4.recv_from(buf4).await, false),
            Some(v6) => tokio::select! {
                r = self.v4.recv_from(buf4) => (r, false),
                r = v6.recv_from(buf6) => (r, true),
            },
        }
    }
}

/// One search as the caller sees it: its channel and how many family lookups still run.
struct Search {
    tx: mpsc::Sender<SocketAddr>,
    lookups: usize,
}

/// A search as asked for: the torrent, the port to announce, where its addresses go.
type SearchRequest = (InfoHash, Option<u16>, mpsc::Sender<SocketAddr>);

/// Starts one lookup per family for a search and remembers which search each belongs to.
fn start_search(
    node: &mut Node,
    (searches, by_lookup, next): (
        &mut HashMap<u64, Search>,
        &mut HashMap<LookupId, u64>,
        &mut u64,
    ),
    families: &[bool],
    (info_hash, announce, tx): SearchRequest,
) {
    let key = *next;
    *next += 1;
    searches.insert(
        key,
        Search {
            tx,
            lookups: families.len(),
        },
    );
    for &v6 in families {
        let id = node.get_peers(krpc::Id(info_hash.0), announce, v6, now());
        by_lookup.insert(id, key);
    }
}

/// The driver: one loop owning the sockets and the node. It sends what the node queues, hands
/// datagrams, commands and deadlines to it, and routes its events to the searches' channels.
async fn run_driver(
    sockets: Sockets,
    mut node: Node,
    mut commands: mpsc::Receiver<Command>,
    bootstrapped: watch::Sender<Option<usize>>,
    warn_unanswered: bool,
) {
    // Each family lookup points at its search; a search ends when its last lookup does.
    let mut by_lookup: HashMap<LookupId, u64> = HashMap::new();
    let mut searches: HashMap<u64, Search> = HashMap::new();
    let mut next_search = 0u64;
    // One byte more than the largest datagram accepted, so an oversized one is recognised.
    let mut buf4 = vec![0u8; krpc::MAX_DATAGRAM + 1];
    let mut buf6 = vec![0u8; krpc::MAX_DATAGRAM + 1];
    let families: &[bool] = if sockets.v6.is_some() {
        &[false, true]
    } else {
        &[false]
    };
    let mut warned = false;
    // Searches asked for before the bootstrap addresses are known wait for them (at most
    // RESOLVE_TIMEOUT): run at once, they would find nobody and retry only much later.
    let mut deferred: Option<Vec<SearchRequest>> = Some(Vec::new());
    loop {
        while let Some((to, bytes)) = node.poll_transmit() {
            sockets.send(to, &bytes).await;
        }
        while let Some(event) = node.poll_event() {
            match event {
                Event::Peers { lookup, peers } => {
                    let Some(search) = by_lookup.get(&lookup).and_then(|s| searches.get(s)) else {
                        continue;
                    };
                    // The channel holds every address a search may yield, so only a closed
                    // receiver fails here (noticed below).
                    for p in peers {
                        let _ = search.tx.try_send(p);
                    }
                }
                Event::Done { lookup, .. } => {
                    if let Some(key) = by_lookup.remove(&lookup) {
                        if let Some(search) = searches.get_mut(&key) {
                            search.lookups = search.lookups.saturating_sub(1);
                            if search.lookups == 0 {
                                // Dropping the sender closes the caller's channel.
                                searches.remove(&key);
                            }
                        }
                    }
                }
                Event::Bootstrapped { nodes } => {
                    if nodes == 0 && warn_unanswered && !warned {
                        warned = true;
                        tracing::warn!(
                            "DHT: no bootstrap node answered (offline, or the bootstrap nodes \
                             are down); it keeps trying"
                        );
                    }
                    bootstrapped.send_replace(Some(nodes));
                }
            }
        }
        // Searches whose receiver went away stop here rather than run to their end.
        let gone: Vec<u64> = searches
            .iter()
            .filter(|(_, s)| s.tx.is_closed())
            .map(|(k, _)| *k)
            .collect();
        for key in gone {
            searches.remove(&key);
            let lookups: Vec<LookupId> = by_lookup
                .iter()
                .filter(|(_, k)| **k == key)
                .map(|(l, _)| *l)
                .collect();
            for l in lookups {
                by_lookup.remove(&l);
                node.cancel(l);
            }
        }
        let deadline = tokio::time::Instant::from_std(node.poll_timeout());
        tokio::select! {
            (got, v6) = sockets.recv(&mut buf4, &mut buf6) => match got {
                Ok((n, from)) if n <= krpc::MAX_DATAGRAM => {
                    let buf = if v6 { &buf6 } else { &buf4 };
                    node.handle_datagram(from, &buf[..n], now());
                }
                Ok(_) => {}
                Err(e) => {
                    // Not fatal (e.g. an ICMP error surfacing); do not spin on it.
                    tracing::trace!("DHT receive failed: {e}");
                    tokio::task::yield_now().await;
                }
            },
            cmd = commands.recv() => match cmd {
                None => return,
                Some(Command::Shutdown(reply)) => {
                    let _ = reply.send(node.live_nodes(now()));
                    return;
                }
                Some(Command::Bootstrap(nodes)) => {
                    node.bootstrap(nodes, now());
                    for (info_hash, announce, tx) in deferred.take().unwrap_or_default() {
                        start_search(
                            &mut node,
                            (&mut searches, &mut by_lookup, &mut next_search),
                            families,
                            (info_hash, announce, tx),
                        );
                    }
                }
                Some(Command::Search { info_hash, announce, tx }) => match &mut deferred {
                    // Bounded: one command each, and the command queue is.
                    Some(waiting) if waiting.len() < COMMAND_QUEUE => {
                        waiting.push((info_hash, announce, tx));
                    }
                    // Beyond that the sender is dropped: the search ends with nothing found.
                    Some(_) => {}
                    None => {
                        start_search(
                            &mut node,
                            (&mut searches, &mut by_lookup, &mut next_search),
                            families,
                            (info_hash, announce, tx),
                        );
                    }
                },
                Some(Command::AddNode(addr)) => node.add_node(addr, now()),
                Some(Command::NodeCount(reply)) => {
                    let _ = reply.send(node.node_count(now()));
                }
            },
            () = tokio::time::sleep_until(deadline) => node.handle_timeout(now()),
        }
    }
}

/// Parses a state file: the header line, then one `IPv4:PORT` or `[IPv6]:PORT` per line. Lines that do not parse
/// are skipped; at most [`MAX_SAVED_NODES`] distinct nodes are kept. A wrong header yields none.
pub fn parse_state(text: &str) -> Vec<SocketAddr> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(STATE_FILE_HEADER) {
        return Vec::new();
    }
    let mut out: Vec<SocketAddr> = Vec::new();
    for line in lines {
        if out.len() >= MAX_SAVED_NODES {
            break;
        }
        let Ok(addr) = line.trim().parse::<SocketAddr>() else {
            continue;
        };
        if addr.port() != 0 && !addr.ip().is_unspecified() && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The text [`parse_state`] reads back: header, then the first [`MAX_SAVED_NODES`] distinct nodes.
pub fn format_state(nodes: &[SocketAddr]) -> String {
    let mut text = String::from(STATE_FILE_HEADER);
    text.push('\n');
    let mut seen = HashSet::new();
    for n in nodes
        .iter()
        .filter(|n| seen.insert(**n))
        .take(MAX_SAVED_NODES)
    {
        text.push_str(&n.to_string());
        text.push('\n');
    }
    text
}

fn read_state_file(path: &Path) -> Result<Vec<SocketAddr>, DhtError> {
    use std::io::Read;
    let err = |source| DhtError::StateFile {
        path: path.to_path_buf(),
        source,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_STATE_FILE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    // A truncated last line just fails to parse; a file that is not text yields no nodes.
    Ok(parse_state(&String::from_utf8_lossy(&bytes)))
}

/// Writes to a temporary file beside `path`, fsyncs it, renames it over `path` and fsyncs the
/// folder, so a crash leaves either the old file or the new one.
fn write_state_file(path: &Path, nodes: &[SocketAddr]) -> Result<(), DhtError> {
    let err = |source| DhtError::StateFile {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(name);
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format_state(nodes).as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests;
