//! The engine calls the menu relies on, on loopback: recheck, and the session rate limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{TorrentState, TransportOptions};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;
use zigtorrent_transport_tcp::TcpTransport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recheck_hashes_again_and_goes_back_to_seeding() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_payload(dir.path(), "payload", 3);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let s = start_session(dir.path(), Arc::new(FsBackend::new()), vec![]).await;
    let h = s.add(meta.clone()).unwrap();
    wait_seeding(&h, Duration::from_secs(30)).await;
    let again = s
        .recheck(meta.info_hash)
        .await
        .expect("still in the session");
    // It starts over in checking (the resume state is ignored), then seeds again.
    assert!(matches!(
        again.status().state,
        TorrentState::Checking { .. }
    ));
    wait_seeding(&again, Duration::from_secs(30)).await;
    assert_eq!(s.torrents().len(), 1);
    assert!(s
        .recheck(zigtorrent_engine::InfoHash([0; 20]))
        .await
        .is_none());
    s.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_limit_holds_the_transfer_rate() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_payload(&dir.path().join("seed"), "payload", 4);
    let total: u64 = PAYLOAD_FILES.iter().map(|(_, l)| *l as u64).sum();
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    // A seeder limited to 128 KiB/s.
    let mut config = SessionConfig::new(dir.path().join("seed"), dir.path().join("seed/.zt"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.upload_limit = 128 * 1024;
    let transport = Arc::new(TcpTransport::new(&TransportOptions::default()));
    let seeder = Session::start(
        config,
        transport,
        Arc::new(FsBackend::new()),
        TrackerClient::new(),
    )
    .await
    .unwrap();
    assert_eq!(seeder.rate_limits(), (0, 128 * 1024));
    let h = seeder.add(meta.clone()).unwrap();
    wait_seeding(&h, Duration::from_secs(30)).await;
    let peer = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();
    let leecher = start_session(
        &dir.path().join("leech"),
        Arc::new(FsBackend::new()),
        vec![peer],
    )
    .await;
    let start = Instant::now();
    let l = leecher.add(meta).unwrap();
    wait_seeding(&l, Duration::from_secs(60)).await;
    let took = start.elapsed().as_secs_f64();
    // 400 KiB at 128 KiB/s (plus a quarter-second burst): at least 2.5 s.
    let floor = (total as f64 - 32.0 * 1024.0) / (128.0 * 1024.0);
    println!("{total} B in {took:.2} s (limit floor {floor:.2} s)");
    assert!(
        took >= floor,
        "took {took:.2} s, the limit allows no less than {floor:.2} s"
    );
    assert_same_files(&source, &dir.path().join("leech/payload"));
    leecher.shutdown(Duration::from_secs(2)).await;
    seeder.shutdown(Duration::from_secs(2)).await;
}
