//! Moving finished downloads to a completed folder, on disk over loopback: the files move when
//! the torrent completes and it seeds from there, also after a restart without hashing again;
//! a name already taken there is an error that overwrites nothing; files the client found in
//! place keep the torrent where it is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::testing::decorators::CountingBackend;
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{
    Metainfo, StorageBackend, TorrentHandle, TorrentState, TorrentStatus, TransportOptions,
};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;
use zigtorrent_transport_tcp::TcpTransport;

/// A session on loopback whose finished torrents move to `completed`.
async fn session_with_completed(
    download_dir: &Path,
    completed: Option<PathBuf>,
    backend: Arc<dyn StorageBackend>,
    peers: Vec<std::net::SocketAddr>,
) -> Session {
    let mut config =
        SessionConfig::new(download_dir.to_path_buf(), download_dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.extra_peers = peers;
    config.completed_dir = completed;
    let transport = Arc::new(TcpTransport::new(&TransportOptions::default()));
    Session::start(config, transport, backend, TrackerClient::new())
        .await
        .expect("start session")
}

/// Wait until `done` holds for the torrent's status; returns that status. Panics on timeout,
/// or on an error unless `errors_ok`.
async fn wait_for(
    h: &TorrentHandle,
    what: &str,
    errors_ok: bool,
    done: impl Fn(&TorrentStatus) -> bool,
) -> TorrentStatus {
    let mut rx = h.subscribe();
    let r = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            {
                let s = rx.borrow_and_update();
                if done(&s) {
                    return s.clone();
                }
                if let TorrentState::Error(e) = &s.state {
                    assert!(errors_ok, "torrent failed: {e}");
                }
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await;
    r.unwrap_or_else(|_| panic!("timed out waiting for {what}: {:?}", h.status()))
}

/// A seeding session of the standard payload; its address.
async fn seeder(dir: &Path, seed: u64) -> (Session, Metainfo, PathBuf, std::net::SocketAddr) {
    let seed_dir = dir.join("seed");
    let source = write_payload(&seed_dir, "payload", seed);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let s = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    wait_seeding(&s.add(meta.clone()).unwrap(), Duration::from_secs(30)).await;
    let addr = format!("127.0.0.1:{}", s.listen_port()).parse().unwrap();
    (s, meta, source, addr)
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_download_moves_and_seeds_from_there_also_after_a_restart() {
    moves_and_seeds(false).await;
}

/// The path a move across file systems takes (copy, fsync, compare, no-replace rename, remove
/// the source), forced on one; the folder is set while the session runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_by_copy_seeds_from_there_also_after_a_restart() {
    moves_and_seeds(true).await;
}

async fn moves_and_seeds(copy_moves: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, meta, source, seed_addr) = seeder(dir.path(), 31).await;
    let leech_dir = dir.path().join("leech");
    let done = dir.path().join("done");

    let backend = if copy_moves {
        FsBackend::new().with_copy_moves()
    } else {
        FsBackend::new()
    };
    let leecher = session_with_completed(
        &leech_dir,
        (!copy_moves).then(|| done.clone()),
        Arc::new(backend),
        vec![seed_addr],
    )
    .await;
    if copy_moves {
        leecher.set_completed_dir(Some(done.clone()));
    }
    assert_eq!(leecher.completed_dir(), Some(done.clone()));
    let h = leecher.add(meta.clone()).unwrap();
    let st = wait_for(&h, "seeding from the completed folder", false, |s| {
        s.state == TorrentState::Seeding && s.download_dir == done
    })
    .await;
    assert!(st.completed_at.is_some(), "shown complete once moved");
    assert!(st.move_refused.is_none() && st.moving_to.is_none());
    assert_same_files(&source, &done.join("payload"));
    assert!(!exists(&leech_dir.join("payload")), "nothing left behind");
    let mut names: Vec<_> = std::fs::read_dir(done.join("payload"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["a.bin", "empty.txt", "sub"],
        "no temporary copy left"
    );
    seeder.shutdown(Duration::from_secs(5)).await;

    // It seeds from the new place: a third client gets everything from it alone.
    let third_dir = dir.path().join("third");
    let leech_addr = format!("127.0.0.1:{}", leecher.listen_port())
        .parse()
        .unwrap();
    let third = start_session(&third_dir, Arc::new(FsBackend::new()), vec![leech_addr]).await;
    wait_seeding(&third.add(meta.clone()).unwrap(), Duration::from_secs(30)).await;
    assert_same_files(&source, &third_dir.join("payload"));
    third.shutdown(Duration::from_secs(5)).await;
    leecher.shutdown(Duration::from_secs(5)).await;

    // A restart opens it in the completed folder, trusted without reading a byte.
    let counting = Arc::new(CountingBackend::new(Arc::new(FsBackend::new())));
    let leecher =
        session_with_completed(&leech_dir, Some(done.clone()), counting.clone(), vec![]).await;
    let h = leecher.add(meta.clone()).unwrap();
    let st = wait_for(&h, "seeding after the restart", false, |s| {
        s.state == TorrentState::Seeding
    })
    .await;
    assert_eq!(st.download_dir, done);
    assert_eq!(st.pieces_have, st.pieces_total);
    assert_eq!(counting.reads(), 0, "rechecked after the move");
    assert!(!exists(&leech_dir.join("payload")));
    leecher.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_in_the_completed_folder_is_an_error_and_overwrites_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, meta, source, seed_addr) = seeder(dir.path(), 32).await;
    let leech_dir = dir.path().join("leech");
    let done = dir.path().join("done");
    std::fs::create_dir_all(done.join("payload/sub")).unwrap();
    std::fs::write(done.join("payload/sub/small.txt"), b"the user's").unwrap();

    let leecher = session_with_completed(
        &leech_dir,
        Some(done.clone()),
        Arc::new(FsBackend::new()),
        vec![seed_addr],
    )
    .await;
    let h = leecher.add(meta.clone()).unwrap();
    let st = wait_for(&h, "the error", true, |s| {
        matches!(s.state, TorrentState::Error(_))
    })
    .await;
    let TorrentState::Error(message) = &st.state else {
        unreachable!()
    };
    let taken = done.join("payload/sub/small.txt");
    assert!(
        message.contains(&taken.display().to_string()) && message.contains("already taken"),
        "{message}"
    );
    assert_eq!(std::fs::read(&taken).unwrap(), b"the user's");
    assert!(!exists(&done.join("payload/a.bin")), "nothing moved");
    assert_same_files(&source, &leech_dir.join("payload"));
    leecher.shutdown(Duration::from_secs(5)).await;
    seeder.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_found_in_place_keep_the_torrent_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, meta, source, seed_addr) = seeder(dir.path(), 33).await;
    let leech_dir = dir.path().join("leech");
    let done = dir.path().join("done");
    // The user already has one file of it: found in place, it is not the client's to move.
    std::fs::create_dir_all(leech_dir.join("payload")).unwrap();
    std::fs::copy(source.join("a.bin"), leech_dir.join("payload/a.bin")).unwrap();

    let leecher = session_with_completed(
        &leech_dir,
        Some(done.clone()),
        Arc::new(FsBackend::new()),
        vec![seed_addr],
    )
    .await;
    let h = leecher.add(meta.clone()).unwrap();
    let st = wait_for(&h, "seeding where it is", false, |s| {
        s.state == TorrentState::Seeding && s.move_refused.is_some() && s.completed_at.is_some()
    })
    .await;
    let note = st.move_refused.clone().unwrap();
    assert!(
        note.contains("a.bin") && note.contains("found in place"),
        "{note}"
    );
    assert_eq!(st.download_dir, leech_dir);
    assert_same_files(&source, &leech_dir.join("payload"));
    assert!(!exists(&done.join("payload")));
    leecher.shutdown(Duration::from_secs(5)).await;
    seeder.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torrents_own_completed_folder_wins_and_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, meta, source, seed_addr) = seeder(dir.path(), 34).await;
    let leech_dir = dir.path().join("leech");
    let own = dir.path().join("own");
    // The session moves nothing; this torrent has a folder of its own, set while it waits
    // for its data (paused).
    let leecher = session_with_completed(
        &leech_dir,
        None,
        Arc::new(FsBackend::new()),
        vec![seed_addr],
    )
    .await;
    let h = leecher.add(meta.clone()).unwrap();
    h.pause().await;
    h.set_completed_dir(Some(own.clone())).await;
    wait_for(&h, "its own folder", false, |s| {
        s.completed_dir.as_deref() == Some(own.as_path())
    })
    .await;
    h.resume().await;
    wait_for(&h, "seeding from its own folder", false, |s| {
        s.state == TorrentState::Seeding && s.download_dir == own
    })
    .await;
    assert_same_files(&source, &own.join("payload"));
    leecher.shutdown(Duration::from_secs(5)).await;
    seeder.shutdown(Duration::from_secs(5)).await;

    let leecher =
        session_with_completed(&leech_dir, None, Arc::new(FsBackend::new()), vec![]).await;
    let h = leecher.add(meta.clone()).unwrap();
    let st = wait_for(&h, "seeding after the restart", false, |s| {
        s.state == TorrentState::Seeding
    })
    .await;
    assert_eq!(st.completed_dir.as_deref(), Some(own.as_path()));
    assert_eq!(st.download_dir, own);
    leecher.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_cannot_move_keeps_the_torrent_seeding_where_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let (seeder, meta, _source, seed_addr) = seeder(dir.path(), 35).await;
    let leech_dir = dir.path().join("leech");
    let done = dir.path().join("done");
    let leecher = session_with_completed(
        &leech_dir,
        Some(done.clone()),
        Arc::new(zigtorrent_engine::MemoryBackend::new()),
        vec![seed_addr],
    )
    .await;
    let h = leecher.add(meta.clone()).unwrap();
    let st = wait_for(&h, "seeding where it is", false, |s| {
        s.state == TorrentState::Seeding && s.move_refused.is_some() && s.completed_at.is_some()
    })
    .await;
    let note = st.move_refused.unwrap();
    assert!(note.contains("cannot"), "{note}");
    assert_eq!(st.download_dir, leech_dir);
    assert_eq!(st.pieces_have, st.pieces_total);
    leecher.shutdown(Duration::from_secs(5)).await;
    seeder.shutdown(Duration::from_secs(5)).await;
}
