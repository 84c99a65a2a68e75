//! Shared helpers for ZigTorrent's cross-crate tests: payloads, sessions on loopback, waiting,
//! and the plugin libraries ([`plugins`]).

pub mod plugins;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use zigtorrent_engine::metainfo::{create_torrent, CreateOptions};
use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{Metainfo, StorageBackend, TorrentHandle, TorrentState, TransportOptions};
use zigtorrent_transport_tcp::TcpTransport;

/// Files of the standard multi-file payload: a zero-length file, files smaller than a piece,
/// and files spanning several pieces, in nested folders.
pub const PAYLOAD_FILES: &[(&str, usize)] = &[
    ("a.bin", 100 * 1024 + 7),
    ("empty.txt", 0),
    ("sub/small.txt", 1000),
    ("sub/tiny.txt", 3),
    ("sub/deeper/b.bin", 300 * 1024),
];

/// Piece length used with [`PAYLOAD_FILES`]: small, so there are many pieces.
pub const PAYLOAD_PIECE_LENGTH: u32 = 32 * 1024;

/// Write the standard payload under `root/name` with seeded pseudo-random bytes.
pub fn write_payload(root: &Path, name: &str, seed: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let top = root.join(name);
    for (rel, len) in PAYLOAD_FILES {
        let path = top.join(rel);
        std::fs::create_dir_all(path.parent().expect("payload paths have parents")).unwrap();
        let mut data = vec![0u8; *len];
        rng.fill_bytes(&mut data);
        std::fs::write(&path, &data).unwrap();
    }
    top
}

/// A torrent of `source` with the given trackers.
pub fn make_torrent(source: &Path, trackers: Vec<String>, piece_length: u32) -> Metainfo {
    let options = CreateOptions {
        trackers,
        piece_length: Some(piece_length),
        ..Default::default()
    };
    let bytes = create_torrent(source, &options).expect("create torrent");
    Metainfo::from_bytes(&bytes).expect("parse created torrent")
}

/// A session on 127.0.0.1 (any port) over TCP.
pub async fn start_session(
    download_dir: &Path,
    backend: Arc<dyn StorageBackend>,
    extra_peers: Vec<SocketAddr>,
) -> Session {
    let mut config =
        SessionConfig::new(download_dir.to_path_buf(), download_dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().expect("literal address");
    config.extra_peers = extra_peers;
    let transport = Arc::new(TcpTransport::new(&TransportOptions::default()));
    Session::start(config, transport, backend, TrackerClient::new())
        .await
        .expect("start session")
}

/// Wait until the torrent is seeding; panics with its last status on timeout or error.
pub async fn wait_seeding(handle: &TorrentHandle, timeout: Duration) {
    let mut rx = handle.subscribe();
    let result = tokio::time::timeout(timeout, async {
        loop {
            {
                let s = rx.borrow_and_update();
                match &s.state {
                    TorrentState::Seeding => return,
                    TorrentState::Error(e) => panic!("torrent {} failed: {e}", s.name),
                    _ => {}
                }
            }
            if rx.changed().await.is_err() {
                panic!("torrent task ended");
            }
        }
    })
    .await;
    if result.is_err() {
        panic!(
            "timed out waiting for seeding; last status: {:?}",
            handle.status()
        );
    }
}

/// Assert the tree under `actual` holds exactly the bytes of `expected` for every payload file.
pub fn assert_same_files(expected: &Path, actual: &Path) {
    for (rel, len) in PAYLOAD_FILES {
        let e = std::fs::read(expected.join(rel)).unwrap();
        let a = std::fs::read(actual.join(rel))
            .unwrap_or_else(|err| panic!("{} missing: {err}", actual.join(rel).display()));
        assert_eq!(a.len(), *len, "{rel}: length");
        assert!(a == e, "{rel}: bytes differ");
        let part = actual.join(format!("{rel}.part"));
        assert!(!part.exists(), "{} appeared", part.display());
    }
}
