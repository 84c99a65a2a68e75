//! `FaultyBackend`: a decorator whose writes start failing with "no space left on device" after
//! a given number of successful ones. Tests use it to check that a disk error pauses the torrent
//! with a clear message and loses nothing already verified.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{Resume, Storage, StorageBackend, StorageError, StorageSpec};
use crate::types::PieceIndex;

/// Wraps `inner`; after `good_writes` writes (over all torrents) every write fails.
pub struct FaultyBackend {
    inner: Arc<dyn StorageBackend>,
    left: Arc<AtomicUsize>,
}

impl FaultyBackend {
    /// Let `good_writes` writes through, then fail with [`StorageError::NoSpace`].
    pub fn new(inner: Arc<dyn StorageBackend>, good_writes: usize) -> Self {
        FaultyBackend {
            inner,
            left: Arc::new(AtomicUsize::new(good_writes)),
        }
    }
}

#[async_trait]
impl StorageBackend for FaultyBackend {
    fn name(&self) -> &str {
        "faulty"
    }

    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
        let inner = self.inner.open(spec).await?;
        Ok(Arc::new(FaultyStorage {
            inner,
            left: self.left.clone(),
        }))
    }
}

struct FaultyStorage {
    inner: Arc<dyn Storage>,
    left: Arc<AtomicUsize>,
}

#[async_trait]
impl Storage for FaultyStorage {
    fn resume(&self) -> Resume {
        self.inner.resume()
    }
    async fn write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        let allowed = self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !allowed {
            return Err(StorageError::NoSpace {
                path: PathBuf::from(format!("piece {piece}")),
            });
        }
        self.inner.write(piece, offset, chunks).await
    }
    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        self.inner.read(piece, offset, len).await
    }
    async fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        self.inner.mark_complete(piece).await
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
}
