//! Black-box tests of `--plugin`: the binary downloads a torrent into the example plugin's
//! `ram` storage, lists plugin backends with their origin, and refuses bad plugins with one
//! error line and a non-zero exit.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::plugins::built_plugins;
use zigtorrent_tests::*;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zigtorrent"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The process failed cleanly (an exit code, not a signal) with exactly one line on stderr,
/// an `error:` line naming the plugin and containing `needle`.
fn assert_one_line_error(o: &Output, plugin: &Path, needle: &str) {
    let stderr = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "exit status {}: {stderr}",
        o.status
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let name = plugin.file_name().unwrap().to_str().unwrap();
    assert!(
        lines[0].starts_with("error: plugin ") && lines[0].contains(name),
        "{stderr}"
    );
    assert!(lines[0].contains(needle), "{stderr}");
}

#[test]
fn backends_lists_plugin_backends_with_their_path() {
    let ram = &built_plugins().ram;
    let o = bin()
        .arg("backends")
        .arg("--plugin")
        .arg(ram)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let canonical = std::fs::canonicalize(ram).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"transport tcp (built-in)"), "{out}");
    assert!(lines.contains(&"storage fs (built-in)"), "{out}");
    assert!(lines.contains(&"storage memory (built-in)"), "{out}");
    let ram_line = format!("storage ram ({})", canonical.display());
    assert!(lines.contains(&ram_line.as_str()), "{out}");

    // Without the plugin there is no `ram`.
    let o = bin().arg("backends").output().unwrap();
    assert!(o.status.success());
    assert!(!text(&o.stdout).contains("ram"), "{}", text(&o.stdout));
}

#[test]
fn bad_plugins_fail_with_one_line() {
    let libs = built_plugins();
    let dir = tempfile::tempdir().unwrap();
    let not_a_library = dir.path().join("libnotes.so");
    std::fs::write(&not_a_library, "these are notes, not machine code\n").unwrap();
    let missing = dir.path().join("libmissing.so");
    let cases: [(&Path, &str); 4] = [
        (&libs.wrong_api, "plugin API version 999"),
        (&libs.no_entry, "no `zigtorrent_plugin_v1` entry point"),
        (&not_a_library, "cannot load as a dynamic library"),
        (&missing, "no such file"),
    ];
    for (plugin, needle) in cases {
        let o = bin()
            .arg("backends")
            .arg("--plugin")
            .arg(plugin)
            .output()
            .unwrap();
        assert_one_line_error(&o, plugin, needle);
        assert!(o.stdout.is_empty(), "{}", text(&o.stdout));

        // `run` refuses before touching anything: no folders are created.
        let root = dir.path().join("run");
        let o = bin()
            .args(["run", "--headless", "--listen", "0", "--storage", "ram"])
            .arg("--plugin")
            .arg(&libs.ram)
            .arg("--plugin")
            .arg(plugin)
            .arg("--torrents")
            .arg(root.join("torrents"))
            .arg("--downloads")
            .arg(root.join("downloads"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_one_line_error(&o, plugin, needle);
        assert!(!root.exists(), "run created folders before failing");
    }
}

/// A running client whose stdout lines are collected by a thread.
struct Client {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn zigtorrent");
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
        Client {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(_) => {
                    let _ = self.child.kill();
                    let mut stderr = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut stderr);
                    }
                    panic!(
                        "no line with {needle:?} within {timeout:?}; saw {:?}; stderr: {stderr}",
                        self.seen
                    )
                }
            }
        }
    }

    fn stop(mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -INT failed");
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                panic!("zigtorrent did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An in-process seeder of `source` on loopback; returns its runtime, session and port.
fn seed(
    seed_dir: &Path,
    meta: &zigtorrent_engine::Metainfo,
) -> (tokio::runtime::Runtime, zigtorrent_engine::Session, u16) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let session = runtime.block_on(async {
        let s = start_session(seed_dir, Arc::new(FsBackend::new()), vec![]).await;
        let h = s.add(meta.clone()).unwrap();
        wait_seeding(&h, Duration::from_secs(60)).await;
        s
    });
    let port = session.listen_port();
    (runtime, session, port)
}

#[test]
fn run_downloads_into_the_plugin_storage() {
    let libs = built_plugins();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let seed_dir = root.join("seed");
    let source = write_payload(&seed_dir, "payload", 7);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    let torrent = zigtorrent_engine::metainfo::create_torrent(
        &source,
        &zigtorrent_engine::metainfo::CreateOptions {
            piece_length: Some(PAYLOAD_PIECE_LENGTH),
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::write(root.join("torrents/payload.torrent"), torrent).unwrap();
    let (runtime, session, port) = seed(&seed_dir, &meta);

    let downloads: PathBuf = root.join("downloads");
    let mut cmd = bin();
    cmd.args([
        "run",
        "--headless",
        "--listen",
        "0",
        "--bind",
        "127.0.0.1",
        "--status-interval",
        "1",
        "--storage",
        "ram",
    ])
    .arg("--plugin")
    .arg(&libs.ram)
    .arg("--torrents")
    .arg(root.join("torrents"))
    .arg("--downloads")
    .arg(&downloads)
    .args(["--peer", &format!("127.0.0.1:{port}")]);
    let mut client = Client::spawn(cmd);
    client.wait_line("added payload", Duration::from_secs(20));
    // 100% and seeding only after every piece's SHA-1 matched.
    client.wait_line("payload: 100.0%", Duration::from_secs(60));
    client.wait_line("seeding", Duration::from_secs(10));
    // `ram` writes each file out whole once complete: the bytes on disk are what it holds.
    assert_same_files(&source, &downloads.join("payload"));
    let status = client.stop();
    assert!(status.success(), "exit status {status}");
    runtime.block_on(session.shutdown(Duration::from_secs(2)));
}
