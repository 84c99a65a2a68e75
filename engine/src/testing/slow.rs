//! `SlowBackend`: a decorator that delays every read of the backend it wraps. Tests use it to
//! make a seeder slow enough to interrupt a download half-way, without test hooks in the engine.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{Resume, Storage, StorageBackend, StorageError, StorageSpec};
use crate::types::PieceIndex;

/// Wraps `inner`; every `read` sleeps `delay` first.
pub struct SlowBackend {
    inner: Arc<dyn StorageBackend>,
    delay: Duration,
}

impl SlowBackend {
    /// Delay each read of `inner` by `delay`.
    pub fn new(inner: Arc<dyn StorageBackend>, delay: Duration) -> Self {
        SlowBackend { inner, delay }
    }
}

#[async_trait]
impl StorageBackend for SlowBackend {
    fn name(&self) -> &str {
        "slow"
    }

    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
        let inner = self.inner.open(spec).await?;
        Ok(Arc::new(SlowStorage {
            inner,
            delay: self.delay,
        }))
    }
}

struct SlowStorage {
    inner: Arc<dyn Storage>,
    delay: Duration,
}

#[async_trait]
impl Storage for SlowStorage {
    fn resume(&self) -> Resume {
        self.inner.resume()
    }
    async fn write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        self.inner.write(piece, offset, chunks).await
    }
    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        tokio::time::sleep(self.delay).await;
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
