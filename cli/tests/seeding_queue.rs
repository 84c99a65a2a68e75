//! Seeding goals, the queue and all-time stats, seen from outside (issue 11, points 4 and 5):
//! `zigtorrent run --headless` against in-process sessions on loopback, judged by its status
//! lines (`bytes <name>: … all-time down N up N` with `--status-bytes`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

/// Numbers of the last `bytes <name>: have H downloaded D wasted W all-time down A up U` line:
/// `[H, D, W, A, U]`.
fn last_bytes(c: &mut Client, name: &str) -> Option<Vec<u64>> {
    c.poll();
    let prefix = format!("out: bytes {name}: ");
    c.seen.iter().rev().find_map(|(_, l)| {
        l.strip_prefix(&prefix).map(|rest| {
            rest.split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect()
        })
    })
}

fn stop(mut c: Client) {
    c.signal("-TERM");
    assert!(c.wait_exit(Duration::from_secs(10)).success());
}

fn payload_size() -> u64 {
    PAYLOAD_FILES.iter().map(|(_, n)| *n as u64).sum()
}

#[test]
fn all_time_totals_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_payload(&root.join("seed"), "payload", 5);
    let seeder = seed_payload(root, PAYLOAD_PIECE_LENGTH, Duration::ZERO);
    let size = payload_size();
    let mut args = peer_args(root, seeder.port, "0.2");
    args.push("--status-bytes".into());

    let mut c = Client::spawn(&args);
    c.wait_line("payload: 100.0%", Duration::from_secs(60));
    c.wait_for("all-time totals", Duration::from_secs(10), |l| {
        l.starts_with("out: bytes payload: ")
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = loop {
        let b = last_bytes(&mut c, "payload").expect("a bytes line");
        if b[3] >= size || std::time::Instant::now() > deadline {
            break b;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(first[3] >= size, "all-time down {} < size {size}", first[3]);
    stop(c);

    // The data is complete on disk: nothing is downloaded this run, yet all-time says what was.
    let mut c = Client::spawn(&args);
    c.wait_line("seeding", Duration::from_secs(30));
    c.wait_for("a bytes line", Duration::from_secs(10), |l| {
        l.starts_with("out: bytes payload: ")
    });
    let again = last_bytes(&mut c, "payload").unwrap();
    assert_eq!(again[1], 0, "nothing downloaded this run");
    assert_eq!(again[3], first[3], "all-time down kept across the restart");
    assert!(root.join("downloads/.zigtorrent/torrents").is_dir());
    stop(c);
    drop(seeder);
}

#[test]
fn a_ratio_limit_stops_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The client has the whole payload: it seeds it, with a goal of ratio 1.
    let source = write_payload(&root.join("downloads"), "payload", 6);
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    std::fs::write(
        root.join("torrents/payload.torrent"),
        torrent_bytes(&source, PAYLOAD_PIECE_LENGTH),
    )
    .unwrap();
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let mut args = folder_args(root);
    args.extend(
        ["--status-interval", "0.2", "--seed-ratio", "1"]
            .iter()
            .map(|s| s.to_string()),
    );
    let mut c = Client::spawn(&args);
    let (_, line) = c.wait_line("out: listening on port", Duration::from_secs(20));
    let port: u16 = line
        .split_whitespace()
        .nth(4)
        .and_then(|p| p.parse().ok())
        .expect("a port in the listening line");
    c.wait_line("payload: 100.0%", Duration::from_secs(20));
    c.wait_line("seeding", Duration::from_secs(20));

    // A leecher takes one full copy: the client's ratio reaches 1 and it stops.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let leech_dir = tempfile::tempdir().unwrap();
    let leecher = runtime.block_on(async {
        let peer = format!("127.0.0.1:{port}").parse().unwrap();
        let s = start_session(leech_dir.path(), Arc::new(FsBackend::new()), vec![peer]).await;
        let h = s.add(meta.clone()).unwrap();
        wait_seeding(&h, Duration::from_secs(60)).await;
        s
    });
    assert_same_files(&source, &leech_dir.path().join("payload"));
    c.wait_line("done (ratio)", Duration::from_secs(20));
    // Done means done: the status line shows no peers and stays so.
    std::thread::sleep(Duration::from_secs(2));
    c.poll();
    let last = c
        .seen
        .iter()
        .rev()
        .find(|(_, l)| l.starts_with("out: payload: "))
        .map(|(_, l)| l.clone())
        .unwrap();
    assert!(
        last.contains("peers 0/") && last.ends_with("done (ratio)"),
        "{last}"
    );
    runtime.block_on(leecher.shutdown(Duration::from_secs(2)));
    stop(c);
}

#[test]
fn with_one_download_slot_the_second_torrent_waits_its_turn() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // One in-process seeder with two torrents.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let seed_dir = root.join("seed");
    let mut metas = Vec::new();
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    for (i, name) in ["first", "second"].iter().enumerate() {
        let source = write_payload(&seed_dir, name, 10 + i as u64);
        metas.push(make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH));
        std::fs::write(
            root.join(format!("torrents/{name}.torrent")),
            torrent_bytes(&source, PAYLOAD_PIECE_LENGTH),
        )
        .unwrap();
    }
    // Reads slowed down, so the first download lasts long enough to see the second wait.
    let seeder = runtime.block_on(async {
        let backend = Arc::new(zigtorrent_engine::testing::decorators::SlowBackend::new(
            Arc::new(FsBackend::new()),
            Duration::from_millis(20),
        ));
        let s = start_session(&seed_dir, backend, vec![]).await;
        for m in &metas {
            let h = s.add(m.clone()).unwrap();
            wait_seeding(&h, Duration::from_secs(60)).await;
        }
        s
    });
    let mut args = peer_args(root, seeder.listen_port(), "0.2");
    args.extend(["--max-active-downloads".to_string(), "1".to_string()]);
    let mut c = Client::spawn(&args);
    c.wait_line("queued", Duration::from_secs(30));
    c.wait_line("first: 100.0%", Duration::from_secs(120));
    c.wait_line("second: 100.0%", Duration::from_secs(120));
    c.poll();
    // Which went first depends on the order the folder was read in; the other must wait.
    let done_at = |name: &str| {
        c.seen
            .iter()
            .find(|(_, l)| l.starts_with(&format!("out: {name}: 100.0%")))
            .map(|(t, _)| *t)
            .unwrap()
    };
    let (first, second) = if done_at("first") <= done_at("second") {
        ("first", "second")
    } else {
        ("second", "first")
    };
    let first_done = done_at(first);
    // Lines printed before the batch where the first torrent is complete (a batch is one
    // write of the lines that changed, sorted by name, so the other's line in that batch may
    // already show it started; batches are 0.2 s apart, the lines of one arrive together).
    let before_batch = first_done - Duration::from_millis(50);
    let earlier_batches = c
        .seen
        .iter()
        .position(|(t, _)| *t >= before_batch)
        .unwrap_or(c.seen.len());
    let waiting = format!("out: {second}: ");
    let early: Vec<&String> = c.seen[..earlier_batches]
        .iter()
        .filter(|(_, l)| l.starts_with(&waiting))
        .map(|(_, l)| l)
        .collect();
    assert!(
        early.iter().all(|l| !l.ends_with(" downloading")),
        "{second} downloaded before {first} was done: {early:?}"
    );
    assert!(
        early.iter().any(|l| l.ends_with(" queued")),
        "{second} waited queued while {first} downloaded: {early:?}"
    );
    stop(c);
    runtime.block_on(seeder.shutdown(Duration::from_secs(2)));
}
