//! `zigtorrent add` from outside: with no client running (the next start loads it), with a
//! client running on the same folders (it picks it up at once), and bad sources (a clear
//! error, nothing kept).

mod common;

use std::time::Duration;

use common::*;
use zigtorrent_tests::*;

fn add(root: &std::path::Path, sources: &[&str]) -> std::process::Output {
    bin()
        .arg("add")
        .arg("--torrents")
        .arg(root.join("torrents"))
        .arg("--downloads")
        .arg(root.join("downloads"))
        .args(sources)
        .output()
        .expect("run zigtorrent add")
}

#[test]
fn add_without_a_running_client_is_loaded_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_payload(&root.join("seed"), "payload", 2);
    let seeder = start_seeder(
        &root.join("seed"),
        &make_torrent(&root.join("seed/payload"), vec![], PAYLOAD_PIECE_LENGTH),
        Duration::ZERO,
    );
    // The .torrent lives outside the watch folder.
    let file = root.join("elsewhere.torrent");
    std::fs::write(
        &file,
        torrent_bytes(&root.join("seed/payload"), PAYLOAD_PIECE_LENGTH),
    )
    .unwrap();
    let out = add(root, &[file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("payload: no client is running"), "{stdout}");
    // Added twice: said so, kept once.
    let out = add(root, &[file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("already added"));
    assert_eq!(
        std::fs::read_dir(root.join("downloads/.zigtorrent/added"))
            .unwrap()
            .count(),
        1
    );

    let mut client = Client::spawn(&peer_args(root, seeder.port, "0.2"));
    client.wait_line("payload: 100.0%", Duration::from_secs(60));
    assert_eq!(
        check_final_files(&root.join("seed/payload"), &root.join("downloads/payload")),
        PAYLOAD_FILES.len()
    );
    // The watch folder was not touched.
    assert_eq!(std::fs::read_dir(root.join("torrents")).unwrap().count(), 0);
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn add_hands_a_magnet_to_the_running_client() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut client = Client::spawn(&folder_args(root));
    client.wait_line("listening on port", Duration::from_secs(20));
    let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567&dn=Some%20Show";
    let out = add(root, &[magnet]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "Some Show: handed to the running client (PID {})",
            client.child.id()
        )),
        "{stdout}"
    );
    // The running client shows it, in the metadata state, within a few seconds.
    client.wait_line("Some Show", Duration::from_secs(10));
    client.signal("-TERM");
    assert!(client.wait_exit(Duration::from_secs(10)).success());
}

#[test]
fn bad_sources_get_a_clear_error_and_nothing_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let junk = root.join("junk.torrent");
    std::fs::write(&junk, b"this is not bencode").unwrap();
    let good = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
    let out = add(
        root,
        &[
            junk.to_str().unwrap(),
            "magnet:?xt=urn:btih:nothex",
            "http://127.0.0.1:9/x.torrent",
            good,
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("junk.torrent"), "{stderr}");
    assert!(stderr.contains("bad magnet link"), "{stderr}");
    assert!(
        stderr.contains("cannot fetch http://127.0.0.1:9/x.torrent"),
        "{stderr}"
    );
    assert!(stderr.contains("3 of 4 not added"), "{stderr}");
    // The good one is kept; nothing else.
    let kept: Vec<_> = std::fs::read_dir(root.join("downloads/.zigtorrent/added"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        kept,
        vec!["0123456789abcdef0123456789abcdef01234567.magnet"]
    );
}
