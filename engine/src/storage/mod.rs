//! The `Storage` contract: how the engine reads and writes a torrent's bytes, whatever holds them.
//!
//! The engine hands a backend only **verified** data (it hashes a piece before writing it), then
//! records it complete: both in one call, [`Storage::write_piece`] (by default
//! [`Storage::write`] then [`Storage::mark_complete`]). A backend promises:
//!
//! - **Complete at the final path.** A file becomes visible under its final name
//!   ([`Storage::is_finalized`]) only once every piece touching it has been marked complete, and
//!   its bytes are durable before that happens (fs: fsync, rename `<name>.part` → `<name>`, fsync
//!   the directory). No reader ever sees a partial file at its final path.
//! - **has_piece never lies.** [`Storage::has_piece`] is true only for pieces marked complete in
//!   this run, or recorded in resume state that the backend checked against its data at open.
//! - **Durable resume state after flush.** [`Storage::flush`] makes written data durable first,
//!   then records the completed set, so after any crash the recorded set is a subset of the
//!   durable data.
//! - **Never destroy what it did not write.** Data found where a file belongs, that the backend
//!   did not write itself, may be read (a recheck hashes it) but is not truncated, overwritten or
//!   renamed unless some of it verifies. When none of it does, the backend leaves it exactly as
//!   it is and reports [`StorageError::PathInUse`] from [`Storage::recheck_finished`], naming
//!   the path; the torrent stops there until the user moves it and rechecks.
//! - **One owner per path.** No two torrents, and no two files of one torrent, share a path on
//!   disk; the later one gets [`StorageError::PathInUse`] at open.
//! - **Skipped files stay hidden.** A file the user skipped ([`StorageSpec::skipped_files`],
//!   [`Storage::set_skipped_files`]) is never created or finalized at its final path, even when
//!   every piece touching it is complete (pieces shared with wanted files are written, so its
//!   bytes may exist, but only where no torrent can name them). Un-skipped, it is finalized as
//!   soon as its pieces are complete. A backend that cannot do this answers
//!   [`StorageError::NotSupported`] (the default).
//! - **Delete only what it wrote.** [`StorageBackend::delete_data`] (the torrent is no longer
//!   open) removes the torrent's incomplete data and resume state, the finished files the backend
//!   can vouch it wrote, and folders of the torrent's paths left empty; never a file it did not
//!   write, never the download folder itself, never anything outside the torrent's own paths, and
//!   never through a symbolic link.
//! - **Move only what it wrote, never over anything.** [`StorageBackend::move_data`] (the
//!   torrent is no longer open) moves a finished torrent's files to another download folder,
//!   keeping their relative paths, only when it can vouch it wrote every one of them (else it
//!   moves nothing and says why); a name already taken at the destination is an error and
//!   nothing is overwritten. Every step leaves each file whole at one place or the other, and
//!   the next [`StorageBackend::open`] settles a move a crash interrupted: opened at the new
//!   folder it finishes the move, at the old one it moves the files back.
//!
//! Backends register a [`StorageBackend`] (the factory) under a name in the registry.

pub mod memory;

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::types::{Bitfield, InfoHash, PieceIndex};

/// One file of a torrent as storage sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSpec {
    /// Relative, already sanitised path (multi-file torrents include the torrent's folder name).
    pub path: PathBuf,
    /// Length in bytes (may be zero).
    pub length: u64,
    /// Offset of the file's first byte in the torrent's byte stream.
    pub offset: u64,
}

/// How a torrent's byte stream is cut into pieces and files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Nominal piece length; the last piece may be shorter.
    pub piece_length: u32,
    /// Sum of all file lengths.
    pub total_length: u64,
    /// Files in torrent order, contiguous.
    pub files: Vec<FileSpec>,
}

impl Layout {
    /// Build a layout from `(path, length)` pairs, computing offsets.
    pub fn new(piece_length: u32, files: impl IntoIterator<Item = (PathBuf, u64)>) -> Self {
        let mut offset = 0u64;
        let files: Vec<FileSpec> = files
            .into_iter()
            .map(|(path, length)| {
                let f = FileSpec {
                    path,
                    length,
                    offset,
                };
                offset += length;
                f
            })
            .collect();
        Layout {
            piece_length,
            total_length: offset,
            files,
        }
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        self.total_length.div_ceil(self.piece_length as u64) as u32
    }

    /// Length of piece `piece` (the last one may be short). Zero for out-of-range indices.
    pub fn piece_len(&self, piece: PieceIndex) -> u32 {
        let r = self.piece_range(piece);
        (r.end - r.start) as u32
    }

    /// Byte range of `piece` in the torrent's stream.
    pub fn piece_range(&self, piece: PieceIndex) -> Range<u64> {
        let start = (piece as u64 * self.piece_length as u64).min(self.total_length);
        let end = (start + self.piece_length as u64).min(self.total_length);
        start..end
    }

    /// Indices of the files that hold bytes of `piece` (zero-length files hold none).
    pub fn files_for_piece(&self, piece: PieceIndex) -> Vec<usize> {
        let r = self.piece_range(piece);
        self.files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.length > 0 && f.offset < r.end && f.offset + f.length > r.start)
            .map(|(i, _)| i)
            .collect()
    }

    /// Check that `len` bytes at `offset` lie inside `piece`; returns the range's first byte in
    /// the torrent's stream. Every backend answers an out-of-range call with this same error.
    pub fn check_range(
        &self,
        piece: PieceIndex,
        offset: u32,
        len: u32,
    ) -> Result<u64, StorageError> {
        let end = offset as u64 + len as u64;
        if piece >= self.piece_count() || end > self.piece_len(piece) as u64 {
            return Err(StorageError::OutOfRange { piece, offset, len });
        }
        Ok(self.piece_range(piece).start + offset as u64)
    }

    /// [`Layout::check_range`] for a write of `chunks`: checks their total length too.
    pub fn check_write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: &[Bytes],
    ) -> Result<u64, StorageError> {
        let total: usize = chunks.iter().map(Bytes::len).sum();
        let len = u32::try_from(total).map_err(|_| StorageError::OutOfRange {
            piece,
            offset,
            len: u32::MAX,
        })?;
        self.check_range(piece, offset, len)
    }

    /// Pieces that hold bytes of file `file`; empty for zero-length files.
    pub fn pieces_for_file(&self, file: usize) -> Range<PieceIndex> {
        let f = &self.files[file];
        if f.length == 0 {
            return 0..0;
        }
        let pl = self.piece_length as u64;
        (f.offset / pl) as u32..(f.offset + f.length).div_ceil(pl) as u32
    }
}

/// What a backend is asked to open.
#[derive(Clone, Debug)]
pub struct StorageSpec {
    /// The torrent's identity; keys resume state.
    pub info_hash: InfoHash,
    /// Pieces and files.
    pub layout: Arc<Layout>,
    /// Where finished files go (file paths in the layout are relative to this).
    pub download_dir: PathBuf,
    /// Where the backend may keep resume state.
    pub state_dir: PathBuf,
    /// Files the user skipped, by index (empty, or shorter than the file list: the rest are
    /// wanted). Never finalized while skipped; see the module contract.
    pub skipped_files: Vec<bool>,
}

/// What [`StorageBackend::delete_data`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeletedData {
    /// Files and folders removed (data files, incomplete data, resume state, empty folders).
    pub removed: Vec<PathBuf>,
    /// Paths of the torrent's files left in place because the backend cannot vouch it wrote
    /// them (a file found there, or changed since it was finished), with the reason.
    pub kept: Vec<(PathBuf, String)>,
}

/// What [`StorageBackend::move_data`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MoveOutcome {
    /// Every finished file is now under the new folder (relative paths, as in the layout).
    Moved {
        /// The files moved.
        files: Vec<PathBuf>,
    },
    /// Nothing moved: the backend cannot vouch it wrote these files (found in place and
    /// adopted, changed since, no record), so the torrent stays where it is.
    NotMoved {
        /// Each file in the way, with the reason.
        reasons: Vec<(PathBuf, String)>,
    },
}

/// What a backend learned about existing data when it opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Resume state matched the data: these pieces are complete, no hashing needed.
    Trusted(Bitfield),
    /// No usable resume state, or it did not match the data: the engine must recheck by hashing
    /// every piece (reading them with [`Storage::read`]) and mark the good ones complete.
    NeedsRecheck,
    /// Resume state matched some files and not others: `complete` pieces lie only in files that
    /// matched their record and need no hashing; the pieces in `check` touch a file that changed
    /// and must be hashed like [`Resume::NeedsRecheck`] does for all of them.
    Partial {
        /// Trusted complete pieces.
        complete: Bitfield,
        /// Pieces to hash.
        check: Bitfield,
    },
}

/// Why a path a torrent needs cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathConflict {
    /// Something the client did not write is there and none of its data matches the torrent.
    #[error("holds a file this client did not write, and none of its data matches the torrent; move it away, then recheck")]
    ForeignData,
    /// Something appeared at a final path while the torrent was downloading it: never
    /// replaced.
    #[error("holds a file this client did not write, which appeared while downloading; move it away, then recheck")]
    Occupied,
    /// A file we did not write is longer than the torrent's: the bytes past its end were never
    /// verified, so it is not cut.
    #[error("holds a file this client did not write that is longer than the torrent's; move it away, then recheck")]
    Longer,
    /// A file we did not write partly matches but has other hard links: completing it would
    /// change the user's other names for it.
    #[error("holds a partly matching file with other hard links, which completing it would change; move it away, then recheck")]
    HardLinked,
    /// The file changed while it was being checked.
    #[error("changed while it was being checked; recheck")]
    Changed,
    /// A file we did not write matches the torrent in places but differs in more places than it
    /// matches: not taken for the torrent's data.
    #[error("holds a file this client did not write, which differs from the torrent in more places than it matches; move it away, then recheck")]
    Differs,
    /// A name the client keeps for its own files (temporary copies, the state folder).
    #[error("is a name this client keeps for its own files")]
    Reserved,
    /// A non-empty file is where the torrent has an empty one.
    #[error(
        "holds a non-empty file where the torrent has an empty one; move it away, then recheck"
    )]
    NotEmpty,
    /// A folder or other non-file is where the torrent has a file, or a file is where it
    /// needs a folder.
    #[error("is in the way: not a regular file (a folder, link or device where a file belongs), or a file where a folder belongs; move it away, then recheck")]
    NotAFile,
    /// The folder a finished torrent moves to already has something at this name: nothing
    /// is overwritten, and the torrent's data stays where it was.
    #[error(
        "is already taken in the folder the torrent moves to; nothing was moved or overwritten"
    )]
    DestinationTaken,
    /// Another torrent in the session already uses it.
    #[error("is already used by torrent {0}")]
    OtherTorrent(InfoHash),
    /// Two files of this torrent map to the same place (for example names that differ only in
    /// case, on a file system that folds case).
    #[error("is used by two files of this torrent")]
    SameTorrent,
    /// It lies inside the client's state folder.
    #[error("lies inside the state folder")]
    StateFolder,
}

/// Errors every backend reports with the same meaning.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The bytes asked for are not there (file missing or short). During a recheck this just
    /// means "piece not present".
    #[error("data not present")]
    Missing,
    /// Piece, offset or length outside the torrent.
    #[error("piece {piece} range {offset}+{len} is out of bounds")]
    OutOfRange {
        /// Piece index.
        piece: PieceIndex,
        /// Offset inside the piece.
        offset: u32,
        /// Length requested.
        len: u32,
    },
    /// The device is full (ENOSPC/EDQUOT).
    #[error("no space left on device writing {path}")]
    NoSpace {
        /// The file being written.
        path: PathBuf,
    },
    /// The backend may not touch this path (EACCES/EPERM/EROFS).
    #[error("permission denied on {path}")]
    PermissionDenied {
        /// The file or folder refused.
        path: PathBuf,
    },
    /// Any other I/O failure.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The backend cannot do this at all.
    #[error("not supported by this storage backend: {0}")]
    NotSupported(&'static str),
    /// A path the torrent needs is taken by something the backend may not touch.
    #[error("{}: {why}", path.display())]
    PathInUse {
        /// The path in the way.
        path: PathBuf,
        /// What is there.
        why: PathConflict,
    },
}

impl StorageError {
    /// Classify an OS error on `path` into the shared variants.
    pub fn from_io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(28) | Some(122) => StorageError::NoSpace { path }, // ENOSPC, EDQUOT
            Some(13) | Some(1) | Some(30) => StorageError::PermissionDenied { path }, // EACCES, EPERM, EROFS
            _ if source.kind() == std::io::ErrorKind::NotFound => StorageError::Missing,
            _ if source.kind() == std::io::ErrorKind::UnexpectedEof => StorageError::Missing,
            _ => StorageError::Io { path, source },
        }
    }
}

/// Storage of one torrent's bytes. All methods take `&self`: a backend handles concurrent calls
/// (for different pieces) itself. Blocking work must not run on the async runtime's threads.
#[async_trait]
pub trait Storage: Send + Sync {
    /// What the backend found at open: trusted resume state, or a request to recheck.
    fn resume(&self) -> Resume;

    /// Write the concatenation of `chunks` at byte `offset` inside `piece`. The engine only
    /// writes data it has verified, normally a whole piece at once.
    async fn write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: Vec<Bytes>,
    ) -> Result<(), StorageError>;

    /// Read `len` bytes at `offset` inside `piece`. [`StorageError::Missing`] when not present.
    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError>;

    /// Record that `piece` is written and verified. Finalizes (makes visible at its final path)
    /// every file whose pieces are now all complete.
    async fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError>;

    /// Write a whole verified piece (the concatenation of `chunks`, from its first byte) and
    /// record it complete: [`Storage::write`] then [`Storage::mark_complete`], which is what the
    /// default does. The engine calls this once per verified piece, so a backend whose calls each
    /// cost a hand-off to another thread may override it to do both in one (fs does). If the
    /// write fails, the piece is not recorded complete.
    async fn write_piece(&self, piece: PieceIndex, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        self.write(piece, 0, chunks).await?;
        self.mark_complete(piece).await
    }

    /// Whether `piece` is complete (see the module contract: never lies).
    fn has_piece(&self, piece: PieceIndex) -> bool;

    /// Whether file `file` is at its final path (complete and durable).
    fn is_finalized(&self, file: usize) -> bool;

    /// Make written data durable, then persist the completed set as resume state.
    async fn flush(&self) -> Result<(), StorageError>;

    /// Called once after a recheck, with every piece now known good (trusted or verified; the
    /// engine has called [`Storage::mark_complete`] for each). Pieces outside `verified` are not
    /// complete, whatever resume state said. A backend that found data it did not write settles
    /// it here: keeps what verified, and reports [`StorageError::PathInUse`] for a file none of
    /// whose data verified (left untouched). The default does nothing.
    async fn recheck_finished(&self, verified: &Bitfield) -> Result<(), StorageError> {
        let _ = verified;
        Ok(())
    }

    /// Change which files are skipped (one flag per file; see [`StorageSpec::skipped_files`]).
    /// A file no longer skipped whose pieces are all complete is finalized now. The default
    /// accepts "nothing skipped" only.
    async fn set_skipped_files(&self, skipped: Vec<bool>) -> Result<(), StorageError> {
        if skipped.iter().any(|&s| s) {
            return Err(StorageError::NotSupported("skipping files"));
        }
        Ok(())
    }
}

/// A named storage backend: the factory the registry holds and `--storage` selects.
#[async_trait]
pub trait StorageBackend: Send + Sync {
    /// The command-line selector, e.g. `fs` or `memory`.
    fn name(&self) -> &str;

    /// Open (or create) storage for one torrent.
    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError>;

    /// Delete what this backend wrote for the torrent in `spec` (see the module contract),
    /// after its storage was dropped. The default deletes nothing.
    async fn delete_data(&self, spec: StorageSpec) -> Result<DeletedData, StorageError> {
        let _ = spec;
        Err(StorageError::NotSupported("deleting data"))
    }

    /// Move the finished files of the torrent in `spec` (whose storage was dropped) from
    /// `spec.download_dir` to the folder `to`, keeping relative paths (see the module contract).
    /// Once this returns `Moved`, the next [`StorageBackend::open`] at `to` completes the move
    /// and one at `spec.download_dir` undoes it: the caller commits by recording `to` as the
    /// torrent's folder, then opens there. The default moves nothing.
    async fn move_data(&self, spec: StorageSpec, to: PathBuf) -> Result<MoveOutcome, StorageError> {
        let _ = (spec, to);
        Err(StorageError::NotSupported("moving data"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_maps_pieces_and_files() {
        let l = Layout::new(
            16,
            [
                ("a".into(), 10),
                ("empty".into(), 0),
                ("b".into(), 20),
                ("c".into(), 3),
            ],
        );
        assert_eq!(l.total_length, 33);
        assert_eq!(l.piece_count(), 3);
        assert_eq!(l.piece_len(2), 1);
        assert_eq!(l.files_for_piece(0), vec![0, 2]);
        assert_eq!(l.files_for_piece(1), vec![2, 3]);
        assert_eq!(l.files_for_piece(2), vec![3]);
        assert_eq!(l.pieces_for_file(0), 0..1);
        assert_eq!(l.pieces_for_file(1), 0..0);
        assert_eq!(l.pieces_for_file(2), 0..2);
        assert_eq!(l.pieces_for_file(3), 1..3);
    }
}
