//! In-process swarms on loopback: one seeder and three leechers of ours, a multi-file torrent
//! with a zero-length file and files smaller than a piece, over the HTTP and UDP tracker
//! fixtures and over direct peers, on every storage backend. All must finish byte-identical.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::testing::tracker_fixture::{HttpTracker, UdpTracker};
use zigtorrent_engine::{MemoryBackend, StorageBackend};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

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

async fn swarm(discovery: Discovery, storage: &str) {
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
    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
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
        let session = start_session(&leech_dir, b.clone(), extra.clone()).await;
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
