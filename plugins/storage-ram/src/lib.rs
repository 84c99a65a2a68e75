//! An example ZigTorrent plugin: the `ram` storage backend, built as a dynamic library and
//! loaded with `zigtorrent run --plugin <lib> --storage ram`.
//!
//! `ram` keeps every torrent's pieces in memory, where they are read back for seeding, and
//! writes each file out to the downloads folder **in one go once all its pieces are
//! verified** (temp file, fsync, rename, fsync the folder). Nothing appears at a final path
//! before it is complete, and nothing is written while a file is incomplete, which suits small
//! torrents on slow or flash media. The price: resume state lives only in memory (in the
//! backend instance), so after a restart a torrent starts from scratch.
//!
//! Skipped files are never written out (their bytes in shared pieces stay in memory); one
//! un-skipped is written out at once if complete. Deleting a torrent's data forgets what is held
//! and removes the files this instance wrote, if they are still the very files it wrote (same
//! inode, size and times), then folders of the torrent's paths left empty; after a restart it vouches for
//! nothing and deletes no file.
//!
//! What it shows a plugin author:
//! - the whole plugin surface is [`declare_plugin!`](zigtorrent_engine::declare_plugin) and a
//!   registration function; no `unsafe` here;
//! - plugin code has no tokio runtime of its own (see `docs/PLUGINS.md`): blocking file I/O runs
//!   on a thread spawned here and is awaited through a runtime-agnostic
//!   `futures::channel::oneshot`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use zigtorrent_engine::plugin::PluginRegistrar;
use zigtorrent_engine::storage::{
    DeletedData, Resume, Storage, StorageBackend, StorageError, StorageSpec,
};
use zigtorrent_engine::{Bitfield, InfoHash, Layout, PieceIndex};

zigtorrent_engine::declare_plugin!(register);

/// The name `--storage` selects.
pub const NAME: &str = "ram";

fn register(registrar: &mut PluginRegistrar) -> Result<(), String> {
    registrar.register_storage(Arc::new(RamBackend::default()));
    Ok(())
}

/// Suffix of the temporary file a finished file is written to before its rename.
const TEMP_SUFFIX: &str = ".ram-part";

/// Every critical section below leaves its data consistent, so a poisoned lock is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `ram` backend. Torrents opened again from the same instance find their data and the
/// completed set of their last flush.
#[derive(Default)]
pub struct RamBackend {
    torrents: Mutex<HashMap<InfoHash, Arc<Mutex<Held>>>>,
}

/// What the backend holds for one torrent, across opens.
struct Held {
    layout: Arc<Layout>,
    /// Written pieces, each a whole-piece buffer.
    pieces: HashMap<PieceIndex, Box<[u8]>>,
    /// The completed set as of the last flush: the "resume state".
    flushed: Bitfield,
    /// Files written out, by index: where, and what it was then ([`stamp`]).
    written: HashMap<usize, (PathBuf, Stamp)>,
}

impl Held {
    fn new(layout: Arc<Layout>) -> Self {
        Held {
            flushed: Bitfield::new(layout.piece_count() as usize),
            pieces: HashMap::new(),
            written: HashMap::new(),
            layout,
        }
    }

    /// The bytes of file `file`, from pieces that must all be written.
    fn file_bytes(&self, file: usize) -> Option<Vec<u8>> {
        let f = &self.layout.files[file];
        let mut out = Vec::with_capacity(usize::try_from(f.length).ok()?);
        let pl = self.layout.piece_length as u64;
        for piece in self.layout.pieces_for_file(file) {
            let buf = self.pieces.get(&piece)?;
            let start = self.layout.piece_range(piece).start;
            let from = f.offset.max(start) - start;
            let to = (f.offset + f.length).min(start + pl) - start;
            out.extend_from_slice(&buf[from as usize..to as usize]);
        }
        Some(out)
    }
}

#[async_trait]
impl StorageBackend for RamBackend {
    fn name(&self) -> &str {
        NAME
    }

    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
        let held = lock(&self.torrents)
            .entry(spec.info_hash)
            .or_insert_with(|| Arc::new(Mutex::new(Held::new(spec.layout.clone()))))
            .clone();
        let completed = {
            let mut h = lock(&held);
            if *h.layout != *spec.layout {
                // Same info-hash, other layout: what we held is meaningless now.
                *h = Held::new(spec.layout.clone());
            }
            h.flushed.clone()
        };
        let skipped: Vec<bool> = (0..spec.layout.files.len())
            .map(|i| spec.skipped_files.get(i).copied().unwrap_or(false))
            .collect();
        // Zero-length files are complete from the start: they are on disk before we say so.
        let empty: Vec<(usize, PathBuf)> = (spec.layout.files.iter().enumerate())
            .filter(|(i, f)| f.length == 0 && !skipped[*i])
            .map(|(i, f)| (i, spec.download_dir.join(&f.path)))
            .collect();
        write_out(
            &held,
            empty.into_iter().map(|(i, p)| (i, p, Vec::new())).collect(),
        )
        .await?;
        Ok(Arc::new(RamStorage {
            layout: spec.layout,
            download_dir: spec.download_dir,
            resume: Resume::Trusted(completed.clone()),
            held,
            completed: Mutex::new(completed),
            skipped: Mutex::new(skipped),
            marking: futures::lock::Mutex::new(()),
        }))
    }

    async fn delete_data(&self, spec: StorageSpec) -> Result<DeletedData, StorageError> {
        let Some(held) = lock(&self.torrents).remove(&spec.info_hash) else {
            return Ok(DeletedData::default());
        };
        let written: Vec<(PathBuf, Stamp)> = lock(&held).written.drain().map(|(_, w)| w).collect();
        let download_dir = spec.download_dir.clone();
        let layout = spec.layout.clone();
        off_thread(move || delete_written(&download_dir, &layout, &written)).await?
    }
}

/// Remove the files we wrote that are still the inode we wrote, then empty folders of the
/// torrent's paths (never the download folder, never through a link).
fn delete_written(
    download_dir: &Path,
    layout: &Layout,
    written: &[(PathBuf, Stamp)],
) -> Result<DeletedData, StorageError> {
    let mut out = DeletedData::default();
    for (path, was) in written {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_file() && stamp(&m) == *was => {
                std::fs::remove_file(path).map_err(|e| StorageError::from_io(path, e))?;
                out.removed.push(path.clone());
            }
            Ok(_) => out
                .kept
                .push((path.clone(), "not the file this plugin wrote".into())),
            Err(_) => {}
        }
    }
    let mut folders: Vec<PathBuf> = layout
        .files
        .iter()
        .flat_map(|f| f.path.ancestors().skip(1).map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    folders.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    folders.dedup();
    for rel in folders {
        let dir = download_dir.join(&rel);
        // `remove_dir` never follows a final link; a link among the parents is checked here.
        let linked = rel.ancestors().skip(1).any(|a| {
            !a.as_os_str().is_empty()
                && std::fs::symlink_metadata(download_dir.join(a)).is_ok_and(|m| !m.is_dir())
        });
        if !linked && std::fs::remove_dir(&dir).is_ok() {
            out.removed.push(dir);
        }
    }
    Ok(out)
}

/// Which file a path holds, and its last change: device, inode, size, mtime and ctime (an
/// inode number freed by a deletion is soon reused; the times tell the new file apart).
type Stamp = [i64; 7];

fn stamp(m: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    [
        m.dev() as i64,
        m.ino() as i64,
        m.size() as i64,
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ]
}

/// Write out finished files `(index, path, bytes)` and remember which inode each became.
async fn write_out(
    held: &Arc<Mutex<Held>>,
    files: Vec<(usize, PathBuf, Vec<u8>)>,
) -> Result<(), StorageError> {
    if files.is_empty() {
        return Ok(());
    }
    let done = off_thread(move || {
        files
            .into_iter()
            .map(|(i, path, bytes)| {
                if bytes.is_empty() && path.exists() {
                    // An empty file already there is as good as ours, but it is not ours.
                    return Ok(None);
                }
                write_whole(&path, &bytes)?;
                let m = std::fs::symlink_metadata(&path)
                    .map_err(|e| StorageError::from_io(&path, e))?;
                Ok(Some((i, (path, stamp(&m)))))
            })
            .collect::<Result<Vec<_>, StorageError>>()
    })
    .await??;
    let mut h = lock(held);
    for (i, w) in done.into_iter().flatten() {
        h.written.insert(i, w);
    }
    Ok(())
}

/// One open torrent of the [`RamBackend`].
struct RamStorage {
    layout: Arc<Layout>,
    download_dir: PathBuf,
    resume: Resume,
    held: Arc<Mutex<Held>>,
    /// Pieces complete now: the flushed set from open plus everything marked since.
    completed: Mutex<Bitfield>,
    /// Files the user skipped: never written out.
    skipped: Mutex<Vec<bool>>,
    /// Serialises `mark_complete`, so two pieces finishing the same file at once cannot both
    /// conclude the other one is missing. Runtime-agnostic, held across the file write.
    marking: futures::lock::Mutex<()>,
}

impl RamStorage {
    fn in_range(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<(), StorageError> {
        self.layout.check_range(piece, offset, len).map(|_| ())
    }
}

#[async_trait]
impl Storage for RamStorage {
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
        let mut held = lock(&self.held);
        let buf = held
            .pieces
            .entry(piece)
            .or_insert_with(|| vec![0; piece_len].into_boxed_slice());
        let mut at = offset as usize;
        for chunk in chunks {
            buf[at..at + chunk.len()].copy_from_slice(&chunk);
            at += chunk.len();
        }
        Ok(())
    }

    async fn read(&self, piece: PieceIndex, offset: u32, len: u32) -> Result<Bytes, StorageError> {
        self.in_range(piece, offset, len)?;
        let held = lock(&self.held);
        match held.pieces.get(&piece) {
            Some(buf) => Ok(Bytes::copy_from_slice(
                &buf[offset as usize..(offset + len) as usize],
            )),
            None if len == 0 => Ok(Bytes::new()),
            None => Err(StorageError::Missing),
        }
    }

    async fn mark_complete(&self, piece: PieceIndex) -> Result<(), StorageError> {
        self.in_range(piece, 0, 0)?;
        let _marking = self.marking.lock().await;
        // Files this piece completes, with their bytes; the piece counts as complete for this
        // question, but is only recorded once those files are safely out.
        let finished: Vec<(usize, PathBuf, Vec<u8>)> = {
            let held = lock(&self.held);
            let skipped = lock(&self.skipped).clone();
            if !held.pieces.contains_key(&piece) && self.layout.piece_len(piece) > 0 {
                // has_piece never claims bytes we do not hold.
                return Err(StorageError::Missing);
            }
            let completed = lock(&self.completed);
            if completed.get(piece as usize) {
                return Ok(());
            }
            self.layout
                .files_for_piece(piece)
                .into_iter()
                .filter(|&file| {
                    !skipped.get(file).copied().unwrap_or(false)
                        && self
                            .layout
                            .pieces_for_file(file)
                            .all(|p| p == piece || completed.get(p as usize))
                })
                .map(|file| {
                    let bytes = held.file_bytes(file).ok_or(StorageError::Missing)?;
                    let path = self.download_dir.join(&self.layout.files[file].path);
                    Ok((file, path, bytes))
                })
                .collect::<Result<_, StorageError>>()?
        };
        write_out(&self.held, finished).await?;
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
        // Finished files were made durable as they completed; the rest lives in memory.
        let completed = lock(&self.completed).clone();
        lock(&self.held).flushed = completed;
        Ok(())
    }

    async fn set_skipped_files(&self, skipped: Vec<bool>) -> Result<(), StorageError> {
        // Serialised with `mark_complete`: no piece completes a file between the decision and
        // the write below.
        let _marking = self.marking.lock().await;
        let n = self.layout.files.len();
        let new: Vec<bool> = (0..n)
            .map(|i| skipped.get(i).copied().unwrap_or(false))
            .collect();
        let finished: Vec<(usize, PathBuf, Vec<u8>)> = {
            let held = lock(&self.held);
            let completed = lock(&self.completed);
            let current = lock(&self.skipped);
            // Un-skipped and complete: written out now.
            (0..n)
                .filter(|&i| current[i] && !new[i])
                .filter(|&i| {
                    self.layout
                        .pieces_for_file(i)
                        .all(|p| completed.get(p as usize))
                })
                .map(|i| {
                    let bytes = held.file_bytes(i).ok_or(StorageError::Missing)?;
                    Ok((i, self.download_dir.join(&self.layout.files[i].path), bytes))
                })
                .collect::<Result<_, StorageError>>()?
        };
        // Only once they are out does `is_finalized` say so.
        write_out(&self.held, finished).await?;
        *lock(&self.skipped) = new;
        Ok(())
    }
}

/// Run blocking work on a thread of our own. Plugin code cannot use the host's tokio runtime
/// (it has its own, unstarted copy of tokio), so `spawn_blocking` is not an option here.
async fn off_thread<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StorageError> {
    let (tx, rx) = futures::channel::oneshot::channel();
    std::thread::Builder::new()
        .name("ram-storage-io".into())
        .spawn(move || {
            // The receiver only goes away if the caller stopped waiting; nothing to do then.
            let _ = tx.send(work());
        })
        .map_err(|e| StorageError::from_io("(thread)", e))?;
    rx.await
        .map_err(|_| StorageError::NotSupported("ram storage I/O thread died"))
}

/// Write `bytes` as the file at `path` atomically and durably: temp file, fsync, rename, fsync
/// the folder.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write;
    fn io(p: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
        move |e| StorageError::from_io(p, e)
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut temp = path.as_os_str().to_owned();
    temp.push(TEMP_SUFFIX);
    let temp = PathBuf::from(temp);
    let mut f = std::fs::File::create(&temp).map_err(io(&temp))?;
    f.write_all(bytes).map_err(io(&temp))?;
    f.sync_all().map_err(io(&temp))?;
    drop(f);
    std::fs::rename(&temp, path).map_err(io(path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}
