//! [`FsBackend`] and [`FsStorage`]: one torrent's files under `download_dir`.
//!
//! ## On disk
//!
//! - A file that is not yet complete lives at `<path>.part`, created on its first write and sized
//!   with `set_len` (sparse). Unwritten ranges of a `.part` file therefore read back as zeros;
//!   ranges past the end of a shorter file (one placed by the user) read as
//!   [`StorageError::Missing`], as does any file that does not exist at all.
//! - When every piece touching a file is complete, it is *finalized*: fsync the `.part`, rename it
//!   to `<path>`, fsync the folder. Open descriptors survive the rename, so reads and writes go on
//!   through the same handle.
//! - Zero-length files are trivially complete: they are created empty at their final path when
//!   the torrent is opened (a non-empty file found there is truncated, since the torrent says the
//!   file is empty).
//! - Resume state is `<state_dir>/<info-hash hex>.resume` (see `resume.rs`). [`Storage::flush`]
//!   fsyncs every file written since the last flush, *then* replaces the resume file, so the
//!   recorded set is always a subset of durable data.
//!
//! ## At open
//!
//! The resume state is trusted only when it was written for this exact layout and every data
//! file is where it was recorded (`.part`, final, or absent) with the recorded size and mtime.
//! Otherwise the stale resume file is deleted, and every file found at its final path is renamed
//! back to `<path>.part` (replacing a `.part` that may also be there): its data is unverified, and
//! a file at its final path must always be complete. The engine then rechecks by reading and
//! hashing; files whose pieces all pass are renamed back into place by the normal finalize path.
//! When no data exists at all there is nothing to check and the (empty) state is `Trusted`.
//!
//! ## Handles and threads
//!
//! All file-system work runs in `tokio::task::spawn_blocking`. Open descriptors are kept in a
//! small LRU cache (128 by default), so a torrent with 100,000 files never holds them all. One
//! `std::sync::Mutex` guards the per-file state, the completed set and the cache; it is never
//! held across an `.await` (all locking happens inside blocking tasks or plain accessors), and
//! slow calls (reads, writes, fsync) run without it. A second mutex only serialises flushes.
//!
//! One `FsStorage` per torrent at a time: opening the same torrent twice concurrently is not
//! supported.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use zigtorrent_engine::storage::Resume;
use zigtorrent_engine::{
    Bitfield, InfoHash, Layout, PieceIndex, Storage, StorageBackend, StorageError, StorageSpec,
};

use crate::cache::{FdCache, Handle};
use crate::paths::{check_relative, create_dirs, create_root, part_path, sync_dir};
use crate::resume::{self, FileRecord, Location, ResumeBody, Stamp};

/// The `fs` storage backend: opens [`FsStorage`] for each torrent.
#[derive(Clone, Debug)]
pub struct FsBackend {
    max_open_files: usize,
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
        }
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
        Ok(Arc::new(FsStorage::open(spec, self.max_open_files).await?))
    }
}

/// One torrent's files on disk. Cheap to clone (a shared handle).
#[derive(Clone, Debug)]
pub struct FsStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    info_hash: InfoHash,
    layout: Arc<Layout>,
    download_dir: PathBuf,
    state_dir: PathBuf,
    resume_path: PathBuf,
    /// Final path of every file (`download_dir` joined with the layout path).
    finals: Vec<PathBuf>,
    resume: Resume,
    state: Mutex<State>,
    /// Serialises flushes; holds what the resume file on disk records for each file
    /// (`None`: unknown, stamp it at the next flush).
    recorded: Mutex<Vec<Option<(Location, Stamp)>>>,
}

#[derive(Debug)]
struct State {
    completed: Bitfield,
    locations: Vec<Location>,
    /// Files being finalized right now (so two `mark_complete` calls don't both rename).
    finalizing: HashSet<usize>,
    /// Files written since the last flush.
    dirty: HashSet<usize>,
    cache: FdCache,
}

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

/// Metadata of `path`, `None` when it does not exist; a non-file there is an error.
fn stat(path: &Path) -> Result<Option<fs::Metadata>, StorageError> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some(m)),
        Ok(_) => Err(StorageError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::other("not a regular file"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

/// Open an existing data file read-write, or read-only for reads when it may not be written
/// (e.g. a read-only file copied in by the user).
fn open_existing(path: &Path, write: bool) -> std::io::Result<Handle> {
    match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => Ok(Handle {
            file: Arc::new(f),
            writable: true,
        }),
        Err(e) if !write && e.kind() == std::io::ErrorKind::PermissionDenied => Ok(Handle {
            file: Arc::new(File::open(path)?),
            writable: false,
        }),
        Err(e) => Err(e),
    }
}

/// What open found for one file.
struct Observed {
    location: Location,
    stamp: Stamp,
    /// Both `<path>` and `<path>.part` exist.
    both: bool,
}

impl FsStorage {
    /// Open (or create) storage for `spec`, keeping at most `max_open_files` descriptors open.
    pub async fn open(spec: StorageSpec, max_open_files: usize) -> Result<Self, StorageError> {
        let inner = blocking(move || Inner::open(spec, max_open_files)).await?;
        Ok(FsStorage {
            inner: Arc::new(inner),
        })
    }

    /// Final path of file `file` (where it appears once complete).
    pub fn final_path(&self, file: usize) -> Option<&Path> {
        self.inner.finals.get(file).map(PathBuf::as_path)
    }

    /// Path of file `file` while incomplete (`<final>.part`).
    pub fn part_path(&self, file: usize) -> Option<PathBuf> {
        self.final_path(file).map(part_path)
    }
}

impl Inner {
    fn open(spec: StorageSpec, max_open_files: usize) -> Result<Inner, StorageError> {
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
        let finals: Vec<PathBuf> = layout
            .files
            .iter()
            .map(|f| spec.download_dir.join(&f.path))
            .collect();
        let resume_path = resume::resume_path(&spec.state_dir, &spec.info_hash);
        let body = resume::load(&resume_path)?;

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
            let part = stat(&part_path(path))?;
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
        let trusted = body
            .as_ref()
            .filter(|b| b.matches(&spec.info_hash, &layout))
            .and_then(|b| {
                Bitfield::from_bytes(&b.completed, piece_count)
                    .ok()
                    .map(|bf| (b, bf))
            })
            .filter(|(b, bf)| trustworthy(&layout, b, bf, &observed))
            .map(|(_, bf)| bf);

        let (completed, locations, recorded, resume) = match trusted {
            Some(bf) => {
                let locations: Vec<Location> = observed.iter().map(|o| o.location).collect();
                let recorded = observed
                    .iter()
                    .map(|o| Some((o.location, o.stamp)))
                    .collect();
                (bf.clone(), locations, recorded, Resume::Trusted(bf))
            }
            None => {
                // Nothing recorded can be trusted: make sure it can never be trusted later, and
                // move unverified data away from final paths until a recheck proves it.
                resume::remove(&spec.state_dir, &resume_path)?;
                let mut locations = Vec::with_capacity(observed.len());
                for (i, o) in observed.iter().enumerate() {
                    if layout.files[i].length > 0 && o.location == Location::Final {
                        let part = part_path(&finals[i]);
                        fs::rename(&finals[i], &part)
                            .map_err(|e| StorageError::from_io(&finals[i], e))?;
                        sync_dir(finals[i].parent().unwrap_or(&spec.download_dir))?;
                        locations.push(Location::Part);
                    } else {
                        locations.push(o.location);
                    }
                }
                let any_data = layout
                    .files
                    .iter()
                    .zip(&locations)
                    .any(|(f, l)| f.length > 0 && *l != Location::Absent);
                let resume = if any_data {
                    Resume::NeedsRecheck
                } else {
                    Resume::Trusted(Bitfield::new(piece_count))
                };
                (
                    Bitfield::new(piece_count),
                    locations,
                    vec![None; finals.len()],
                    resume,
                )
            }
        };

        // Zero-length files are complete by definition: put them in place now.
        for (i, f) in layout.files.iter().enumerate() {
            if f.length == 0 {
                create_empty(&spec.download_dir, &finals[i])?;
            }
        }

        let inner = Inner {
            info_hash: spec.info_hash,
            layout,
            download_dir: spec.download_dir,
            state_dir: spec.state_dir,
            resume_path,
            finals,
            resume,
            state: Mutex::new(State {
                completed,
                locations,
                finalizing: HashSet::new(),
                dirty: HashSet::new(),
                cache: FdCache::new(max_open_files),
            }),
            recorded: Mutex::new(recorded),
        };
        // A crash between marking a file's last piece and renaming it leaves a complete `.part`
        // behind a trusted record: finish the job now.
        if matches!(inner.resume, Resume::Trusted(_)) {
            for i in 0..inner.finals.len() {
                inner.maybe_finalize(i)?;
            }
        }
        Ok(inner)
    }

    fn path_at(&self, file: usize, loc: Location) -> PathBuf {
        match loc {
            Location::Part | Location::Absent => part_path(&self.finals[file]),
            Location::Final => self.finals[file].clone(),
        }
    }

    fn parent_of(&self, file: usize) -> &Path {
        self.finals[file].parent().unwrap_or(&self.download_dir)
    }

    /// An open handle on `file` wherever it currently is, creating `<path>.part` for a write
    /// to a file that does not exist yet. Opening happens without the state lock (so
    /// `has_piece` callers never wait on the disk); a file renamed meanwhile is looked up again.
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
                Location::Part | Location::Final => match open_existing(&path, write) {
                    Ok(h) => h,
                    // Finalized (renamed) between the lookup and the open: look again.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempts < 3 => continue,
                    Err(e) => return Err(StorageError::from_io(&path, e)),
                },
            };
            let mut st = lock(&self.state);
            if loc == Location::Absent {
                // Another writer may have created it too; both opened the same `.part`.
                if st.locations[file] == Location::Absent {
                    st.locations[file] = Location::Part;
                }
            }
            st.cache.insert(file, handle.clone());
            return Ok((handle, self.path_at(file, st.locations[file])));
        }
    }

    /// Create `<path>.part` (and its folders) at full size; sparse where the file system allows.
    fn create_part(&self, file: usize, path: &Path) -> Result<Handle, StorageError> {
        let parent = self.parent_of(file);
        create_dirs(&self.download_dir, parent)?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .and_then(|f| f.set_len(self.layout.files[file].length).map(|()| f))
            .map_err(|e| StorageError::from_io(path, e))?;
        sync_dir(parent)?;
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
            let (h, path) = self.handle(file, true)?;
            h.file
                .write_all_at(&data[from..from + n], at)
                .map_err(|e| StorageError::from_io(&path, e))?;
            // Only after the bytes are in: a flush that misses this mark must not claim them.
            lock(&self.state).dirty.insert(file);
        }
        Ok(())
    }

    /// Start writeback of `start..start + len` (see `writeback`): once per piece, not per block.
    fn start_writeback(&self, start: u64, len: u64) {
        for (file, at, _, n) in self.segments(start, len) {
            if let Ok((h, _)) = self.handle(file, true) {
                crate::writeback::start(&h.file, at, n as u64);
            }
        }
    }

    fn read(&self, start: u64, len: u32) -> Result<Bytes, StorageError> {
        let mut buf = vec![0u8; len as usize];
        for (file, at, from, n) in self.segments(start, len as u64) {
            let (h, path) = self.handle(file, false)?;
            h.file
                .read_exact_at(&mut buf[from..from + n], at)
                .map_err(|e| StorageError::from_io(&path, e))?;
        }
        Ok(buf.into())
    }

    fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        self.check(piece, 0, 0)?;
        let files = self.layout.files_for_piece(piece);
        {
            let mut st = lock(&self.state);
            // has_piece must never claim bytes that were never written.
            if files.iter().any(|&f| st.locations[f] == Location::Absent) {
                return Err(StorageError::Missing);
            }
            st.completed.set(piece as usize);
        }
        for f in files {
            self.maybe_finalize(f)?;
        }
        Ok(())
    }

    /// Finalize `file` if all its pieces are complete and nobody else is doing it.
    fn maybe_finalize(&self, file: usize) -> Result<(), StorageError> {
        {
            let mut st = lock(&self.state);
            let done = self
                .layout
                .pieces_for_file(file)
                .all(|p| st.completed.get(p as usize));
            if !done || st.locations[file] == Location::Final || !st.finalizing.insert(file) {
                return Ok(());
            }
        }
        let result = self.finalize(file);
        lock(&self.state).finalizing.remove(&file);
        result
    }

    /// fsync `<path>.part`, rename it to `<path>`, fsync the folder.
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
        {
            // Under the lock, so nobody opens by the old name after the move.
            let mut st = lock(&self.state);
            fs::rename(&part, &self.finals[file])
                .map_err(|e| StorageError::from_io(&self.finals[file], e))?;
            st.locations[file] = Location::Final;
        }
        sync_dir(self.parent_of(file))
    }

    fn flush(&self) -> Result<(), StorageError> {
        let mut recorded = lock(&self.recorded);
        let (completed, locations, dirty) = {
            let mut st = lock(&self.state);
            (
                st.completed.clone(),
                st.locations.clone(),
                std::mem::take(&mut st.dirty),
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
                lock(&self.state).dirty.extend(dirty.iter().copied());
                return Err(e);
            }
        }
        // 2. Stamp files whose contents or place changed since the last record.
        let mut records = Vec::with_capacity(self.finals.len());
        let mut fresh = recorded.clone();
        for (i, f) in self.layout.files.iter().enumerate() {
            let rec = match recorded[i] {
                _ if f.length == 0 => (Location::Final, Stamp::default()),
                Some((loc, stamp)) if loc == locations[i] && !dirty.contains(&i) => (loc, stamp),
                _ => self.stamp(i, locations[i])?,
            };
            fresh[i] = Some(rec);
            records.push(FileRecord {
                path: f.path.as_os_str().as_bytes().to_vec(),
                length: f.length,
                location: rec.0,
                stamp: rec.1,
            });
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
        resume::store(&self.state_dir, &self.resume_path, &body)?;
        *recorded = fresh;
        Ok(())
    }

    /// Where `file` is now and its size/mtime. A file may have just been finalized, so look at
    /// the other name too before calling it absent.
    fn stamp(&self, file: usize, expected: Location) -> Result<(Location, Stamp), StorageError> {
        let order = match expected {
            Location::Final => [Location::Final, Location::Part],
            _ => [Location::Part, Location::Final],
        };
        for loc in order {
            if let Some(m) = stat(&self.path_at(file, loc))? {
                return Ok((loc, Stamp::of(&m)));
            }
        }
        Ok((Location::Absent, Stamp::default()))
    }
}

/// Whether a matching resume record agrees with what is on disk.
fn trustworthy(
    layout: &Layout,
    body: &ResumeBody,
    completed: &Bitfield,
    observed: &[Observed],
) -> bool {
    body.files
        .iter()
        .zip(observed)
        .enumerate()
        .all(|(i, (rec, obs))| {
            if layout.files[i].length == 0 {
                return true;
            }
            let mut pieces = layout.pieces_for_file(i);
            let place_ok = rec.location == obs.location
                && !obs.both
                && (rec.location == Location::Absent || rec.stamp == obs.stamp);
            let claims_ok = match rec.location {
                // A file at its final path is complete: all its pieces must be claimed.
                Location::Final => pieces.all(|p| completed.get(p as usize)),
                // No claimed piece may live in a file that does not exist.
                Location::Absent => !pieces.any(|p| completed.get(p as usize)),
                Location::Part => true,
            };
            place_ok && claims_ok
        })
}

/// Create a zero-length file at its final path (with its folders), emptying anything there.
fn create_empty(download_dir: &Path, path: &Path) -> Result<(), StorageError> {
    let parent = path.parent().unwrap_or(download_dir);
    create_dirs(download_dir, parent)?;
    let existed = stat(path)?;
    if existed.as_ref().is_some_and(|m| m.len() == 0) {
        return Ok(());
    }
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| StorageError::from_io(path, e))?;
    f.sync_all().map_err(|e| StorageError::from_io(path, e))?;
    sync_dir(parent)
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

    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        let start = self.inner.check(piece, offset, len)?;
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
        let inner = self.inner.clone();
        blocking(move || inner.flush()).await
    }
}
