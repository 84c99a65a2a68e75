//! What trackers hear of seeding goals and the queue, on loopback with the HTTP tracker
//! fixture: a torrent that reaches its goal announces `stopped`, and after a restart (done
//! kept in its record) announces nothing; a queued torrent announces nothing until it starts.

use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::testing::tracker_fixture::HttpTracker;
use zigtorrent_engine::tracker::Event;
use zigtorrent_engine::{
    Goal, GoalReached, QueueLimits, SeedGoals, TorrentHandle, TorrentState, TorrentStatus,
};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

async fn until(h: &TorrentHandle, what: &str, pred: impl Fn(&TorrentStatus) -> bool) {
    let mut rx = h.subscribe();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        while !pred(&rx.borrow_and_update()) {
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: not within 30 s: {:?}", h.status());
}

async fn until_announced(
    tracker: &HttpTracker,
    what: &str,
    pred: impl Fn(&[(Event, u64)]) -> bool,
    hash: zigtorrent_engine::InfoHash,
) {
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let events: Vec<(Event, u64)> = tracker
                .announces()
                .iter()
                .filter(|a| a.info_hash == hash)
                .map(|a| (a.event, a.left))
                .collect();
            if pred(&events) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(r.is_ok(), "{what}: tracker heard {:?}", tracker.announces());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_that_reaches_its_time_goal_announces_stopped_and_stays_done() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 21);
    let tracker = HttpTracker::start().await;
    let meta = make_torrent(&source, vec![tracker.announce_url()], PAYLOAD_PIECE_LENGTH);
    let hash = meta.info_hash;

    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    let h = seeder.add(meta.clone()).unwrap();
    wait_seeding(&h, Duration::from_secs(30)).await;
    until_announced(
        &tracker,
        "started",
        |e| e.contains(&(Event::Started, 0)),
        hash,
    )
    .await;
    h.set_seed_goals(SeedGoals {
        ratio: Goal::Off,
        time: Goal::Value(Duration::from_secs(1)),
    })
    .await;
    until(&h, "done by time", |s| {
        s.state == TorrentState::Finished(GoalReached::Time)
    })
    .await;
    until_announced(
        &tracker,
        "stopped",
        |e| e.last() == Some(&(Event::Stopped, 0)),
        hash,
    )
    .await;
    assert_eq!(h.status().peers_connected, 0);
    let heard = tracker.announces().len();
    seeder.shutdown(Duration::from_secs(4)).await;
    // Stopped already: shutdown sends nothing more.
    assert_eq!(tracker.announces().len(), heard);

    // Restarted on the same state folder: done at once, and silent.
    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    let h = seeder.add(meta.clone()).unwrap();
    until(&h, "still done", |s| {
        s.state == TorrentState::Finished(GoalReached::Time)
    })
    .await;
    assert_eq!(
        h.status().seed_goals.time,
        Goal::Value(Duration::from_secs(1))
    );
    // Resumed: the time goal is off, it announces `started` again and seeds.
    h.resume().await;
    until(&h, "seeding again", |s| s.state == TorrentState::Seeding).await;
    until_announced(
        &tracker,
        "started again",
        |e| e.iter().filter(|x| **x == (Event::Started, 0)).count() == 2,
        hash,
    )
    .await;
    assert_eq!(h.status().seed_goals.time, Goal::Off);
    seeder.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_torrent_announces_only_once_it_may_start() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let tracker = HttpTracker::start().await;
    let a = make_torrent(
        &write_payload(&src, "a", 1),
        vec![tracker.announce_url()],
        PAYLOAD_PIECE_LENGTH,
    );
    let b = make_torrent(
        &write_payload(&src, "b", 2),
        vec![tracker.announce_url()],
        PAYLOAD_PIECE_LENGTH,
    );
    // Nobody seeds either: A downloads (from no one) and holds the only slot.
    let leech_dir = dir.path().join("leech");
    let session = start_session(&leech_dir, Arc::new(FsBackend::new()), vec![]).await;
    session.set_queue_limits(QueueLimits {
        downloads: Some(1),
        seeds: None,
    });
    let ha = session.add(a.clone()).unwrap();
    let hb = session.add(b.clone()).unwrap();
    until(&ha, "A downloads", |s| s.state == TorrentState::Downloading).await;
    until(&hb, "B queued", |s| s.state == TorrentState::Queued).await;
    until_announced(
        &tracker,
        "A started",
        |e| e.first().is_some_and(|x| x.0 == Event::Started),
        a.info_hash,
    )
    .await;
    assert!(
        tracker
            .announces()
            .iter()
            .all(|x| x.info_hash != b.info_hash),
        "a queued torrent announced"
    );
    ha.pause().await;
    until(&hb, "B starts", |s| s.state == TorrentState::Downloading).await;
    until_announced(
        &tracker,
        "B started",
        |e| e.first().is_some_and(|x| x.0 == Event::Started),
        b.info_hash,
    )
    .await;
    session.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_magnet_queued_while_fetching_announces_stopped_and_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = HttpTracker::start().await;
    let hash = zigtorrent_engine::InfoHash([0x5a; 20]);
    let link = format!(
        "magnet:?xt=urn:btih:{}&tr={}",
        hash.to_hex(),
        tracker
            .announce_url()
            .replace(':', "%3A")
            .replace('/', "%2F")
    );
    let magnet = zigtorrent_engine::Magnet::parse(&link).unwrap();
    let session = start_session(dir.path(), Arc::new(FsBackend::new()), vec![]).await;
    let h = session.add(magnet).unwrap();
    until_announced(
        &tracker,
        "started",
        |e| e.first().is_some_and(|x| x.0 == Event::Started),
        hash,
    )
    .await;
    // The limit lowered to nothing: the fetch stops and says so.
    session.set_queue_limits(QueueLimits {
        downloads: Some(0),
        seeds: None,
    });
    until(&h, "queued", |s| s.state == TorrentState::Queued).await;
    until_announced(
        &tracker,
        "stopped",
        |e| e.last().is_some_and(|x| x.0 == Event::Stopped),
        hash,
    )
    .await;
    session.set_queue_limits(QueueLimits::default());
    until(&h, "fetching again", |s| {
        s.state == TorrentState::FetchingMetadata
    })
    .await;
    until_announced(
        &tracker,
        "started again",
        |e| e.iter().filter(|x| x.0 == Event::Started).count() == 2,
        hash,
    )
    .await;
    session.shutdown(Duration::from_secs(4)).await;
}
