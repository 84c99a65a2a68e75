//! `MemoryStorage`: the reference backend, keeping every torrent's bytes in RAM.
//! (Stub: implementation pending.)

use std::sync::Arc;

use async_trait::async_trait;

use super::{Storage, StorageBackend, StorageError, StorageSpec};

/// The `memory` backend. Data survives reopening within the same backend instance, which
/// stands in for "durable" so the conformance suite's reopen tests are meaningful.
#[derive(Debug, Default)]
pub struct MemoryBackend {}

impl MemoryBackend {
    /// A backend with no torrents.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl StorageBackend for MemoryBackend {
    fn name(&self) -> &str {
        "memory"
    }
    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
        let _ = spec;
        unimplemented!("MemoryBackend::open")
    }
}
