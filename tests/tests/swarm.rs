//! In-process swarms on loopback: one seeder and three leechers of ours, a multi-file torrent
//! with a zero-length file and files smaller than a piece, over the HTTP and UDP tracker
//! fixtures and over direct peers, on every storage backend and every transport (`tcp`, `utp`,
//! `both`, and a mixed swarm where they must meet). All must finish byte-identical.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::testing::tracker_fixture::{HttpTracker, UdpTracker};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::transport_pair::{TransportPair, DEFAULT_HEAD_START};
use zigtorrent_engine::{MemoryBackend, StorageBackend, Transport, TransportOptions};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;
use zigtorrent_transport_tcp::TcpTransport;
use zigtorrent_transport_utp::UtpTransport;

const LEECHERS: usize = 3;
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Discovery {
    Http,
    Udp,
    DirectPeer,
}

fn backend(name: &str) -> Arc<dyn StorageBackend> {
    match name {
        "fs" => Arc::new(FsBackend::new()),
        "memory" => Arc::new(MemoryBackend::new()),
        other => panic!("unknown backend {other}"),
    }
}

fn transport(name: &str) -> Arc<dyn Transport> {
    let o = TransportOptions::default();
    match name {
        "tcp" => Arc::new(TcpTransport::new(&o)),
        "utp" => Arc::new(UtpTransport::new(&o)),
        "both" => Arc::new(TransportPair::new(
            "both",
            Arc::new(UtpTransport::new(&o)),
            Arc::new(TcpTransport::new(&o)),
            DEFAULT_HEAD_START,
        )),
        other => panic!("unknown transport {other}"),
    }
}

/// Which transport the seeder and each leecher use.
#[derive(Clone, Copy, Debug)]
struct Transports {
    seeder: &'static str,
    leechers: [&'static str; LEECHERS],
}

impl Transports {
    const fn all(name: &'static str) -> Self {
        Transports {
            seeder: name,
            leechers: [name; LEECHERS],
        }
    }
}

/// A session on 127.0.0.1 (any port) over the named transport.
async fn start_session_over(
    download_dir: &std::path::Path,
    backend: Arc<dyn StorageBackend>,
    extra_peers: Vec<SocketAddr>,
    transport_name: &str,
) -> Session {
    if transport_name == "tcp" {
        return start_session(download_dir, backend, extra_peers).await;
    }
    let mut config =
        SessionConfig::new(download_dir.to_path_buf(), download_dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().expect("literal address");
    config.extra_peers = extra_peers;
    Session::start(
        config,
        transport(transport_name),
        backend,
        TrackerClient::new(),
    )
    .await
    .expect("start session")
}

async fn swarm(discovery: Discovery, storage: &str) {
    swarm_over(discovery, storage, Transports::all("tcp")).await;
}

async fn swarm_over(discovery: Discovery, storage: &str, transports: Transports) {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 7);

    let http;
    let udp;
    let trackers = match discovery {
        Discovery::Http => {
            http = HttpTracker::start().await;
            vec![http.announce_url()]
        }
        Discovery::Udp => {
            udp = UdpTracker::start().await;
            vec![udp.announce_url()]
        }
        Discovery::DirectPeer => vec![],
    };
    let meta = make_torrent(&source, trackers, PAYLOAD_PIECE_LENGTH);

    // The seeder always keeps its data in files (it has to find it there); leechers use the
    // backend under test.
    let seeder = start_session_over(
        &seed_dir,
        Arc::new(FsBackend::new()),
        vec![],
        transports.seeder,
    )
    .await;
    let seed_addr: SocketAddr = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();
    let seed_handle = seeder.add(meta.clone()).unwrap();
    wait_seeding(&seed_handle, TIMEOUT).await;

    let extra = match discovery {
        Discovery::DirectPeer => vec![seed_addr],
        _ => vec![],
    };
    let mut leechers = Vec::new();
    for i in 0..LEECHERS {
        let leech_dir = dir.path().join(format!("leech{i}"));
        let b = backend(storage);
        let session =
            start_session_over(&leech_dir, b.clone(), extra.clone(), transports.leechers[i]).await;
        let handle = session.add(meta.clone()).unwrap();
        leechers.push((leech_dir, b, session, handle));
    }
    for (_, _, _, handle) in &leechers {
        wait_seeding(handle, TIMEOUT).await;
    }
    for (leech_dir, b, session, handle) in leechers {
        let status = handle.status();
        assert_eq!(status.pieces_have, status.pieces_total);
        session.shutdown(Duration::from_secs(4)).await;
        match storage {
            "fs" => assert_same_files(&source, &leech_dir.join("payload")),
            _ => assert_backend_holds(&*b, &meta, &source, &leech_dir).await,
        }
    }
    seeder.shutdown(Duration::from_secs(4)).await;
}

/// Reopen a non-file backend after its session ended and compare every piece with the source.
async fn assert_backend_holds(
    b: &dyn StorageBackend,
    meta: &zigtorrent_engine::Metainfo,
    source: &std::path::Path,
    leech_dir: &std::path::Path,
) {
    let layout = Arc::new(meta.info.layout.clone());
    let spec = zigtorrent_engine::StorageSpec {
        info_hash: meta.info_hash,
        layout: layout.clone(),
        download_dir: leech_dir.to_path_buf(),
        state_dir: leech_dir.join(".zigtorrent"),
        skipped_files: Vec::new(),
    };
    let storage = b.open(spec).await.unwrap();
    let mut all = Vec::new();
    // Torrent order, not PAYLOAD_FILES order: layout paths start with the torrent's name.
    let parent = source.parent().expect("payload has a parent folder");
    for f in &layout.files {
        all.extend(std::fs::read(parent.join(&f.path)).unwrap());
    }
    for piece in 0..layout.piece_count() {
        assert!(
            storage.has_piece(piece),
            "piece {piece} missing after reopen"
        );
        let r = layout.piece_range(piece);
        let data = storage
            .read(piece, 0, layout.piece_len(piece))
            .await
            .unwrap();
        assert!(
            data[..] == all[r.start as usize..r.end as usize],
            "piece {piece} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tracker_fs() {
    swarm(Discovery::Http, "fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tracker_fs() {
    swarm(Discovery::Udp, "fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_peer_fs() {
    swarm(Discovery::DirectPeer, "fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tracker_memory() {
    swarm(Discovery::Http, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tracker_memory() {
    swarm(Discovery::Udp, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_peer_memory() {
    swarm(Discovery::DirectPeer, "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utp_direct_peer_fs() {
    swarm_over(Discovery::DirectPeer, "fs", Transports::all("utp")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utp_http_tracker_memory() {
    swarm_over(Discovery::Http, "memory", Transports::all("utp")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_direct_peer_fs() {
    swarm_over(Discovery::DirectPeer, "fs", Transports::all("both")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_udp_tracker_memory() {
    swarm_over(Discovery::Udp, "memory", Transports::all("both")).await;
}

/// A `both` seeder must serve a uTP-only, a TCP-only and a `both` leecher, and those must
/// trade pieces among themselves where they share a transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_transports_http_tracker_fs() {
    let transports = Transports {
        seeder: "both",
        leechers: ["utp", "tcp", "both"],
    };
    swarm_over(Discovery::Http, "fs", transports).await;
}
