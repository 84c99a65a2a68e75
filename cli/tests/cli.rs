//! Black-box tests of the `zigtorrent` binary: what a user sees (exit codes, lines printed,
//! files on disk). Seeders are in-process engine sessions on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zigtorrent_engine::testing::slow::SlowBackend;
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zigtorrent"))
}

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

/// A running `zigtorrent run` whose stdout lines are collected by a thread.
struct Client {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    /// Wait until a stdout line contains `needle`.
    fn wait_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "no line with {needle:?} within {timeout:?}; saw {:?}",
                    self.seen
                ),
            }
        }
    }
}

/// Spawn `zigtorrent run --headless` on the folders of `root`, dialling `seed_port`, and wait
/// until it has loaded the torrent (so its signal handlers are installed).
fn spawn_client(root: &Path, seed_port: u16) -> Client {
    let mut child = spawn_raw(root, seed_port);
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut c = Client {
        child,
        lines,
        seen: Vec::new(),
    };
    c.wait_line("added payload", Duration::from_secs(20));
    c
}

fn spawn_raw(root: &Path, seed_port: u16) -> Child {
    bin()
        .args([
            "run",
            "--headless",
            "--listen",
            "0",
            "--bind",
            "127.0.0.1",
            "--status-interval",
            "1",
        ])
        .arg("--torrents")
        .arg(root.join("torrents"))
        .arg("--downloads")
        .arg(root.join("downloads"))
        .args(["--peer", &format!("127.0.0.1:{seed_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn zigtorrent")
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Every file at a final path must be complete; returns how many final files there are.
fn check_final_files(source: &Path, downloaded: &Path) -> usize {
    let mut finals = 0;
    for (rel, _) in PAYLOAD_FILES {
        let path = downloaded.join(rel);
        if let Ok(data) = std::fs::read(&path) {
            let expected = std::fs::read(source.join(rel)).unwrap();
            assert!(
                data == expected,
                "{} is at its final path but incomplete or wrong",
                path.display()
            );
            finals += 1;
        }
    }
    finals
}

fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("zigtorrent did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Seeder {
    runtime: tokio::runtime::Runtime,
    session: Option<zigtorrent_engine::Session>,
}

impl Drop for Seeder {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.runtime.block_on(s.shutdown(Duration::from_secs(2)));
        }
    }
}

/// An in-process seeder whose reads are slowed by `delay` per block.
fn start_seeder(
    seed_dir: &Path,
    torrent: &zigtorrent_engine::Metainfo,
    delay: Duration,
) -> (Seeder, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let session = runtime.block_on(async {
        let backend = Arc::new(SlowBackend::new(Arc::new(FsBackend::new()), delay));
        let s = start_session(seed_dir, backend, vec![]).await;
        let h = s.add(torrent.clone()).unwrap();
        wait_seeding(&h, Duration::from_secs(60)).await;
        s
    });
    let port = session.listen_port();
    (
        Seeder {
            runtime,
            session: Some(session),
        },
        port,
    )
}

fn setup(root: &Path, delay: Duration) -> (PathBuf, Seeder, u16) {
    let seed_dir = root.join("seed");
    let source = write_payload(&seed_dir, "payload", 42);
    let meta = make_torrent(&source, vec![], 16 * 1024);
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    let torrent_bytes = zigtorrent_engine::metainfo::create_torrent(
        &source,
        &zigtorrent_engine::metainfo::CreateOptions {
            piece_length: Some(16 * 1024),
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(root.join("torrents/payload.torrent"), torrent_bytes).unwrap();
    let (seeder, port) = start_seeder(&seed_dir, &meta, delay);
    (source, seeder, port)
}

#[test]
fn headless_download_then_graceful_stop() {
    let dir = tempfile::tempdir().unwrap();
    let (source, _seeder, port) = setup(dir.path(), Duration::ZERO);
    // A broken torrent next to the good one: one error line, the rest goes on.
    std::fs::write(dir.path().join("torrents/broken.torrent"), b"not bencode").unwrap();
    let mut client = spawn_client(dir.path(), port);
    let downloaded = dir.path().join("downloads/payload");
    client.wait_line("payload: 100.0%", Duration::from_secs(60));
    client.wait_line("seeding", Duration::from_secs(10));
    assert_same_files(&source, &downloaded);
    signal(&client.child, "-INT");
    let t = Instant::now();
    let status = wait_exit(&mut client.child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        t.elapsed()
    );
    client.wait_line("stopped", Duration::from_secs(1));
    let mut stderr = String::new();
    use std::io::Read;
    client
        .child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains("broken.torrent")),
        "{stderr}"
    );
    assert_same_files(&source, &downloaded);
}

#[test]
fn sigkill_mid_download_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    // 26 blocks at 200 ms each from a one-request-at-a-time seeder: about 5 s of download.
    let (source, _seeder, port) = setup(dir.path(), Duration::from_millis(200));
    let downloaded = dir.path().join("downloads/payload");
    let state = dir.path().join("downloads/.zigtorrent");
    let mut finals_seen = Vec::new();
    for round in 0..2u64 {
        let mut client = spawn_client(dir.path(), port);
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1000 + 700 * round) {
            check_final_files(&source, &downloaded);
            std::thread::sleep(Duration::from_millis(10));
        }
        signal(&client.child, "-KILL");
        wait_exit(&mut client.child, Duration::from_secs(5));
        finals_seen.push(check_final_files(&source, &downloaded));
        assert!(state.exists(), "no state folder after round {round}");
    }
    // The kills must really have landed mid-download for this test to mean anything.
    assert!(
        finals_seen[1] < PAYLOAD_FILES.len(),
        "download finished before the second kill"
    );
    let mut client = spawn_client(dir.path(), port);
    let start = Instant::now();
    while check_final_files(&source, &downloaded) < PAYLOAD_FILES.len() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "resumed download did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&client.child, "-TERM");
    assert!(wait_exit(&mut client.child, Duration::from_secs(10)).success());
    assert_same_files(&source, &downloaded);
}
