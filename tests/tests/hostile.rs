//! Hostile peers: a peer that sends corrupt blocks is banned and the download still completes
//! from an honest seeder; a peer that sends a malformed frame loses only its own connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::Metainfo;
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

#[derive(Clone, Copy)]
enum Behaviour {
    /// Answers every request with random bytes.
    CorruptData,
    /// Sends a frame claiming 4 GiB right after the handshake.
    HugeFrame,
}

/// A fake seeder that misbehaves as told. Returns its address and a counter of connections.
async fn fake_peer(meta: &Metainfo, behaviour: Behaviour) -> (SocketAddr, Arc<AtomicUsize>) {
    let (prelude, answer): (Vec<u8>, Answer) = match behaviour {
        // A frame claiming 4 GiB right after the handshake.
        Behaviour::HugeFrame => (vec![0xff, 0xff, 0xff, 0xff, 7], Arc::new(|_, _, _| None)),
        Behaviour::CorruptData => (
            have_all_and_unchoke(meta),
            Arc::new(|_, _, length| Some((0..length).map(|_| rand::random()).collect())),
        ),
    };
    scripted_peer(meta, *b"-XX0001-evilevilevil", prelude, answer).await
}

async fn download_with(behaviour: Behaviour) -> (usize, zigtorrent_engine::TorrentStatus) {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 3);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let (bad, connections) = fake_peer(&meta, behaviour).await;

    // The honest seeder's reads are slowed so the bad peer gets to send plenty.
    let slow = zigtorrent_engine::testing::decorators::SlowBackend::new(
        Arc::new(FsBackend::new()),
        Duration::from_millis(20),
    );
    let seeder = start_session(&seed_dir, Arc::new(slow), vec![]).await;
    let good: SocketAddr = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();
    wait_seeding(&seeder.add(meta.clone()).unwrap(), Duration::from_secs(30)).await;

    let leech_dir = dir.path().join("leech");
    let leecher = start_session(&leech_dir, Arc::new(FsBackend::new()), vec![bad, good]).await;
    let handle = leecher.add(meta.clone()).unwrap();
    wait_seeding(&handle, Duration::from_secs(60)).await;
    let status = handle.status();
    // Give a banned peer time to be (not) redialled.
    tokio::time::sleep(Duration::from_secs(2)).await;
    leecher.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;
    assert_same_files(&source, &leech_dir.join("payload"));
    (connections.load(Ordering::SeqCst), status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_data_peer_is_banned_and_download_completes() {
    let (connections, status) = download_with(Behaviour::CorruptData).await;
    assert!(
        status.wasted > 0,
        "the corrupt peer's data should have been counted as wasted"
    );
    // Banned as the sole sender of a bad piece: dialled once or twice, never in a loop.
    assert!(
        connections <= 2,
        "banned peer was dialled {connections} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_frame_ends_only_that_peer() {
    let (connections, status) = download_with(Behaviour::HugeFrame).await;
    assert!(connections >= 1, "the hostile peer was never contacted");
    assert_eq!(status.pieces_have, status.pieces_total);
}
