//! Choosing files and removing with data, on disk over loopback: skipped files never appear at
//! their final path (even when all their bytes arrive through shared pieces), un-skipping one
//! finishes it, `completed` is announced once, and removing with data deletes only what this
//! torrent wrote.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::testing::tracker_fixture::HttpTracker;
use zigtorrent_engine::tracker::Event;
use zigtorrent_engine::{FilePriority, Metainfo, TorrentHandle, TorrentOptions, TorrentState};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

/// Index in `meta` of the file whose path ends with `rel`.
fn file(meta: &Metainfo, rel: &str) -> usize {
    meta.info
        .layout
        .files
        .iter()
        .position(|f| f.path.ends_with(rel))
        .unwrap_or_else(|| panic!("no file {rel}"))
}

/// Wait until `done` holds for the torrent's status; panics with it on timeout or error.
async fn wait_for(
    h: &TorrentHandle,
    what: &str,
    done: impl Fn(&zigtorrent_engine::TorrentStatus) -> bool,
) {
    let mut rx = h.subscribe();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if let TorrentState::Error(e) = &s.state {
                    panic!("torrent failed: {e}");
                }
                if done(&s) {
                    return;
                }
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await;
    if r.is_err() {
        panic!("timed out waiting for {what}: {:?}", h.status());
    }
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipped_files_never_appear_and_remove_with_data_deletes_only_ours() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let tracker = HttpTracker::start().await;
    let source = write_payload(&seed_dir, "payload", 21);
    let meta = make_torrent(&source, vec![tracker.announce_url()], PAYLOAD_PIECE_LENGTH);
    let other_source = write_payload(&seed_dir, "other", 22);
    let other_meta = make_torrent(&other_source, vec![], PAYLOAD_PIECE_LENGTH);
    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    for m in [&meta, &other_meta] {
        wait_seeding(&seeder.add(m.clone()).unwrap(), Duration::from_secs(30)).await;
    }
    let seed_addr = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();

    // The leecher's folders: downloads, a watch folder beside it holding the .torrent, and a
    // note of the user's inside the torrent's folder.
    let leech_dir = dir.path().join("leech");
    let watch = dir.path().join("torrents");
    std::fs::create_dir_all(&watch).unwrap();
    std::fs::write(watch.join("payload.torrent"), meta.to_torrent_bytes()).unwrap();
    std::fs::create_dir_all(leech_dir.join("payload")).unwrap();
    std::fs::write(leech_dir.join("payload/NOTES.user"), b"mine").unwrap();
    let leecher = start_session(&leech_dir, Arc::new(FsBackend::new()), vec![seed_addr]).await;
    let other = leecher.add(other_meta.clone()).unwrap();
    wait_seeding(&other, Duration::from_secs(30)).await;

    // sub/small.txt (1,000 bytes) lies inside pieces shared with wanted files: all its bytes
    // arrive. b.bin is skipped at first, then wanted.
    let (a, empty, small, tiny, b) = (
        file(&meta, "a.bin"),
        file(&meta, "empty.txt"),
        file(&meta, "small.txt"),
        file(&meta, "tiny.txt"),
        file(&meta, "b.bin"),
    );
    let layout = &meta.info.layout;
    let shared = layout.pieces_for_file(small);
    assert!(
        shared.clone().all(|p| layout
            .files_for_piece(p)
            .iter()
            .any(|&f| f == a || f == tiny)),
        "the test needs small.txt inside wanted pieces"
    );
    let mut prio = vec![FilePriority::Normal; layout.files.len()];
    for f in [empty, small, b] {
        prio[f] = FilePriority::Skip;
    }
    let options = TorrentOptions {
        file_priorities: prio.clone(),
        sequential: false,
    };
    assert!(leecher
        .add_with(
            meta.clone(),
            TorrentOptions {
                file_priorities: vec![FilePriority::Skip],
                sequential: false
            }
        )
        .is_err());
    let h = leecher.add_with(meta.clone(), options).unwrap();
    wait_seeding(&h, Duration::from_secs(30)).await;
    let s = h.status();
    assert!(s.have_bytes < s.total_bytes && s.wanted_have_bytes == s.wanted_bytes);
    assert!(shared.clone().all(|p| s.pieces.get(p as usize)));
    let top = leech_dir.join("payload");
    assert_eq!(
        std::fs::read(top.join("a.bin")).unwrap(),
        std::fs::read(source.join("a.bin")).unwrap()
    );
    assert!(exists(&top.join("sub/tiny.txt")));
    for skipped in ["sub/small.txt", "empty.txt", "sub/deeper/b.bin"] {
        assert!(
            !exists(&top.join(skipped)),
            "{skipped} appeared while skipped"
        );
    }

    // Un-skip b.bin: downloaded and finished; small.txt still never appears.
    prio[b] = FilePriority::High;
    h.set_file_priorities(prio).await.unwrap();
    wait_for(&h, "b.bin", |s| {
        s.files[b].have_bytes == s.files[b].length
            && s.files[b].priority == FilePriority::High
            && s.state == TorrentState::Seeding
    })
    .await;
    // Finalized by the verify task before `Seeding` shows; the file system is the judge.
    let b_path = top.join("sub/deeper/b.bin");
    tokio::time::timeout(Duration::from_secs(10), async {
        while !exists(&b_path) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("b.bin finalized once un-skipped");
    assert_eq!(
        std::fs::read(&b_path).unwrap(),
        std::fs::read(source.join("sub/deeper/b.bin")).unwrap()
    );
    assert!(!exists(&top.join("sub/small.txt")) && !exists(&top.join("empty.txt")));

    // Remove with data: only what this torrent wrote goes.
    let deleted = leecher
        .remove_with_data(meta.info_hash)
        .await
        .unwrap()
        .expect("the torrent was in the session");
    assert!(leecher
        .torrents()
        .iter()
        .all(|t| t.info_hash() != meta.info_hash));
    for gone in [
        "a.bin",
        "sub/tiny.txt",
        "sub/deeper/b.bin",
        "sub/deeper",
        "sub",
    ] {
        assert!(!exists(&top.join(gone)), "{gone} left behind");
    }
    assert!(deleted.kept.is_empty(), "{:?}", deleted.kept);
    assert_eq!(std::fs::read(top.join("NOTES.user")).unwrap(), b"mine");
    assert!(exists(&watch.join("payload.torrent")));
    let state = leech_dir.join(".zigtorrent");
    let hex = meta.info_hash.to_hex();
    assert!(!exists(&state.join(format!("{hex}.resume"))));
    assert!(
        !exists(&state.join("parts").join(&hex)),
        "skipped bytes left in state"
    );
    // The other torrent's files and state are untouched, and it still seeds.
    assert_same_files(&other_source, &leech_dir.join("other"));
    assert!(exists(
        &state.join(format!("{}.resume", other_meta.info_hash.to_hex()))
    ));
    assert_eq!(other.status().state, TorrentState::Seeding);
    assert!(leecher
        .remove_with_data(meta.info_hash)
        .await
        .unwrap()
        .is_none());

    // `completed` was announced once, though the torrent completed twice; `stopped` came last.
    let port = leecher.listen_port();
    let ours: Vec<Event> = tracker
        .announces()
        .into_iter()
        .filter(|a| a.info_hash == meta.info_hash && a.port == port)
        .map(|a| a.event)
        .collect();
    assert_eq!(ours.last(), Some(&Event::Stopped), "{ours:?}");
    assert_eq!(
        ours.iter().filter(|e| **e == Event::Completed).count(),
        1,
        "{ours:?}"
    );
    leecher.shutdown(Duration::from_secs(5)).await;
    seeder.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_choice_and_order_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    // A seed of its own data: the choice is kept whatever the transfer does.
    let source = write_payload(dir.path(), "payload", 9);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let n = meta.info.layout.files.len();
    let mut chosen = vec![FilePriority::Normal; n];
    chosen[0] = FilePriority::Skip;
    chosen[n - 1] = FilePriority::High;

    let s = start_session(dir.path(), Arc::new(FsBackend::new()), vec![]).await;
    let h = s.add(meta.clone()).unwrap();
    wait_seeding(&h, Duration::from_secs(30)).await;
    h.set_file_priorities(chosen.clone()).await.unwrap();
    h.set_sequential(true).await;
    wait_for(&h, "the choice applied", |st| {
        st.sequential
            && st
                .files
                .iter()
                .map(|f| f.priority)
                .eq(chosen.iter().copied())
    })
    .await;
    s.shutdown(Duration::from_secs(5)).await;

    // A new process would add the same .torrent with no choice: the record's comes back.
    let s = start_session(dir.path(), Arc::new(FsBackend::new()), vec![]).await;
    let h = s.add(meta.clone()).unwrap();
    wait_for(&h, "the kept choice", |st| {
        st.sequential
            && st
                .files
                .iter()
                .map(|f| f.priority)
                .eq(chosen.iter().copied())
    })
    .await;
    s.shutdown(Duration::from_secs(5)).await;

    // A choice made at add wins over the kept one.
    let s = start_session(dir.path(), Arc::new(FsBackend::new()), vec![]).await;
    let mut wanted = vec![FilePriority::Normal; n];
    wanted[1] = FilePriority::High;
    let h = s
        .add_with(
            meta.clone(),
            TorrentOptions {
                file_priorities: wanted.clone(),
                sequential: false,
            },
        )
        .unwrap();
    wait_for(&h, "the choice given at add", |st| {
        !st.sequential
            && st
                .files
                .iter()
                .map(|f| f.priority)
                .eq(wanted.iter().copied())
    })
    .await;
    s.shutdown(Duration::from_secs(5)).await;
}

/// Someone's file in the way stops a torrent before it runs; its files are still listed, so
/// the user can skip that one and recheck, and the rest seeds without touching their file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torrent_stopped_by_a_file_in_the_way_recovers_by_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    // A seeder of the same payload: the pieces b.bin shares with wanted files need its bytes.
    let seed_dir = dir.path().join("seed");
    let seeded = write_payload(&seed_dir, "payload", 11);
    let meta = make_torrent(&seeded, vec![], PAYLOAD_PIECE_LENGTH);
    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    wait_seeding(&seeder.add(meta.clone()).unwrap(), Duration::from_secs(30)).await;
    let peer = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();

    let here = dir.path().join("here");
    let source = write_payload(&here, "payload", 11);
    // The user's own, different b.bin where the torrent's is; the torrent never ran here, so
    // no resume state vouches for anything.
    let theirs = vec![0x5a; 300 * 1024];
    std::fs::write(source.join("sub/deeper/b.bin"), &theirs).unwrap();
    let s = start_session(&here, Arc::new(FsBackend::new()), vec![peer]).await;
    let h = s.add(meta.clone()).unwrap();
    assert!(!h.status().files.is_empty(), "files listed from the start");
    wait_for_state(&h, |st| matches!(st, TorrentState::Error(_))).await;
    let TorrentState::Error(e) = h.status().state else {
        unreachable!("waited for it")
    };
    assert!(e.contains("b.bin"), "{e}");
    let b = file(&meta, "b.bin");
    assert_eq!(
        h.status().files.len(),
        meta.info.layout.files.len(),
        "still listed in error"
    );
    let mut chosen = vec![FilePriority::Normal; meta.info.layout.files.len()];
    chosen[b] = FilePriority::Skip;
    h.set_file_priorities(chosen).await.unwrap();
    let h = s.recheck(meta.info_hash).await.unwrap();
    wait_for(&h, "seeding what is wanted", |st| {
        st.state == TorrentState::Seeding
    })
    .await;
    assert_eq!(
        std::fs::read(source.join("sub/deeper/b.bin")).unwrap(),
        theirs
    );
    s.shutdown(Duration::from_secs(5)).await;
    seeder.shutdown(Duration::from_secs(5)).await;
}

async fn wait_for_state(h: &TorrentHandle, done: impl Fn(&TorrentState) -> bool) {
    let mut rx = h.subscribe();
    tokio::time::timeout(Duration::from_secs(30), async {
        while !done(&rx.borrow_and_update().state) {
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .expect("state reached in time");
}
