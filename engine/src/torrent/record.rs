//! The durable per-torrent record, `<state>/torrents/<info-hash hex>.record`: what a torrent
//! keeps across restarts beyond its pieces (which storage keeps): when it was added, all-time
//! payload totals, seeding time, its seeding goals and whether it reached one, its place in
//! the queue, the file priorities and sequential flag (kept and round-tripped here; the
//! picker's side acts on them), the folder its files are in once moved there when complete,
//! and its own completed folder.
//!
//! Bencoded and versioned; read through the bounded scanner with a size cap. A damaged,
//! oversized or foreign-version record is ignored with a warning (the torrent starts afresh),
//! never fatal. Written durably (`durable::write_atomic`), or, when only counters changed
//! (seeding time, totals), without the folder's fsync (`durable::write_replace`: a crash keeps
//! the old record or the new one, whole), in order: a late write of an older snapshot never
//! replaces a newer one, and nothing is written after the session forgot the torrent
//! (`Session::remove`).
//!
//! All records of a session go through one [`RecordWriter`] task. Writes that queue up while
//! one is under way (every torrent saving at stop, 10,000 of them at rest) go out together:
//! written beside their targets, fsynced by a few threads at once (one journal commit for
//! many), then renamed, the folder fsynced once. Thousands of writers each creating, syncing
//! and renaming in one folder at once spent most of a stop waiting on that folder's lock.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bencode::{self, Limits};
use crate::queue::{Goal, GoalReached, SeedGoals};
use crate::types::InfoHash;

/// The folder of records under the state folder.
pub(crate) const RECORD_DIR: &str = "torrents";
/// The record format this code writes and reads.
const VERSION: i64 = 1;
/// Largest record read: one byte per file for up to 100,000 files (metainfo's cap on files)
/// plus a few numbers; anything larger is not a record of ours.
pub(crate) const MAX_RECORD_SIZE: usize = 128 * 1024;
/// Bencode nesting a record needs: one dictionary.
const MAX_DEPTH: usize = 4;
/// Totals are written at most this often while they change (and at pause, completion, a goal
/// reached and shutdown): a crash loses at most this much of the counts.
pub(crate) const SAVE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a record whose only change is the seeding time is written: that changes every
/// second a seed runs, and 10,000 idle seeds writing each minute is 166 writes a second. A
/// crash loses at most this much seeding time.
const SEEDING_SAVE_INTERVAL: Duration = Duration::from_secs(15 * 60);
/// Highest file priority (0 skip, 1 normal, 2 high).
const MAX_PRIORITY: u8 = 2;
/// A ratio goal is kept in thousandths (bencode has no fractions).
const RATIO_SCALE: f64 = 1000.0;
/// A goal turned off, on disk (absent: the session's default).
const GOAL_OFF: i64 = -1;
/// Longest folder path kept: Linux's `PATH_MAX`.
const MAX_DIR_LEN: usize = 4096;

/// What a torrent keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct TorrentRecord {
    /// When it was first added (unix seconds).
    pub added_at: u64,
    /// All-time payload bytes received.
    pub downloaded: u64,
    /// All-time payload bytes sent.
    pub uploaded: u64,
    /// Seconds spent seeding, over every run.
    pub seeding_secs: u64,
    /// Its own seeding goals.
    pub goals: SeedGoals,
    /// It stopped seeding at this goal (and stays stopped until resumed).
    pub finished: Option<GoalReached>,
    /// Its place in the queue (lower first).
    pub queue_position: u64,
    /// One byte per file: 0 skip, 1 normal, 2 high (empty: all normal).
    pub file_priorities: Vec<u8>,
    /// Pieces in order (for playing while downloading).
    pub sequential: bool,
    /// The folder its files were moved to when it completed (`None`: the session's download
    /// folder). Written only once the move is done: the commit point of the move.
    pub download_dir: Option<PathBuf>,
    /// Its own completed folder (`None`: the session's, if any).
    pub completed_dir: Option<PathBuf>,
}

/// Why a record was not read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RecordError {
    /// Reading the file failed.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// Larger than any record we write.
    #[error("larger than {MAX_RECORD_SIZE} bytes")]
    TooLarge,
    /// Not bencode of the expected shape.
    #[error("damaged: {0}")]
    Bencode(#[from] bencode::BencodeError),
    /// Written by another version of the format.
    #[error("format version {0} is not {VERSION}")]
    Version(i64),
    /// A field out of range.
    #[error("damaged: {0}")]
    Invalid(&'static str),
}

/// The record as bencoded (keys sorted by serde_bencode).
#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: i64,
    added_at: u64,
    downloaded: u64,
    uploaded: u64,
    seeding_secs: u64,
    /// Absent: the session's default; -1: off; else thousandths.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ratio_goal_milli: Option<i64>,
    /// Absent: the session's default; -1: off; else seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_goal_secs: Option<i64>,
    /// `ratio` or `time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    finished: Option<String>,
    queue_position: u64,
    #[serde(default, with = "serde_bytes")]
    file_priorities: Vec<u8>,
    #[serde(default)]
    sequential: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    download_dir: Option<serde_bytes::ByteBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    completed_dir: Option<serde_bytes::ByteBuf>,
}

fn dir_to_disk(dir: &Option<PathBuf>) -> Option<serde_bytes::ByteBuf> {
    use std::os::unix::ffi::OsStrExt;
    dir.as_ref()
        .map(|d| serde_bytes::ByteBuf::from(d.as_os_str().as_bytes().to_vec()))
}

/// A folder from disk: absolute, no NUL, at most [`MAX_DIR_LEN`] bytes.
fn dir_from_disk(bytes: Option<serde_bytes::ByteBuf>) -> Result<Option<PathBuf>, RecordError> {
    use std::os::unix::ffi::OsStringExt;
    let Some(bytes) = bytes else {
        return Ok(None);
    };
    let bytes = bytes.into_vec();
    if bytes.len() > MAX_DIR_LEN || bytes.contains(&0) || bytes.first() != Some(&b'/') {
        return Err(RecordError::Invalid("folder is not an absolute path"));
    }
    Ok(Some(PathBuf::from(std::ffi::OsString::from_vec(bytes))))
}

impl TorrentRecord {
    /// A record for a torrent added now.
    pub(crate) fn fresh(queue_position: u64) -> Self {
        TorrentRecord {
            added_at: unix_now(),
            queue_position,
            ..Default::default()
        }
    }

    /// The bencoded form.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let on_disk = OnDisk {
            version: VERSION,
            added_at: self.added_at,
            downloaded: self.downloaded,
            uploaded: self.uploaded,
            seeding_secs: self.seeding_secs,
            ratio_goal_milli: match self.goals.ratio {
                Goal::Global => None,
                Goal::Off => Some(GOAL_OFF),
                // Never 0 for a goal (0 would read back as "reached at once"): the smallest kept
                // goal is 1/RATIO_SCALE.
                Goal::Value(r) => {
                    Some((r * RATIO_SCALE).round().clamp(1.0, i64::MAX as f64) as i64)
                }
            },
            time_goal_secs: match self.goals.time {
                Goal::Global => None,
                Goal::Off => Some(GOAL_OFF),
                Goal::Value(t) => Some(i64::try_from(t.as_secs()).unwrap_or(i64::MAX)),
            },
            finished: self.finished.map(|g| g.label().to_string()),
            queue_position: self.queue_position,
            file_priorities: self.file_priorities.clone(),
            sequential: u8::from(self.sequential),
            download_dir: dir_to_disk(&self.download_dir),
            completed_dir: dir_to_disk(&self.completed_dir),
        };
        // A struct of integers and byte strings always serialises.
        serde_bencode::to_bytes(&on_disk).expect("a record always encodes")
    }

    /// Parse a record, checked (size, shape, version, ranges) before use.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_SIZE {
            return Err(RecordError::TooLarge);
        }
        let limits = Limits {
            max_depth: MAX_DEPTH,
            max_size: MAX_RECORD_SIZE,
        };
        let d: OnDisk = bencode::decode(bytes, limits)?;
        if d.version != VERSION {
            return Err(RecordError::Version(d.version));
        }
        let ratio = match d.ratio_goal_milli {
            None => Goal::Global,
            Some(GOAL_OFF) => Goal::Off,
            Some(m) if m >= 0 => Goal::Value(m as f64 / RATIO_SCALE),
            Some(_) => return Err(RecordError::Invalid("negative ratio goal")),
        };
        let time = match d.time_goal_secs {
            None => Goal::Global,
            Some(GOAL_OFF) => Goal::Off,
            Some(s) if s >= 0 => Goal::Value(Duration::from_secs(s as u64)),
            Some(_) => return Err(RecordError::Invalid("negative time goal")),
        };
        let finished = match d.finished.as_deref() {
            None => None,
            Some("ratio") => Some(GoalReached::Ratio),
            Some("time") => Some(GoalReached::Time),
            Some(_) => return Err(RecordError::Invalid("unknown goal reached")),
        };
        if d.file_priorities.iter().any(|&p| p > MAX_PRIORITY) {
            return Err(RecordError::Invalid("file priority out of range"));
        }
        if d.sequential > 1 {
            return Err(RecordError::Invalid("sequential is not 0 or 1"));
        }
        Ok(TorrentRecord {
            added_at: d.added_at,
            downloaded: d.downloaded,
            uploaded: d.uploaded,
            seeding_secs: d.seeding_secs,
            goals: SeedGoals { ratio, time },
            finished,
            queue_position: d.queue_position,
            file_priorities: d.file_priorities,
            sequential: d.sequential == 1,
            download_dir: dir_from_disk(d.download_dir)?,
            completed_dir: dir_from_disk(d.completed_dir)?,
        })
    }
}

/// Seconds since the unix epoch (0 if the clock is before it).
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Where a torrent's record lives.
pub(crate) fn record_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir
        .join(RECORD_DIR)
        .join(format!("{}.record", info_hash.to_hex()))
}

/// Read a record (blocking; small and capped). `Ok(None)`: there is none.
pub(crate) fn read(path: &Path) -> Result<Option<TorrentRecord>, RecordError> {
    match crate::durable::read_state_file(path, MAX_RECORD_SIZE as u64)? {
        Some(bytes) => TorrentRecord::decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Order of writes to one record file.
#[derive(Default)]
struct WriteOrder {
    /// Sequence handed to the latest snapshot.
    issued: u64,
    /// Sequence of the snapshot on disk.
    written: u64,
    /// The torrent was removed: write nothing more.
    forgotten: bool,
    /// The same torrent was added again (while this one was still stopping): the file is the
    /// new one's; write nothing more, and do not delete it when forgotten.
    superseded: bool,
}

/// A group of writes is synced together once it has at least this many (below it, each is
/// written on its own, as before).
const GROUP_MIN: usize = 16;
/// At most this many writes go out as one group (bounds what one blocking hop holds).
const GROUP_MAX: usize = 4096;

/// The session's one record writer: a task taking writes in order, in groups (see the module
/// docs). Cheap to clone; the task ends when the last clone is dropped.
#[derive(Clone)]
pub(crate) struct RecordWriter {
    tx: tokio::sync::mpsc::UnboundedSender<Request>,
    /// The latest record file opened for each torrent: opening one again supersedes the
    /// previous (a torrent removed and added again before its stop ended).
    latest: Arc<Mutex<Latest>>,
}

#[derive(Default)]
struct Latest {
    files: std::collections::HashMap<InfoHash, std::sync::Weak<Mutex<WriteOrder>>>,
    /// Entries of dropped files are cleared when the map reaches this size.
    prune_at: usize,
}

enum Request {
    Write(WriteJob),
    /// Answered once everything queued before it is written.
    Settled(tokio::sync::oneshot::Sender<()>),
}

/// One snapshot to write.
struct WriteJob {
    path: PathBuf,
    bytes: Vec<u8>,
    /// A commit point (the user's choices): the folder is fsynced too.
    commit: bool,
    seq: u64,
    order: Arc<Mutex<WriteOrder>>,
    done: tokio::sync::oneshot::Sender<std::io::Result<()>>,
}

impl WriteJob {
    /// Still wanted: not superseded by a newer snapshot on disk, not forgotten.
    fn wanted(&self, order: &WriteOrder) -> bool {
        !order.forgotten && !order.superseded && order.written <= self.seq
    }
}

impl RecordWriter {
    /// Start the writer task (on the current runtime).
    pub(crate) fn start() -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Request>();
        tokio::spawn(async move {
            let mut requests = Vec::new();
            while rx.recv_many(&mut requests, GROUP_MAX).await > 0 {
                let mut group = Vec::new();
                let mut waiting = Vec::new();
                for r in requests.drain(..) {
                    match r {
                        Request::Write(job) => group.push(job),
                        Request::Settled(tx) => waiting.push(tx),
                    }
                }
                if !group.is_empty() {
                    // A panic in the hop drops the group's senders: those callers see an error.
                    let _ = tokio::task::spawn_blocking(move || write_group(group)).await;
                }
                for tx in waiting {
                    let _ = tx.send(());
                }
            }
        });
        RecordWriter {
            tx,
            latest: Arc::default(),
        }
    }

    /// A new write order for `info_hash`'s record, superseding any earlier one still alive.
    fn open(&self, info_hash: &InfoHash) -> Arc<Mutex<WriteOrder>> {
        let order: Arc<Mutex<WriteOrder>> = Arc::default();
        let mut latest = self.latest.lock().expect("lock poisoned only by a panic");
        if let Some(previous) = latest.files.get(info_hash).and_then(|w| w.upgrade()) {
            lock(&previous).superseded = true;
        }
        latest.files.insert(*info_hash, Arc::downgrade(&order));
        if latest.files.len() >= latest.prune_at {
            latest.files.retain(|_, w| w.strong_count() > 0);
            latest.prune_at = (latest.files.len() * 2).max(1024);
        }
        order
    }

    /// Wait until every write queued so far is done (the session's stop: a torrent whose stop
    /// ran out of time may still have its last record queued).
    pub(crate) async fn settled(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Request::Settled(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

/// Write a group of jobs (blocking), answering each.
fn write_group(mut jobs: Vec<WriteJob>) {
    if jobs.len() < GROUP_MIN {
        for job in jobs {
            let result = write_one(&job);
            let _ = job.done.send(result);
        }
        return;
    }
    // A file queued twice: only its newest snapshot is written (both share a temporary name).
    // A commit point among them makes the newest one a commit point too.
    let mut newest = std::collections::HashMap::new();
    for (i, job) in jobs.iter().enumerate() {
        let commit = newest.get(&job.path).is_some_and(|&(_, c)| c) || job.commit;
        newest.insert(job.path.clone(), (i, commit));
    }
    for (i, job) in jobs.iter_mut().enumerate() {
        if let Some(&(last, commit)) = newest.get(&job.path) {
            if last == i {
                job.commit = commit;
            }
        }
    }
    let mut parents: Vec<PathBuf> = jobs
        .iter()
        .filter_map(|j| j.path.parent().map(Path::to_path_buf))
        .collect();
    parents.sort();
    parents.dedup();
    for dir in &parents {
        // A folder that cannot be made fails each write into it below, with its error.
        let _ = std::fs::create_dir_all(dir);
    }
    let mut wanted = Vec::new();
    for (i, job) in jobs.drain(..).enumerate() {
        if newest.get(&job.path).map(|&(last, _)| last) != Some(i) || !job.wanted(&lock(&job.order))
        {
            let _ = job.done.send(Ok(()));
            continue;
        }
        wanted.push(job);
    }
    let items: Vec<(&Path, &[u8])> = wanted
        .iter()
        .map(|j| (j.path.as_path(), j.bytes.as_slice()))
        .collect();
    let written = crate::durable::stage_all(&items);
    let mut staged = Vec::new();
    for (job, result) in wanted.into_iter().zip(written) {
        match result {
            Ok(s) => staged.push((job, s)),
            Err(e) => {
                let _ = job.done.send(Err(e));
            }
        }
    }
    let mut folders: Vec<PathBuf> = Vec::new();
    let mut answers = Vec::new();
    for (job, file) in &staged {
        // Renamed under the file's lock: a `forget` either comes first (nothing is renamed
        // back) or after (it removes what was renamed).
        let mut order = lock(&job.order);
        let result = if job.wanted(&order) {
            file.replace().map(|()| {
                order.written = job.seq;
                if job.commit && !folders.iter().any(|f| f == file.folder()) {
                    folders.push(file.folder().to_path_buf());
                }
            })
        } else {
            file.discard();
            Ok(())
        };
        if result.is_err() {
            file.discard();
        }
        answers.push(result);
    }
    let folder_synced: Vec<_> = folders
        .iter()
        .map(|f| (f, crate::durable::sync_folder(f)))
        .collect();
    for ((job, file), mut result) in staged.into_iter().zip(answers) {
        if let Some((_, Err(e))) = folder_synced.iter().find(|(f, _)| *f == file.folder()) {
            if job.commit && result.is_ok() {
                result = Err(std::io::Error::new(e.kind(), e.to_string()));
            }
        }
        let _ = job.done.send(result);
    }
}

/// Write one job on its own: synced, renamed, and the folder synced if it is a commit point.
fn write_one(job: &WriteJob) -> std::io::Result<()> {
    // Held across the write: writes of this file take turns with `forget`.
    let mut order = lock(&job.order);
    if !job.wanted(&order) {
        return Ok(());
    }
    if job.commit {
        crate::durable::write_atomic(&job.path, &job.bytes)?;
    } else {
        crate::durable::write_replace(&job.path, &job.bytes)?;
    }
    order.written = job.seq;
    Ok(())
}

fn lock(order: &Mutex<WriteOrder>) -> std::sync::MutexGuard<'_, WriteOrder> {
    order.lock().expect("lock poisoned only by a panic")
}

/// One torrent's record file, shared by the session (which forgets it) and the torrent task
/// (which writes it).
#[derive(Clone)]
pub(crate) struct RecordFile {
    path: PathBuf,
    order: Arc<Mutex<WriteOrder>>,
    writer: RecordWriter,
}

impl RecordFile {
    pub(crate) fn new(state_dir: &Path, info_hash: &InfoHash, writer: &RecordWriter) -> Self {
        RecordFile {
            path: record_path(state_dir, info_hash),
            order: writer.open(info_hash),
            writer: writer.clone(),
        }
    }

    /// The kept record, or `None` (none, or unusable: then a warning says why).
    pub(crate) fn load(&self) -> Option<TorrentRecord> {
        match read(&self.path) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "torrent record ignored");
                None
            }
        }
    }

    /// Write `record` durably, unless a newer snapshot got there first or the torrent was
    /// forgotten meanwhile.
    pub(crate) async fn save(&self, record: &TorrentRecord) -> std::io::Result<()> {
        self.write(record, true).await
    }

    /// [`RecordFile::save`] of a record whose only changes are counters (seeding time, totals):
    /// without the folder's fsync (`durable::write_replace`: a crash may keep the previous
    /// record, whole). The user's choices always go through [`RecordFile::save`].
    pub(crate) async fn save_counters(&self, record: &TorrentRecord) -> std::io::Result<()> {
        self.write(record, false).await
    }

    async fn write(&self, record: &TorrentRecord, commit: bool) -> std::io::Result<()> {
        let bytes = record.encode();
        let (done, answer) = tokio::sync::oneshot::channel();
        {
            // Sent under the lock: the writer gets this file's snapshots in sequence order.
            let mut o = lock(&self.order);
            o.issued += 1;
            let job = WriteJob {
                path: self.path.clone(),
                bytes,
                commit,
                seq: o.issued,
                order: self.order.clone(),
                done,
            };
            if self.writer.tx.send(Request::Write(job)).is_err() {
                return Err(std::io::Error::other("the record writer has stopped"));
            }
        }
        answer
            .await
            .unwrap_or_else(|_| Err(std::io::Error::other("the record writer has stopped")))
    }

    /// Delete the record and write nothing more (blocking; the torrent is being removed).
    pub(crate) fn forget(&self) {
        let mut o = lock(&self.order);
        o.forgotten = true;
        if o.superseded {
            // Added again meanwhile: the file is the new torrent's now.
            return;
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "torrent record not removed")
            }
        }
    }
}

/// Whether `a` and `b` differ in counters only (seeding time, payload totals): nothing the
/// user chose.
fn only_counters_differ(a: &TorrentRecord, b: &TorrentRecord) -> bool {
    let counters = TorrentRecord {
        seeding_secs: a.seeding_secs,
        downloaded: a.downloaded,
        uploaded: a.uploaded,
        ..b.clone()
    };
    counters == *a
}

/// The torrent task's side: the record in memory, this run's additions, and when to write.
pub(crate) struct Keeper {
    file: RecordFile,
    /// The record as it stands (totals include this run).
    pub record: TorrentRecord,
    /// Totals when this run started.
    base_downloaded: u64,
    base_uploaded: u64,
    /// Seeding time, to the sub-second.
    seeding: Duration,
    /// Queue position, set by the session.
    position: Arc<AtomicU64>,
    /// What was last written, and when.
    saved: Option<TorrentRecord>,
    last_save: Option<Instant>,
    /// When this run started: a record read from disk whose only change is its seeding time
    /// waits [`SEEDING_SAVE_INTERVAL`] from here (any other change is written at once).
    loaded_at: Instant,
    /// The background write [`Keeper::save_soon`] started last. Writes run one after another
    /// (an older snapshot never lands after a newer one), and [`Keeper::save_now`] waits for it:
    /// a stop must not end while the user's last change is still on its way to disk.
    pending: Option<tokio::task::JoinHandle<()>>,
}

impl Keeper {
    /// `saved`: the record was read from disk (else it is written at the first chance).
    pub(crate) fn new(
        file: RecordFile,
        record: TorrentRecord,
        saved: bool,
        position: Arc<AtomicU64>,
    ) -> Self {
        Keeper {
            file,
            base_downloaded: record.downloaded,
            base_uploaded: record.uploaded,
            seeding: Duration::from_secs(record.seeding_secs),
            saved: saved.then(|| record.clone()),
            record,
            position,
            last_save: None,
            loaded_at: super::now(),
            pending: None,
        }
    }

    /// This run's payload totals so far.
    pub(crate) fn set_run_totals(&mut self, downloaded: u64, uploaded: u64) {
        self.record.downloaded = self.base_downloaded.saturating_add(downloaded);
        self.record.uploaded = self.base_uploaded.saturating_add(uploaded);
    }

    /// Time spent seeding since the last call.
    pub(crate) fn add_seeding(&mut self, d: Duration) {
        self.seeding = self.seeding.saturating_add(d);
        self.record.seeding_secs = self.seeding.as_secs();
    }

    /// Its place in the queue now.
    pub(crate) fn queue_position(&self) -> u64 {
        self.position.load(Ordering::Relaxed)
    }

    /// All-time seeding time.
    pub(crate) fn seeding(&self) -> Duration {
        self.seeding
    }

    /// Write if anything changed and the last write is [`SAVE_INTERVAL`] old (or none yet);
    /// a change of seeding time alone waits [`SEEDING_SAVE_INTERVAL`].
    pub(crate) fn save_if_due(&mut self, now: Instant) {
        // A finished background write: let its task go (the handle kept its memory, 384 bytes
        // per torrent at rest).
        if self.pending.as_ref().is_some_and(|p| p.is_finished()) {
            self.pending = None;
        }
        if self.next_save(now).is_some_and(|t| now >= t) {
            self.save_soon(now);
        }
    }

    /// When [`Keeper::save_if_due`] will write, if anything changed (`now` if due now).
    pub(crate) fn next_save(&self, now: Instant) -> Option<Instant> {
        let mut record = self.record.clone();
        record.queue_position = self.position.load(Ordering::Relaxed);
        let saved = self.saved.as_ref();
        if saved == Some(&record) {
            return None;
        }
        // Seeding time grows by itself while a seed waits for peers: written with the next
        // real change, at a stop, and at least this often, not every minute per torrent.
        let time_only = saved.is_some_and(|s| {
            TorrentRecord {
                seeding_secs: s.seeding_secs,
                ..record
            } == *s
        });
        if time_only {
            return Some(self.last_save.unwrap_or(self.loaded_at) + SEEDING_SAVE_INTERVAL);
        }
        Some(self.last_save.map_or(now, |t| t + SAVE_INTERVAL))
    }

    /// Write now if anything changed, without waiting for the write.
    pub(crate) fn save_soon(&mut self, now: Instant) {
        if let Some((snapshot, counters)) = self.snapshot_if_changed(now) {
            let file = self.file.clone();
            let previous = self.pending.take();
            self.pending = Some(tokio::spawn(async move {
                if let Some(previous) = previous {
                    let _ = previous.await;
                }
                let saved = if counters {
                    file.save_counters(&snapshot).await
                } else {
                    file.save(&snapshot).await
                };
                if let Err(e) = saved {
                    tracing::warn!(error = %e, "torrent record not saved");
                }
            }));
        }
    }

    /// Wait for the background write, if one is on its way.
    async fn settle(&mut self) {
        if let Some(pending) = self.pending.take() {
            let _ = pending.await;
        }
    }

    /// Write now, whether or not anything changed, and say whether it worked (the commit point
    /// of a move).
    pub(crate) async fn save_checked(&mut self, now: Instant) -> std::io::Result<()> {
        self.settle().await;
        self.record.queue_position = self.position.load(Ordering::Relaxed);
        self.saved = Some(self.record.clone());
        self.last_save = Some(now);
        self.file.save(&self.record).await
    }

    /// Write now if anything changed, and wait for it (shutdown).
    pub(crate) async fn save_now(&mut self, now: Instant) {
        self.settle().await;
        if let Some((snapshot, counters)) = self.snapshot_if_changed(now) {
            let saved = if counters {
                self.file.save_counters(&snapshot).await
            } else {
                self.file.save(&snapshot).await
            };
            if let Err(e) = saved {
                tracing::warn!(error = %e, "torrent record not saved");
            }
        }
    }

    /// The record to write if it changed, and whether only its counters did.
    fn snapshot_if_changed(&mut self, now: Instant) -> Option<(TorrentRecord, bool)> {
        self.record.queue_position = self.position.load(Ordering::Relaxed);
        if self.saved.as_ref() == Some(&self.record) {
            return None;
        }
        let counters = self
            .saved
            .as_ref()
            .is_some_and(|s| only_counters_differ(s, &self.record));
        self.saved = Some(self.record.clone());
        self.last_save = Some(now);
        Some((self.record.clone(), counters))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TorrentRecord {
        TorrentRecord {
            added_at: 1_700_000_000,
            downloaded: 5 << 30,
            uploaded: 12_345,
            seeding_secs: 3_600,
            goals: SeedGoals {
                ratio: Goal::Value(1.5),
                time: Goal::Off,
            },
            finished: Some(GoalReached::Time),
            queue_position: 7,
            file_priorities: vec![0, 1, 2, 1],
            sequential: true,
            download_dir: Some("/data/done".into()),
            completed_dir: Some("/data/done".into()),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(TorrentRecord::decode(&r.encode()).unwrap(), r);
        let plain = TorrentRecord::fresh(3);
        let back = TorrentRecord::decode(&plain.encode()).unwrap();
        assert_eq!(back, plain);
        assert_eq!(back.goals, SeedGoals::default());
    }

    #[test]
    fn damaged_records_are_refused() {
        let good = sample().encode();
        // Cut short, junk, and every truncation.
        for end in 0..good.len() {
            assert!(TorrentRecord::decode(&good[..end]).is_err(), "cut at {end}");
        }
        assert!(TorrentRecord::decode(b"not bencode").is_err());
        // Well-formed but out of range.
        let text = String::from_utf8_lossy(&good).into_owned();
        let bad_prio = text.replace("4:\0\x01\x02\x01", "4:\0\x01\x09\x01");
        assert!(matches!(
            TorrentRecord::decode(bad_prio.as_bytes()),
            Err(RecordError::Invalid(_))
        ));
        let future = text.replace("7:versioni1e", "7:versioni2e");
        assert!(matches!(
            TorrentRecord::decode(future.as_bytes()),
            Err(RecordError::Version(2))
        ));
        let relative = text.replace(
            "12:download_dir10:/data/done",
            "12:download_dir10:data/done/",
        );
        assert!(matches!(
            TorrentRecord::decode(relative.as_bytes()),
            Err(RecordError::Invalid(_))
        ));
        let negative = text.replace("16:ratio_goal_millii1500e", "16:ratio_goal_millii-5e");
        assert!(matches!(
            TorrentRecord::decode(negative.as_bytes()),
            Err(RecordError::Invalid(_))
        ));
    }

    #[test]
    fn oversized_records_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.record");
        std::fs::write(&path, vec![b'x'; MAX_RECORD_SIZE + 10]).unwrap();
        assert!(matches!(read(&path), Err(RecordError::TooLarge)));
        assert!(read(&dir.path().join("none.record")).unwrap().is_none());
    }

    #[tokio::test]
    async fn saved_loaded_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let hash = InfoHash([7; 20]);
        let file = RecordFile::new(dir.path(), &hash, &RecordWriter::start());
        assert!(file.load().is_none());
        file.save(&sample()).await.unwrap();
        assert_eq!(file.load(), Some(sample()));
        // A damaged file reads as none (with a warning), not as an error.
        std::fs::write(record_path(dir.path(), &hash), b"d7:versioni1e").unwrap();
        assert!(file.load().is_none());
        file.forget();
        assert!(!record_path(dir.path(), &hash).exists());
        // Nothing is written after the torrent was forgotten.
        file.save(&sample()).await.unwrap();
        assert!(!record_path(dir.path(), &hash).exists());
    }

    #[test]
    fn a_group_of_writes_lands_whole_newest_first_and_nothing_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let count = GROUP_MIN as u8 * 2;
        let orders: Vec<Arc<Mutex<WriteOrder>>> = (0..count).map(|_| Arc::default()).collect();
        let mut jobs = Vec::new();
        let mut answers = Vec::new();
        let mut job = |i: u8, secs: u64, commit: bool| {
            let mut record = sample();
            record.seeding_secs = secs;
            let order = orders[usize::from(i)].clone();
            let seq = {
                let mut o = lock(&order);
                o.issued += 1;
                o.issued
            };
            let (done, answer) = tokio::sync::oneshot::channel();
            answers.push((i, answer));
            jobs.push(WriteJob {
                path: record_path(dir.path(), &InfoHash([i; 20])),
                bytes: record.encode(),
                commit,
                seq,
                order,
                done,
            });
        };
        for i in 0..count {
            job(i, u64::from(i), i % 2 == 0);
        }
        // The first file twice in one group: the newer snapshot wins.
        job(0, 1000, false);
        // The second was forgotten (its torrent removed) before the writer got to it.
        lock(&orders[1]).forgotten = true;
        assert!(jobs.len() >= GROUP_MIN);
        write_group(jobs);
        for (i, mut answer) in answers {
            assert!(answer.try_recv().unwrap().is_ok(), "file {i}");
        }
        let load = |i: u8| read(&record_path(dir.path(), &InfoHash([i; 20]))).unwrap();
        assert_eq!(load(0).unwrap().seeding_secs, 1000);
        assert!(load(1).is_none());
        for i in 2..count {
            assert_eq!(load(i).unwrap().seeding_secs, u64::from(i));
        }
        // No temporary file is left behind, written or skipped.
        let names: Vec<String> = std::fs::read_dir(dir.path().join(RECORD_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.ends_with(".record")), "{names:?}");
        assert_eq!(names.len(), usize::from(count) - 1);
    }

    #[tokio::test]
    async fn a_torrent_added_again_while_the_old_one_stops_keeps_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RecordWriter::start();
        let hash = InfoHash([9; 20]);
        let old = RecordFile::new(dir.path(), &hash, &writer);
        old.save(&sample()).await.unwrap();
        // Removed from the session; before its stop ends, added again.
        let new = RecordFile::new(dir.path(), &hash, &writer);
        let mut mine = sample();
        mine.queue_position = 42;
        new.save(&mine).await.unwrap();
        // The old one's last save and its forget come late: neither touches the new record.
        old.save(&sample()).await.unwrap();
        old.forget();
        assert_eq!(new.load().unwrap().queue_position, 42);
        // The new one's own removal still deletes it.
        new.forget();
        assert!(!record_path(dir.path(), &hash).exists());
    }

    #[tokio::test]
    async fn records_saved_together_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let writer = RecordWriter::start();
        let files: Vec<RecordFile> = (0..64u8)
            .map(|i| RecordFile::new(dir.path(), &InfoHash([i; 20]), &writer))
            .collect();
        let saves = files.iter().enumerate().map(|(i, f)| async move {
            let mut r = sample();
            r.uploaded = i as u64;
            f.save_counters(&r).await
        });
        for saved in futures::future::join_all(saves).await {
            saved.unwrap();
        }
        writer.settled().await;
        for (i, f) in files.iter().enumerate() {
            assert_eq!(f.load().unwrap().uploaded, i as u64);
        }
    }

    #[tokio::test]
    async fn keeper_adds_this_run_and_saves_only_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::new(dir.path(), &InfoHash([1; 20]), &RecordWriter::start());
        let mut old = sample();
        old.finished = None;
        let position = Arc::new(AtomicU64::new(2));
        let mut k = Keeper::new(file.clone(), old.clone(), true, position);
        let t0 = Instant::now();
        k.save_now(t0).await;
        // Only the position changed (the session set it): that is written.
        assert_eq!(file.load().unwrap().queue_position, 2);
        k.set_run_totals(10, 20);
        k.add_seeding(Duration::from_millis(1500));
        k.save_now(t0).await;
        let back = file.load().unwrap();
        assert_eq!(back.downloaded, old.downloaded + 10);
        assert_eq!(back.uploaded, old.uploaded + 20);
        assert_eq!(back.seeding_secs, old.seeding_secs + 1);
        // Totals for the run replace (not add to) the previous call's.
        k.set_run_totals(11, 20);
        assert_eq!(k.record.downloaded, old.downloaded + 11);
    }

    #[tokio::test(start_paused = true)]
    async fn seeding_time_alone_is_written_rarely_and_other_changes_soon() {
        let dir = tempfile::tempdir().unwrap();
        let file = RecordFile::new(dir.path(), &InfoHash([2; 20]), &RecordWriter::start());
        let old = sample();
        let position = Arc::new(AtomicU64::new(old.queue_position));
        // Read from disk: counts as written at creation.
        let t0 = super::super::now();
        let mut k = Keeper::new(file.clone(), old.clone(), true, position);
        assert_eq!(k.next_save(t0), None, "nothing changed");
        k.add_seeding(Duration::from_secs(5));
        assert_eq!(k.next_save(t0), Some(t0 + SEEDING_SAVE_INTERVAL));
        k.save_if_due(t0 + SAVE_INTERVAL);
        assert!(
            file.load().is_none(),
            "seeding time alone waits its interval"
        );
        // Any other change is written at the next chance.
        k.set_run_totals(0, 1);
        assert_eq!(k.next_save(t0), Some(t0));
        k.save_if_due(t0 + SAVE_INTERVAL);
        k.save_now(t0 + SAVE_INTERVAL).await;
        let back = file.load().unwrap();
        assert_eq!(back.uploaded, old.uploaded + 1);
        assert_eq!(back.seeding_secs, old.seeding_secs + 5);
        assert_eq!(k.next_save(t0 + SAVE_INTERVAL), None);
    }
}
