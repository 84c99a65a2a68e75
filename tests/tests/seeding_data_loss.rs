//! A data file truncated or deleted while we seed it: the failed read is noticed, the torrent
//! stops with an error naming the file, drops its peers, and no longer tells the tracker it is a
//! seed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::testing::tracker_fixture::HttpTracker;
use zigtorrent_engine::tracker::Event;
use zigtorrent_engine::TorrentState;
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_file_while_seeding_is_an_error_and_ends_seed_announces() {
    data_lost_while_seeding(false).await;
}

/// Deleted: its descriptor stays open (and readable) in storage's cache, so the loss must be
/// noticed some other way than a short read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_file_while_seeding_is_an_error_and_ends_seed_announces() {
    data_lost_while_seeding(true).await;
}

async fn data_lost_while_seeding(delete: bool) {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 11);
    let tracker = HttpTracker::start().await;
    let meta = make_torrent(&source, vec![tracker.announce_url()], PAYLOAD_PIECE_LENGTH);

    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    let seed_port = seeder.listen_port();
    let seed_addr: SocketAddr = format!("127.0.0.1:{seed_port}").parse().unwrap();
    let handle = seeder.add(meta.clone()).unwrap();
    wait_seeding(&handle, Duration::from_secs(30)).await;

    // The user's tools shrink the biggest file to nothing (same inode: an open descriptor sees
    // it too). 100 KiB of 400: a leecher asking for every piece reaches it at once.
    let victim = source.join("a.bin");
    if delete {
        std::fs::remove_file(&victim).unwrap();
    } else {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&victim)
            .unwrap()
            .set_len(0)
            .unwrap();
    }

    let leech_dir = dir.path().join("leech");
    let leecher = start_session(&leech_dir, Arc::new(FsBackend::new()), vec![seed_addr]).await;
    let leech = leecher.add(meta.clone()).unwrap();

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
    .unwrap_or_else(|_| panic!("seeder never noticed; last status {:?}", handle.status()));
    assert!(
        error.contains("a.bin"),
        "error does not name the file: {error}"
    );
    assert!(
        error.contains("missing or truncated"),
        "error does not say what happened: {error}"
    );

    // It no longer claims the pieces of that file…
    let status = handle.status();
    let a_bin_pieces = (100 * 1024 + 7u32).div_ceil(PAYLOAD_PIECE_LENGTH);
    assert!(
        status.pieces_have <= status.pieces_total - a_bin_pieces,
        "still claims {} of {} pieces",
        status.pieces_have,
        status.pieces_total
    );
    assert!(matches!(status.state, TorrentState::Error(_)));
    // …and drops its peers (closed asynchronously).
    let mut waited = 0;
    while handle.status().peers_connected > 0 && waited < 50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += 1;
    }
    assert_eq!(handle.status().peers_connected, 0, "still serving peers");
    assert!(
        leech.status().pieces_have < leech.status().pieces_total,
        "the leecher cannot have completed from a seeder missing a file"
    );

    leecher.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;

    // Its last word to the tracker is not "I am a seed".
    let stopped: Vec<_> = tracker
        .announces()
        .into_iter()
        .filter(|a| a.port == seed_port && a.event == Event::Stopped)
        .collect();
    assert_eq!(stopped.len(), 1, "expected one `stopped` from the seeder");
    assert!(
        stopped[0].left >= u64::from(a_bin_pieces - 1) * u64::from(PAYLOAD_PIECE_LENGTH),
        "`stopped` still claims the lost data: left={}",
        stopped[0].left
    );
}
