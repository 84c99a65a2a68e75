//! Message stream encryption (MSE/PE) between two of our sessions on loopback, tracker-less
//! (the seeder given to the leecher with `extra_peers`): a leecher that requires encryption
//! downloads from a seeder that prefers it, over TCP and over uTP, and gets nothing from a
//! seeder with encryption disabled, while a leecher that only prefers it falls back to
//! plaintext and downloads from that same seeder.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::session::{Session, SessionConfig, TorrentHandle};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{Encryption, EncryptionPolicy, TorrentState, Transport, TransportOptions};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;
use zigtorrent_transport_tcp::TcpTransport;
use zigtorrent_transport_utp::UtpTransport;

const TIMEOUT: Duration = Duration::from_secs(60);

async fn session(
    dir: &std::path::Path,
    policy: EncryptionPolicy,
    extra_peers: Vec<SocketAddr>,
    utp: bool,
) -> Session {
    let mut config = SessionConfig::new(dir.to_path_buf(), dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().expect("literal address");
    config.extra_peers = extra_peers;
    config.encryption = policy;
    let o = TransportOptions::default();
    let transport: Arc<dyn Transport> = if utp {
        Arc::new(UtpTransport::new(&o))
    } else {
        Arc::new(TcpTransport::new(&o))
    };
    Session::start(
        config,
        transport,
        Arc::new(FsBackend::new()),
        TrackerClient::new(),
    )
    .await
    .expect("start session")
}

/// Wait until `handle` seeds, collecting how every peer it showed was protected.
async fn download(handle: &TorrentHandle) -> HashSet<Encryption> {
    let mut rx = handle.subscribe();
    let mut seen = HashSet::new();
    let done = tokio::time::timeout(TIMEOUT, async {
        loop {
            {
                let s = rx.borrow_and_update();
                seen.extend(s.peers.iter().map(|p| p.encryption));
                match &s.state {
                    TorrentState::Seeding => return,
                    TorrentState::Error(e) => panic!("torrent failed: {e}"),
                    _ => {}
                }
            }
            rx.changed().await.expect("torrent task ended");
        }
    })
    .await;
    assert!(done.is_ok(), "timed out; last status {:?}", handle.status());
    seen
}

async fn require_from_prefer(utp: bool) {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 11);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let seeder = session(&seed_dir, EncryptionPolicy::Prefer, vec![], utp).await;
    wait_seeding(&seeder.add(meta.clone()).unwrap(), TIMEOUT).await;
    let seed_addr = SocketAddr::from(([127, 0, 0, 1], seeder.listen_port()));

    let leech_dir = dir.path().join("leech");
    let leecher = session(&leech_dir, EncryptionPolicy::Require, vec![seed_addr], utp).await;
    let handle = leecher.add(meta).unwrap();
    let seen = download(&handle).await;
    assert_eq!(
        seen,
        HashSet::from([Encryption::Rc4]),
        "the seeder, and only over RC4"
    );
    leecher.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;
    assert_same_files(&source, &leech_dir.join("payload"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_leecher_downloads_from_a_prefer_seeder_over_tcp() {
    require_from_prefer(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_leecher_downloads_from_a_prefer_seeder_over_utp() {
    require_from_prefer(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_require_leecher_gets_nothing_from_a_disable_seeder() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 12);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let seeder = session(&seed_dir, EncryptionPolicy::Disable, vec![], false).await;
    wait_seeding(&seeder.add(meta.clone()).unwrap(), TIMEOUT).await;
    let seed_addr = SocketAddr::from(([127, 0, 0, 1], seeder.listen_port()));

    // The strict leecher starts first and keeps dialling while the other downloads.
    let strict_dir = dir.path().join("strict");
    let strict = session(
        &strict_dir,
        EncryptionPolicy::Require,
        vec![seed_addr],
        false,
    )
    .await;
    let strict_handle = strict.add(meta.clone()).unwrap();
    let mut strict_rx = strict_handle.subscribe();
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    // Every status it publishes meanwhile: the most peers and pieces it ever had.
    let watcher = tokio::spawn(async move {
        let (mut peers, mut pieces) = (0, 0);
        loop {
            {
                let s = strict_rx.borrow_and_update();
                peers = peers.max(s.peers.len());
                pieces = pieces.max(s.pieces_have);
            }
            tokio::select! {
                _ = &mut stopped => return (peers, pieces),
                r = strict_rx.changed() => if r.is_err() { return (peers, pieces) },
            }
        }
    });

    // The control: a `prefer` leecher is refused MSE, falls back to plaintext and finishes.
    let lenient_dir = dir.path().join("lenient");
    let lenient = session(
        &lenient_dir,
        EncryptionPolicy::Prefer,
        vec![seed_addr],
        false,
    )
    .await;
    let seen = download(&lenient.add(meta).unwrap()).await;
    assert_eq!(seen, HashSet::from([Encryption::Plaintext]));

    // Meanwhile the strict leecher never had a peer nor a byte.
    let _ = stop.send(());
    let (peers, pieces) = watcher.await.unwrap();
    assert_eq!((peers, pieces), (0, 0));
    let s = strict_handle.status();
    assert_eq!(s.all_time_downloaded, 0);
    strict.shutdown(Duration::from_secs(4)).await;
    lenient.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;
    assert_same_files(&source, &lenient_dir.join("payload"));
}
