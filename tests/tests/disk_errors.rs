//! A disk error (ENOSPC) pauses the torrent with a clear error and loses nothing verified: a
//! restart on a healthy disk keeps the pieces written before the error and completes.

use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::testing::decorators::FaultyBackend;
use zigtorrent_engine::testing::decorators::SlowBackend;
use zigtorrent_engine::TorrentState;
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

const GOOD_WRITES: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enospc_pauses_torrent_and_keeps_verified_pieces() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 9);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let seeder = start_session(
        &seed_dir,
        Arc::new(SlowBackend::new(
            Arc::new(FsBackend::new()),
            Duration::from_millis(2),
        )),
        vec![],
    )
    .await;
    let seed_addr = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();
    wait_seeding(&seeder.add(meta.clone()).unwrap(), Duration::from_secs(30)).await;

    let leech_dir = dir.path().join("leech");
    let faulty = Arc::new(FaultyBackend::new(Arc::new(FsBackend::new()), GOOD_WRITES));
    let leecher = start_session(&leech_dir, faulty, vec![seed_addr]).await;
    let handle = leecher.add(meta.clone()).unwrap();
    let mut rx = handle.subscribe();
    let error = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let TorrentState::Error(e) = &rx.borrow_and_update().state {
                return e.clone();
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .expect("torrent should stop with an error");
    assert!(
        error.contains("no space left on device"),
        "unclear error: {error}"
    );
    // Peers are closed asynchronously; within a few seconds none may remain.
    let mut waited = 0;
    while handle.status().peers_connected > 0 && waited < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    let status = handle.status();
    assert_eq!(
        status.peers_connected, 0,
        "peers must be dropped while in error"
    );
    assert!(
        matches!(status.state, TorrentState::Error(_)),
        "error state must stick"
    );
    assert!(status.pieces_have as usize <= GOOD_WRITES);
    let kept = status.pieces_have;
    leecher.shutdown(Duration::from_secs(4)).await;

    // Healthy disk: the verified pieces are still there (resume trusted), the rest downloads.
    let leecher = start_session(&leech_dir, Arc::new(FsBackend::new()), vec![seed_addr]).await;
    let handle = leecher.add(meta.clone()).unwrap();
    wait_seeding(&handle, Duration::from_secs(30)).await;
    let status = handle.status();
    let fetched_again = status.downloaded / PAYLOAD_PIECE_LENGTH as u64;
    assert!(
        fetched_again <= (status.pieces_total - kept) as u64,
        "re-downloaded {fetched_again} pieces though {kept} were verified before the error"
    );
    leecher.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;
    assert_same_files(&source, &leech_dir.join("payload"));
}
