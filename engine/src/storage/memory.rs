//! `MemoryBackend`: the reference backend, keeping every torrent's bytes in RAM.
//!
//! The backend instance plays the part of the disk: each torrent's bytes live in a shared slot
//! keyed by info-hash, so dropping a [`Storage`] and opening the same torrent again from the same
//! backend finds the data. Durability is modelled like this:
//!
//! - written bytes go straight to the slot (the "disk"), flushed or not — a real disk may also
//!   keep unflushed writes;
//! - the completed set is only recorded in the slot by [`Storage::flush`], so a reopen reports
//!   `Resume::Trusted` with exactly the set of the last flush, never pieces marked afterwards;
//! - a piece's bytes are written before it is marked complete, so every recorded piece has its
//!   data in the slot.
//!
//! Reads of bytes never written return [`StorageError::Missing`] when no byte of their piece was
//! ever written, and zeros for unwritten gaps of a piece that was partly written (like a sparse
//! file). Files are "finalized" exactly when every piece touching them is complete; a zero-length
//! file touches no piece and so is finalized from the moment the torrent is opened. A skipped
//! file is never finalized, whatever its pieces.
//!
//! Deleting a torrent's data forgets its slot: the backend holds nothing it did not write.
//!
//! Opening a torrent whose slot holds a different layout (same info-hash, other piece length or
//! files) discards the old slot and starts empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;

use super::{DeletedData, Layout, Resume, Storage, StorageBackend, StorageError, StorageSpec};
use crate::types::{Bitfield, InfoHash, PieceIndex};

/// What the "disk" holds for one torrent.
#[derive(Debug)]
struct Slot {
    layout: Arc<Layout>,
    /// One buffer per piece, allocated on its first write.
    pieces: Vec<Option<Box<[u8]>>>,
    /// The completed set as of the last flush.
    flushed: Bitfield,
}

impl Slot {
    fn new(layout: Arc<Layout>) -> Self {
        let n = layout.piece_count() as usize;
        Slot {
            pieces: vec![None; n],
            flushed: Bitfield::new(n),
            layout,
        }
    }
}

type SharedSlot = Arc<Mutex<Slot>>;

/// Lock a mutex, ignoring poisoning: every critical section here leaves the data consistent
/// (plain copies and bit flips), so a panic elsewhere does not make it unusable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `memory` backend. Data survives reopening within the same backend instance, which
/// stands in for "durable" so the conformance suite's reopen tests are meaningful.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    torrents: Arc<Mutex<HashMap<InfoHash, SharedSlot>>>,
}

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
        let slot = {
            let mut torrents = lock(&self.torrents);
            let slot = torrents
                .entry(spec.info_hash)
                .or_insert_with(|| Arc::new(Mutex::new(Slot::new(spec.layout.clone()))))
                .clone();
            slot
        };
        let completed = {
            let mut s = lock(&slot);
            if *s.layout != *spec.layout {
                *s = Slot::new(spec.layout.clone());
            }
            s.flushed.clone()
        };
        Ok(Arc::new(MemoryStorage {
            layout: spec.layout,
            resume: Resume::Trusted(completed.clone()),
            slot,
            completed: Mutex::new(completed),
            skipped: Mutex::new(spec.skipped_files),
        }))
    }

    /// Forgets the torrent's bytes and its flushed set: everything it holds was written by it.
    async fn delete_data(&self, spec: StorageSpec) -> Result<DeletedData, StorageError> {
        lock(&self.torrents).remove(&spec.info_hash);
        Ok(DeletedData::default())
    }
}

/// One open torrent of the [`MemoryBackend`].
#[derive(Debug)]
pub struct MemoryStorage {
    layout: Arc<Layout>,
    resume: Resume,
    slot: SharedSlot,
    /// Pieces marked complete: the flushed set from open plus everything marked since.
    completed: Mutex<Bitfield>,
    /// Files the user skipped: never reported finalized.
    skipped: Mutex<Vec<bool>>,
}

impl MemoryStorage {
    /// Check that `offset..offset+len` lies inside `piece`.
    fn check(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<(), StorageError> {
        self.layout.check_range(piece, offset, len).map(|_| ())
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn resume(&self) -> Resume {
        self.resume.clone()
    }

    async fn write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        self.layout.check_write(piece, offset, &chunks)?;
        let piece_len = self.layout.piece_len(piece) as usize;
        let mut slot = lock(&self.slot);
        let buf = slot.pieces[piece as usize]
            .get_or_insert_with(|| vec![0u8; piece_len].into_boxed_slice());
        let mut at = offset as usize;
        for chunk in &chunks {
            buf[at..at + chunk.len()].copy_from_slice(chunk);
            at += chunk.len();
        }
        Ok(())
    }

    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        self.check(piece, offset, len)?;
        let slot = lock(&self.slot);
        match &slot.pieces[piece as usize] {
            Some(buf) => Ok(Bytes::copy_from_slice(
                &buf[offset as usize..offset as usize + len as usize],
            )),
            None if len == 0 => Ok(Bytes::new()),
            None => Err(StorageError::Missing),
        }
    }

    async fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        if piece >= self.layout.piece_count() {
            return Err(StorageError::OutOfRange {
                piece,
                offset: 0,
                len: 0,
            });
        }
        // has_piece must never claim bytes that are not there.
        let written = lock(&self.slot).pieces[piece as usize].is_some();
        if !written && self.layout.piece_len(piece) > 0 {
            return Err(StorageError::Missing);
        }
        lock(&self.completed).set(piece as usize);
        Ok(())
    }

    fn has_piece(&self, piece: PieceIndex) -> bool {
        lock(&self.completed).get(piece as usize)
    }

    fn is_finalized(&self, file: usize) -> bool {
        if file >= self.layout.files.len() || lock(&self.skipped).get(file) == Some(&true) {
            return false;
        }
        let completed = lock(&self.completed);
        self.layout
            .pieces_for_file(file)
            .all(|p| completed.get(p as usize))
    }

    async fn flush(&self) -> Result<(), StorageError> {
        // Data is already in the slot; recording the set makes it "durable resume state".
        let completed = lock(&self.completed).clone();
        lock(&self.slot).flushed = completed;
        Ok(())
    }

    async fn recheck_finished(&self, verified: &Bitfield) -> Result<(), StorageError> {
        // A forced recheck may disprove pieces resume state claimed: has_piece must follow.
        let mut completed = lock(&self.completed);
        let claimed: Vec<usize> = completed.iter_ones().collect();
        for p in claimed {
            if !verified.get(p) {
                completed.clear(p);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(layout: Layout) -> StorageSpec {
        StorageSpec {
            info_hash: InfoHash([7; 20]),
            layout: Arc::new(layout),
            download_dir: PathBuf::from("unused"),
            state_dir: PathBuf::from("unused"),
            skipped_files: Vec::new(),
        }
    }

    #[tokio::test]
    async fn only_flushed_pieces_survive_reopen() {
        let backend = MemoryBackend::new();
        let layout = Layout::new(4, [("a".into(), 6), ("empty".into(), 0), ("b".into(), 5)]);
        let s = backend.open(spec(layout.clone())).await.unwrap();
        assert_eq!(s.resume(), Resume::Trusted(Bitfield::new(3)));
        assert!(s.is_finalized(1), "zero-length file is finalized at open");
        assert!(!s.is_finalized(0));
        s.write(
            0,
            0,
            vec![Bytes::from_static(b"ab"), Bytes::from_static(b"cd")],
        )
        .await
        .unwrap();
        s.mark_complete(0).await.unwrap();
        s.flush().await.unwrap();
        s.write(1, 0, vec![Bytes::from_static(b"efgh")])
            .await
            .unwrap();
        s.mark_complete(1).await.unwrap();
        assert!(s.is_finalized(0));
        assert!(matches!(
            s.mark_complete(2).await,
            Err(StorageError::Missing)
        ));
        drop(s);

        let s = backend.open(spec(layout)).await.unwrap();
        let Resume::Trusted(set) = s.resume() else {
            panic!("memory always trusts")
        };
        assert_eq!(set.iter_ones().collect::<Vec<_>>(), vec![0]);
        assert_eq!(&s.read(0, 1, 3).await.unwrap()[..], b"bcd");
        assert!(!s.is_finalized(0));
        assert!(matches!(s.read(2, 0, 1).await, Err(StorageError::Missing)));
        assert!(matches!(
            s.read(2, 0, 4).await,
            Err(StorageError::OutOfRange { .. })
        ));
    }
}
