//! Rechecking existing data: read pieces back from storage, hash them off the runtime, and mark
//! the good ones complete.
//!
//! Memory is bounded session-wide by a [`HashBudget`]: a piece is read only once its bytes fit in
//! the budget, so 200 torrents rechecking at once hold at most the budget in piece buffers (plus
//! one oversized piece at a time, see [`HashBudget::acquire`]). Within a torrent at most
//! [`PARALLELISM`] pieces are in flight, so one disk read and one hash overlap.

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::hash::{self, PieceHash};
use crate::storage::{Layout, Storage, StorageError};
use crate::types::{Bitfield, PieceIndex};

/// Pieces of one torrent read and hashed at the same time.
const PARALLELISM: usize = 2;
/// The budget's unit: one 16 KiB block (a semaphore counts in `u32` permits; bytes would
/// overflow it at 4 GiB).
const UNIT: u64 = 16 * 1024;

/// A session-wide cap on the bytes of pieces being read and hashed by rechecks.
#[derive(Clone, Debug)]
pub struct HashBudget {
    units: Arc<Semaphore>,
    total_units: u32,
}

impl HashBudget {
    /// Default budget: 64 MiB, four 16 MiB pieces (the largest `create` makes) or 256 of 256 KiB.
    pub const DEFAULT_BYTES: u64 = 64 * 1024 * 1024;

    /// A budget of `bytes` (at least one 16 KiB unit).
    pub fn new(bytes: u64) -> Self {
        let total_units = (bytes / UNIT).clamp(1, Semaphore::MAX_PERMITS as u64 / 2) as u32;
        HashBudget {
            units: Arc::new(Semaphore::new(total_units as usize)),
            total_units,
        }
    }

    /// Wait until `len` bytes fit. A piece larger than the whole budget takes all of it, so it
    /// still runs, alone.
    pub(crate) async fn acquire(&self, len: u64) -> OwnedSemaphorePermit {
        let units = len.div_ceil(UNIT).clamp(1, self.total_units as u64) as u32;
        self.units
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("the budget's semaphore is never closed")
    }
}

impl Default for HashBudget {
    fn default() -> Self {
        HashBudget::new(Self::DEFAULT_BYTES)
    }
}

/// Hash every piece in `check`, marking the good ones complete in storage. Yields each piece's
/// result as it is known; the caller drives the stream and may drop it to stop.
pub(crate) fn check_pieces<'a>(
    hashes: &'a [PieceHash],
    layout: &'a Layout,
    storage: &'a Arc<dyn Storage>,
    budget: &'a HashBudget,
    check: &Bitfield,
) -> impl futures::Stream<Item = Result<(PieceIndex, bool), StorageError>> + 'a {
    let pieces: Vec<PieceIndex> = check.iter_ones().map(|p| p as PieceIndex).collect();
    futures::stream::iter(pieces)
        .map(move |piece| {
            let storage = storage.clone();
            let expected = hashes.get(piece as usize).copied();
            let len = layout.piece_len(piece);
            async move {
                let _permit = budget.acquire(len as u64).await;
                let data = match storage.read(piece, 0, len).await {
                    Ok(d) => d,
                    Err(StorageError::Missing) => return Ok((piece, false)),
                    Err(e) => return Err(e),
                };
                let ok = tokio::task::spawn_blocking(move || Some(hash::sha1(&data)) == expected)
                    .await
                    .unwrap_or(false);
                if ok {
                    storage.mark_complete(piece).await?;
                }
                Ok((piece, ok))
            }
        })
        .buffer_unordered(PARALLELISM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn budget_bounds_bytes_in_flight() {
        let b = HashBudget::new(1024 * 1024);
        assert_eq!(b.total_units as u64 * UNIT, 1024 * 1024);
        let a = b.acquire(512 * 1024).await;
        let c = b.acquire(512 * 1024).await;
        // Full: a third piece must wait until one is released.
        let mut third = Box::pin(b.acquire(16 * 1024));
        assert!(futures::poll!(&mut third).is_pending());
        drop(a);
        drop(third.await);
        drop(c);
        // A piece bigger than the budget takes all of it and still runs.
        let _big = b.acquire(8 * 1024 * 1024).await;
        assert_eq!(b.units.available_permits(), 0);
    }

    /// 20 torrents rechecking at once through one budget: the bytes of pieces read and not yet
    /// dropped (tracked by the buffers themselves) never exceed it, and every piece is checked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_rechecks_stay_within_the_budget() {
        use std::sync::atomic::{AtomicUsize, Ordering};

        use async_trait::async_trait;
        use bytes::Bytes;

        use crate::storage::{Layout, Resume};
        use crate::types::Bitfield;

        const PIECE: u32 = 64 * 1024;
        const PIECES: u32 = 12;
        const BUDGET: u64 = 4 * PIECE as u64;

        #[derive(Default)]
        struct Live {
            now: AtomicUsize,
            max: AtomicUsize,
        }
        struct Tracked(Vec<u8>, Arc<Live>);
        impl AsRef<[u8]> for Tracked {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Tracked {
            fn drop(&mut self) {
                self.1.now.fetch_sub(self.0.len(), Ordering::SeqCst);
            }
        }
        struct Fake(Arc<Live>, AtomicUsize);
        #[async_trait]
        impl Storage for Fake {
            fn resume(&self) -> Resume {
                Resume::NeedsRecheck
            }
            async fn write(
                &self,
                _: PieceIndex,
                _: u32,
                _: Vec<Bytes>,
            ) -> Result<(), StorageError> {
                Ok(())
            }
            async fn read(
                &self,
                piece: PieceIndex,
                _: u32,
                len: u32,
            ) -> Result<Bytes, StorageError> {
                tokio::task::yield_now().await;
                let n = self.0.now.fetch_add(len as usize, Ordering::SeqCst) + len as usize;
                self.0.max.fetch_max(n, Ordering::SeqCst);
                Ok(Bytes::from_owner(Tracked(
                    vec![piece as u8; len as usize],
                    self.0.clone(),
                )))
            }
            async fn mark_complete(&self, _: PieceIndex) -> Result<(), StorageError> {
                self.1.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
            fn has_piece(&self, _: PieceIndex) -> bool {
                false
            }
            fn is_finalized(&self, _: usize) -> bool {
                false
            }
            async fn flush(&self) -> Result<(), StorageError> {
                Ok(())
            }
        }

        let live = Arc::new(Live::default());
        let budget = HashBudget::new(BUDGET);
        let layout = Layout::new(
            PIECE,
            [(std::path::PathBuf::from("f"), (PIECE * PIECES) as u64)],
        );
        let hashes: Vec<PieceHash> = (0..PIECES)
            .map(|p| hash::sha1(&vec![p as u8; PIECE as usize]))
            .collect();
        let all = Bitfield::full(PIECES as usize);
        let storages: Vec<Arc<Fake>> = (0..20)
            .map(|_| Arc::new(Fake(live.clone(), AtomicUsize::new(0))))
            .collect();
        let runs = storages.iter().map(|s| {
            let s: Arc<dyn Storage> = s.clone();
            let (hashes, layout, budget, all) = (&hashes, &layout, &budget, &all);
            async move {
                let results: Vec<_> = check_pieces(hashes, layout, &s, budget, all)
                    .collect()
                    .await;
                results
                    .into_iter()
                    .filter(|r| matches!(r, Ok((_, true))))
                    .count()
            }
        });
        let good = futures::future::join_all(runs).await;
        assert_eq!(good, vec![PIECES as usize; 20], "every piece verified");
        assert!(storages
            .iter()
            .all(|s| s.1.load(Ordering::SeqCst) == PIECES as usize));
        let max = live.max.load(Ordering::SeqCst) as u64;
        assert!(
            max <= BUDGET,
            "{max} bytes of pieces held at once, budget {BUDGET}"
        );
        assert!(
            max >= 2 * PIECE as u64,
            "the budget allowed overlap, and it happened"
        );
        assert_eq!(live.now.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn tiny_budget_is_one_unit() {
        assert_eq!(HashBudget::new(0).total_units, 1);
    }
}
