//! A user's own files are never destroyed (issue 9): torrents dropped into the watch folder
//! whose paths meet files the client did not write, seen from outside. No peers are needed:
//! everything here happens when the torrent opens its storage and checks what is there.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use common::*;

fn client(root: &Path) -> Client {
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    let mut args = folder_args(root);
    args.extend(["--status-interval".into(), "0.3".into()]);
    let mut c = Client::spawn(&args);
    c.wait_line("out: listening on port", Duration::from_secs(20));
    c
}

fn stop(mut c: Client) {
    c.signal("-TERM");
    assert!(c.wait_exit(Duration::from_secs(10)).success());
}

fn identity(p: &Path) -> (u64, u64, Vec<u8>) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.len(), std::fs::read(p).unwrap())
}

/// The scenario of the issue: a multi-file torrent named like a folder the user has, with a
/// zero-length entry where the user keeps a 1 MB file.
#[test]
fn a_zero_length_entry_never_empties_a_users_file() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/album");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("cover.jpg"), vec![9u8; 40_000]).unwrap();
    std::fs::write(src.join("notes.txt"), b"").unwrap();
    let torrent = torrent_bytes(&src, 16 * 1024);

    let mine = dir.path().join("downloads/album");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), vec![b'n'; 1 << 20]).unwrap();
    std::fs::write(mine.join("diary.txt"), b"dear diary").unwrap();
    let before = identity(&mine.join("notes.txt"));

    let mut c = client(dir.path());
    std::fs::write(dir.path().join("torrents/album.torrent"), torrent).unwrap();
    let (_, line) = c.wait_line("error", Duration::from_secs(10));
    assert!(
        line.contains("album/notes.txt") && line.contains("non-empty"),
        "the error names the path: {line}"
    );
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        identity(&mine.join("notes.txt")),
        before,
        "same inode, same bytes"
    );
    assert_eq!(
        std::fs::read(mine.join("diary.txt")).unwrap(),
        b"dear diary"
    );
    assert!(!mine.join("cover.jpg").exists());
    stop(c);
}

/// A user's `report.pdf` where a new torrent wants its own: kept, and the torrent says why.
#[test]
fn a_users_file_at_the_torrents_path_is_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("report.pdf"), vec![1u8; 100_000]).unwrap();
    let torrent = torrent_bytes(&src.join("report.pdf"), 16 * 1024);
    std::fs::create_dir_all(dir.path().join("downloads")).unwrap();
    let mine = dir.path().join("downloads/report.pdf");
    std::fs::write(&mine, vec![2u8; 300_000]).unwrap();
    let before = identity(&mine);

    let mut c = client(dir.path());
    std::fs::write(dir.path().join("torrents/report.torrent"), torrent).unwrap();
    let (_, line) = c.wait_line("err: error: report.pdf: ", Duration::from_secs(10));
    assert!(line.contains("downloads/report.pdf"), "{line}");
    assert!(line.contains("move it away"), "{line}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(identity(&mine), before);
    stop(c);
    assert_eq!(identity(&mine), before);
}

/// Data already complete at its final path (another client's download) is verified and seeded
/// where it is: not downloaded again, not moved.
#[test]
fn complete_data_from_elsewhere_is_seeded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src/set");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.bin"), vec![3u8; 70_000]).unwrap();
    std::fs::write(src.join("b.bin"), vec![4u8; 10_000]).unwrap();
    let torrent = torrent_bytes(&src, 16 * 1024);
    let there = dir.path().join("downloads/set");
    std::fs::create_dir_all(&there).unwrap();
    std::fs::copy(src.join("a.bin"), there.join("a.bin")).unwrap();
    std::fs::copy(src.join("b.bin"), there.join("b.bin")).unwrap();
    let before = identity(&there.join("a.bin"));

    let mut c = client(dir.path());
    std::fs::write(dir.path().join("torrents/set.torrent"), torrent).unwrap();
    c.wait_line("set: 100.0%", Duration::from_secs(10));
    c.wait_line("seeding", Duration::from_secs(10));
    assert_eq!(identity(&there.join("a.bin")), before, "adopted in place");
    stop(c);
}

/// Two torrents with the same name: the later one is refused with a clear error, the earlier
/// one is unharmed.
#[test]
fn two_torrents_with_one_name_never_share_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut torrents = Vec::new();
    for (i, fill) in [5u8, 6u8].into_iter().enumerate() {
        let src = dir.path().join(format!("src{i}/same"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f.bin"), vec![fill; 50_000]).unwrap();
        torrents.push(torrent_bytes(&src, 16 * 1024));
    }
    // The first is complete on disk, so the client adopts and seeds it.
    let first = dir.path().join("downloads/same");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("f.bin"), vec![5u8; 50_000]).unwrap();

    let mut c = client(dir.path());
    std::fs::write(dir.path().join("torrents/one.torrent"), &torrents[0]).unwrap();
    c.wait_line("seeding", Duration::from_secs(10));
    std::fs::write(dir.path().join("torrents/two.torrent"), &torrents[1]).unwrap();
    let (_, line) = c.wait_line("already used by torrent", Duration::from_secs(10));
    assert!(line.contains("downloads/same"), "{line}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        std::fs::read(first.join("f.bin")).unwrap(),
        vec![5u8; 50_000]
    );
    stop(c);
}

/// Start `run` with these folders; it must refuse: returns the first line on stderr.
fn refused_start(root: &Path, downloads: &Path, state: &Path) -> String {
    let out = bin()
        .args(["run", "--headless", "--listen", "0"])
        .arg("--torrents")
        .arg(root.join("torrents"))
        .arg("--downloads")
        .arg(downloads)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "started with {downloads:?} and {state:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    err.lines().next().unwrap_or("").to_string()
}

/// The state folder may not be the downloads folder: the client's lock, log and resume files
/// would share names with the user's files there (a user's `zigtorrent.lock` was overwritten).
#[test]
fn the_state_folder_may_not_be_the_downloads_folder() {
    let dir = tempfile::tempdir().unwrap();
    let dl = dir.path().join("downloads");
    std::fs::create_dir_all(&dl).unwrap();
    std::fs::write(dl.join("zigtorrent.lock"), b"my notes").unwrap();
    for state in [dl.clone(), dir.path().join("downloads/./sub/..")] {
        let err = refused_start(dir.path(), &dl, &state);
        assert!(err.contains("is the downloads folder"), "{err}");
    }
    assert_eq!(
        std::fs::read(dl.join("zigtorrent.lock")).unwrap(),
        b"my notes"
    );
}

/// Nor may the downloads folder lie inside the state folder, where a torrent could name the
/// client's incomplete data (`parts/<hash>/…`).
#[test]
fn the_downloads_folder_may_not_be_inside_the_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let err = refused_start(dir.path(), &state.join("parts"), &state);
    assert!(err.contains("is inside the state folder"), "{err}");
    assert!(!state.join("zigtorrent.lock").exists(), "nothing created");
}
