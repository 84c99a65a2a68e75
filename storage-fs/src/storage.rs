//! [`FsBackend`] and [`FsStorage`]: one torrent's files under `download_dir`.
//!
//! ## On disk
//!
//! - A file that is not yet complete is `<state_dir>/parts/<info-hash hex>/<index>.part`
//!   (`paths.rs`), created on its first write and sized with `set_len` (sparse). No torrent can
//!   name it, whatever its paths, and unwritten ranges read back as zeros.
//! - When every piece touching a file is complete, it is *finalized*: fsync it, move it to its
//!   final path **without replacing** anything there (`renameat2(RENAME_NOREPLACE)`; a copy to
//!   an exclusively created temporary name when the state folder is on another file system),
//!   fsync the folder. Open descriptors survive the rename. If something appeared at the final
//!   path meanwhile, the move fails with [`PathConflict::Occupied`] and nothing is replaced.
//! - Zero-length files are complete by definition: created (exclusively) at their final path when
//!   the torrent is opened. An empty file already there is fine; a non-empty one is refused with
//!   [`PathConflict::NotEmpty`] and left as it is.
//! - Resume state is `<state_dir>/<info-hash hex>.resume` (see `resume.rs`). [`Storage::flush`]
//!   fsyncs every file written since the last flush, *then* replaces the resume file, so the
//!   recorded set is always a subset of durable data.
//!
//! ## Skipped files
//!
//! A file the user skipped (`StorageSpec::skipped_files`, `Storage::set_skipped_files`) is
//! never finalized: pieces it shares with wanted files are written to its part file under the
//! state folder, and stay there even when all its pieces are complete. A skipped empty file is
//! not created. Un-skipped, it is finalized (or created) at once if complete. Someone's file at
//! a skipped file's final path is not looked at (the user chose not to have that file: pieces
//! it shares with wanted files go to its part file), neither adopted nor moved; un-skipping the
//! file later meets it like any file found in the way.
//!
//! ## Data the client did not write
//!
//! A file at a final path that the resume state does not vouch for (no record, or another inode,
//! size, mtime or ctime) is [`Location::Foreign`]: opened read-only (`O_NOFOLLOW`, checked to be
//! a regular file), never written, truncated or moved while the engine rechecks it.
//! [`Storage::recheck_finished`] then decides for every file before changing anything (one
//! conflict: nothing moves):
//!
//! - every piece touching it verified, and it has the torrent's length → ours, in place;
//! - some verified, others failed (a partial download of another client's) → moved into the
//!   incomplete area to be completed, but only when the evidence holds. Only pieces with real
//!   data in the file count (unwritten regions read as one value throughout: zeros, sparse; and
//!   16 KiB of zeros matches any torrent that has them): at least one must match, and no more
//!   may differ than match (an interrupted download has a few half-written pieces; a user's own
//!   file mostly differs). Otherwise [`PathConflict::ForeignData`] or
//!   [`PathConflict::Differs`]; also refused when it has other hard links
//!   ([`PathConflict::HardLinked`]) or is longer than the torrent's file
//!   ([`PathConflict::Longer`]: the tail never verified). A file of ours changed in place (same
//!   inode and size as recorded) may be repaired without that evidence;
//! - some verified and the rest could not be checked (they also need a file not here yet), or
//!   nothing could be checked → kept where it is, untouched. Later verified pieces are *compared*
//!   with it instead of written; a difference is [`PathConflict::ForeignData`];
//! - nothing verified and something failed → left exactly as it is: [`PathConflict::ForeignData`].
//!
//! Before adopting or moving it, the file must still be the inode seen at open
//! ([`PathConflict::Changed`] otherwise). A complete file of ours is never written either (a
//! piece shared with a neighbour is compared there), and is opened by name only with
//! `O_NOFOLLOW` and only if it is still the inode we put there. A finished file replaced behind
//! our back is recorded as absent, never as ours. A `.part` file beside a final path is never
//! ours (wave 1's, recorded by a version 1 resume file with a matching stamp, is moved over once).
//!
//! ## At open
//!
//! Resume state is trusted per file: a file is trusted when it is where its record says, with
//! the recorded stamp (inode, size, mtime, ctime). Pieces claimed by the record whose files are
//! all trusted are complete without hashing; pieces touching an untrusted file with data are
//! handed to the engine to hash ([`Resume::Partial`], or [`Resume::NeedsRecheck`] when nothing is
//! trusted). Any untrusted file removes the resume file until the next flush, so a crash during
//! the recheck can never make stale state trusted.
//!
//! ## Handles and threads
//!
//! All file-system work runs in `tokio::task::spawn_blocking`, except a read of at most
//! 256 KiB from one file whose descriptor is open and whose bytes are all in the page cache:
//! that is copied on the caller's thread (`preadv2` with `RWF_NOWAIT`, which refuses rather
//! than waits; anything else, an error included, takes the blocking path). Seeding from the
//! page cache then costs no hand-off to a pool thread and back. Open descriptors are kept in a
//! small LRU cache (128 by default), so a torrent with 100,000 files never holds them all. One
//! `std::sync::Mutex` guards the per-file state, the completed set and the cache; it is never
//! held across an `.await` (all locking happens inside blocking tasks or plain accessors), and
//! slow calls (reads, writes, fsync) run without it. A second mutex only serialises flushes.
//!
//! One `FsStorage` per torrent at a time: opening the same torrent again takes over its path
//! claims (`claims.rs`); two torrents can never share a path.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use zigtorrent_engine::storage::Resume;
use zigtorrent_engine::{
    Bitfield, DeletedData, InfoHash, Layout, MoveOutcome, PathConflict, PieceIndex, Storage,
    StorageBackend, StorageError, StorageSpec,
};

use crate::cache::{FdCache, Handle};
use crate::claims::{Claim, Claims};
use crate::paths::{
    check_relative, copy_to_new, create_dirs, create_root, is_cross_device, legacy_part_path,
    move_temp, part_file, parts_dir, rename_noreplace, sync_dir,
};
use crate::resume::{self, FileRecord, Location, ResumeBody, Stamp, LEGACY_VERSION};
use crate::writer::PieceWriter;

/// The `fs` storage backend: opens [`FsStorage`] for each torrent.
#[derive(Clone, Debug)]
pub struct FsBackend {
    max_open_files: usize,
    claims: Arc<Claims>,
    /// Moves of finished torrents copy even on one file system (see `with_copy_moves`).
    copy_moves: bool,
    /// Writes of verified pieces, for all of this backend's torrents (see `writer.rs`).
    writer: Arc<PieceWriter>,
}

impl FsBackend {
    /// Default bound on open descriptors per torrent.
    pub const DEFAULT_MAX_OPEN_FILES: usize = 128;

    /// A backend keeping at most [`Self::DEFAULT_MAX_OPEN_FILES`] files open per torrent.
    pub fn new() -> Self {
        Self::with_max_open_files(Self::DEFAULT_MAX_OPEN_FILES)
    }

    /// A backend keeping at most `n` (at least 1) files open per torrent.
    pub fn with_max_open_files(n: usize) -> Self {
        FsBackend {
            max_open_files: n.max(1),
            claims: Arc::new(Claims::default()),
            copy_moves: false,
            writer: Arc::new(PieceWriter::default()),
        }
    }

    /// Move finished torrents ([`StorageBackend::move_data`]) by copy, verify and remove even
    /// where a rename would do: the path a move across file systems takes, for tests on one.
    pub fn with_copy_moves(mut self) -> Self {
        self.copy_moves = true;
        self
    }
}

impl Default for FsBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl StorageBackend for FsBackend {
    fn name(&self) -> &str {
        "fs"
    }

    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
        let claims = self.claims.clone();
        let max = self.max_open_files;
        let inner = blocking(move || Inner::open(spec, max, &claims)).await?;
        Ok(Arc::new(FsStorage {
            inner: Arc::new(inner),
            writer: self.writer.clone(),
        }))
    }

    /// See `delete.rs`: only what this client wrote goes.
    async fn delete_data(&self, spec: StorageSpec) -> Result<DeletedData, StorageError> {
        let claims = self.claims.clone();
        blocking(move || crate::delete::delete_data(&spec, &claims)).await
    }

    /// See `relocate.rs`: only what this client wrote, never over anything.
    async fn move_data(&self, spec: StorageSpec, to: PathBuf) -> Result<MoveOutcome, StorageError> {
        let claims = self.claims.clone();
        let copy = self.copy_moves;
        blocking(move || crate::relocate::move_data(&spec, &to, &claims, copy)).await
    }
}

/// One torrent's files on disk. Cheap to clone (a shared handle).
#[derive(Clone, Debug)]
pub struct FsStorage {
    inner: Arc<Inner>,
    /// The backend's piece writer (see `writer.rs`), shared by its torrents.
    writer: Arc<PieceWriter>,
}

#[derive(Debug)]
struct Inner {
    info_hash: InfoHash,
    layout: Arc<Layout>,
    download_dir: PathBuf,
    state_dir: PathBuf,
    resume_path: PathBuf,
    /// `<state_dir>/parts/<hex>`.
    parts_dir: PathBuf,
    /// Final path of every file (`download_dir` joined with the layout path).
    finals: Vec<PathBuf>,
    resume: Resume,
    state: Mutex<State>,
    /// Serialises flushes; holds what the resume file on disk records for each file
    /// (`None`: unknown, stamp it at the next flush).
    recorded: Mutex<Vec<Option<(Location, Stamp)>>>,
    /// The body the resume file on disk holds, when known (taken under `recorded`): a flush
    /// that would write the same again writes nothing. A session of 10,000 seeds stopping
    /// otherwise rewrote (and fsynced) 10,000 unchanged resume files.
    on_disk: Mutex<Option<ResumeBody>>,
    /// Files of ours changed in place since the last record (see `open`).
    repairable: Vec<bool>,
    /// The file system refused a read that may not wait (`RWF_NOWAIT`): every read goes to the
    /// blocking pool.
    no_nowait: AtomicBool,
    /// This torrent's paths, held until the storage is dropped.
    _claim: Claim,
}

/// Largest read tried on the caller's (async) thread from the page cache: a copy this size takes
/// tens of microseconds; whole pieces for a recheck (up to 16 MiB) go to the blocking pool.
const MAX_CACHED_READ: u32 = 256 * 1024;

#[derive(Debug)]
struct State {
    completed: Bitfield,
    locations: Vec<Location>,
    /// What each file was when we last knew it: for our files (`Part`, `Final`) the inode we
    /// wrote, so a file replaced behind our back is never recorded as ours; for `Foreign` files
    /// the stamp seen at open, so one swapped during the recheck is never adopted.
    known: Vec<Option<Stamp>>,
    /// Files being finalized right now (so two `mark_complete` calls don't both rename).
    finalizing: HashSet<usize>,
    /// Files the user skipped: never created or moved to their final path.
    skipped: Vec<bool>,
    /// Files at (or bound for) their final path that we did not create: found there and
    /// adopted, or taken in from there. Deleting the torrent's data keeps them.
    adopted: Vec<bool>,
    /// Files written since the last flush.
    dirty: HashSet<usize>,
    /// A part file was created since the last flush: its folder entry is not yet durable.
    parts_unsynced: bool,
    cache: FdCache,
}

/// Append exactly `n` bytes of `file` from offset `at` to `buf`, whose spare capacity must hold
/// them; read straight into that capacity (no zero-filling). A file that ends first is
/// `UnexpectedEof`, as with `read_exact_at`.
fn read_exact_at_appending(
    file: &std::fs::File,
    buf: &mut Vec<u8>,
    n: usize,
    mut at: u64,
) -> std::io::Result<()> {
    let end = buf.len() + n;
    if buf.capacity() < end {
        buf.reserve_exact(end - buf.len());
    }
    while buf.len() < end {
        // Fills the whole spare capacity at most: bytes past `end` (more of the same file,
        // when the buffer has more room than asked) are cut off below.
        let got = match rustix::io::pread(file, rustix::buffer::spare_capacity(buf), at) {
            Ok(got) => got,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        at += got as u64;
    }
    buf.truncate(end);
    Ok(())
}

/// A flush with nothing new is checked on the caller's thread for torrents of at most this
/// many files (building their resume body takes microseconds); bigger ones hop to the
/// blocking pool as any flush does.
const INLINE_FLUSH_MAX_FILES: usize = 64;

/// Lock, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run blocking file-system work off the async threads, re-raising a panic from it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StorageError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        }),
    }
}

fn in_use(path: &Path, why: PathConflict) -> StorageError {
    StorageError::PathInUse {
        path: path.to_path_buf(),
        why,
    }
}

/// Metadata of `path` (not following a final symlink), `None` when nothing is there; anything
/// but a regular file there, or a non-folder where one of its folders should be, is
/// [`PathConflict::NotAFile`].
fn stat(path: &Path) -> Result<Option<fs::Metadata>, StorageError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m)),
        Ok(_) => Err(in_use(path, PathConflict::NotAFile)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // A file (the user's) where a folder of the path should be: name it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            let blocker = path
                .ancestors()
                .skip(1)
                .find(|a| fs::symlink_metadata(a).is_ok_and(|m| !m.is_dir()))
                .unwrap_or(path);
            Err(in_use(blocker, PathConflict::NotAFile))
        }
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

/// Open one of our data files read-write, or read-only for reads when it may not be written
/// (e.g. a read-only file the user made ours).
fn open_ours(path: &Path, write: bool) -> std::io::Result<Handle> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    {
        Ok(f) => Ok(Handle {
            file: Arc::new(f),
            writable: true,
        }),
        Err(e) if !write && e.kind() == std::io::ErrorKind::PermissionDenied => Ok(Handle {
            file: Arc::new(
                OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)?,
            ),
            writable: false,
        }),
        Err(e) => Err(e),
    }
}

/// Open a file we did not write: read-only, and refusing a symlink swapped in after the check.
fn open_foreign(path: &Path) -> std::io::Result<Handle> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(Handle {
        file: Arc::new(f),
        writable: false,
    })
}

/// What open found for one file.
struct Observed {
    location: Location,
    stamp: Stamp,
    /// Both the final path and our part file exist.
    both: bool,
}

impl FsStorage {
    /// Open (or create) storage for `spec` on its own, keeping at most `max_open_files`
    /// descriptors open. Path claims are only checked against storages of the same backend:
    /// prefer [`FsBackend::open`].
    pub async fn open(spec: StorageSpec, max_open_files: usize) -> Result<Self, StorageError> {
        let claims = Arc::new(Claims::default());
        let inner = blocking(move || Inner::open(spec, max_open_files, &claims)).await?;
        Ok(FsStorage {
            inner: Arc::new(inner),
            writer: Arc::new(PieceWriter::default()),
        })
    }

    /// Final path of file `file` (where it appears once complete).
    pub fn final_path(&self, file: usize) -> Option<&Path> {
        self.inner.finals.get(file).map(PathBuf::as_path)
    }

    /// Path of file `file` while incomplete (under the state folder).
    pub fn part_path(&self, file: usize) -> Option<PathBuf> {
        (file < self.inner.finals.len()).then(|| part_file(&self.inner.parts_dir, file))
    }
}

impl Inner {
    fn open(
        spec: StorageSpec,
        max_open_files: usize,
        claims: &Arc<Claims>,
    ) -> Result<Inner, StorageError> {
        let layout = spec.layout.clone();
        if layout.piece_length == 0 {
            return Err(StorageError::Io {
                path: spec.download_dir.clone(),
                source: std::io::Error::other("piece length is zero"),
            });
        }
        for f in &layout.files {
            check_relative(&f.path)?;
        }
        create_root(&spec.download_dir)?;
        create_root(&spec.state_dir)?;
        // Before touching anything: is every path this torrent's alone?
        let claim = claims.claim(spec.info_hash, &layout, &spec.download_dir, &spec.state_dir)?;
        // A move a crash interrupted is finished (or undone) before anything is looked at.
        crate::relocate::settle(&spec, claims)?;
        let finals: Vec<PathBuf> = layout
            .files
            .iter()
            .map(|f| spec.download_dir.join(&f.path))
            .collect();
        let parts_dir = parts_dir(&spec.state_dir, &spec.info_hash);
        let resume_path = resume::resume_path(&spec.state_dir, &spec.info_hash);
        let loaded = resume::load(&resume_path)?;
        let legacy = loaded.as_ref().is_some_and(|l| l.version == LEGACY_VERSION);
        let body = loaded.map(|l| l.body);
        let on_disk = body.clone().filter(|_| !legacy);

        // Zero-length files: an empty file is as good as ours; anything else is in the way.
        for (i, f) in layout.files.iter().enumerate() {
            if f.length == 0 {
                if let Some(m) = stat(&finals[i])? {
                    if m.len() > 0 {
                        return Err(in_use(&finals[i], PathConflict::NotEmpty));
                    }
                }
            }
        }

        let part_at = |i: usize| {
            if legacy {
                legacy_part_path(&finals[i])
            } else {
                part_file(&parts_dir, i)
            }
        };
        let mut observed = Vec::with_capacity(finals.len());
        for (i, path) in finals.iter().enumerate() {
            if layout.files[i].length == 0 {
                observed.push(Observed {
                    location: Location::Final,
                    stamp: Stamp::default(),
                    both: false,
                });
                continue;
            }
            let fin = stat(path)?;
            let part = stat(&part_at(i))?;
            let both = fin.is_some() && part.is_some();
            observed.push(match (fin, part) {
                (Some(m), _) => Observed {
                    location: Location::Final,
                    stamp: Stamp::of(&m),
                    both,
                },
                (None, Some(m)) => Observed {
                    location: Location::Part,
                    stamp: Stamp::of(&m),
                    both,
                },
                (None, None) => Observed {
                    location: Location::Absent,
                    stamp: Stamp::default(),
                    both,
                },
            });
        }

        let piece_count = layout.piece_count() as usize;
        let record = body
            .as_ref()
            .filter(|b| b.matches(&spec.info_hash, &layout))
            .and_then(|b| {
                Bitfield::from_bytes(&b.completed, piece_count)
                    .ok()
                    .map(|bf| (b, bf))
            });
        // Our own finished file, changed in place since (same inode and size, new mtime or
        // ctime: damaged, or edited): its failed pieces may be repaired without the evidence a
        // file we never wrote must show (see `settle`).
        let repairable: Vec<bool> = match &record {
            Some((b, _)) if !legacy => b
                .files
                .iter()
                .zip(&observed)
                .map(|(rec, obs)| {
                    rec.location == Location::Final
                        && obs.location == Location::Final
                        && rec.stamp.same_inode(&obs.stamp)
                        && rec.stamp.size == obs.stamp.size
                })
                .collect(),
            _ => vec![false; finals.len()],
        };
        let mut trusted: Vec<bool> = match &record {
            Some((b, bf)) => file_trust(&layout, b, bf, &observed, legacy),
            // Empty files need no record: they are complete wherever they are (checked above).
            None => layout.files.iter().map(|f| f.length == 0).collect(),
        };
        // Wave 1 kept trusted partial files beside the final path: move them over once.
        if legacy {
            for (i, o) in observed.iter_mut().enumerate() {
                if o.location == Location::Part && trusted[i] {
                    let to = part_file(&parts_dir, i);
                    let moved = fs::create_dir_all(&parts_dir)
                        .and_then(|()| move_ours(&legacy_part_path(&finals[i]), &to))
                        .and_then(|()| fs::metadata(&to));
                    match moved {
                        // The move changed its ctime (and maybe its inode): stamp it anew.
                        Ok(m) => o.stamp = Stamp::of(&m),
                        Err(_) => {
                            trusted[i] = false;
                            o.location = Location::Absent;
                        }
                    }
                } else if o.location == Location::Part {
                    // Not vouched for: not ours to read or move.
                    o.location = Location::Absent;
                }
            }
        }

        let skipped: Vec<bool> = (0..finals.len())
            .map(|i| spec.skipped_files.get(i).copied().unwrap_or(false))
            .collect();
        // Someone's file at a skipped file's final path: neither ours nor wanted, so it is
        // not looked at (comparing pieces shared with wanted files against it would stop the
        // torrent over a file the user chose not to have). The bytes we keep of a skipped file
        // live in its part file, if any.
        let mut ignored_final = false;
        for i in 0..finals.len() {
            if skipped[i]
                && !trusted[i]
                && layout.files[i].length > 0
                && observed[i].location == Location::Final
            {
                observed[i] = match stat(&part_at(i))? {
                    Some(m) => Observed {
                        location: Location::Part,
                        stamp: Stamp::of(&m),
                        both: false,
                    },
                    None => Observed {
                        location: Location::Absent,
                        stamp: Stamp::default(),
                        both: false,
                    },
                };
                ignored_final = true;
            }
        }
        if ignored_final {
            if let Some((b, bf)) = &record {
                trusted = file_trust(&layout, b, bf, &observed, legacy);
            }
        }
        let adopted: Vec<bool> = (0..finals.len())
            .map(|i| {
                trusted[i]
                    && observed[i].location == Location::Final
                    && record
                        .as_ref()
                        .is_some_and(|(b, _)| b.files.get(i).is_some_and(|r| r.adopted != 0))
            })
            .collect();
        let mut locations = Vec::with_capacity(finals.len());
        let mut recorded = Vec::with_capacity(finals.len());
        let mut known = Vec::with_capacity(finals.len());
        for (i, o) in observed.iter().enumerate() {
            known.push((o.location != Location::Absent).then_some(o.stamp));
            if layout.files[i].length == 0 && skipped[i] && stat(&finals[i])?.is_none() {
                // A skipped empty file is not created: nothing of it exists.
                locations.push(Location::Absent);
                recorded.push(None);
            } else if trusted[i] {
                locations.push(o.location);
                recorded.push(Some((o.location, o.stamp)));
            } else {
                // A final path we cannot vouch for holds someone's data: look, don't touch.
                locations.push(match o.location {
                    Location::Final => Location::Foreign,
                    other => other,
                });
                recorded.push(None);
            }
        }
        let (complete, check) =
            split_pieces(&layout, record.map(|(_, bf)| bf), &trusted, &locations);
        let all_trusted = trusted.iter().all(|&t| t);
        if !all_trusted || legacy {
            // Nothing recorded may be trusted again by accident after a crash mid-recheck.
            resume::remove(&spec.state_dir, &resume_path)?;
        }
        let on_disk = on_disk.filter(|_| all_trusted);
        let resume = if check.count_ones() == 0 {
            Resume::Trusted(complete.clone())
        } else if complete.count_ones() == 0 {
            Resume::NeedsRecheck
        } else {
            Resume::Partial {
                complete: complete.clone(),
                check,
            }
        };

        // Zero-length files are complete by definition: put them in place now (unless skipped).
        for (i, f) in layout.files.iter().enumerate() {
            if f.length == 0 && !skipped[i] {
                create_empty(&spec.download_dir, &finals[i])?;
            }
        }

        let inner = Inner {
            info_hash: spec.info_hash,
            layout,
            download_dir: spec.download_dir,
            state_dir: spec.state_dir,
            resume_path,
            parts_dir,
            finals,
            resume,
            state: Mutex::new(State {
                completed: complete,
                locations,
                known,
                finalizing: HashSet::new(),
                skipped,
                adopted,
                dirty: HashSet::new(),
                parts_unsynced: false,
                cache: FdCache::new(max_open_files),
            }),
            recorded: Mutex::new(recorded),
            on_disk: Mutex::new(on_disk),
            repairable,
            no_nowait: AtomicBool::new(false),
            _claim: claim,
        };
        // A crash between marking a file's last piece and moving it leaves a complete part
        // file behind a trusted record: finish the job now.
        for i in 0..inner.finals.len() {
            if inner.is_trusted_part(i) {
                inner.maybe_finalize(i)?;
            }
        }
        Ok(inner)
    }

    /// Whether `h` is the inode recorded for `file` (unknown: trusted, e.g. an empty file).
    fn is_known_inode(&self, file: usize, h: &Handle) -> bool {
        let Some(known) = lock(&self.state).known[file] else {
            return true;
        };
        h.file
            .metadata()
            .is_ok_and(|m| known.same_inode(&Stamp::of(&m)))
    }

    fn is_trusted_part(&self, file: usize) -> bool {
        lock(&self.recorded)[file].is_some() && lock(&self.state).locations[file] == Location::Part
    }

    fn path_at(&self, file: usize, loc: Location) -> PathBuf {
        match loc {
            Location::Part | Location::Absent => part_file(&self.parts_dir, file),
            Location::Final | Location::Foreign => self.finals[file].clone(),
        }
    }

    fn final_parent(&self, file: usize) -> &Path {
        self.finals[file].parent().unwrap_or(&self.download_dir)
    }

    /// An open handle on `file` wherever it currently is, creating its part file for a write
    /// to a file that does not exist yet. Opening happens without the state lock (so
    /// `has_piece` callers never wait on the disk); a file moved meanwhile is looked up again.
    fn handle(&self, file: usize, write: bool) -> Result<(Handle, PathBuf), StorageError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let loc = {
                let mut st = lock(&self.state);
                let loc = st.locations[file];
                if let Some(h) = st.cache.get(file) {
                    if h.writable || !write {
                        return Ok((h, self.path_at(file, loc)));
                    }
                    st.cache.remove(file);
                }
                loc
            };
            let path = self.path_at(file, loc);
            let handle = match loc {
                Location::Absent if !write => return Err(StorageError::Missing),
                Location::Absent => self.create_part(file, &path)?,
                // Never written: the engine writes only after a recheck settled the file.
                Location::Foreign if write => return Err(in_use(&path, PathConflict::Occupied)),
                Location::Foreign => match open_foreign(&path) {
                    Ok(h) => h,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StorageError::Missing)
                    }
                    Err(e) => return Err(StorageError::from_io(&path, e)),
                },
                Location::Part | Location::Final => match open_ours(&path, write) {
                    // A complete file is opened by name: it must still be the inode we put
                    // there, not something swapped in since (a link to elsewhere included).
                    Ok(h) if loc == Location::Final && !self.is_known_inode(file, &h) => {
                        return Err(in_use(&path, PathConflict::Changed))
                    }
                    Ok(h) => h,
                    // Moved between the lookup and the open: look again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
                    Err(e) => return Err(StorageError::from_io(&path, e)),
                },
            };
            let mut st = lock(&self.state);
            if st.locations[file] != loc && loc != Location::Absent {
                continue; // moved while we opened it: this handle may be the wrong file
            }
            if loc == Location::Absent {
                st.parts_unsynced = true;
                if st.locations[file] == Location::Absent {
                    // Another writer may have created it too; both opened the same part file.
                    st.locations[file] = Location::Part;
                }
            }
            st.cache.insert(file, handle.clone());
            return Ok((handle, self.path_at(file, st.locations[file])));
        }
    }

    /// Create the part file (and the parts folder) at full size; sparse where the file system
    /// allows. The parts folder is fsynced by the next flush, before any resume state claims a
    /// piece in the new file, not here: a torrent of 1,000 files otherwise paid 1,000 fsyncs of
    /// one folder on its write path. (Until then a crash may lose the new file's name; nothing
    /// claims its data yet.)
    fn create_part(&self, file: usize, path: &Path) -> Result<Handle, StorageError> {
        create_dirs(&self.state_dir, &self.parts_dir)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|f| f.set_len(self.layout.files[file].length).map(|()| f))
            .map_err(|e| StorageError::from_io(path, e))?;
        Ok(Handle {
            file: Arc::new(f),
            writable: true,
        })
    }

    /// Map `len` bytes at torrent offset `start` onto files: `(file, file offset, buffer offset,
    /// length)` for each non-empty file touched.
    fn segments(&self, start: u64, len: u64) -> Vec<(usize, u64, usize, usize)> {
        let files = &self.layout.files;
        let mut out = Vec::new();
        let end = start + len;
        let mut i = files.partition_point(|f| f.offset + f.length <= start);
        while i < files.len() && files[i].offset < end {
            let f = &files[i];
            if f.length > 0 {
                let s = start.max(f.offset);
                let e = end.min(f.offset + f.length);
                out.push((i, s - f.offset, (s - start) as usize, (e - s) as usize));
            }
            i += 1;
        }
        out
    }

    fn check(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<u64, StorageError> {
        self.layout.check_range(piece, offset, len)
    }

    fn write(&self, start: u64, data: &[u8]) -> Result<(), StorageError> {
        for (file, at, from, n) in self.segments(start, data.len() as u64) {
            let loc = lock(&self.state).locations[file];
            let bytes = &data[from..from + n];
            if matches!(loc, Location::Final | Location::Foreign) {
                // Already in place (ours, complete) or not ours: never written. The engine writes
                // only verified pieces, so matching bytes there are as good as written, and
                // differing ones are evidence (see `compare_in_place`).
                self.compare_in_place(file, loc, at, bytes)?;
                continue;
            }
            let (h, path) = self.handle(file, true)?;
            h.file
                .write_all_at(bytes, at)
                .map_err(|e| StorageError::from_io(&path, e))?;
            // Only after the bytes are in: a flush that misses this mark must not claim them.
            lock(&self.state).dirty.insert(file);
        }
        Ok(())
    }

    /// A verified piece reaches a file we may not write: compare instead. A complete file of ours
    /// that differs was damaged behind our back; a file we did not write that differs is not the
    /// torrent's data. Either way it is left as it is and the torrent stops with an error.
    fn compare_in_place(
        &self,
        file: usize,
        loc: Location,
        at: u64,
        expected: &[u8],
    ) -> Result<(), StorageError> {
        let (h, path) = self.handle(file, false)?;
        let mut there = vec![0u8; expected.len()];
        match h.file.read_exact_at(&mut there, at) {
            Ok(()) if there == expected => Ok(()),
            Ok(()) | Err(_) if loc == Location::Foreign => {
                Err(in_use(&path, PathConflict::ForeignData))
            }
            Ok(()) => Err(StorageError::Io {
                path,
                source: std::io::Error::other("a complete file changed behind our back"),
            }),
            Err(e) => Err(StorageError::from_io(&path, e)),
        }
    }

    /// Start writeback of `start..start + len` (see `writeback`): once per piece, not per block.
    fn start_writeback(&self, start: u64, len: u64) {
        for (file, at, _, n) in self.segments(start, len) {
            if lock(&self.state).locations[file] != Location::Part {
                continue;
            }
            if let Ok((h, _)) = self.handle(file, true) {
                crate::writeback::start(&h.file, at, n as u64);
            }
        }
    }

    fn read(&self, start: u64, len: u32) -> Result<Bytes, StorageError> {
        // Filled by the reads themselves: zero-filling it first cost seeding as much CPU as a
        // tenth of the copies.
        let mut buf = Vec::with_capacity(len as usize);
        for (file, at, from, n) in self.segments(start, len as u64) {
            let (h, path) = self.handle(file, false)?;
            debug_assert_eq!(from, buf.len(), "segments are contiguous");
            read_exact_at_appending(&h.file, &mut buf, n, at)
                .map_err(|e| StorageError::from_io(&path, e))?;
            // A file deleted under us stays readable through the open descriptor; serving from
            // it would hide the loss until the next start. One fstat per read notices it.
            if h.file.metadata().is_ok_and(|m| m.nlink() == 0) {
                lock(&self.state).cache.remove(file);
                tracing::warn!(path = %path.display(), "a data file was deleted");
                return Err(StorageError::Missing);
            }
        }
        Ok(buf.into())
    }

    /// `len` bytes at torrent offset `start` read without waiting, when one file holds them, its
    /// descriptor is already open and the page cache holds every byte (`RWF_NOWAIT`); `None`
    /// sends the read to the blocking pool, which also reports any error. Seeding from the page
    /// cache then costs no hand-off to a pool thread and back per read.
    fn read_cached(&self, start: u64, len: u32) -> Option<Bytes> {
        if len > MAX_CACHED_READ || self.no_nowait.load(Ordering::Relaxed) {
            return None;
        }
        let segments = self.segments(start, len as u64);
        let [(file, at, _, n)] = segments[..] else {
            return None;
        };
        // Only a handle already open: opening a file may wait on the disk. Never wait for the
        // lock either: a finalize holds it across a rename, which a slow file system may
        // stretch, and this runs on the runtime's own threads.
        let h = match self.state.try_lock() {
            Ok(mut st) => st.cache.get(file)?,
            Err(_) => return None,
        };
        let mut buf = vec![0u8; n];
        let mut done = 0;
        while done < n {
            let mut slice = [std::io::IoSliceMut::new(&mut buf[done..])];
            match rustix::io::preadv2(
                &*h.file,
                &mut slice,
                at + done as u64,
                rustix::io::ReadWriteFlags::NOWAIT,
            ) {
                Ok(0) => return None,
                Ok(k) => done += k,
                Err(rustix::io::Errno::INTR) => {}
                Err(
                    rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::NOSYS
                    | rustix::io::Errno::INVAL,
                ) => {
                    // A file system or kernel that cannot tell (no `preadv2`, or no
                    // `RWF_NOWAIT`): stop asking.
                    self.no_nowait.store(true, Ordering::Relaxed);
                    return None;
                }
                // AGAIN: not all in the page cache. Anything else the blocking read meets
                // again and reports.
                Err(_) => return None,
            }
        }
        // As in `read`: a deleted file must not be served (the blocking read reports it).
        if !h.file.metadata().is_ok_and(|m| m.nlink() > 0) {
            return None;
        }
        Some(buf.into())
    }

    fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        for f in self.set_complete(piece)? {
            self.maybe_finalize(f)?;
        }
        Ok(())
    }

    /// The quick half of `mark_complete`: record `piece` complete; returns the files it touches.
    fn set_complete(&self, piece: PieceIndex) -> Result<Vec<usize>, StorageError> {
        self.check(piece, 0, 0)?;
        let files = self.layout.files_for_piece(piece);
        let mut st = lock(&self.state);
        // has_piece must never claim bytes that were never written.
        if files.iter().any(|&f| st.locations[f] == Location::Absent) {
            return Err(StorageError::Missing);
        }
        st.completed.set(piece as usize);
        Ok(files)
    }

    /// Whether `file` is ready to be finalized: every piece complete, wanted, not in place.
    fn ready_to_finalize(&self, st: &State, file: usize) -> bool {
        let done = self
            .layout
            .pieces_for_file(file)
            .all(|p| st.completed.get(p as usize));
        done && !st.skipped[file]
            && !matches!(st.locations[file], Location::Final | Location::Absent)
    }

    /// Finalize `file` if all its pieces are complete and nobody else is doing it.
    fn maybe_finalize(&self, file: usize) -> Result<(), StorageError> {
        let loc = {
            let mut st = lock(&self.state);
            if !self.ready_to_finalize(&st, file) || !st.finalizing.insert(file) {
                return Ok(());
            }
            st.locations[file]
        };
        let result = match loc {
            Location::Foreign => self.adopt_in_place(file).map(|_| ()),
            _ => self.finalize(file),
        };
        lock(&self.state).finalizing.remove(&file);
        result
    }

    /// The file at `file`'s final path as it is now, if it is still the very file seen at open
    /// (same inode, size, mtime and ctime); otherwise the conflict to report.
    fn unchanged_foreign(&self, file: usize) -> Result<Stamp, StorageError> {
        let path = &self.finals[file];
        let seen = lock(&self.state).known[file];
        match (stat(path)?, seen) {
            (Some(m), Some(seen)) if Stamp::of(&m) == seen => Ok(seen),
            _ => Err(in_use(path, PathConflict::Changed)),
        }
    }

    /// Every piece of a file we found at its final path verified: it is ours now, where it is,
    /// untouched. Returns false (leaving it foreign) when it is longer than the torrent's file:
    /// bytes past the torrent's length were never verified, so it is not ours to cut.
    fn adopt_in_place(&self, file: usize) -> Result<bool, StorageError> {
        let stamp = self.unchanged_foreign(file)?;
        if stamp.size != self.layout.files[file].length {
            return Ok(false);
        }
        {
            let mut st = lock(&self.state);
            st.cache.remove(file); // the read-only handle
            st.locations[file] = Location::Final;
            st.adopted[file] = true;
        }
        // A stale part file of ours (from before the file appeared there) is of no use now.
        match fs::remove_file(part_file(&self.parts_dir, file)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot remove a stale part file")
            }
            _ => {}
        }
        Ok(true)
    }

    /// fsync the part file, move it to its final path without replacing anything, fsync the
    /// folder. Slow work (fsync, a cross-device copy) runs without the state lock, so
    /// `has_piece` callers on the runtime never wait for it.
    fn finalize(&self, file: usize) -> Result<(), StorageError> {
        let length = self.layout.files[file].length;
        let (h, part) = self.handle(file, false)?;
        let size = h
            .file
            .metadata()
            .map_err(|e| StorageError::from_io(&part, e))?
            .len();
        if size < length {
            return Err(StorageError::Missing);
        }
        if size > length {
            let (h, _) = self.handle(file, true)?;
            h.file
                .set_len(length)
                .map_err(|e| StorageError::from_io(&part, e))?;
        }
        h.file
            .sync_all()
            .map_err(|e| StorageError::from_io(&part, e))?;
        let ours = h
            .file
            .metadata()
            .map_err(|e| StorageError::from_io(&part, e))?;
        let target = &self.finals[file];
        create_dirs(&self.download_dir, self.final_parent(file))?;
        let occupied = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                in_use(target, PathConflict::Occupied)
            } else {
                StorageError::from_io(target, e)
            }
        };
        let moved = {
            // Under the lock, so nobody opens by the old name after the move.
            let mut st = lock(&self.state);
            match rename_noreplace(&part, target) {
                Ok(()) => {
                    st.locations[file] = Location::Final;
                    st.known[file] = Some(Stamp::of(&ours));
                    true
                }
                Err(e) if is_cross_device(&e) => false,
                Err(e) => return Err(occupied(e)),
            }
        };
        if !moved {
            // The state folder is on another file system: copy beside the final path (no lock
            // held), then move the copy into place.
            let tmp = move_temp(target, &self.info_hash, file);
            let copy = copy_to_new(&part, &tmp).map_err(|e| StorageError::from_io(&tmp, e))?;
            let copied = copy
                .metadata()
                .map_err(|e| StorageError::from_io(&tmp, e))?;
            {
                let mut st = lock(&self.state);
                if let Err(e) = rename_noreplace(&tmp, target) {
                    let _ = fs::remove_file(&tmp);
                    return Err(occupied(e));
                }
                st.cache.remove(file); // the part file's handle
                st.locations[file] = Location::Final;
                st.known[file] = Some(Stamp::of(&copied));
            }
            fs::remove_file(&part).map_err(|e| StorageError::from_io(&part, e))?;
        }
        sync_dir(self.final_parent(file))
    }

    /// See [`Storage::set_skipped_files`]: files no longer skipped are finished now if their
    /// pieces are all complete (an empty one is created).
    fn set_skipped_files(&self, skipped: &[bool]) -> Result<(), StorageError> {
        let unskipped: Vec<usize> = {
            let mut st = lock(&self.state);
            let n = st.skipped.len();
            let new: Vec<bool> = (0..n)
                .map(|i| skipped.get(i).copied().unwrap_or(false))
                .collect();
            let unskipped = (0..n).filter(|&i| st.skipped[i] && !new[i]).collect();
            st.skipped = new;
            unskipped
        };
        for file in unskipped {
            if self.layout.files[file].length == 0 {
                if lock(&self.state).locations[file] == Location::Absent {
                    create_empty(&self.download_dir, &self.finals[file])?;
                    lock(&self.state).locations[file] = Location::Final;
                }
            } else {
                self.maybe_finalize(file)?;
            }
        }
        Ok(())
    }

    /// See [`Storage::recheck_finished`]. Decides for every file first and changes nothing when
    /// any file is in the way, so an error never leaves a user's file moved.
    fn recheck_finished(&self, verified: &Bitfield) -> Result<(), StorageError> {
        {
            let mut st = lock(&self.state);
            let claimed: Vec<usize> = st.completed.iter_ones().collect();
            for p in claimed {
                if !verified.get(p) {
                    st.completed.clear(p);
                }
            }
        }
        let mut conflicts: Vec<StorageError> = Vec::new();
        let mut adopt = Vec::new();
        let mut take = Vec::new();
        for file in 0..self.finals.len() {
            match self.settle(file)? {
                Settle::Keep => {}
                Settle::Adopt => adopt.push(file),
                Settle::TakeIn => take.push(file),
                Settle::Conflict(e) => conflicts.push(e),
            }
        }
        if let Some(first) = conflicts.into_iter().enumerate().fold(None, |first, (i, e)| {
            if i > 0 {
                tracing::warn!(error = %e, torrent = %self.info_hash, "another file in the way");
            }
            first.or(Some(e))
        }) {
            return Err(first);
        }
        for file in adopt {
            self.adopt_in_place(file)?;
        }
        for file in take {
            self.take_in(file)?;
        }
        Ok(())
    }

    /// What to do with one file after a recheck (see the module doc).
    fn settle(&self, file: usize) -> Result<Settle, StorageError> {
        let pieces = self.layout.pieces_for_file(file);
        let (loc, verified, failed, all, interior_failed) = {
            let st = lock(&self.state);
            if st.skipped[file] && st.locations[file] == Location::Foreign {
                // Skipped: someone's file at its final path is neither adopted nor moved.
                return Ok(Settle::Keep);
            }
            let mut verified = false;
            let mut failed = false;
            let mut all = true;
            let mut interior_failed = false;
            for p in pieces.clone() {
                let files = self.layout.files_for_piece(p);
                if st.completed.get(p as usize) {
                    verified = true;
                    continue;
                }
                all = false;
                // Hashable: every file of the piece had data, so the failure is evidence.
                if files.iter().all(|&f| st.locations[f] != Location::Absent) {
                    failed = true;
                    interior_failed |= files.len() == 1;
                }
            }
            (st.locations[file], verified, failed, all, interior_failed)
        };
        Ok(match loc {
            Location::Foreign => {
                let stamp = match self.unchanged_foreign(file) {
                    Ok(s) => s,
                    Err(e) => return Ok(Settle::Conflict(e)),
                };
                let path = &self.finals[file];
                let length = self.layout.files[file].length;
                if stamp.size > length && verified {
                    // Bytes past the torrent's end were never verified: not ours to cut.
                    Settle::Conflict(in_use(path, PathConflict::Longer))
                } else if all && verified {
                    Settle::Adopt
                } else if verified && !failed {
                    // Nothing against it; the rest needs files not here yet. Keep it where it
                    // is, untouched: pieces that arrive later are compared with it.
                    Settle::Keep
                } else if verified {
                    // Some pieces verified, others failed: another client's partial download, or
                    // a user's file that happens to share some bytes with the torrent. Only
                    // pieces with real data count (one value throughout is what unwritten,
                    // sparse or preallocated regions read as, and a run of zeros matches any
                    // torrent that has one): taken in (and then written) only if at least one
                    // such piece matches and no more differ than match. An interrupted
                    // download has a few half-written pieces; a user's own file mostly differs.
                    let (real_matches, real_differences) = if self.repairable[file] {
                        (1, 0)
                    } else {
                        self.evidence(file)?
                    };
                    if real_matches == 0 {
                        Settle::Conflict(in_use(path, PathConflict::ForeignData))
                    } else if real_differences > real_matches {
                        Settle::Conflict(in_use(path, PathConflict::Differs))
                    } else if nlink(path)? > 1 {
                        // Completing it would write into the user's other names for it.
                        Settle::Conflict(in_use(path, PathConflict::HardLinked))
                    } else {
                        Settle::TakeIn
                    }
                } else if failed {
                    Settle::Conflict(in_use(path, PathConflict::ForeignData))
                } else {
                    // No evidence either way (every piece also needs a file not here yet): keep
                    // it, untouched; verified pieces will be compared with it as they arrive.
                    Settle::Keep
                }
            }
            // Ours and complete, but a piece lying only in it failed: it was damaged since.
            Location::Final if interior_failed => Settle::TakeIn,
            _ => Settle::Keep,
        })
    }

    /// The bytes of `piece` that lie in `file`, read from where the file is now.
    fn segment_of(&self, file: usize, piece: PieceIndex) -> Result<Vec<u8>, StorageError> {
        let f = &self.layout.files[file];
        let r = self.layout.piece_range(piece);
        let (start, end) = (r.start.max(f.offset), r.end.min(f.offset + f.length));
        let mut buf = vec![0u8; end.saturating_sub(start) as usize];
        let (h, path) = self.handle(file, false)?;
        match h.file.read_exact_at(&mut buf, start - f.offset) {
            Ok(()) => Ok(buf),
            // Past the end of a short file: nothing there, like unwritten bytes.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(Vec::new()),
            Err(e) => Err(StorageError::from_io(&path, e)),
        }
    }

    /// Pieces of `file` with real data (more than one value repeated) in it: how many verified,
    /// and how many failed although every file of theirs had data.
    fn evidence(&self, file: usize) -> Result<(usize, usize), StorageError> {
        let (verified, failed): (Vec<PieceIndex>, Vec<PieceIndex>) = {
            let st = lock(&self.state);
            let hashable = |p: PieceIndex| {
                self.layout
                    .files_for_piece(p)
                    .iter()
                    .all(|&f| st.locations[f] != Location::Absent)
            };
            self.layout
                .pieces_for_file(file)
                .filter(|&p| st.completed.get(p as usize) || hashable(p))
                .partition(|&p| st.completed.get(p as usize))
        };
        let real = |pieces: Vec<PieceIndex>| -> Result<usize, StorageError> {
            let mut n = 0;
            for p in pieces {
                n += usize::from(!is_uniform(&self.segment_of(file, p)?));
            }
            Ok(n)
        };
        Ok((real(verified)?, real(failed)?))
    }

    /// Move `file` from its final path into the incomplete area (its data, or some of it,
    /// verified), sized to the torrent's length. A cross-device move copies without the lock.
    fn take_in(&self, file: usize) -> Result<(), StorageError> {
        let from = &self.finals[file];
        let to = part_file(&self.parts_dir, file);
        create_dirs(&self.state_dir, &self.parts_dir)?;
        // A stale part file of ours may be there: it is ours to replace.
        match fs::remove_file(&to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::from_io(&to, e)),
        }
        let foreign = lock(&self.state).locations[file] == Location::Foreign;
        if foreign {
            self.unchanged_foreign(file)?;
        }
        let moved = {
            let mut st = lock(&self.state);
            match rename_noreplace(from, &to) {
                Ok(()) => {
                    st.cache.remove(file);
                    st.locations[file] = Location::Part;
                    st.adopted[file] = true;
                    true
                }
                Err(e) if is_cross_device(&e) => false,
                Err(e) => return Err(StorageError::from_io(from, e)),
            }
        };
        if !moved {
            copy_to_new(from, &to).map_err(|e| StorageError::from_io(&to, e))?;
            {
                let mut st = lock(&self.state);
                st.cache.remove(file);
                st.locations[file] = Location::Part;
                st.adopted[file] = true;
            }
            fs::remove_file(from).map_err(|e| StorageError::from_io(from, e))?;
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&to)
            .map_err(|e| StorageError::from_io(&to, e))?;
        f.set_len(self.layout.files[file].length)
            .map_err(|e| StorageError::from_io(&to, e))?;
        if foreign {
            // Renamed between the check and the move? Then it is not what we verified: put it
            // back (never over anything) and stop.
            let now = f.metadata().map_err(|e| StorageError::from_io(&to, e))?;
            let seen = lock(&self.state).known[file];
            if moved && !seen.is_some_and(|s| s.same_inode(&Stamp::of(&now))) {
                let back = rename_noreplace(&to, from);
                lock(&self.state).locations[file] = if back.is_ok() {
                    Location::Foreign
                } else {
                    Location::Part
                };
                return Err(in_use(from, PathConflict::Changed));
            }
        }
        sync_dir(&self.parts_dir)?;
        sync_dir(self.final_parent(file))?;
        lock(&self.state).dirty.insert(file);
        Ok(())
    }

    fn flush(&self) -> Result<(), StorageError> {
        self.flush_inner(true).map(|_| ())
    }

    /// The flush, if it needs no file-system work: nothing written since the last one, every
    /// file where the resume file says, the same claim as on disk. True if so (and then it is
    /// done); false if a real [`Inner::flush`] is needed, or another flush is under way.
    fn flush_if_clean(&self) -> bool {
        matches!(self.flush_inner(false), Ok(true))
    }

    /// [`Inner::flush`]; with `io` false it gives up (`Ok(false)`, nothing changed) as soon as
    /// it would sync, stat or write anything.
    fn flush_inner(&self, io: bool) -> Result<bool, StorageError> {
        let mut recorded = match self.recorded.try_lock() {
            Ok(r) => r,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) if !io => return Ok(false),
            Err(std::sync::TryLockError::WouldBlock) => lock(&self.recorded),
        };
        let (completed, locations, adopted, dirty, parts_unsynced) = {
            let mut st = lock(&self.state);
            if !io && (!st.dirty.is_empty() || st.parts_unsynced) {
                return Ok(false);
            }
            (
                st.completed.clone(),
                st.locations.clone(),
                st.adopted.clone(),
                std::mem::take(&mut st.dirty),
                std::mem::take(&mut st.parts_unsynced),
            )
        };
        // 1. Data first: everything written before the snapshot above is durable after this.
        let mut sorted: Vec<usize> = dirty.iter().copied().collect();
        sorted.sort_unstable();
        for &f in &sorted {
            let synced = self.handle(f, false).and_then(|(h, path)| {
                h.file
                    .sync_all()
                    .map_err(|e| StorageError::from_io(&path, e))
            });
            if let Err(e) = synced {
                let mut st = lock(&self.state);
                st.dirty.extend(dirty.iter().copied());
                st.parts_unsynced |= parts_unsynced;
                return Err(e);
            }
        }
        // …and the names of part files created since the last flush (see `create_part`).
        if parts_unsynced && self.parts_dir.exists() {
            if let Err(e) = sync_dir(&self.parts_dir) {
                let mut st = lock(&self.state);
                st.dirty.extend(dirty.iter().copied());
                st.parts_unsynced = true;
                return Err(e);
            }
        }
        // 2. Stamp files whose contents or place changed since the last record.
        let mut records = Vec::with_capacity(self.finals.len());
        let mut fresh = recorded.clone();
        for (i, f) in self.layout.files.iter().enumerate() {
            let rec = match recorded[i] {
                _ if f.length == 0 => (Location::Final, Stamp::default()),
                // Not ours: recorded as nothing, so no piece in it can be trusted from this.
                _ if locations[i] == Location::Foreign => (Location::Absent, Stamp::default()),
                Some((loc, stamp)) if loc == locations[i] && !dirty.contains(&i) => (loc, stamp),
                _ if !io => return Ok(false),
                _ => self.stamp(i, locations[i])?,
            };
            fresh[i] = Some(rec);
            records.push(FileRecord {
                path: f.path.as_os_str().as_bytes().to_vec(),
                length: f.length,
                location: rec.0,
                stamp: rec.1,
                adopted: u8::from(adopted[i] && rec.0 != Location::Absent),
            });
        }
        // A record of a missing file must claim none of its pieces (see `file_trust`).
        let mut completed = completed;
        for (i, r) in records.iter().enumerate() {
            if r.location == Location::Absent {
                for p in self.layout.pieces_for_file(i) {
                    completed.clear(p as usize);
                }
            }
        }
        // 3. Then the claim.
        let body = ResumeBody {
            info_hash: self.info_hash.0.to_vec(),
            piece_length: self.layout.piece_length as u64,
            piece_count: self.layout.piece_count() as u64,
            total_length: self.layout.total_length,
            completed: completed.as_bytes().to_vec(),
            files: records,
        };
        let mut on_disk = lock(&self.on_disk);
        if on_disk.as_ref() != Some(&body) {
            if !io {
                return Ok(false);
            }
            resume::store(&self.state_dir, &self.resume_path, &body)?;
            *on_disk = Some(body);
        }
        *recorded = fresh;
        Ok(true)
    }

    /// Where `file` is now and its stamp. A file may have just been finalized, so look at the
    /// other place too before calling it absent. A file at our final path that is not the inode
    /// we put there was replaced behind our back: it is recorded as absent, so it is never
    /// trusted as ours (the next start sees it as a file we did not write).
    fn stamp(&self, file: usize, expected: Location) -> Result<(Location, Stamp), StorageError> {
        let order = match expected {
            Location::Final => [Location::Final, Location::Part],
            _ => [Location::Part, Location::Final],
        };
        for loc in order {
            if let Some(m) = stat(&self.path_at(file, loc))? {
                let stamp = Stamp::of(&m);
                if loc == Location::Final {
                    let ours = lock(&self.state).known[file];
                    if !ours.is_some_and(|o| o.same_inode(&stamp)) {
                        tracing::warn!(path = %self.finals[file].display(), "a finished file was replaced by another");
                        return Ok((Location::Absent, Stamp::default()));
                    }
                }
                return Ok((loc, stamp));
            }
        }
        Ok((Location::Absent, Stamp::default()))
    }
}

/// The decision for one file after a recheck.
enum Settle {
    Keep,
    Adopt,
    TakeIn,
    Conflict(StorageError),
}

/// All bytes equal (or none): what unwritten, sparse or preallocated regions read as.
fn is_uniform(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| Some(&b) == bytes.first())
}

fn nlink(path: &Path) -> Result<u64, StorageError> {
    fs::symlink_metadata(path)
        .map(|m| m.nlink())
        .map_err(|e| StorageError::from_io(path, e))
}

/// Move our own file `from` to `to` (neither in a user's place): a rename, or across file
/// systems a copy into a new file and the removal of `from`.
fn move_ours(from: &Path, to: &Path) -> std::io::Result<()> {
    match rename_noreplace(from, to) {
        Err(e) if is_cross_device(&e) => {
            copy_to_new(from, to)?;
            fs::remove_file(from)
        }
        other => other,
    }
}

/// Which files agree with their record: where it says, with the recorded stamp (inode, size,
/// mtime, ctime; a format 1 record has only size and mtime), and (for a file at its final path)
/// with every piece claimed, (for a missing one) none.
fn file_trust(
    layout: &Layout,
    body: &ResumeBody,
    completed: &Bitfield,
    observed: &[Observed],
    legacy: bool,
) -> Vec<bool> {
    body.files
        .iter()
        .zip(observed)
        .enumerate()
        .map(|(i, (rec, obs))| {
            if layout.files[i].length == 0 {
                return true;
            }
            let mut pieces = layout.pieces_for_file(i);
            let place_ok = rec.location == obs.location
                && !obs.both
                && (rec.location == Location::Absent || rec.stamp.matches(&obs.stamp, legacy));
            let claims_ok = match rec.location {
                Location::Final => pieces.all(|p| completed.get(p as usize)),
                Location::Absent => !pieces.any(|p| completed.get(p as usize)),
                Location::Part => true,
                Location::Foreign => false,
            };
            place_ok && claims_ok
        })
        .collect()
}

/// Split pieces into trusted complete ones (claimed, every file touching them trusted) and ones
/// to hash (touching an untrusted file that has data).
fn split_pieces(
    layout: &Layout,
    claimed: Option<Bitfield>,
    trusted: &[bool],
    locations: &[Location],
) -> (Bitfield, Bitfield) {
    let n = layout.piece_count() as usize;
    let mut complete = Bitfield::new(n);
    let mut check = Bitfield::new(n);
    for p in 0..n as PieceIndex {
        let files = layout.files_for_piece(p);
        let all_trusted = files.iter().all(|&f| trusted[f]);
        if all_trusted {
            if claimed.as_ref().is_some_and(|c| c.get(p as usize)) {
                complete.set(p as usize);
            }
        } else if files.iter().all(|&f| locations[f] != Location::Absent) {
            check.set(p as usize);
        }
    }
    (complete, check)
}

/// Create a zero-length file at its final path (with its folders); an empty file already there
/// is kept (the caller refused a non-empty one). Exclusive creation: never truncates.
fn create_empty(download_dir: &Path, path: &Path) -> Result<(), StorageError> {
    let parent = path.parent().unwrap_or(download_dir);
    create_dirs(download_dir, parent)?;
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(f) => {
            f.sync_all().map_err(|e| StorageError::from_io(path, e))?;
            sync_dir(parent)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match stat(path)? {
            Some(m) if m.len() == 0 => Ok(()),
            _ => Err(in_use(path, PathConflict::NotEmpty)),
        },
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

#[async_trait]
impl Storage for FsStorage {
    fn resume(&self) -> Resume {
        self.inner.resume.clone()
    }

    async fn write(
        &self,
        piece: PieceIndex,
        offset: u32,
        chunks: Vec<Bytes>,
    ) -> Result<(), StorageError> {
        let start = self.inner.layout.check_write(piece, offset, &chunks)?;
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        // Chunk by chunk on the blocking pool: no copy into one buffer, and none of it on the
        // runtime's threads.
        let inner = self.inner.clone();
        blocking(move || {
            let mut at = start;
            for chunk in &chunks {
                inner.write(at, chunk)?;
                at += chunk.len() as u64;
            }
            inner.start_writeback(start, total);
            Ok(())
        })
        .await
    }

    /// The backend's piece writer writes the piece, starts its writeback and marks it complete
    /// (usually without waking a thread: see `writer.rs`); a file the piece completes is then
    /// finalized in a blocking task of its own, so its fsyncs never hold the writer's queue.
    async fn write_piece(&self, piece: PieceIndex, chunks: Vec<Bytes>) -> Result<(), StorageError> {
        let start = self.inner.layout.check_write(piece, 0, &chunks)?;
        let total: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let piece_len = self.inner.layout.piece_len(piece);
        if total != piece_len as u64 {
            // Marking it complete would claim bytes nobody wrote.
            return Err(StorageError::OutOfRange {
                piece,
                offset: 0,
                len: total as u32,
            });
        }
        let inner = self.inner.clone();
        let ready = self
            .writer
            .run(move || {
                let mut at = start;
                for chunk in &chunks {
                    inner.write(at, chunk)?;
                    at += chunk.len() as u64;
                }
                inner.start_writeback(start, total);
                let files = inner.set_complete(piece)?;
                let st = lock(&inner.state);
                Ok(files
                    .into_iter()
                    .filter(|&f| inner.ready_to_finalize(&st, f))
                    .collect::<Vec<usize>>())
            })
            .await?;
        if ready.is_empty() {
            return Ok(());
        }
        let inner = self.inner.clone();
        blocking(move || {
            for f in ready {
                inner.maybe_finalize(f)?;
            }
            Ok(())
        })
        .await
    }

    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        let start = self.inner.check(piece, offset, len)?;
        if let Some(data) = self.inner.read_cached(start, len) {
            return Ok(data);
        }
        let inner = self.inner.clone();
        blocking(move || inner.read(start, len)).await
    }

    async fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.mark_complete(piece)).await
    }

    fn has_piece(&self, piece: PieceIndex) -> bool {
        lock(&self.inner.state).completed.get(piece as usize)
    }

    fn is_finalized(&self, file: usize) -> bool {
        lock(&self.inner.state).locations.get(file) == Some(&Location::Final)
    }

    async fn flush(&self) -> Result<(), StorageError> {
        // A flush with nothing new to record (a seed at rest: its periodic flushes, and the
        // stop of thousands of them) is answered here, without a blocking-pool hop. Only for
        // torrents of few files: the check builds the whole resume body on this thread.
        if self.inner.layout.files.len() <= INLINE_FLUSH_MAX_FILES && self.inner.flush_if_clean() {
            return Ok(());
        }
        let inner = self.inner.clone();
        blocking(move || inner.flush()).await
    }

    async fn recheck_finished(&self, verified: &Bitfield) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        let verified = verified.clone();
        blocking(move || inner.recheck_finished(&verified)).await
    }

    async fn set_skipped_files(&self, skipped: Vec<bool>) -> Result<(), StorageError> {
        let inner = self.inner.clone();
        blocking(move || inner.set_skipped_files(&skipped)).await
    }
}

#[cfg(test)]
mod tests {
    use super::read_exact_at_appending;
    use std::io::Write;

    /// A flush is answered without file-system work only when there is nothing new: after
    /// a piece is written it needs the real one, after that (and after a reopen that found
    /// everything as recorded) it does not.
    #[tokio::test]
    async fn only_a_flush_with_nothing_new_skips_the_file_system() {
        use super::FsStorage;
        use bytes::Bytes;
        use std::sync::Arc;
        use zigtorrent_engine::storage::{Layout, Storage, StorageSpec};
        use zigtorrent_engine::types::InfoHash;

        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::new(16_384, [("a".into(), 20_000u64)]);
        let spec = StorageSpec {
            info_hash: InfoHash([0xcd; 20]),
            layout: Arc::new(layout),
            download_dir: tmp.path().join("dl"),
            state_dir: tmp.path().join("state"),
            skipped_files: Vec::new(),
        };
        let s = FsStorage::open(spec.clone(), 8).await.unwrap();
        // Nothing recorded yet: the first flush must stamp and write.
        assert!(!s.inner.flush_if_clean());
        s.flush().await.unwrap();
        assert!(s.inner.flush_if_clean());
        s.write(0, 0, vec![Bytes::from(vec![7u8; 16_384])])
            .await
            .unwrap();
        s.mark_complete(0).await.unwrap();
        assert!(
            !s.inner.flush_if_clean(),
            "a written piece needs a real flush"
        );
        s.flush().await.unwrap();
        assert!(s.inner.flush_if_clean());
        drop(s);
        let s = FsStorage::open(spec, 8).await.unwrap();
        assert!(
            s.inner.flush_if_clean(),
            "reopened as recorded: nothing to write"
        );
    }

    /// Bytes land after what the buffer holds, exactly `n` of them even when it has more room
    /// (the extra that one read may fetch is cut off), and a file that ends early is EOF.
    #[test]
    fn reads_append_exactly_the_asked_range() {
        let mut f = tempfile::tempfile().unwrap();
        let content: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        f.write_all(&content).unwrap();

        let mut buf = Vec::with_capacity(64 * 1024);
        buf.extend_from_slice(b"head");
        read_exact_at_appending(&f, &mut buf, 1000, 5).unwrap();
        assert_eq!(buf.len(), 1004);
        assert_eq!(&buf[..4], b"head");
        assert_eq!(&buf[4..], &content[5..1005]);

        // No spare room at all: the helper makes it.
        let mut tight = Vec::new();
        read_exact_at_appending(&f, &mut tight, 30_000, 70_000).unwrap();
        assert_eq!(tight, &content[70_000..]);

        let mut short = Vec::with_capacity(10);
        let err = read_exact_at_appending(&f, &mut short, 10, 99_995).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}
