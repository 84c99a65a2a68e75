//! Which files of a torrent the user wants, and in what order its pieces are fetched.
//!
//! ## What it owns
//!
//! The user's choice ([`FilePriority`] per file, sequential or not) as given at add time
//! ([`TorrentOptions`]) or changed later through the torrent's handle, and the translation of
//! file priorities into piece priorities ([`PiecePriorities`]) that the picker and the status
//! use. It persists nothing: whoever keeps a torrent's record (the cli) passes the choice back
//! in at the next add.
//!
//! ## Pieces shared by several files
//!
//! A piece takes the highest priority of the files holding bytes of it: a piece shared by a
//! skipped file and a wanted one is downloaded and verified like any other (it cannot be
//! verified otherwise), and its bytes for the skipped file stay under the state folder (storage
//! never finalizes a skipped file). Zero-length files hold no bytes and so no pieces.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::storage::Layout;
use crate::types::Bitfield;

/// How much the user wants one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FilePriority {
    /// Not wanted: its pieces are fetched only when a wanted file shares them, and it never
    /// appears at its final path.
    Skip,
    /// Wanted.
    #[default]
    Normal,
    /// Wanted first: its pieces are started before any normal one.
    High,
}

impl FilePriority {
    /// The byte stored for this priority in a torrent's record (0 skip, 1 normal, 2 high).
    pub fn to_byte(self) -> u8 {
        match self {
            FilePriority::Skip => 0,
            FilePriority::Normal => 1,
            FilePriority::High => 2,
        }
    }

    /// The priority a record's byte stands for; `None` for any other byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0 => Some(FilePriority::Skip),
            1 => Some(FilePriority::Normal),
            2 => Some(FilePriority::High),
            _ => None,
        }
    }

    /// A short lower-case word: skip, normal, high.
    pub fn label(self) -> &'static str {
        match self {
            FilePriority::Skip => "skip",
            FilePriority::Normal => "normal",
            FilePriority::High => "high",
        }
    }
}

/// Choices made when a torrent is added (see [`crate::Session::add_with`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TorrentOptions {
    /// One priority per file, in torrent order; empty means every file [`FilePriority::Normal`].
    /// For a magnet the file count is unknown at add: a list of the wrong length is then
    /// dropped (every file normal, with a warning) when the metadata arrives.
    pub file_priorities: Vec<FilePriority>,
    /// Fetch pieces in order (from the first wanted one), for playing while downloading.
    pub sequential: bool,
}

/// Why a selection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// The list does not have one priority per file.
    #[error("{got} file priorities given for a torrent of {expected} files")]
    WrongLength {
        /// Files in the torrent.
        expected: usize,
        /// Priorities given.
        got: usize,
    },
    /// A magnet whose metadata has not arrived yet: its files are unknown.
    #[error("the torrent's files are not known yet (metadata still being fetched)")]
    MetadataUnknown,
}

/// Piece priorities derived from file priorities: which pieces are wanted, and which of those
/// come first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PiecePriorities {
    /// Pieces holding bytes of at least one file that is not skipped.
    pub wanted: Bitfield,
    /// Pieces holding bytes of at least one high-priority file.
    pub high: Bitfield,
}

impl PiecePriorities {
    /// Every piece wanted, none high (every file normal).
    pub fn all(piece_count: usize) -> Self {
        PiecePriorities {
            wanted: Bitfield::full(piece_count),
            high: Bitfield::new(piece_count),
        }
    }

    /// From one priority per file of `layout` (missing entries count as normal).
    pub fn from_files(layout: &Layout, files: &[FilePriority]) -> Self {
        let n = layout.piece_count() as usize;
        if files.iter().all(|&p| p == FilePriority::Normal) {
            return Self::all(n);
        }
        let mut wanted = Bitfield::new(n);
        let mut high = Bitfield::new(n);
        for i in 0..layout.files.len() {
            let prio = files.get(i).copied().unwrap_or_default();
            if prio == FilePriority::Skip {
                continue;
            }
            for p in layout.pieces_for_file(i) {
                wanted.set(p as usize);
                if prio == FilePriority::High {
                    high.set(p as usize);
                }
            }
        }
        PiecePriorities { wanted, high }
    }
}

/// The current choice for one torrent, shared by its handle (which writes it) and its task
/// (which reads it when told it changed, and when it opens storage).
#[derive(Clone, Debug, Default)]
pub(crate) struct SharedSelection(Arc<Mutex<Selection>>);

#[derive(Clone, Debug, Default)]
pub(crate) struct Selection {
    /// Files in the torrent, once known (a magnet learns it with its metadata).
    pub file_count: Option<usize>,
    /// As in [`TorrentOptions::file_priorities`].
    pub priorities: Vec<FilePriority>,
    pub sequential: bool,
}

impl SharedSelection {
    pub(crate) fn new(options: TorrentOptions, file_count: Option<usize>) -> Self {
        SharedSelection(Arc::new(Mutex::new(Selection {
            file_count,
            priorities: options.file_priorities,
            sequential: options.sequential,
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Selection> {
        // Every critical section leaves the selection consistent: poisoning changes nothing.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self) -> Selection {
        self.lock().clone()
    }

    /// The metadata arrived: the file count is known; a priority list of the wrong length
    /// (given at add for a magnet) is dropped.
    pub(crate) fn learn_file_count(&self, count: usize) {
        let mut s = self.lock();
        s.file_count = Some(count);
        if !s.priorities.is_empty() && s.priorities.len() != count {
            tracing::warn!(
                given = s.priorities.len(),
                files = count,
                "file priorities given at add do not match the torrent's files; all files wanted"
            );
            s.priorities.clear();
        }
    }

    pub(crate) fn set_priorities(&self, p: Vec<FilePriority>) -> Result<(), SelectionError> {
        let mut s = self.lock();
        let expected = s.file_count.ok_or(SelectionError::MetadataUnknown)?;
        if p.len() != expected {
            return Err(SelectionError::WrongLength {
                expected,
                got: p.len(),
            });
        }
        s.priorities = p;
        Ok(())
    }

    pub(crate) fn set_sequential(&self, on: bool) {
        self.lock().sequential = on;
    }

    /// Take a choice kept from an earlier run (the torrent's record), unless one was made at
    /// this add. Bytes that are not priorities, or a list of the wrong length, are dropped.
    pub(crate) fn restore(&self, bytes: &[u8], sequential: bool) {
        let mut s = self.lock();
        if !s.priorities.is_empty() || s.sequential {
            return;
        }
        s.sequential = sequential;
        let Some(kept) = bytes
            .iter()
            .map(|b| FilePriority::from_byte(*b))
            .collect::<Option<Vec<_>>>()
        else {
            return;
        };
        if s.file_count.is_none_or(|n| n == kept.len()) {
            s.priorities = kept;
        }
    }
}

impl Selection {
    /// One priority per file of `layout` (empty or mismatched lists: all normal).
    pub(crate) fn priorities_for(&self, layout: &Layout) -> Vec<FilePriority> {
        if self.priorities.len() == layout.files.len() {
            self.priorities.clone()
        } else {
            vec![FilePriority::Normal; layout.files.len()]
        }
    }

    /// Which files storage must never finalize.
    pub(crate) fn skipped_for(&self, layout: &Layout) -> Vec<bool> {
        self.priorities_for(layout)
            .iter()
            .map(|&p| p == FilePriority::Skip)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_pieces_take_the_highest_priority() {
        // Pieces of 10 bytes: a = 0..15 (pieces 0, 1), b = 15..25 (1, 2), c = 25..40 (2, 3).
        let l = Layout::new(
            10,
            [
                ("a".into(), 15),
                ("e".into(), 0),
                ("b".into(), 10),
                ("c".into(), 15),
            ],
        );
        use FilePriority::*;
        let p = PiecePriorities::from_files(&l, &[Skip, Skip, High, Skip]);
        assert_eq!(p.wanted.iter_ones().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(p.high.iter_ones().collect::<Vec<_>>(), vec![1, 2]);
        let p = PiecePriorities::from_files(&l, &[Skip, Normal, Skip, Skip]);
        assert_eq!(p.wanted.count_ones(), 0, "an empty file wants no piece");
        let p = PiecePriorities::from_files(&l, &[Normal, Normal, Normal, Normal]);
        assert_eq!(p, PiecePriorities::all(4));
        let p = PiecePriorities::from_files(&l, &[High, Skip, Skip, Normal]);
        assert_eq!(p.wanted.iter_ones().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(p.high.iter_ones().collect::<Vec<_>>(), vec![0, 1]);
    }

    #[test]
    fn record_bytes_round_trip() {
        for p in [FilePriority::Skip, FilePriority::Normal, FilePriority::High] {
            assert_eq!(FilePriority::from_byte(p.to_byte()), Some(p));
        }
        assert_eq!(FilePriority::from_byte(3), None);
    }

    #[test]
    fn selection_is_validated_against_the_file_count() {
        let s = SharedSelection::new(TorrentOptions::default(), None);
        assert_eq!(
            s.set_priorities(vec![FilePriority::Skip]),
            Err(SelectionError::MetadataUnknown)
        );
        let s = SharedSelection::new(
            TorrentOptions {
                file_priorities: vec![FilePriority::Skip; 3],
                sequential: true,
            },
            None,
        );
        s.learn_file_count(2);
        assert!(s.get().priorities.is_empty(), "mismatched list dropped");
        assert!(s.get().sequential);
        assert_eq!(
            s.set_priorities(vec![FilePriority::High]),
            Err(SelectionError::WrongLength {
                expected: 2,
                got: 1
            })
        );
        s.set_priorities(vec![FilePriority::High, FilePriority::Skip])
            .unwrap();
        assert_eq!(s.get().priorities[1], FilePriority::Skip);
    }
}
