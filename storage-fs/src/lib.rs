//! `FsStorage`: ZigTorrent's file-system storage backend (`--storage fs`).
//!
//! Incomplete files live at `<path>.part` and are renamed into place once every piece touching
//! them is verified (after an fsync), so a file at its final path is always complete. Resume state
//! is written after the data it describes is durable, so a restart can trust it.
//!
//! ```no_run
//! # async fn demo(spec: zigtorrent_engine::StorageSpec) -> Result<(), zigtorrent_engine::StorageError> {
//! use std::sync::Arc;
//! use zigtorrent_engine::{Origin, Registry, StorageBackend};
//! use zigtorrent_storage_fs::FsBackend;
//!
//! let mut registry = Registry::new();
//! registry.register_storage(Origin::BuiltIn, Arc::new(FsBackend::new())).unwrap();
//! let storage = FsBackend::new().open(spec).await?;
//! storage.flush().await?;
//! # Ok(()) }
//! ```
//!
//! Modules: `storage` (the backend and per-torrent storage), `resume` (the resume file format),
//! `paths` (path safety, durable folder creation), `cache` (bounded descriptor cache), `delete`
//! (deleting a removed torrent's data: only what this client wrote), `relocate` (moving a
//! finished torrent to another folder, and settling a move a crash interrupted), `writer` (the
//! queue that writes verified pieces for all of a backend's torrents).

mod cache;
mod claims;
mod delete;
mod paths;
mod relocate;
mod resume;
mod storage;
mod writeback;
mod writer;

pub use storage::{FsBackend, FsStorage};

#[doc(hidden)]
pub use resume::fuzz_resume_file;
