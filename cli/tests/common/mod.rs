//! Helpers shared by the black-box tests of `zigtorrent run`: a client process whose output
//! lines are collected, and an in-process (optionally slow) seeder on loopback.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zigtorrent_engine::testing::decorators::SlowBackend;
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

/// The binary under test.
/// The binary under test. Tests talk to loopback only: no DHT node (it would contact the public
/// routers) and no local service discovery (multicast on the LAN).
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_zigtorrent"));
    c.env("ZIGTORRENT_DHT", "false")
        .env("ZIGTORRENT_LSD", "false");
    c
}

/// Sent by a reader thread when its stream ends.
const EOF: &str = "\0eof";

/// A running `zigtorrent run --headless`; stdout lines arrive as `out: …`, stderr as `err: …`.
/// Killed (by its PID) when dropped.
pub struct Client {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<(Instant, String)>,
    pub seen: Vec<(Instant, String)>,
}

impl Client {
    /// Start `zigtorrent run --headless` with `args`.
    pub fn spawn(args: &[String]) -> Client {
        let mut child = bin()
            .arg("run")
            .arg("--headless")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zigtorrent");
        let (tx, lines) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for (prefix, stream) in [
            ("out: ", Box::new(out) as Box<dyn std::io::Read + Send>),
            ("err: ", Box::new(err)),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stream)
                    .lines()
                    .map_while(Result::ok)
                {
                    if tx
                        .send((Instant::now(), format!("{prefix}{line}")))
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send((Instant::now(), EOF.to_string()));
            });
        }
        Client {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Take in whatever lines have arrived.
    pub fn poll(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
    }

    /// After the process ended: wait until both output streams are read to the end.
    pub fn drain(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.seen.iter().filter(|(_, l)| l == EOF).count() < 2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!("output did not end within {timeout:?}"),
            }
        }
    }

    /// Wait until a line satisfies `pred`; returns it with its arrival time.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> (Instant, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.seen.iter().find(|(_, l)| pred(l)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => panic!(
                    "no line {what} within {timeout:?}; saw:\n{}",
                    self.seen
                        .iter()
                        .map(|(_, l)| l.as_str())
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            }
        }
    }

    /// Wait until a line contains `needle`.
    pub fn wait_line(&mut self, needle: &str, timeout: Duration) -> (Instant, String) {
        self.wait_for(&format!("containing {needle:?}"), timeout, |l| {
            l.contains(needle)
        })
    }

    /// Wait until a stdout line contains `needle`.
    pub fn wait_stdout(&mut self, needle: &str, timeout: Duration) -> (Instant, String) {
        self.wait_for(&format!("on stdout containing {needle:?}"), timeout, |l| {
            l.strip_prefix("out: ").is_some_and(|l| l.contains(needle))
        })
    }

    /// The stderr lines seen so far (without their `err: ` prefix).
    pub fn stderr_lines(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("err: "))
            .collect()
    }

    /// The stdout lines seen so far (without their `out: ` prefix).
    pub fn stdout_lines(&self) -> Vec<&str> {
        self.seen
            .iter()
            .filter_map(|(_, l)| l.strip_prefix("out: "))
            .collect()
    }

    /// Lines seen so far that contain `needle`.
    pub fn count(&mut self, needle: &str) -> usize {
        self.poll();
        self.seen.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// Send a signal (`-TERM`, `-KILL`, …) to the process by PID.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for the exit; kills and panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                panic!("zigtorrent did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The usual folder arguments under `root`, listening on loopback.
pub fn folder_args(root: &Path) -> Vec<String> {
    vec![
        "--listen".into(),
        "0".into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--torrents".into(),
        root.join("torrents").display().to_string(),
        "--downloads".into(),
        root.join("downloads").display().to_string(),
    ]
}

/// [`folder_args`] plus dialling the seeder on `seed_port` and printing status lines every
/// `status_interval` seconds.
pub fn peer_args(root: &Path, seed_port: u16, status_interval: &str) -> Vec<String> {
    let mut args = folder_args(root);
    args.extend(
        [
            "--peer",
            &format!("127.0.0.1:{seed_port}"),
            "--status-interval",
            status_interval,
        ]
        .map(String::from),
    );
    args
}

/// An in-process seeding session, shut down when dropped.
pub struct Seeder {
    runtime: tokio::runtime::Runtime,
    session: Option<zigtorrent_engine::Session>,
    pub port: u16,
}

impl Seeder {
    /// Payload bytes the seeder has sent, over all its torrents and connections (as last
    /// published: up to a second behind).
    pub fn uploaded(&self) -> u64 {
        self.session
            .as_ref()
            .map(|s| s.torrents().iter().map(|t| t.status().uploaded).sum())
            .unwrap_or(0)
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.runtime.block_on(s.shutdown(Duration::from_secs(2)));
        }
    }
}

/// Seed `torrent` from `seed_dir`, every block read delayed by `delay`.
pub fn start_seeder(
    seed_dir: &Path,
    torrent: &zigtorrent_engine::Metainfo,
    delay: Duration,
) -> Seeder {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let session = runtime.block_on(async {
        let backend = Arc::new(SlowBackend::new(Arc::new(FsBackend::new()), delay));
        let s = start_session(seed_dir, backend, vec![]).await;
        let h = s.add(torrent.clone()).unwrap();
        wait_seeding(&h, Duration::from_secs(120)).await;
        s
    });
    let port = session.listen_port();
    Seeder {
        runtime,
        session: Some(session),
        port,
    }
}

/// Publish the payload already at `root/seed/payload` as `root/torrents/payload.torrent` (no
/// trackers, pieces of `piece_length`) and seed it from `root/seed`, reads delayed by `delay`.
pub fn seed_payload(root: &Path, piece_length: u32, delay: Duration) -> Seeder {
    let source = root.join("seed/payload");
    let meta = make_torrent(&source, vec![], piece_length);
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    std::fs::write(
        root.join("torrents/payload.torrent"),
        torrent_bytes(&source, piece_length),
    )
    .unwrap();
    start_seeder(&root.join("seed"), &meta, delay)
}

/// Bytes of a torrent of `source` with the given piece length and no trackers.
pub fn torrent_bytes(source: &Path, piece_length: u32) -> Vec<u8> {
    zigtorrent_engine::metainfo::create_torrent(
        source,
        &zigtorrent_engine::metainfo::CreateOptions {
            piece_length: Some(piece_length),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Every payload file at a final path must be complete; returns how many there are.
pub fn check_final_files(source: &Path, downloaded: &Path) -> usize {
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

/// A fresh folder for a small single-file torrent named `name` (content unique to `name`).
pub fn small_source(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("content of {name}\n").repeat(50)).unwrap();
    path
}
