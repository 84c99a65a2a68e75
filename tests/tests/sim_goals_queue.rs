//! Seeding goals, the queue and all-time stats, in the simulator (sessions on in-memory links
//! and a paused clock): no sockets, no real waiting. State folders are real temporary folders,
//! so torrent records survive from one session to the next.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use zigtorrent_engine::metainfo::{create_torrent, CreateOptions};
use zigtorrent_engine::testing::sim::{SimNet, SimPeer};
use zigtorrent_engine::{
    Goal, GoalReached, Metainfo, QueueMove, SeedGoals, SessionConfig, TorrentHandle, TorrentState,
    TorrentStatus,
};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A one-file torrent named `name` of `len` pseudo-random bytes (from `seed`), and the bytes.
fn torrent(name: &str, len: usize, seed: u64) -> (Metainfo, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let path = dir.path().join(name);
    std::fs::write(&path, &data).unwrap();
    let options = CreateOptions {
        piece_length: Some(32 * 1024),
        ..Default::default()
    };
    let bytes = create_torrent(&path, &options).unwrap();
    (Metainfo::from_bytes(&bytes).unwrap(), data)
}

/// Wait (simulated time, at most an hour) until `h`'s status satisfies `pred`.
async fn until(h: &TorrentHandle, what: &str, pred: impl Fn(&TorrentStatus) -> bool) {
    let mut rx = h.subscribe();
    let done = tokio::time::timeout(Duration::from_secs(3600), async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await;
    if done.is_err() {
        panic!("{what}: not after a simulated hour: {:?}", h.status());
    }
}

fn seeding(s: &TorrentStatus) -> bool {
    s.state == TorrentState::Seeding
}

/// A simulated client at 10.0.0.`n`, its state folder at `state` if given.
async fn peer(
    net: &SimNet,
    n: u8,
    peers: Vec<std::net::SocketAddr>,
    state: Option<&Path>,
    configure: impl FnOnce(&mut SessionConfig),
) -> SimPeer {
    let state = state.map(Path::to_path_buf);
    SimPeer::start_with(net, ip(n), n, peers, |c| {
        if let Some(state) = state {
            c.state_dir = state;
        }
        configure(c);
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn a_ratio_goal_stops_a_seeder_and_stays_reached_across_a_restart() {
    let net = SimNet::new();
    let (meta, data) = torrent("ratio.bin", 512 * 1024 + 17, 1);
    let state = tempfile::tempdir().unwrap();
    let s = peer(&net, 1, vec![], Some(state.path()), |c| {
        c.seed_ratio = Some(1.0)
    })
    .await;
    s.preload(&meta, &data).await;
    let sh = s.session.add(meta.clone()).unwrap();
    until(&sh, "seeder seeds", seeding).await;

    let leecher = peer(&net, 9, vec![s.addr], None, |_| {}).await;
    let lh = leecher.session.add(meta.clone()).unwrap();
    until(&lh, "leecher complete", seeding).await;
    // One full copy sent: ratio 1.0 (uploaded / size; nothing downloaded), the goal.
    until(&sh, "seeder finished", |s| {
        s.state == TorrentState::Finished(GoalReached::Ratio)
    })
    .await;
    let st = sh.status();
    assert!(st.ratio() >= 1.0, "ratio {}", st.ratio());
    assert_eq!(st.all_time_uploaded, st.uploaded);
    assert_eq!(
        st.peers_connected, 0,
        "a finished torrent holds no connections"
    );
    assert_eq!(st.state.label(), "done");
    // Done stays done: the leecher cannot reconnect.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(sh.status().peers_connected, 0);
    assert!(matches!(sh.status().state, TorrentState::Finished(_)));

    // A restart on the same state folder: still done, with the all-time totals.
    let uploaded = sh.status().all_time_uploaded;
    s.session.shutdown(Duration::from_secs(4)).await;
    let s2 = peer(&net, 1, vec![], Some(state.path()), |c| {
        c.seed_ratio = Some(1.0)
    })
    .await;
    s2.preload(&meta, &data).await;
    let sh2 = s2.session.add(meta.clone()).unwrap();
    assert_eq!(sh2.status().all_time_uploaded, uploaded);
    until(&sh2, "still done after a restart", |s| {
        s.state == TorrentState::Finished(GoalReached::Ratio)
    })
    .await;

    // Resumed, it seeds again with its ratio goal off (the other goal untouched).
    sh2.resume().await;
    until(&sh2, "seeding again", seeding).await;
    let goals = sh2.status().seed_goals;
    assert_eq!(goals.ratio, Goal::Off);
    assert_eq!(goals.time, Goal::Global);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(sh2.status().state, TorrentState::Seeding);
}

#[tokio::test(start_paused = true)]
async fn a_time_goal_stops_seeding_after_that_much_seeding_time() {
    let net = SimNet::new();
    let (meta, data) = torrent("time.bin", 64 * 1024, 2);
    let s = peer(&net, 1, vec![], None, |_| {}).await;
    s.preload(&meta, &data).await;
    let h = s.session.add(meta.clone()).unwrap();
    until(&h, "seeding", seeding).await;
    // Its own goal: ten minutes of seeding (the session has none).
    h.set_seed_goals(SeedGoals {
        ratio: Goal::Global,
        time: Goal::Value(Duration::from_secs(600)),
    })
    .await;
    tokio::time::sleep(Duration::from_secs(590)).await;
    assert_eq!(h.status().state, TorrentState::Seeding, "not yet");
    until(&h, "finished by time", |s| {
        s.state == TorrentState::Finished(GoalReached::Time)
    })
    .await;
    let t = h.status().seeding_time;
    assert!(
        t >= Duration::from_secs(600) && t < Duration::from_secs(605),
        "seeding time {t:?}"
    );
}

/// A seed nobody wants does nothing each second (a session of 10,000 of them would spend a
/// fifth of a core on their ticks): its status is published about once a minute, and a
/// leecher that dials in is still served at once.
#[tokio::test(start_paused = true)]
async fn a_quiet_seed_sleeps_between_its_jobs_and_wakes_for_a_peer() {
    let net = SimNet::new();
    let (meta, data) = torrent("quiet.bin", 256 * 1024, 3);
    let s = peer(&net, 1, vec![], None, |_| {}).await;
    s.preload(&meta, &data).await;
    let h = s.session.add(meta.clone()).unwrap();
    until(&h, "seeding", seeding).await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut rx = h.subscribe();
    rx.borrow_and_update();
    let mut changes = 0u32;
    let window = tokio::time::sleep(Duration::from_secs(600));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            r = rx.changed() => {
                r.expect("torrent task alive");
                changes += 1;
            }
        }
    }
    // Once a minute (plus slack for the clock's rounding); a tick each second would be 600.
    assert!(
        changes <= 15,
        "{changes} status updates in ten quiet minutes"
    );
    let seeding_time = h.status().seeding_time;
    assert!(
        seeding_time >= Duration::from_secs(540),
        "seeding time still counts while quiet: {seeding_time:?}"
    );

    // A leecher dials in: served at once, not at the seed's next wake.
    let leecher = peer(&net, 9, vec![s.addr], None, |_| {}).await;
    let lh = leecher.session.add(meta.clone()).unwrap();
    let t0 = tokio::time::Instant::now();
    until(&lh, "leecher complete", seeding).await;
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "download took {:?} of simulated time",
        t0.elapsed()
    );
    // (Seeding: every piece arrived and passed its hash.)
}

/// Three torrents (A, B, C) on a seeder at .1, and a leecher at .9 allowed one active
/// download that adds them in that order. `seeded` picks which the seeder has.
async fn queue_setup(
    net: &SimNet,
    seeded: [bool; 3],
) -> (SimPeer, SimPeer, Vec<TorrentHandle>, Vec<TorrentHandle>) {
    let s = peer(net, 1, vec![], None, |_| {}).await;
    let mut metas = Vec::new();
    let mut seeder_handles = Vec::new();
    for (i, name) in ["a.bin", "b.bin", "c.bin"].iter().enumerate() {
        let (meta, data) = torrent(name, 256 * 1024 + i, 10 + i as u64);
        if seeded[i] {
            s.preload(&meta, &data).await;
            let h = s.session.add(meta.clone()).unwrap();
            until(&h, "seeder seeds", seeding).await;
            seeder_handles.push(h);
        }
        metas.push(meta);
    }
    let leecher = peer(net, 9, vec![s.addr], None, |c| {
        c.max_active_downloads = Some(1)
    })
    .await;
    let handles = metas
        .iter()
        .map(|m| leecher.session.add(m.clone()).unwrap())
        .collect();
    (s, leecher, seeder_handles, handles)
}

/// Sample the leecher's torrents every simulated 100 ms until all seed; the most that were
/// downloading at once, and the order in which they completed.
async fn watch_queue(handles: &[TorrentHandle]) -> (usize, Vec<usize>) {
    let mut most = 0;
    let mut completed = Vec::new();
    for _ in 0..36_000 {
        let states: Vec<TorrentState> = handles.iter().map(|h| h.status().state).collect();
        most = most.max(
            states
                .iter()
                .filter(|s| **s == TorrentState::Downloading)
                .count(),
        );
        for (i, s) in states.iter().enumerate() {
            if *s == TorrentState::Seeding && !completed.contains(&i) {
                completed.push(i);
            }
        }
        if completed.len() == handles.len() {
            return (most, completed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not all complete after a simulated hour: {completed:?}");
}

#[tokio::test(start_paused = true)]
async fn with_one_download_slot_torrents_download_one_after_another_in_queue_order() {
    let net = SimNet::new();
    let (_s, _l, _sh, handles) = queue_setup(&net, [true; 3]).await;
    let positions: Vec<u64> = handles.iter().map(|h| h.status().queue_position).collect();
    assert_eq!(positions, vec![0, 1, 2]);
    until(&handles[1], "B waits", |s| s.state == TorrentState::Queued).await;
    let (most, order) = watch_queue(&handles).await;
    assert_eq!(most, 1, "never more than one download at once");
    assert_eq!(order, vec![0, 1, 2], "completed in queue order");
}

#[tokio::test(start_paused = true)]
async fn queue_moves_reorder_who_starts_next_without_stopping_the_running_one() {
    let net = SimNet::new();
    // Nobody has A: it downloads (from no one) and holds the only slot.
    let (_s, l, _sh, handles) = queue_setup(&net, [false, true, true]).await;
    until(&handles[0], "A runs", |s| {
        s.state == TorrentState::Downloading
    })
    .await;
    until(&handles[2], "C waits", |s| s.state == TorrentState::Queued).await;
    // C to the top: positions renumber, A keeps its slot.
    assert!(l.session.queue_move(handles[2].info_hash(), QueueMove::Top));
    until(&handles[2], "C first", |s| s.queue_position == 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(handles[0].status().state, TorrentState::Downloading);
    assert_eq!(handles[0].status().queue_position, 1);
    assert_eq!(handles[2].status().state, TorrentState::Queued);
    // A paused frees the slot: C (now first) starts, not B.
    handles[0].pause().await;
    until(&handles[2], "C complete", seeding).await;
    until(&handles[1], "then B", seeding).await;
    assert_eq!(handles[0].status().state, TorrentState::Paused);
    // Moving B down past the end and an unknown torrent are harmless.
    assert!(l
        .session
        .queue_move(handles[1].info_hash(), QueueMove::Bottom));
    assert!(!l
        .session
        .queue_move(zigtorrent_engine::InfoHash([9; 20]), QueueMove::Up));
}

#[tokio::test(start_paused = true)]
async fn all_time_stats_survive_a_restart_and_removal_forgets_them() {
    let net = SimNet::new();
    let (meta, data) = torrent("stats.bin", 300 * 1024 + 3, 3);
    let s = peer(&net, 1, vec![], None, |_| {}).await;
    s.preload(&meta, &data).await;
    until(&s.session.add(meta.clone()).unwrap(), "seeds", seeding).await;

    let state = tempfile::tempdir().unwrap();
    let l = peer(&net, 9, vec![s.addr], Some(state.path()), |_| {}).await;
    let h = l.session.add(meta.clone()).unwrap();
    let added_at = h.status().added_at;
    assert!(added_at > 0);
    until(&h, "complete", seeding).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = h.status();
    assert!(first.all_time_downloaded >= data.len() as u64);
    assert!(first.seeding_time >= Duration::from_secs(2));
    l.session.shutdown(Duration::from_secs(4)).await;

    // Same state folder, new session (its memory storage is empty: it downloads again).
    let l2 = peer(&net, 9, vec![s.addr], Some(state.path()), |_| {}).await;
    let h2 = l2.session.add(meta.clone()).unwrap();
    let back = h2.status();
    assert_eq!(back.all_time_downloaded, first.all_time_downloaded);
    assert_eq!(back.added_at, added_at);
    // Shutdown counts the seeding since the last published second too.
    assert!(
        back.seeding_time >= first.seeding_time
            && back.seeding_time <= first.seeding_time + Duration::from_secs(1),
        "{:?} then {:?}",
        first.seeding_time,
        back.seeding_time
    );
    until(&h2, "complete again", seeding).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(h2.status().all_time_downloaded >= first.all_time_downloaded + data.len() as u64);
    assert_eq!(
        h2.status().downloaded,
        h2.status().all_time_downloaded - first.all_time_downloaded
    );

    // Removed, it starts from nothing when added again.
    assert!(l2.session.remove(meta.info_hash).await);
    let h3 = l2.session.add(meta.clone()).unwrap();
    assert_eq!(h3.status().all_time_downloaded, 0);
}

#[tokio::test(start_paused = true)]
async fn a_magnet_fetching_metadata_holds_a_download_slot() {
    let net = SimNet::new();
    let (meta, data) = torrent("t.bin", 128 * 1024, 4);
    let s = peer(&net, 1, vec![], None, |_| {}).await;
    s.preload(&meta, &data).await;
    until(&s.session.add(meta.clone()).unwrap(), "seeds", seeding).await;
    let l = peer(&net, 9, vec![s.addr], None, |c| {
        c.max_active_downloads = Some(1)
    })
    .await;
    // Nobody has this one: its metadata never comes.
    let magnet =
        zigtorrent_engine::Magnet::parse(&format!("magnet:?xt=urn:btih:{}", "ab".repeat(20)))
            .unwrap();
    let m = l.session.add(magnet).unwrap();
    let t = l.session.add(meta.clone()).unwrap();
    until(&t, "the torrent waits", |s| s.state == TorrentState::Queued).await;
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(m.status().state, TorrentState::FetchingMetadata);
    assert_eq!(t.status().state, TorrentState::Queued);
    // The magnet removed, the slot is free.
    assert!(l.session.remove(m.info_hash()).await);
    until(&t, "then downloads", seeding).await;
}

#[tokio::test(start_paused = true)]
async fn changed_default_goals_apply_to_torrents_that_follow_them() {
    let net = SimNet::new();
    let (meta, data) = torrent("defaults.bin", 64 * 1024, 5);
    let s = peer(&net, 1, vec![], None, |_| {}).await;
    s.preload(&meta, &data).await;
    let h = s.session.add(meta.clone()).unwrap();
    until(&h, "seeding", seeding).await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(
        h.status().state,
        TorrentState::Seeding,
        "no goal by default"
    );
    assert_eq!(s.session.seed_goal_defaults(), (None, None));
    s.session
        .set_seed_goal_defaults(None, Some(Duration::from_secs(60)));
    until(&h, "finished by the new default", |s| {
        s.state == TorrentState::Finished(GoalReached::Time)
    })
    .await;
}
