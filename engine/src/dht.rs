//! The DHT (BEP 5) as a session service: an adapter over the `mainline` crate, so nothing else in
//! the engine names that crate.
//!
//! It owns one DHT node (its own UDP socket and the crate's actor thread), the searches it runs for
//! torrents, and the state file that keeps the routing table across restarts. It never decides
//! which torrents may use the DHT (private torrents, BEP 27, are the caller's business) and never
//! dials peers: a search only yields addresses.
//!
//! Why `mainline` (evaluated against `librqbit-dht` 9.1): it answers queries as a full node
//! (server mode forced here), a fresh network of our own nodes forms on loopback (the first node
//! learns the nodes that bootstrap from it, responders join the routing table, and BEP 42 treats
//! loopback and private addresses as valid), searches end by themselves, `announce_peer` takes an
//! explicit port, and the peer store, routing table and in-flight requests are bounded. It is IPv4
//! only and runs one blocking thread per node; its socket cannot be shared with uTP, so the DHT
//! takes its own UDP port (see [`DhtConfig::listen`]).
//!
//! Bounds added here: one search yields at most [`DhtConfig::max_peers_per_search`] distinct
//! addresses and lasts at most [`SEARCH_DEADLINE`]; at most [`MAX_CONCURRENT_SEARCHES`] run at once
//! (later ones wait); the state file and the nodes added at run time are capped at
//! [`MAX_SAVED_NODES`].

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::Id;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::types::InfoHash;

/// Longest one search may run: the crate's iterative query normally ends within a few request
/// timeouts (2 s each); this only stops a search that never settles.
pub const SEARCH_DEADLINE: Duration = Duration::from_secs(60);

/// Searches running at once; each holds crate-side query state, so their number is capped.
pub const MAX_CONCURRENT_SEARCHES: usize = 16;

/// Nodes kept in the state file and nodes queued by [`Dht::add_node`]; a routing table holds at
/// most 160 buckets of 8 (BEP 5 `K`), and a few hundred live nodes are plenty to rejoin.
pub const MAX_SAVED_NODES: usize = 256;

/// Largest state file read: `MAX_SAVED_NODES` lines of at most 21 bytes (`255.255.255.255:65535`)
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
    /// The public routers the crate knows (`router.bittorrent.com` and others).
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
    /// The UDP address to bind (IPv4 only). Give it the `--listen` port number: uTP already holds
    /// that UDP port (the crate cannot share a socket), so when the port is taken the node binds an
    /// ephemeral port on the same IP instead and [`Dht::local_addr`] says which.
    pub listen: SocketAddr,
    /// First contacts; the nodes of `state_file` are always tried as well.
    pub bootstrap: Bootstrap,
    /// Keeps the routing table across restarts: read at start, written atomically at shutdown.
    pub state_file: Option<PathBuf>,
    /// Most distinct addresses one search yields.
    pub max_peers_per_search: usize,
}

impl DhtConfig {
    /// A node on `listen` with the public routers, no state file and the default limits.
    pub fn new(listen: SocketAddr) -> DhtConfig {
        DhtConfig {
            listen,
            bootstrap: Bootstrap::PublicRouters,
            state_file: None,
            max_peers_per_search: DEFAULT_MAX_PEERS_PER_SEARCH,
        }
    }
}

/// Why the DHT could not start or save its state.
#[derive(Debug, thiserror::Error)]
pub enum DhtError {
    /// The crate speaks IPv4 only.
    #[error("the DHT listens on IPv4 only, not {0}")]
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
    /// A blocking task (writing the state file) died.
    #[error("a DHT file task failed: {0}")]
    Blocking(String),
}

/// A running DHT node. Dropping it stops the node too, but only [`Dht::shutdown`] saves the state
/// file and waits until the socket is closed.
pub struct Dht {
    node: AsyncDht,
    local_addr: SocketAddr,
    state_file: Option<PathBuf>,
    max_peers_per_search: usize,
    searches: Arc<Semaphore>,
    /// Search tasks; each holds a handle on the node, so shutdown aborts them before the node can
    /// stop.
    tasks: Mutex<JoinSet<()>>,
    /// Nodes learnt at run time (`nodes` key, PORT messages); see [`Dht::add_node`].
    added: Mutex<VecDeque<SocketAddrV4>>,
}

impl std::fmt::Debug for Dht {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dht")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Dht {
    /// Binds the socket and starts the node (in server mode: it answers queries). Bootstrapping
    /// goes on in the background; searches started before it ends simply find less.
    pub async fn start(cfg: DhtConfig) -> Result<Dht, DhtError> {
        let listen = match cfg.listen {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => return Err(DhtError::Ipv6NotSupported(cfg.listen)),
        };
        let saved = match &cfg.state_file {
            Some(path) => read_state_file(path)?,
            None => Vec::new(),
        };
        let mut bootstrap: Vec<String> = match &cfg.bootstrap {
            Bootstrap::PublicRouters => mainline::DEFAULT_BOOTSTRAP_NODES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Bootstrap::Nodes(nodes) => nodes.clone(),
            Bootstrap::Nobody => Vec::new(),
        };
        bootstrap.extend(saved.iter().map(|a| a.to_string()));

        let node = start_node(listen, bootstrap).await?;
        let local_addr = SocketAddr::V4(node.info().await.local_addr());
        tracing::info!(%local_addr, saved = saved.len(), "DHT started");
        let mut tasks = JoinSet::new();
        let watch = node.clone();
        // Said once: the crate itself logs every few seconds while it cannot bootstrap (the
        // cli filters that out).
        tasks.spawn(async move {
            if !watch.bootstrapped().await {
                tracing::warn!(
                    "DHT: no bootstrap node answered (offline, or the bootstrap nodes are down); \
                     it keeps trying"
                );
            }
        });
        Ok(Dht {
            node,
            local_addr,
            state_file: cfg.state_file,
            max_peers_per_search: cfg.max_peers_per_search.max(1),
            searches: Arc::new(Semaphore::new(MAX_CONCURRENT_SEARCHES)),
            tasks: Mutex::new(tasks),
            added: Mutex::new(VecDeque::new()),
        })
    }

    /// The UDP address the node is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// One search for peers of `info_hash`: the receiver yields distinct addresses (IPv4; at most
    /// `max_peers_per_search`) and closes when the search ends. With `announce_port`, the node
    /// then announces itself for that hash on that port (the TCP/uTP port; never the implied port,
    /// since the DHT socket is not the one peers connect to), and the receiver closes after that.
    /// Dropping the receiver stops the search.
    pub fn get_peers(
        &self,
        info_hash: InfoHash,
        announce_port: Option<u16>,
    ) -> mpsc::Receiver<SocketAddr> {
        // A small buffer is enough: the search waits when the caller reads slowly.
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        let limit = self.max_peers_per_search;
        let searches = Arc::clone(&self.searches);
        let id = Id::from_bytes(info_hash.0).expect("an info-hash is 20 bytes, as is a DHT id");
        let search = async move {
            let Ok(_permit) = searches.acquire_owned().await else {
                return;
            };
            let run = async {
                let mut seen = HashSet::new();
                let mut stream = node.get_peers(id);
                'search: while let Some(batch) = stream.next().await {
                    for addr in batch {
                        if seen.len() >= limit {
                            break 'search;
                        }
                        if seen.insert(addr) && tx.send(SocketAddr::V4(addr)).await.is_err() {
                            return;
                        }
                    }
                }
                if let Some(port) = announce_port {
                    if let Err(e) = node.announce_peer(id, Some(port)).await {
                        tracing::debug!(%info_hash, "DHT announce failed: {e}");
                    }
                }
            };
            tokio::select! {
                () = run => {}
                () = tx.closed() => {}
                () = tokio::time::sleep(SEARCH_DEADLINE) => {
                    tracing::debug!(%info_hash, "DHT search hit its deadline");
                }
            }
        };
        let mut tasks = lock(&self.tasks);
        // Reap finished searches so the set stays as large as the running ones.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(search);
        rx
    }

    /// Remembers a node learnt outside the DHT (a `.torrent`'s `nodes` key, a PORT message). The
    /// crate cannot add a bare address to a running node, so these are saved with the routing
    /// table and bootstrapped from at the next start. IPv6 addresses are ignored.
    pub fn add_node(&self, addr: SocketAddr) {
        let SocketAddr::V4(v4) = addr else { return };
        if v4.port() == 0 || v4.ip().is_unspecified() {
            return;
        }
        let mut added = lock(&self.added);
        if added.contains(&v4) {
            return;
        }
        if added.len() >= MAX_SAVED_NODES {
            added.pop_front();
        }
        added.push_back(v4);
    }

    /// Nodes in the routing table that are not stale.
    pub async fn node_count(&self) -> usize {
        self.node.to_bootstrap().await.len()
    }

    /// Waits for the first bootstrap to finish; true when it found at least one node.
    pub async fn bootstrapped(&self) -> bool {
        self.node.bootstrapped().await
    }

    /// Stops every search, saves the routing table to the state file (if any) and waits until the
    /// node's socket is closed, so the port can be bound again when this returns.
    pub async fn shutdown(self) -> Result<(), DhtError> {
        let mut tasks = std::mem::take(&mut *lock(&self.tasks));
        tasks.shutdown().await;
        let saved = if let Some(path) = &self.state_file {
            let mut nodes: Vec<SocketAddrV4> = Vec::new();
            for s in self.node.to_bootstrap().await {
                if let Ok(a) = s.parse() {
                    nodes.push(a);
                }
            }
            nodes.extend(lock(&self.added).iter().copied());
            let path = path.clone();
            tokio::task::spawn_blocking(move || write_state_file(&path, &nodes))
                .await
                .map_err(|e| DhtError::Blocking(e.to_string()))?
        } else {
            Ok(())
        };
        let local = self.local_addr;
        drop(self.node);
        wait_until_released(local).await;
        saved
    }
}

/// Binds `listen` (or, when its port is taken, an ephemeral port on the same IP) and starts the
/// node there.
///
/// The crate's own bind failure is racy (its start-up can panic instead of returning the error
/// when its thread exits first), so the port is checked here first, and a failed start is retried
/// on a fresh ephemeral port a few times before giving up.
async fn start_node(listen: SocketAddrV4, bootstrap: Vec<String>) -> Result<AsyncDht, DhtError> {
    let bootstrap = Arc::new(bootstrap);
    let mut last = None;
    for attempt in 0..START_ATTEMPTS {
        let want = if attempt == 0 {
            listen
        } else {
            SocketAddrV4::new(*listen.ip(), 0)
        };
        let port = match free_port(want) {
            Ok(p) => p,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        let at = SocketAddrV4::new(*listen.ip(), port);
        let boot = Arc::clone(&bootstrap);
        // The crate binds and resolves bootstrap names synchronously.
        match tokio::task::spawn_blocking(move || build_node(at, &boot)).await {
            Ok(Ok(node)) => return Ok(node.as_async()),
            Ok(Err(e)) => last = Some(e),
            Err(panic) => last = Some(std::io::Error::other(panic.to_string())),
        }
    }
    Err(DhtError::Bind {
        addr: SocketAddr::V4(listen),
        source: last.unwrap_or_else(|| std::io::Error::other("no attempt made")),
    })
}

/// Tries of [`start_node`]: the asked port, then fresh ephemeral ports.
const START_ATTEMPTS: usize = 3;

/// The port of `want` if it is free, else an ephemeral port on the same IP (found by binding and
/// releasing it: another program could take it in between, which [`start_node`] retries).
fn free_port(want: SocketAddrV4) -> std::io::Result<u16> {
    match std::net::UdpSocket::bind(want) {
        Ok(s) => Ok(s.local_addr()?.port()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && want.port() != 0 => {
            tracing::info!(%want, "DHT port taken (uTP holds it); using an ephemeral port");
            free_port(SocketAddrV4::new(*want.ip(), 0))
        }
        Err(e) => Err(e),
    }
}

fn build_node(listen: SocketAddrV4, bootstrap: &[String]) -> std::io::Result<mainline::Dht> {
    let mut builder = mainline::Dht::builder();
    builder
        .server_mode()
        .bind_address(*listen.ip())
        .port(listen.port());
    if bootstrap.is_empty() {
        builder.no_bootstrap();
    } else {
        builder.bootstrap(bootstrap);
    }
    builder.build()
}

/// The crate's actor thread closes the socket after it sees the node dropped (it polls every
/// 50 ms); this waits for that by binding the port ourselves, which fails until then.
async fn wait_until_released(addr: SocketAddr) {
    // The crate's poll interval is 50 ms; 100 tries of 20 ms cover a thread that is slow to run.
    for _ in 0..100 {
        if std::net::UdpSocket::bind(addr).is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!(%addr, "the DHT socket is still open after shutdown");
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding these locks leaves plain data behind (a set of tasks, a list of
    // addresses), still fine to use.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Parses a state file: the header line, then one `IPv4:PORT` per line. Lines that do not parse
/// are skipped; at most [`MAX_SAVED_NODES`] distinct nodes are kept. A wrong header yields none.
pub fn parse_state(text: &str) -> Vec<SocketAddrV4> {
    let mut lines = text.lines();
    if lines.next().map(str::trim) != Some(STATE_FILE_HEADER) {
        return Vec::new();
    }
    let mut out: Vec<SocketAddrV4> = Vec::new();
    for line in lines {
        if out.len() >= MAX_SAVED_NODES {
            break;
        }
        let Ok(addr) = line.trim().parse::<SocketAddrV4>() else {
            continue;
        };
        if addr.port() != 0 && !addr.ip().is_unspecified() && !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The text [`parse_state`] reads back: header, then the first [`MAX_SAVED_NODES`] distinct nodes.
pub fn format_state(nodes: &[SocketAddrV4]) -> String {
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

fn read_state_file(path: &Path) -> Result<Vec<SocketAddrV4>, DhtError> {
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
fn write_state_file(path: &Path, nodes: &[SocketAddrV4]) -> Result<(), DhtError> {
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
