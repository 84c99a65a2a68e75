//! Watch-folder behaviour of `zigtorrent run`, seen from outside: files written slowly, broken
//! then fixed, renamed in, duplicated, and dropped by the hundred. No peers are needed: a torrent
//! "starts" when the client prints `added …` and lists it in its status lines.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

/// How soon a new torrent must start after its file is complete (issue 3).
const START_WITHIN: Duration = Duration::from_secs(2);

fn client(root: &Path) -> Client {
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    let mut args = folder_args(root);
    args.extend(["--storage".into(), "memory".into()]);
    args.extend(["--status-interval".into(), "0.5".into()]);
    let mut c = Client::spawn(&args);
    c.wait_line("out: listening on port", Duration::from_secs(20));
    c
}

fn stop(mut c: Client) {
    c.signal("-TERM");
    assert!(c.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn file_written_slowly_in_chunks_is_taken_once_complete() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = torrent_bytes(&small_source(dir.path(), "slow.bin"), 16 * 1024);
    let mut c = client(dir.path());
    let path = dir.path().join("torrents/slow.torrent");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunks: Vec<&[u8]> = bytes.chunks(bytes.len().div_ceil(5)).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        if i + 1 < chunks.len() {
            // Longer than the watcher's settle interval: it sees a stable, half-written file.
            std::thread::sleep(Duration::from_millis(800));
            c.poll();
            assert_eq!(c.count("added slow.bin"), 0, "taken before it was complete");
        }
    }
    drop(f);
    let complete = Instant::now();
    let (at, _) = c.wait_line("out: added slow.bin", Duration::from_secs(10));
    assert!(
        at.duration_since(complete) < START_WITHIN,
        "started {:?} after the file was complete",
        at.duration_since(complete)
    );
    c.wait_line("out: slow.bin: ", Duration::from_secs(5));
    assert_eq!(
        c.count("err: error:"),
        0,
        "a file being written was reported as bad"
    );
    stop(c);
}

#[test]
fn malformed_file_is_reported_then_taken_when_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = torrent_bytes(&small_source(dir.path(), "fixme.bin"), 16 * 1024);
    let mut c = client(dir.path());
    let path = dir.path().join("torrents/fixme.torrent");
    std::fs::write(&path, b"this is not a torrent").unwrap();
    let (_, line) = c.wait_line("err: error:", Duration::from_secs(5));
    assert!(line.contains("fixme.torrent"), "{line}");
    // Reported once, not on every rescan.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(c.count("fixme.torrent"), 1);
    std::fs::write(&path, &bytes).unwrap();
    let fixed = Instant::now();
    let (at, _) = c.wait_line("out: added fixme.bin", Duration::from_secs(10));
    assert!(at.duration_since(fixed) < START_WITHIN);
    // A copy under another name is recognised as the same torrent.
    std::fs::write(dir.path().join("torrents/copy.torrent"), &bytes).unwrap();
    let (_, line) = c.wait_line("out: duplicate:", Duration::from_secs(5));
    assert!(
        line.contains("copy.torrent") && line.contains("fixme.torrent"),
        "{line}"
    );
    // The client never touches the files in the folder.
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    stop(c);
}

#[test]
fn file_renamed_into_the_folder_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = client(dir.path());
    // Written elsewhere long enough ago, then renamed in (a download finishing in a browser).
    let outside = dir.path().join("staging.torrent");
    std::fs::write(
        &outside,
        torrent_bytes(&small_source(dir.path(), "moved.bin"), 16 * 1024),
    )
    .unwrap();
    // And one renamed inside the folder from a name the watcher ignores.
    let partial = dir.path().join("torrents/inside.torrent.crdownload");
    std::fs::write(
        &partial,
        torrent_bytes(&small_source(dir.path(), "inside.bin"), 16 * 1024),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(c.count("added"), 0);
    let t = Instant::now();
    std::fs::rename(&outside, dir.path().join("torrents/moved.torrent")).unwrap();
    std::fs::rename(&partial, dir.path().join("torrents/inside.torrent")).unwrap();
    let (a, _) = c.wait_line("out: added moved.bin", Duration::from_secs(10));
    let (b, _) = c.wait_line("out: added inside.bin", Duration::from_secs(10));
    for at in [a, b] {
        assert!(
            at.duration_since(t) < START_WITHIN,
            "{:?}",
            at.duration_since(t)
        );
    }
    stop(c);
}

#[test]
fn two_hundred_files_dropped_at_once_all_start() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");
    let sources = dir.path().join("sources");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&sources).unwrap();
    for i in 0..200 {
        let name = format!("many-{i:03}.bin");
        std::fs::write(
            staging.join(format!("{i:03}.torrent")),
            torrent_bytes(&small_source(&sources, &name), 16 * 1024),
        )
        .unwrap();
    }
    let mut c = client(dir.path());
    let t = Instant::now();
    for i in 0..200 {
        let name = format!("{i:03}.torrent");
        std::fs::rename(staging.join(&name), dir.path().join("torrents").join(&name)).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.count("out: added many-") < 200 {
        assert!(
            Instant::now() < deadline,
            "only {} of 200 added",
            c.count("out: added many-")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t.elapsed();
    println!("200 torrents added in {took:?}");
    // Every one of them shows up in the status lines, running or waiting its turn in the
    // download queue (5 at a time by default).
    c.wait_for("listing all 200", Duration::from_secs(10), |_| true);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.poll();
        let mut names = std::collections::HashSet::new();
        for (_, l) in &c.seen {
            if let Some(rest) = l.strip_prefix("out: many-") {
                if rest.contains("downloading") || rest.ends_with(" queued") {
                    names.insert(rest.split(':').next().unwrap().to_string());
                }
            }
        }
        if names.len() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 200 downloading or queued",
            names.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        c.count(" queued") > 0,
        "the default queue holds most of them back"
    );
    assert_eq!(c.count("err: error:"), 0);
    stop(c);
}

#[test]
fn magnet_files_show_in_the_metadata_state_and_bad_ones_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = client(dir.path());
    let hash = "0123456789abcdef0123456789abcdef01234567";
    std::fs::write(
        dir.path().join("torrents/wanted.magnet"),
        format!("magnet:?xt=urn:btih:{hash}&dn=Some%20Show&tr=udp%3A%2F%2F127.0.0.1%3A9\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("torrents/broken.magnet"),
        "magnet:?xt=urn:btih:nothex\n",
    )
    .unwrap();
    c.wait_line("out: added Some Show", Duration::from_secs(10));
    // Shown by its `dn`, in the metadata state, with its peer count, until peers send it.
    let (_, line) = c.wait_line("out: Some Show: ", Duration::from_secs(5));
    assert!(line.ends_with(" metadata"), "{line}");
    assert!(line.contains("peers 0/0"), "{line}");
    let (_, line) = c.wait_line("err: error:", Duration::from_secs(5));
    assert!(
        line.contains("broken.magnet") && line.contains("bad magnet link"),
        "{line}"
    );
    stop(c);
}

#[test]
fn a_bad_magnet_on_the_command_line_is_refused_before_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = folder_args(dir.path());
    args.push("magnet:?dn=no-hash".into());
    let o = bin()
        .arg("run")
        .arg("--headless")
        .args(&args)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let first = String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(first.contains("bad magnet link"), "{first}");
}
