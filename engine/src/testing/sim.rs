//! A swarm simulator: whole sessions talking over in-memory links, on a paused tokio clock, with
//! their data in [`MemoryBackend`]s. No sockets, no files, no real sleeps: a swarm test runs in
//! milliseconds and does the same thing on every machine.
//!
//! - [`SimNet`] is the network: each [`SimNet::transport`] is a [`Transport`] bound to one
//!   simulated IP; `listen` registers an address, `connect` joins the two ends with an
//!   in-memory duplex pipe (or is refused, like a closed port).
//! - Time: run the test on a paused runtime (`#[tokio::test(start_paused = true)]`); tokio then
//!   jumps the clock to the next timer whenever every task waits, so "30 s of swarm" costs what
//!   the work costs. Hashing on the blocking pool holds the clock still while it runs.
//! - Randomness: each session gets a fixed [`crate::PeerId`] and `rng_seed`, so piece order
//!   and optimistic unchokes replay the same way (task scheduling order is tokio's).
//!
//! [`SimPeer`] bundles one simulated client: its session, backend and address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::metainfo::Metainfo;
use crate::session::{Session, SessionConfig};
use crate::storage::memory::MemoryBackend;
use crate::storage::{StorageBackend, StorageSpec};
use crate::tracker::TrackerClient;
use crate::transport::{BoxStream, Listener, Transport, TransportError};
use crate::types::PeerId;

/// Bytes buffered in each direction of a simulated link (a socket buffer's worth).
const LINK_BUFFER: usize = 256 * 1024;
/// Ports handed to outgoing connections, like the kernel's ephemeral range.
const FIRST_EPHEMERAL_PORT: u16 = 40_000;

type Accepts = mpsc::Sender<(BoxStream, SocketAddr)>;

#[derive(Default)]
struct NetState {
    listeners: HashMap<SocketAddr, Accepts>,
    next_port: u16,
}

/// The simulated network every [`SimNet::transport`] shares.
#[derive(Clone, Default)]
pub struct SimNet {
    state: Arc<Mutex<NetState>>,
}

impl SimNet {
    /// An empty network.
    pub fn new() -> Self {
        SimNet::default()
    }

    /// A transport for the host at `ip`.
    pub fn transport(&self, ip: IpAddr) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            net: self.clone(),
            ip,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NetState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct SimTransport {
    net: SimNet,
    ip: IpAddr,
}

#[async_trait]
impl Transport for SimTransport {
    fn name(&self) -> &str {
        "sim"
    }

    async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError> {
        let (accepts, from) = {
            let mut state = self.net.lock();
            let accepts = state.listeners.get(&addr).cloned();
            state.next_port = state.next_port.wrapping_add(1);
            let port = FIRST_EPHEMERAL_PORT.wrapping_add(state.next_port % 20_000);
            (accepts, SocketAddr::new(self.ip, port))
        };
        let refused = || TransportError::Io(std::io::ErrorKind::ConnectionRefused.into());
        let accepts = accepts.ok_or_else(refused)?;
        let (ours, theirs) = tokio::io::duplex(LINK_BUFFER);
        accepts
            .send((Box::new(theirs), from))
            .await
            .map_err(|_| refused())?;
        Ok(Box::new(ours))
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        let addr = SocketAddr::new(self.ip, addr.port());
        let (tx, rx) = mpsc::channel(64);
        let mut state = self.net.lock();
        if state.listeners.contains_key(&addr) {
            return Err(TransportError::Io(std::io::ErrorKind::AddrInUse.into()));
        }
        state.listeners.insert(addr, tx);
        Ok(Box::new(SimListener {
            net: self.net.clone(),
            addr,
            rx,
        }))
    }
}

struct SimListener {
    net: SimNet,
    addr: SocketAddr,
    rx: mpsc::Receiver<(BoxStream, SocketAddr)>,
}

#[async_trait]
impl Listener for SimListener {
    fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn accept(&mut self) -> Result<(BoxStream, SocketAddr), TransportError> {
        self.rx
            .recv()
            .await
            .ok_or(TransportError::NotSupported("simulated network gone"))
    }
}

impl Drop for SimListener {
    fn drop(&mut self) {
        self.net.lock().listeners.remove(&self.addr);
    }
}

/// One simulated client.
pub struct SimPeer {
    /// Its session.
    pub session: Session,
    /// Where its torrents' bytes live.
    pub backend: Arc<MemoryBackend>,
    /// Its listening address.
    pub addr: SocketAddr,
    /// Its downloads and state folders (empty but for metadata fetched from magnets).
    pub dir: tempfile::TempDir,
}

impl SimPeer {
    /// A session at `ip`:6881 on `net` that dials `peers` for every torrent; `id` makes its
    /// peer id (and so its identity in logs) fixed.
    pub async fn start(net: &SimNet, ip: IpAddr, id: u8, peers: Vec<SocketAddr>) -> SimPeer {
        Self::start_with(net, ip, id, peers, |_| {}).await
    }

    /// [`SimPeer::start`] with a chance to change the configuration first.
    pub async fn start_with(
        net: &SimNet,
        ip: IpAddr,
        id: u8,
        peers: Vec<SocketAddr>,
        configure: impl FnOnce(&mut SessionConfig),
    ) -> SimPeer {
        // Storage is in memory; the state folder receives metadata fetched from magnets.
        let dir = tempfile::tempdir().expect("a temporary folder");
        let root = dir.path();
        let mut config = SessionConfig::new(root.join("downloads"), root.join("state"));
        config.listen = SocketAddr::new(ip, 6881);
        config.extra_peers = peers;
        config.peer_id = PeerId(*b"-ZS0001-simulated000");
        config.peer_id.0[19] = id;
        config.rng_seed = Some(u64::from(id));
        configure(&mut config);
        let backend = Arc::new(MemoryBackend::new());
        let session = Session::start(
            config,
            net.transport(ip),
            backend.clone(),
            TrackerClient::new(),
        )
        .await
        .expect("a simulated session starts");
        let addr = SocketAddr::new(ip, session.listen_port());
        SimPeer {
            session,
            backend,
            addr,
            dir,
        }
    }

    /// Put the whole of `data` (the torrent's bytes, files concatenated) into this peer's
    /// storage as verified, so adding `metainfo` seeds at once.
    pub async fn preload(&self, metainfo: &Metainfo, data: &[u8]) {
        let layout = Arc::new(metainfo.info.layout.clone());
        let spec = StorageSpec {
            info_hash: metainfo.info_hash,
            layout: layout.clone(),
            download_dir: PathBuf::from("/nonexistent"),
            state_dir: PathBuf::from("/nonexistent"),
            skipped_files: Vec::new(),
        };
        let storage = self.backend.open(spec).await.expect("memory storage opens");
        let piece_len = layout.piece_length as usize;
        for (i, chunk) in data.chunks(piece_len).enumerate() {
            let piece = i as u32;
            storage
                .write(piece, 0, vec![bytes::Bytes::copy_from_slice(chunk)])
                .await
                .expect("memory write");
            storage.mark_complete(piece).await.expect("memory mark");
        }
        storage.flush().await.expect("memory flush");
    }
}
