//! Black-box tests of issue 9's promises about the process itself: one instance per state
//! folder, stop signals at any moment of set-up, a FIFO in the watch folder, plugins only when
//! the user asked, and one `error:` line per torrent error in headless mode.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// DESIGN: a graceful stop exits 0 within 5 s.
const STOP_WITHIN: Duration = Duration::from_secs(5);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A headless client on `root`'s folders, its port printed.
fn started(root: &Path, extra: &[&str]) -> Client {
    let mut args = folder_args(root);
    args.extend(extra.iter().map(|s| s.to_string()));
    let mut c = Client::spawn(&args);
    c.wait_stdout("listening on port", Duration::from_secs(20));
    c
}

/// Stop with SIGTERM; the exit must be 0 and within [`STOP_WITHIN`].
fn stop_cleanly(mut c: Client) {
    c.signal("-TERM");
    let sent = Instant::now();
    let status = c.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        sent.elapsed() < STOP_WITHIN,
        "stopping took {:?}",
        sent.elapsed()
    );
}

#[test]
fn a_second_run_on_the_same_state_folder_exits_at_once_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let first = started(root, &[]);
    let lock = root.join("downloads/.zigtorrent/zigtorrent.lock");

    let mut second = Client::spawn(&folder_args(root));
    let status = second.wait_exit(Duration::from_secs(20));
    second.drain(Duration::from_secs(5));
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let stderr = second.stderr_lines();
    assert_eq!(stderr.len(), 1, "{stderr:?}");
    let pid = format!("PID {}", first.child.id());
    assert!(
        stderr[0].starts_with("error: ")
            && stderr[0].contains(&pid)
            && stderr[0].contains(&*lock.to_string_lossy()),
        "{stderr:?}"
    );
    assert_eq!(second.count("out: listening"), 0, "the second one ran");

    // The first one is unharmed and stops as usual; the lock goes with it.
    stop_cleanly(first);
    let again = started(root, &[]);
    // A killed owner leaves no stale lock either.
    again.signal("-KILL");
    drop(again);
    stop_cleanly(started(root, &[]));
}

/// The signals a process has handlers for, from `/proc/PID/status` (`SigCgt`), or `None` once
/// it is gone.
fn caught_signals(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mask = status.lines().find_map(|l| l.strip_prefix("SigCgt:"))?;
    u64::from_str_radix(mask.trim(), 16).ok()
}

#[test]
fn a_stop_signal_at_any_moment_after_start_exits_zero() {
    // Bit of signal N in a SigCgt mask.
    let bit = |n: u32| 1u64 << (n - 1);
    const SIGSEGV: u32 = 11;
    // The earliest moments (set-up: config, folders, runtime, the session's socket) are the
    // ones that used to kill the client, so they are tried more than once. The signal is sent
    // with kill(1), as a user would, so each moment is the delay plus kill's own start-up.
    let moments = [0u64, 0, 0, 1, 1, 2, 2, 5, 10, 20, 50, 100];
    for (i, delay_ms) in moments.into_iter().enumerate() {
        for signal in ["-INT", "-TERM"] {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("fresh");
            let mut c = Client::spawn(&folder_args(&root));
            // Moment zero: the Rust runtime has started in the child (std installs its
            // SIGSEGV handler before `main`). Before that only the dynamic loader runs, and no
            // program can have a handler there: a signal then has its default action.
            let zero = Instant::now();
            loop {
                match caught_signals(c.child.id()) {
                    Some(mask) if mask & bit(SIGSEGV) != 0 => break,
                    Some(_) => {}
                    None => panic!("the client ended before its runtime started"),
                }
                assert!(
                    zero.elapsed() < Duration::from_secs(20),
                    "runtime never started"
                );
                std::thread::yield_now();
            }
            std::thread::sleep(Duration::from_millis(delay_ms));
            c.signal(signal);
            let status = c.wait_exit(Duration::from_secs(20));
            c.drain(Duration::from_secs(5));
            assert_eq!(
                status.code(),
                Some(0),
                "{signal} {delay_ms} ms after start (case {i}): exit status {status}; output: {:?}",
                c.seen.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn a_fifo_in_the_watch_folder_does_not_stall_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let torrents = root.join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    let made = Command::new("mkfifo")
        .arg(torrents.join("x.torrent"))
        .status()
        .unwrap();
    assert!(made.success());
    // A real torrent beside it, sorted after it: the scan went past the FIFO if it is added.
    std::fs::write(
        torrents.join("y.torrent"),
        torrent_bytes(&small_source(root, "y.bin"), 16 * 1024),
    )
    .unwrap();
    let mut c = started(root, &["--storage", "memory", "--status-interval", "0.2"]);
    c.wait_stdout("added y.bin", Duration::from_secs(10));
    // A while later, a torrent dropped beside the FIFO (sorted after it) is still taken: the
    // scans that event triggers get past the FIFO too.
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(
        torrents.join("z.torrent"),
        torrent_bytes(&small_source(root, "z.bin"), 16 * 1024),
    )
    .unwrap();
    c.wait_stdout("added z.bin", Duration::from_secs(10));
    stop_cleanly(c);
}

/// A torrent whose one file is `depth` path components deep (costly to parse before issue 9's
/// metainfo work: the time grew with the square of the depth).
fn deep_torrent(depth: usize) -> Vec<u8> {
    let mut info = b"d5:filesld6:lengthi1e4:pathl".to_vec();
    for _ in 0..depth {
        info.extend_from_slice(b"1:a");
    }
    info.extend_from_slice(b"eee4:name4:deep12:piece lengthi16384e6:pieces20:");
    info.extend_from_slice(&[0u8; 20]);
    info.push(b'e');
    let mut t = b"d4:info".to_vec();
    t.extend_from_slice(&info);
    t.push(b'e');
    t
}

#[test]
fn quitting_does_not_wait_for_a_busy_watch_folder_scan() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    std::fs::write(root.join("torrents/deep.torrent"), deep_torrent(80_000)).unwrap();
    let mut c = started(root, &["--storage", "memory"]);
    // The scan at start is now reading that file, for many seconds if parsing is slow; if
    // parsing is quick, it is an error entry. Quitting must be quick either way.
    std::thread::sleep(Duration::from_millis(300));
    c.signal("-TERM");
    let sent = Instant::now();
    let status = c.wait_exit(Duration::from_secs(30));
    let took = sent.elapsed();
    c.drain(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(took < STOP_WITHIN, "stopping took {took:?}");
    assert_eq!(c.count("out: stopped"), 1);
    assert_eq!(c.count("not flushed"), 0, "{:?}", c.stderr_lines());
}

#[test]
fn a_config_in_the_working_directory_cannot_load_a_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("someone-elses-folder");
    let xdg = dir.path().join("empty-xdg");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&xdg).unwrap();
    let plugin = dir.path().join("libplanted.so");
    let config = cwd.join("zigtorrent.toml");
    std::fs::write(
        &config,
        format!("plugins = [{:?}]\n", plugin.display().to_string()),
    )
    .unwrap();
    let run = |extra: &[&str]| {
        bin()
            .args(["run", "--headless", "--listen", "0", "--bind", "127.0.0.1"])
            .args(extra)
            .current_dir(&cwd)
            .env("XDG_CONFIG_HOME", &xdg)
            .env_remove("ZIGTORRENT_CONFIG")
            .env_remove("ZIGTORRENT_PLUGINS")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };

    // Found in the working directory: refused before any plugin is opened or folder made.
    let o = run(&[]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: ")
            && lines[0].contains("may not load plugins")
            && lines[0].contains(&*config.to_string_lossy()),
        "{stderr}"
    );
    assert!(!cwd.join("downloads").exists() && !cwd.join("torrents").exists());

    // The same file named by the user is theirs: its plugin is loaded (and, being no library
    // at all, fails as a missing plugin would).
    let o = run(&["--config", config.to_str().unwrap()]);
    let stderr = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: plugin ") && stderr.contains("libplanted.so"),
        "{stderr}"
    );
}

#[test]
fn a_torrent_error_is_one_error_line_in_headless_mode() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A two-file torrent `pack`, and a file of the user's where its folder would go.
    let source = root.join("src/pack");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("a.bin"), vec![1u8; 40_000]).unwrap();
    std::fs::write(source.join("b.bin"), vec![2u8; 30_000]).unwrap();
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    std::fs::write(
        root.join("torrents/pack.torrent"),
        torrent_bytes(&source, 16 * 1024),
    )
    .unwrap();
    let users = root.join("downloads/pack");
    std::fs::create_dir_all(root.join("downloads")).unwrap();
    std::fs::write(&users, b"the user's own file").unwrap();

    let mut c = started(root, &["--status-interval", "0.1"]);
    let (_, line) = c.wait_line("err: error: pack: ", Duration::from_secs(20));
    assert!(line.contains("pack"), "{line}");
    // Twenty more status intervals (0.1 s each) in the error state: still one line.
    std::thread::sleep(Duration::from_secs(2));
    c.poll();
    let lines: Vec<String> = c
        .seen
        .iter()
        .filter(|(_, l)| l.starts_with("err: error: pack"))
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(std::fs::read(&users).unwrap(), b"the user's own file");
    stop_cleanly(c);
}

#[test]
fn other_commands_still_end_on_a_stop_signal() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // `add` of a URL whose server never answers waits (up to its 30 s timeout) until stopped.
    // The kernel completes the connection from the listen backlog; nobody reads it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/x.torrent", silent.local_addr().unwrap());
    for (signal, number) in [("-INT", 2), ("-TERM", 15)] {
        let mut child = bin()
            .arg("add")
            .arg("--downloads")
            .arg(dir.path())
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let sent = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("`add` ignored {signal}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(number), "{status}");
    }
    // A FIFO given to `info` or `add` is refused at once (it would wait for a writer forever).
    let fifo = dir.path().join("pipe.torrent");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for args in [
        vec!["info"],
        vec!["add", "--downloads", dir.path().to_str().unwrap()],
    ] {
        let out = bin()
            .args(&args)
            .arg(&fifo)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("not a regular file"),
            "{stderr}"
        );
    }
}
