//! Black-box tests of the `zigtorrent` binary: what a user sees (exit codes, lines printed,
//! files on disk). Seeders are in-process engine sessions on loopback.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use zigtorrent_tests::*;

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run zigtorrent")
}

fn stderr_first_line(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn bad_arguments_fail_with_a_reason() {
    let o = run(&["run", "--no-such-flag"]);
    assert!(!o.status.success());
    assert!(
        stderr_first_line(&o).contains("--no-such-flag"),
        "{}",
        stderr_first_line(&o)
    );

    let o = run(&["run", "--storage", "nope", "--headless"]);
    assert!(!o.status.success());
    assert!(
        stderr_first_line(&o).contains("unknown storage backend 'nope'"),
        "{}",
        stderr_first_line(&o)
    );
}

#[test]
fn info_reports_a_bad_torrent_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.torrent");
    std::fs::write(&bad, b"d4:infod6:lengthi-5eee").unwrap();
    let o = run(&["info", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let line = stderr_first_line(&o);
    assert!(
        line.starts_with("error: ") && line.contains("bad.torrent"),
        "{line}"
    );
    let o = run(&["info", dir.path().join("missing.torrent").to_str().unwrap()]);
    assert!(!o.status.success());
}

#[test]
fn create_then_info_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_payload(dir.path(), "payload", 1);
    let out = dir.path().join("p.torrent");
    let o = run(&[
        "create",
        source.to_str().unwrap(),
        "--tracker",
        "http://127.0.0.1:1/announce",
        "--tracker",
        "udp://127.0.0.1:2",
        "--comment",
        "hello",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let created_hash = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let o = run(&["info", out.to_str().unwrap()]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&format!("info-hash: {created_hash}")),
        "{text}"
    );
    assert!(text.contains("name: payload"), "{text}");
    assert!(text.contains("tier 2: udp://127.0.0.1:2"), "{text}");
    assert!(text.contains("empty.txt (0 bytes)"), "{text}");
}

/// Bencode byte string.
fn bstr(b: &[u8]) -> Vec<u8> {
    let mut out = format!("{}:", b.len()).into_bytes();
    out.extend_from_slice(b);
    out
}

/// A one-piece multi-file torrent (keys in sorted order) named `name`, with one 5-byte file
/// at `path` and `comment`.
fn hand_made_torrent(name: &[u8], path: &[&[u8]], comment: &[u8]) -> Vec<u8> {
    let mut t = b"d7:comment".to_vec();
    t.extend(bstr(comment));
    t.extend_from_slice(b"4:infod5:filesld6:lengthi5e4:pathl");
    for c in path {
        t.extend(bstr(c));
    }
    t.extend_from_slice(b"eee4:name");
    t.extend(bstr(name));
    t.extend_from_slice(b"12:piece lengthi16384e6:pieces");
    t.extend(bstr(&[7u8; 20]));
    t.extend_from_slice(b"ee");
    t
}

#[test]
fn info_strips_control_characters_like_the_menu() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("evil.torrent");
    std::fs::write(
        &file,
        hand_made_torrent(
            b"evil\x1b[2J\nname",
            &[b"sub\rdir", b"f\x1b]0;title\x07.txt"],
            b"line one\nforged: line",
        ),
    )
    .unwrap();
    let o = run(&["info", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(
        !text.contains(['\x1b', '\r', '\x07']),
        "control characters printed: {text:?}"
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.contains(&"name: evil?[2J?name"), "{text}");
    assert!(lines.contains(&"comment: line one?forged: line"), "{text}");
    assert!(
        lines.contains(&"  evil?[2J?name/sub?dir/f?]0;title?.txt (5 bytes)"),
        "{text}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("forged")), "{text}");
}

#[test]
fn info_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.torrent");
    std::fs::write(&file, hand_made_torrent(b"name", &[b"f"], b"")).unwrap();
    // `zigtorrent info t.torrent | head -0`: the reader is gone before anything is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let child = bin()
        .args(["info", file.to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{:?}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn info_refuses_an_80000_deep_path_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deep.torrent");
    let path: Vec<&[u8]> = vec![b"a"; 80_000];
    std::fs::write(&file, hand_made_torrent(b"deep", &path, b"")).unwrap();
    let o = run(&["info", file.to_str().unwrap()]);
    assert!(!o.status.success());
    let line = stderr_first_line(&o);
    assert!(
        line.starts_with("error: ")
            && line.contains("deep.torrent")
            && line.contains("path of 80001 components (limit 256)"),
        "{line}"
    );
}

/// Spawn `zigtorrent run --headless` on the folders of `root`, dialling `seed_port`, and wait
/// until it has loaded the torrent (so its signal handlers are installed).
fn spawn_client(root: &Path, seed_port: u16) -> Client {
    let mut c = Client::spawn(&peer_args(root, seed_port, "1"));
    c.wait_stdout("added payload", Duration::from_secs(20));
    c
}

/// A payload under `root/seed`, its torrent in `root/torrents`, and a seeder whose reads are
/// slowed by `delay` per block.
fn setup(root: &Path, delay: Duration) -> (PathBuf, Seeder) {
    let source = write_payload(&root.join("seed"), "payload", 42);
    (source, seed_payload(root, 16 * 1024, delay))
}

#[test]
fn headless_download_then_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (source, seeder) = setup(dir.path(), Duration::ZERO);
    // A broken torrent next to the good one: one error line, the rest goes on.
    std::fs::write(dir.path().join("torrents/broken.torrent"), b"not bencode").unwrap();
    let mut client = spawn_client(dir.path(), seeder.port);
    let downloaded = dir.path().join("downloads/payload");
    client.wait_stdout("payload: 100.0%", Duration::from_secs(60));
    client.wait_stdout("seeding", Duration::from_secs(10));
    assert_same_files(&source, &downloaded);
    // Seeding with nobody to serve, its line settles (rates read zero after 3 idle seconds)
    // and is not printed again at every interval (1 s here): a torrent's line is printed
    // when it changes.
    std::thread::sleep(Duration::from_secs(6));
    client.poll();
    let lines: Vec<&str> = client
        .stdout_lines()
        .into_iter()
        .filter(|l| l.starts_with("payload: "))
        .collect();
    assert!(lines.last().is_some_and(|l| l.contains("seeding")));
    for pair in lines.windows(2) {
        assert_ne!(pair[0], pair[1], "an unchanged line printed again");
    }
    client.signal("-INT");
    let t = Instant::now();
    let status = client.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        t.elapsed()
    );
    client.wait_stdout("stopped", Duration::from_secs(1));
    client.drain(Duration::from_secs(10));
    let stderr = client.stderr_lines();
    assert!(
        stderr
            .iter()
            .any(|l| l.starts_with("error: ") && l.contains("broken.torrent")),
        "{}",
        stderr.join("\n")
    );
    assert_same_files(&source, &downloaded);
}

#[test]
fn sigkill_mid_download_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    // 26 blocks at 200 ms each from a one-request-at-a-time seeder: about 5 s of download.
    let (source, seeder) = setup(dir.path(), Duration::from_millis(200));
    let downloaded = dir.path().join("downloads/payload");
    let state = dir.path().join("downloads/.zigtorrent");
    let mut finals_seen = Vec::new();
    for round in 0..2u64 {
        let mut client = spawn_client(dir.path(), seeder.port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1000 + 700 * round) {
            check_final_files(&source, &downloaded);
            std::thread::sleep(Duration::from_millis(10));
        }
        client.signal("-KILL");
        client.wait_exit(Duration::from_secs(5));
        finals_seen.push(check_final_files(&source, &downloaded));
        assert!(state.exists(), "no state folder after round {round}");
    }
    // The kills must really have landed mid-download for this test to mean anything.
    assert!(
        finals_seen[1] < PAYLOAD_FILES.len(),
        "download finished before the second kill"
    );
    let mut client = spawn_client(dir.path(), seeder.port);
    let start = Instant::now();
    while check_final_files(&source, &downloaded) < PAYLOAD_FILES.len() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "resumed download did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());
    assert_same_files(&source, &downloaded);
}

#[test]
fn closed_stdout_takes_the_graceful_path() {
    // `zigtorrent run --headless | head -1`: once the reader is gone, the next status line
    // fails to write; that must stop the client cleanly (exit 0), not panic.
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let mut child = bin()
        .args(["run", "--headless", "--listen", "0", "--bind", "127.0.0.1"])
        .args(["--status-interval", "0.1"])
        .arg("--torrents")
        .arg(dir.path().join("torrents"))
        .arg("--downloads")
        .arg(dir.path().join("downloads"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("listening on port"), "{first}");
    // The reader (and the pipe) is dropped here. Give the client a torrent so it has status
    // lines to write.
    let source = small_source(dir.path(), "data");
    std::fs::write(
        dir.path().join("torrents/data.torrent"),
        torrent_bytes(&source, 16 * 1024),
    )
    .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(15) {
            let _ = child.kill();
            panic!("client kept running with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}
