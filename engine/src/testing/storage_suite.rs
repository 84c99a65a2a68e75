//! The storage conformance suite: free async functions every backend must pass.
//! (Stub: implementation pending.)

use std::sync::Arc;

use crate::storage::StorageBackend;

/// Run every check against `backend`, using scratch folders under `root`.
pub async fn run_all(backend: Arc<dyn StorageBackend>, root: &std::path::Path) {
    let _ = (backend, root);
    unimplemented!("storage_suite::run_all")
}
