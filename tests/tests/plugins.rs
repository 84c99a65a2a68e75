//! Plugins loaded in-process from the built libraries: the example plugin's storage, selected
//! by name from the registry like `fs` and `memory`, passes the storage conformance suite; the
//! loader refuses libraries it must refuse, leaving the registry as it was.

use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::plugin::{self, PluginError};
use zigtorrent_engine::testing::storage_suite;
use zigtorrent_engine::{MemoryBackend, Origin, Registry};
use zigtorrent_tests::plugins::built_plugins;

fn builtin_registry() -> Registry {
    let mut r = Registry::new();
    r.register_storage(Origin::BuiltIn, Arc::new(MemoryBackend::new()))
        .expect("fresh registry has no 'memory'");
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn ram_plugin_passes_the_storage_suite() {
    let libs = built_plugins();
    let mut registry = builtin_registry();
    let loaded = plugin::load(&mut registry, &libs.ram).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(loaded.storages, ["ram"]);
    assert!(loaded.transports.is_empty());
    let canonical = std::fs::canonicalize(&libs.ram).unwrap();
    let origins: Vec<_> = registry.storages().collect();
    assert_eq!(
        origins,
        [
            ("memory", &Origin::BuiltIn),
            ("ram", &Origin::Plugin(canonical))
        ]
    );

    let backend = registry.storage("ram").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.name(), "ram");
    let root = tempfile::tempdir().expect("temp dir");
    runtime().block_on(async {
        tokio::time::timeout(
            Duration::from_secs(120),
            storage_suite::run_all(backend, root.path()),
        )
        .await
        .expect("suite finished in time")
    });
}

#[test]
fn ram_plugin_writes_finished_files_out_whole() {
    use zigtorrent_engine::storage::StorageSpec;
    use zigtorrent_engine::{InfoHash, Layout};

    let libs = built_plugins();
    let mut registry = Registry::new();
    plugin::load(&mut registry, &libs.ram).unwrap_or_else(|e| panic!("{e}"));
    let backend = registry.storage("ram").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = Layout::new(
        4,
        [
            ("t/a".into(), 6),
            ("t/empty".into(), 0),
            ("t/sub/b".into(), 3),
        ],
    );
    let spec = StorageSpec {
        info_hash: InfoHash([9; 20]),
        layout: Arc::new(layout),
        download_dir: dir.path().join("downloads"),
        state_dir: dir.path().join("state"),
        skipped_files: Vec::new(),
    };
    let out = dir.path().join("downloads/t");
    runtime().block_on(async {
        let s = backend.open(spec).await.unwrap();
        assert_eq!(std::fs::read(out.join("empty")).unwrap(), b"");
        s.write(0, 0, vec!["abcd".into()]).await.unwrap();
        s.write(1, 0, vec!["ef".into(), "gh".into()]).await.unwrap();
        s.mark_complete(1).await.unwrap();
        assert!(!out.join("a").exists(), "a is not complete yet");
        s.mark_complete(0).await.unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"abcdef");
        assert!(!out.join("sub/b").exists(), "b is not complete yet");
        s.write(2, 0, vec!["i".into()]).await.unwrap();
        s.mark_complete(2).await.unwrap();
        assert_eq!(std::fs::read(out.join("sub/b")).unwrap(), b"ghi");
    });
    let names: Vec<_> = walk(&out);
    assert_eq!(names, ["a", "empty", "sub/b"], "no temp files left");
}

#[test]
fn ram_plugin_skips_files_and_deletes_only_what_it_wrote() {
    use zigtorrent_engine::storage::StorageSpec;
    use zigtorrent_engine::{InfoHash, Layout};

    let libs = built_plugins();
    let mut registry = Registry::new();
    plugin::load(&mut registry, &libs.ram).unwrap_or_else(|e| panic!("{e}"));
    let backend = registry.storage("ram").unwrap();
    let dir = tempfile::tempdir().unwrap();
    // s (2 bytes) lies inside piece 1, shared with a and b; e is empty.
    let layout = Layout::new(
        4,
        [
            ("t/a".into(), 5),
            ("t/s".into(), 2),
            ("t/e".into(), 0),
            ("t/sub/b".into(), 2),
        ],
    );
    let spec = StorageSpec {
        info_hash: InfoHash([8; 20]),
        layout: Arc::new(layout),
        download_dir: dir.path().join("downloads"),
        state_dir: dir.path().join("state"),
        skipped_files: vec![false, true, true, false],
    };
    let out = dir.path().join("downloads/t");
    runtime().block_on(async {
        let s = backend.open(spec.clone()).await.unwrap();
        s.write(0, 0, vec!["abcd".into()]).await.unwrap();
        s.write(1, 0, vec!["efgh".into()]).await.unwrap();
        s.write(2, 0, vec!["i".into()]).await.unwrap();
        for p in 0..3 {
            s.mark_complete(p).await.unwrap();
        }
        assert_eq!(walk(&out), ["a", "sub/b"], "skipped files written out");
        s.set_skipped_files(vec![false, false, true, false])
            .await
            .unwrap();
        assert_eq!(std::fs::read(out.join("s")).unwrap(), b"fg");
        // The user's file in the torrent's folder, and b replaced by another file.
        std::fs::write(out.join("notes"), b"mine").unwrap();
        std::fs::remove_file(out.join("sub/b")).unwrap();
        std::fs::write(out.join("sub/b"), b"hi").unwrap();
        drop(s);
        let deleted = backend.delete_data(spec.clone()).await.unwrap();
        assert_eq!(deleted.kept.len(), 1, "{:?}", deleted.kept);
        assert_eq!(walk(&out), ["notes", "sub/b"]);
        // Nothing held any more: reopened, it trusts no piece.
        let s = backend.open(spec).await.unwrap();
        assert!((0..3).all(|p| !s.has_piece(p)));
    });
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_same_plugin_loads_into_several_registries() {
    let libs = built_plugins();
    let mut a = Registry::new();
    let mut b = Registry::new();
    plugin::load(&mut a, &libs.ram).unwrap_or_else(|e| panic!("{e}"));
    plugin::load(&mut b, &libs.ram).unwrap_or_else(|e| panic!("{e}"));
    drop(a);
    // Dropping one registry must not take the library away from the other.
    let backend = b.storage("ram").unwrap();
    let root = tempfile::tempdir().unwrap();
    runtime().block_on(storage_suite::round_trip(backend, root.path()));
    // Loading it twice into one registry is a name clash, and changes nothing.
    let e = plugin::load(&mut b, &libs.ram).unwrap_err();
    assert!(
        matches!(e, PluginError::Registry { .. }) && e.to_string().contains("'ram'"),
        "{e}"
    );
    assert_eq!(b.storages().count(), 1);
}

#[test]
fn wrong_api_version_is_refused() {
    let libs = built_plugins();
    let mut registry = builtin_registry();
    let e = plugin::load(&mut registry, &libs.wrong_api).unwrap_err();
    assert!(
        matches!(
            e,
            PluginError::ApiVersion {
                found: 999,
                expected: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("libfixture_wrong_api"), "{e}");
    assert_eq!(registry.storages().count(), 1);
}

#[test]
fn library_without_entry_point_is_refused() {
    let libs = built_plugins();
    let mut registry = builtin_registry();
    let e = plugin::load(&mut registry, &libs.no_entry).unwrap_err();
    assert!(matches!(e, PluginError::NoEntryPoint { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("libfixture_no_entry") && msg.contains(plugin::ENTRY_POINT),
        "{msg}"
    );
    assert_eq!(registry.storages().count(), 1);
}
