//! Black-box tests of `--plugin`: the binary downloads a torrent into the example plugin's
//! `ram` storage, lists plugin backends with their origin, and refuses bad plugins with one
//! error line and a non-zero exit.

mod common;

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;
use zigtorrent_tests::plugins::built_plugins;
use zigtorrent_tests::*;

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

#[test]
fn run_downloads_into_the_plugin_storage() {
    let libs = built_plugins();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let source = write_payload(&root.join("seed"), "payload", 7);
    let seeder = seed_payload(root, PAYLOAD_PIECE_LENGTH, Duration::ZERO);

    let downloads = root.join("downloads");
    let mut args = peer_args(root, seeder.port, "1");
    args.extend(["--storage".into(), "ram".into()]);
    args.extend(["--plugin".into(), libs.ram.display().to_string()]);
    let mut client = Client::spawn(&args);
    client.wait_stdout("added payload", Duration::from_secs(20));
    // 100% and seeding only after every piece's SHA-1 matched.
    client.wait_stdout("payload: 100.0%", Duration::from_secs(60));
    client.wait_stdout("seeding", Duration::from_secs(10));
    // `ram` writes each file out whole once complete: the bytes on disk are what it holds.
    assert_same_files(&source, &downloads.join("payload"));
    client.signal("-INT");
    let status = client.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}
