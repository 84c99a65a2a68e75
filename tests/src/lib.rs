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
    start_session_with(
        download_dir,
        backend,
        extra_peers,
        zigtorrent_engine::EncryptionPolicy::default(),
    )
    .await
}

/// [`start_session`] under an encryption policy (scripted peers that speak plaintext only and
/// accept one connection need `Disable`: `Prefer` tries MSE first).
pub async fn start_session_with(
    download_dir: &Path,
    backend: Arc<dyn StorageBackend>,
    extra_peers: Vec<SocketAddr>,
    encryption: zigtorrent_engine::EncryptionPolicy,
) -> Session {
    let mut config =
        SessionConfig::new(download_dir.to_path_buf(), download_dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().expect("literal address");
    config.extra_peers = extra_peers;
    config.encryption = encryption;
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

/// What a [`scripted_peer`] answers to a request `(index, begin, length)`: the block's bytes,
/// or `None` to ignore it.
pub type Answer = Arc<dyn Fn(u32, u32, u32) -> Option<Vec<u8>> + Send + Sync>;

/// A fake peer on loopback that speaks just enough BEP 3 to misbehave: it reads the handshake,
/// answers with its own (`peer_id`) followed by `prelude` (the bytes right after the handshake,
/// e.g. a bitfield and unchoke, or a hostile frame), then answers requests with `answer`.
/// Returns its address and a counter of the connections it accepted.
pub async fn scripted_peer(
    meta: &Metainfo,
    peer_id: [u8; 20],
    prelude: Vec<u8>,
    answer: Answer,
) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zigtorrent_engine::wire::{self, Handshake, Message};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let info_hash = meta.info_hash;
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (prelude, answer) = (prelude.clone(), answer.clone());
            tokio::spawn(async move {
                let mut hs = [0u8; wire::HANDSHAKE_LEN];
                if s.read_exact(&mut hs).await.is_err() {
                    return;
                }
                let mut out = bytes::BytesMut::new();
                out.extend_from_slice(
                    &Handshake::new(info_hash, zigtorrent_engine::PeerId(peer_id)).encode(),
                );
                out.extend_from_slice(&prelude);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                let mut buf = bytes::BytesMut::new();
                loop {
                    match wire::decode(&mut buf, 1 << 20) {
                        Ok(Some(Message::Request {
                            index,
                            begin,
                            length,
                        })) => {
                            let Some(block) = answer(index, begin, length) else {
                                continue;
                            };
                            let mut out = bytes::BytesMut::new();
                            Message::Piece {
                                index,
                                begin,
                                data: block.into(),
                            }
                            .encode(&mut out);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        },
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// The bytes a seeder sends right after its handshake: a full bitfield and an unchoke.
pub fn have_all_and_unchoke(meta: &Metainfo) -> Vec<u8> {
    use zigtorrent_engine::wire::Message;
    let bf = zigtorrent_engine::Bitfield::full(meta.info.layout.piece_count() as usize);
    let mut out = bytes::BytesMut::new();
    Message::Bitfield(bytes::Bytes::copy_from_slice(bf.as_bytes())).encode(&mut out);
    Message::Unchoke.encode(&mut out);
    out.to_vec()
}
