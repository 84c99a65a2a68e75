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
use zigtorrent_engine::storage::{Resume, Storage, StorageBackend, StorageError, StorageSpec};
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
}

impl Held {
    fn new(layout: Arc<Layout>) -> Self {
        Held {
            flushed: Bitfield::new(layout.piece_count() as usize),
            pieces: HashMap::new(),
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
        // Zero-length files are complete from the start: they are on disk before we say so.
        let empty: Vec<PathBuf> = spec
            .layout
            .files
            .iter()
            .filter(|f| f.length == 0)
            .map(|f| spec.download_dir.join(&f.path))
            .collect();
        if !empty.is_empty() {
            off_thread(move || {
                empty
                    .iter()
                    .filter(|p| !p.exists())
                    .try_for_each(|p| write_whole(p, &[]))
            })
            .await??;
        }
        Ok(Arc::new(RamStorage {
            layout: spec.layout,
            download_dir: spec.download_dir,
            resume: Resume::Trusted(completed.clone()),
            held,
            completed: Mutex::new(completed),
            marking: futures::lock::Mutex::new(()),
        }))
    }
}

/// One open torrent of the [`RamBackend`].
struct RamStorage {
    layout: Arc<Layout>,
    download_dir: PathBuf,
    resume: Resume,
    held: Arc<Mutex<Held>>,
    /// Pieces complete now: the flushed set from open plus everything marked since.
    completed: Mutex<Bitfield>,
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
        let finished: Vec<(PathBuf, Vec<u8>)> = {
            let held = lock(&self.held);
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
                    self.layout
                        .pieces_for_file(file)
                        .all(|p| p == piece || completed.get(p as usize))
                })
                .map(|file| {
                    let bytes = held.file_bytes(file).ok_or(StorageError::Missing)?;
                    Ok((self.download_dir.join(&self.layout.files[file].path), bytes))
                })
                .collect::<Result<_, StorageError>>()?
        };
        if !finished.is_empty() {
            off_thread(move || {
                finished
                    .iter()
                    .try_for_each(|(path, bytes)| write_whole(path, bytes))
            })
            .await??;
        }
        lock(&self.completed).set(piece as usize);
        Ok(())
    }

    fn has_piece(&self, piece: PieceIndex) -> bool {
        lock(&self.completed).get(piece as usize)
    }

    fn is_finalized(&self, file: usize) -> bool {
        if file >= self.layout.files.len() {
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
