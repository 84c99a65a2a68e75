//! Storage decorators for tests (STYLE: decorators instead of test hooks in the engine): each
//! wraps any backend and changes one thing about it.
//!
//! - [`SlowBackend`]: reads take turns and each sleeps first, like one slow disk, so a seeder
//!   is slow enough (and its pace known) to interrupt a download half-way.
//! - [`FaultyBackend`]: writes start failing with "no space left on device" after a number of
//!   good ones, to check that a disk error pauses the torrent and loses nothing verified.
//! - [`CountingBackend`]: counts reads, to check that a torrent opened again is trusted
//!   without hashing its data.
//!
//! Each forwards `delete_data` and `move_data` to the backend it wraps.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{
    DeletedData, MoveOutcome, Resume, Storage, StorageBackend, StorageError, StorageSpec,
};
use crate::types::{Bitfield, PieceIndex};

/// What a decorated storage does differently from the one it wraps.
#[derive(Clone, Default)]
struct Quirks {
    /// Sleep this long per 16 KiB block before every read (a read of adjacent blocks takes
    /// as long as reading them one by one)…
    read_delay: Duration,
    /// …one read at a time (shared by all torrents of the backend).
    read_turn: Arc<tokio::sync::Mutex<()>>,
    /// Writes left before every write fails (shared by all torrents of the backend).
    writes_left: Option<Arc<AtomicUsize>>,
    /// Reads so far (shared by all torrents of the backend).
    reads: Arc<AtomicUsize>,
}

/// Wraps a backend and counts the reads of all its torrents.
pub struct CountingBackend {
    inner: Arc<dyn StorageBackend>,
    quirks: Quirks,
}

impl CountingBackend {
    /// Count the reads of `inner`'s torrents.
    pub fn new(inner: Arc<dyn StorageBackend>) -> Self {
        CountingBackend {
            inner,
            quirks: Quirks::default(),
        }
    }

    /// Reads so far.
    pub fn reads(&self) -> usize {
        self.quirks.reads.load(Ordering::SeqCst)
    }
}

/// Wraps a backend; reads take turns, and each sleeps `delay` first.
pub struct SlowBackend {
    inner: Arc<dyn StorageBackend>,
    quirks: Quirks,
}

impl SlowBackend {
    /// Delay each read of `inner` by `delay`.
    pub fn new(inner: Arc<dyn StorageBackend>, delay: Duration) -> Self {
        let quirks = Quirks {
            read_delay: delay,
            ..Quirks::default()
        };
        SlowBackend { inner, quirks }
    }
}

/// Wraps a backend; after `good_writes` writes (over all torrents) every write fails.
pub struct FaultyBackend {
    inner: Arc<dyn StorageBackend>,
    quirks: Quirks,
}

impl FaultyBackend {
    /// Let `good_writes` writes through, then fail with [`StorageError::NoSpace`].
    pub fn new(inner: Arc<dyn StorageBackend>, good_writes: usize) -> Self {
        let left = Arc::new(AtomicUsize::new(good_writes));
        let quirks = Quirks {
            writes_left: Some(left),
            ..Quirks::default()
        };
        FaultyBackend { inner, quirks }
    }
}

/// The `StorageBackend` of a decorator: opens the wrapped backend's storage under [`Quirky`],
/// forwards the rest.
macro_rules! decorated_backend {
    ($ty:ty, $name:literal) => {
        #[async_trait]
        impl StorageBackend for $ty {
            fn name(&self) -> &str {
                $name
            }
            async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
                let inner = self.inner.open(spec).await?;
                Ok(Arc::new(Quirky {
                    inner,
                    quirks: self.quirks.clone(),
                }))
            }
            async fn delete_data(&self, spec: StorageSpec) -> Result<DeletedData, StorageError> {
                self.inner.delete_data(spec).await
            }
            async fn move_data(
                &self,
                spec: StorageSpec,
                to: PathBuf,
            ) -> Result<MoveOutcome, StorageError> {
                self.inner.move_data(spec, to).await
            }
        }
    };
}

decorated_backend!(SlowBackend, "slow");
decorated_backend!(FaultyBackend, "faulty");
decorated_backend!(CountingBackend, "counting");

/// The one decorated `Storage`: forwards everything, applying its quirks.
struct Quirky {
    inner: Arc<dyn Storage>,
    quirks: Quirks,
}

impl Quirky {
    /// Count one write against the fault budget; past it, the disk is full.
    fn take_write(&self, piece: PieceIndex) -> Result<(), StorageError> {
        if let Some(left) = &self.quirks.writes_left {
            if left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
            {
                return Err(StorageError::NoSpace {
                    path: PathBuf::from(format!("piece {piece}")),
                });
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Storage for Quirky {
    fn resume(&self) -> Resume {
        self.inner.resume()
    }
    async fn write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        self.take_write(piece)?;
        self.inner.write(piece, offset, chunks).await
    }
    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        self.quirks.reads.fetch_add(1, Ordering::SeqCst);
        if !self.quirks.read_delay.is_zero() {
            let _turn = self.quirks.read_turn.lock().await;
            let blocks = len.div_ceil(crate::types::BLOCK_SIZE).max(1);
            tokio::time::sleep(self.quirks.read_delay * blocks).await;
        }
        self.inner.read(piece, offset, len).await
    }
    async fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        self.inner.mark_complete(piece).await
    }
    async fn write_piece(&self, piece: PieceIndex, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        // The same fault as `write`, then the wrapped backend's own one-step path (not the
        // default's two calls), so fault tests exercise what production runs.
        self.take_write(piece)?;
        self.inner.write_piece(piece, chunks).await
    }
    fn has_piece(&self, piece: PieceIndex) -> bool {
        self.inner.has_piece(piece)
    }
    fn is_finalized(&self, file: usize) -> bool {
        self.inner.is_finalized(file)
    }
    async fn flush(&self) -> Result<(), StorageError> {
        self.inner.flush().await
    }
    async fn recheck_finished(&self, verified: &Bitfield) -> Result<(), StorageError> {
        self.inner.recheck_finished(verified).await
    }
}
