//! `--completed DIR` from outside: a finished download moves there (the `--on-complete`
//! program gets the new path), stays there across a restart, and a completed folder that
//! could reach the client's own files is refused at start.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zigtorrent_tests::*;

#[test]
fn a_finished_download_moves_to_the_completed_folder_and_stays_there() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_payload(&root.join("seed"), "payload", 41);
    let seeder = seed_payload(root, PAYLOAD_PIECE_LENGTH, Duration::ZERO);
    let done = root.join("done");
    let log = root.join("calls.txt");
    let script = root.join("hook.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$2\" >> '{}'\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut args = peer_args(root, seeder.port, "0.2");
    args.extend([
        "--completed".to_string(),
        done.display().to_string(),
        "--on-complete".to_string(),
        script.display().to_string(),
    ]);
    let mut client = Client::spawn(&args);
    // The program runs once the files are in their final place.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !log.exists() && Instant::now() < deadline {
        client.poll();
        std::thread::sleep(Duration::from_millis(100));
    }
    let moved = std::path::absolute(done.join("payload")).unwrap();
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        format!("{}\n", moved.display())
    );
    assert_same_files(&root.join("seed/payload"), &done.join("payload"));
    assert!(!root.join("downloads/payload").exists(), "left behind");
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());
    drop(seeder);

    // A restart without the seeder: seeding, from the completed folder.
    let mut args = folder_args(root);
    args.extend(
        [
            "--completed",
            &done.display().to_string(),
            "--status-interval",
            "0.2",
        ]
        .map(String::from),
    );
    let mut client = Client::spawn(&args);
    client.wait_line("payload: 100.0%", Duration::from_secs(30));
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());
    assert_same_files(&root.join("seed/payload"), &done.join("payload"));
    assert!(!root.join("downloads/payload").exists());
}

#[test]
fn a_completed_folder_that_reaches_the_state_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let state = root.join("state");
    for (completed, why) in [
        (state.clone(), "inside it"),
        (state.join("done"), "inside it"),
        (root.to_path_buf(), "is inside the completed folder"),
    ] {
        let mut args = folder_args(root);
        args.extend(
            [
                "--state",
                &state.display().to_string(),
                "--completed",
                &completed.display().to_string(),
            ]
            .map(String::from),
        );
        let out = bin()
            .arg("run")
            .arg("--headless")
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{completed:?} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let first = stderr.lines().next().unwrap_or("");
        assert!(
            first.contains("completed folder") && first.contains(why),
            "{completed:?}: {stderr}"
        );
    }
}
