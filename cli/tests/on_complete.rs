//! `--on-complete PROGRAM` from outside: run once when a download finishes, with the name and
//! the data's path as two arguments and no shell, even for a hostile name; not run for a
//! torrent that was already complete at start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zigtorrent_tests::*;

#[test]
fn the_program_runs_once_per_finished_download_without_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A name a shell would run a command from.
    let name = "x; touch pwned $(touch pwned2)";
    write_payload(&root.join("seed"), name, 3);
    let source = root.join("seed").join(name);
    let seeder = start_seeder(
        &root.join("seed"),
        &make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH),
        Duration::ZERO,
    );
    std::fs::create_dir_all(root.join("torrents")).unwrap();
    std::fs::write(
        root.join("torrents/t.torrent"),
        torrent_bytes(&source, PAYLOAD_PIECE_LENGTH),
    )
    .unwrap();
    // The program appends its arguments, one per line, and its environment's path.
    let log = root.join("calls.txt");
    let script = root.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n%s\\n%s\\n' \"$1\" \"$2\" \"$ZIGTORRENT_PATH\" >> '{}'\n",
            log.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut args = peer_args(root, seeder.port, "0.2");
    args.extend(["--on-complete".to_string(), script.display().to_string()]);
    let mut client = Client::spawn(&args);
    client.wait_line(&format!("{name}: 100.0%"), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let data = std::path::absolute(root.join("downloads").join(name)).unwrap();
    let expected = format!("{name}\n{}\n{}\n", data.display(), data.display());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), expected);
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());

    // A restart: already complete, so not run again.
    let mut client = Client::spawn(&args);
    client.wait_line(&format!("{name}: 100.0%"), Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), expected, "run once");
    for f in ["pwned", "pwned2"] {
        assert!(
            !root.join(f).exists() && !std::path::Path::new(f).exists(),
            "a shell ran"
        );
    }
}

#[test]
fn a_program_that_cannot_run_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = folder_args(dir.path());
    args.extend([
        "--on-complete".to_string(),
        dir.path().join("nothing").display().to_string(),
    ]);
    let out = bin()
        .arg("run")
        .arg("--headless")
        .args(&args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("on_complete") && stderr.contains("nothing"),
        "{stderr}"
    );
}
