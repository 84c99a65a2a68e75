//! Every built-in storage backend, looked up by name in the registry the way `--storage` does,
//! runs the engine's conformance suite.

use std::sync::Arc;

use zigtorrent_engine::testing::storage_suite;
use zigtorrent_engine::{MemoryBackend, Origin, Registry};
use zigtorrent_storage_fs::FsBackend;

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register_storage(Origin::BuiltIn, Arc::new(MemoryBackend::new()))
        .expect("fresh registry has no 'memory'");
    r.register_storage(Origin::BuiltIn, Arc::new(FsBackend::new()))
        .expect("fresh registry has no 'fs'");
    r
}

async fn run(name: &str) {
    let backend = registry().storage(name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backend.name(), name);
    let root = tempfile::tempdir().expect("temp dir");
    storage_suite::run_all(backend, root.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs() {
    run("fs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    run("memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_with_tiny_descriptor_cache() {
    // Two open files at most: every multi-file operation evicts and reopens.
    let root = tempfile::tempdir().expect("temp dir");
    storage_suite::run_all(Arc::new(FsBackend::with_max_open_files(2)), root.path()).await;
}
