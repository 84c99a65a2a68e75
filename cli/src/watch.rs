//! The watch folder: every `.torrent` file in it, and every `.magnet` file (one magnet link
//! each), is loaded into the session, including files that appear while the client runs.
//!
//! Three triggers run the same scan: a scan at start, file-system events (`notify`) and a
//! periodic rescan (for file systems that send no events, or when the watch limit is hit).
//! A file is taken once its size and mtime are the same on two scans (or it is already older
//! than [`SETTLED_AGE`], e.g. renamed into the folder) *and* it parses. A file that parses only
//! as a prefix of bencode is still being written: it is retried, and reported only if it stays
//! that way for [`TRUNCATED_GRACE`]. A file's age is the larger of its mtime's age and how long
//! the watcher has seen it unchanged (so a file with an mtime in the future settles too). Bad
//! files become error entries, retried when the file changes (size, mtime, ctime or inode: a
//! `chmod` counts); a file that cannot be read (an I/O error) is retried on every scan. Files
//! in the folder are only ever read: never deleted, moved or written. A read never blocks (a
//! FIFO or device in place of a file is refused on the open descriptor, sizes are capped), and
//! stopping never waits for a scan: scans run on the blocking pool holding the session weakly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use zigtorrent_engine::bencode::BencodeError;
use zigtorrent_engine::metainfo::{MetainfoError, MAX_TORRENT_SIZE};
use zigtorrent_engine::{AddTorrent, InfoHash, Magnet, Metainfo, Session, SessionError};

use crate::library::Removals;

/// Largest `.magnet` file read (a magnet link is capped at 64 KiB; some slack for whitespace).
const MAX_MAGNET_FILE: u64 = zigtorrent_engine::magnet::MAX_URI_LEN as u64 + 4096;

/// Periodic rescan when the file system gives no events (a network mount, no inotify).
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(1);
/// Periodic rescan while file-system events arrive: only a safety net for a change that made
/// no event. Every rescan stats every file, and a folder of 10,000 torrents stat'ed each
/// second cost more than all the torrents themselves at rest.
pub const RESCAN_WITH_EVENTS: Duration = Duration::from_secs(30);
/// While a file is settling, look again this soon.
const SETTLE_INTERVAL: Duration = Duration::from_millis(300);
/// After an event, wait this long for more before scanning (a copy makes many events).
const EVENT_DEBOUNCE: Duration = Duration::from_millis(100);
/// A file whose mtime is at least this old is not being written: take it on first sight.
const SETTLED_AGE: Duration = Duration::from_secs(2);
/// A file that stays a truncated torrent this long after its last change is reported.
const TRUNCATED_GRACE: Duration = Duration::from_secs(5);

/// What the watcher tells the rest of the client.
#[derive(Clone, Debug, PartialEq)]
pub enum FolderEvent {
    /// A torrent was added to the session from `path`.
    Added {
        /// The file.
        path: PathBuf,
        /// Torrent name.
        name: String,
        /// Its identity.
        info_hash: InfoHash,
    },
    /// The file cannot be used (until it changes).
    Failed {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The file holds a torrent already loaded from another file.
    Duplicate {
        /// The file.
        path: PathBuf,
        /// The torrent both files hold.
        info_hash: InfoHash,
        /// The file it was first loaded from.
        of: PathBuf,
        /// Torrent name.
        name: String,
    },
    /// An earlier error or duplicate entry for this file no longer holds (fixed or gone).
    Cleared {
        /// The file.
        path: PathBuf,
    },
}

/// Where loaded torrents go: the session, or a stand-in in tests.
pub trait TorrentSink {
    /// Add the torrent; `Err(Some(hash))` if it is already there, `Err(None)` with a reason
    /// otherwise.
    fn add(&self, torrent: AddTorrent) -> Result<InfoHash, AddError>;
}

/// Why a torrent could not be added.
#[derive(Debug)]
pub enum AddError {
    /// Already in the session.
    Duplicate(InfoHash),
    /// Anything else.
    Other(String),
}

impl TorrentSink for Session {
    fn add(&self, torrent: AddTorrent) -> Result<InfoHash, AddError> {
        match Session::add(self, torrent) {
            Ok(h) => Ok(h.info_hash()),
            Err(SessionError::Duplicate(h)) => Err(AddError::Duplicate(h)),
            Err(e) => Err(AddError::Other(e.to_string())),
        }
    }
}

/// The watcher's scans hold the session only weakly: a scan stuck on the blocking pool must
/// not keep the session from stopping. The strong reference lives for one `add`.
impl TorrentSink for std::sync::Weak<Session> {
    fn add(&self, torrent: AddTorrent) -> Result<InfoHash, AddError> {
        match self.upgrade() {
            Some(session) => TorrentSink::add(&*session, torrent),
            None => Err(AddError::Other("the client is stopping".to_string())),
        }
    }
}

/// A file's identity for change detection: its content (size, mtime), its metadata (ctime,
/// changed by `chmod`, `chown`, renames onto it) and which file it is (device, inode).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stamp {
    size: u64,
    mtime: Option<SystemTime>,
    ctime: (i64, i64),
    dev: u64,
    ino: u64,
}

/// A file's identity as text (for the removal list): a changed or replaced file differs.
pub fn identity(path: &Path) -> Option<String> {
    let md = std::fs::metadata(path).ok()?;
    Some(Stamp::of(&md).key())
}

impl Stamp {
    fn key(&self) -> String {
        let mtime = self
            .mtime
            .and_then(|m| m.duration_since(SystemTime::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        format!(
            "{} {mtime} {}.{} {} {}",
            self.size, self.ctime.0, self.ctime.1, self.dev, self.ino
        )
    }

    fn of(md: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: md.len(),
            mtime: md.modified().ok(),
            ctime: (md.ctime(), md.ctime_nsec()),
            dev: md.dev(),
            ino: md.ino(),
        }
    }
}

#[derive(Debug)]
enum Seen {
    /// Seen with this stamp since this instant; taken when a later scan sees the same.
    Settling(Stamp, Instant),
    /// Loaded (or a duplicate of a loaded torrent) from this version of the file.
    Loaded(Stamp),
    /// Could not be used in this version; retried when it changes.
    Failed(Stamp),
    /// Could not be read (I/O error, reported with this reason); retried on every scan.
    Unreadable(String),
}

/// The scanning state of the watch folder.
pub struct WatchFolder {
    dir: PathBuf,
    seen: HashMap<PathBuf, Seen>,
    /// Which file each loaded torrent came from (for duplicate entries).
    owners: HashMap<InfoHash, PathBuf>,
    /// Files with an error or duplicate entry shown.
    flagged: std::collections::HashSet<PathBuf>,
    /// Torrents removed in the menu: their unchanged files are skipped.
    removals: Option<Arc<Mutex<Removals>>>,
}

impl WatchFolder {
    /// A watcher of `dir` that has seen nothing yet.
    pub fn new(dir: PathBuf) -> Self {
        WatchFolder {
            dir,
            seen: HashMap::new(),
            owners: HashMap::new(),
            flagged: Default::default(),
            removals: None,
        }
    }

    /// Skip files whose torrent was removed in the menu (until the file changes).
    pub fn with_removals(mut self, removals: Option<Arc<Mutex<Removals>>>) -> Self {
        self.removals = removals;
        self
    }

    /// Whether some file is waiting for a second look.
    pub fn settling(&self) -> bool {
        self.seen.values().any(|s| matches!(s, Seen::Settling(..)))
    }

    /// Look for new or changed `.torrent` files. At `startup` every file is taken at once.
    pub fn scan(&mut self, sink: &dyn TorrentSink, startup: bool) -> Vec<FolderEvent> {
        let mut events = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read watch folder");
                return events;
            }
        };
        let now = SystemTime::now();
        let now_i = Instant::now();
        let mut files: Vec<(PathBuf, Stamp)> = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            if Kind::of(&path).is_none() {
                continue;
            }
            // Follows symlinks: a link to a torrent elsewhere counts.
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            if !md.is_file() {
                continue;
            }
            files.push((path, Stamp::of(&md)));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        // By the bytes of each name: hashing a `Path` goes component by component, and a
        // folder of 10,000 torrents is scanned every 30 s (most of an idle session's CPU).
        let present: std::collections::HashSet<&std::ffi::OsStr> =
            files.iter().map(|(p, _)| p.as_os_str()).collect();
        // Files gone from the folder: forget them (their torrents keep running).
        let gone: Vec<PathBuf> = self
            .seen
            .keys()
            .filter(|p| !present.contains(p.as_os_str()))
            .cloned()
            .collect();
        drop(present);
        for p in gone {
            self.seen.remove(&p);
            if self.flagged.remove(&p) {
                events.push(FolderEvent::Cleared { path: p });
            }
        }
        for (path, stamp) in files {
            // An mtime in the future counts as age zero; time seen unchanged counts too.
            let mtime_age = stamp
                .mtime
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or(Duration::ZERO);
            let seen = self.seen.get(&path);
            let since = match seen {
                Some(Seen::Settling(s, t)) if *s == stamp => *t,
                _ => now_i,
            };
            let age = mtime_age.max(now_i.saturating_duration_since(since));
            let ready = match seen {
                Some(Seen::Loaded(s)) | Some(Seen::Failed(s)) if *s == stamp => continue,
                Some(Seen::Settling(s, _)) => *s == stamp || age >= SETTLED_AGE,
                // Unreadable: try again now, whatever the stamp.
                Some(Seen::Unreadable(_)) => true,
                _ => startup || age >= SETTLED_AGE,
            };
            if !ready {
                self.seen.insert(path, Seen::Settling(stamp, since));
                continue;
            }
            self.take(path, stamp, since, age, sink, &mut events);
        }
        events
    }

    fn take(
        &mut self,
        path: PathBuf,
        stamp: Stamp,
        since: Instant,
        age: Duration,
        sink: &dyn TorrentSink,
        events: &mut Vec<FolderEvent>,
    ) {
        let meta = match read_source(&path) {
            Ok(m) => m,
            Err(LoadError::Incomplete) if age < TRUNCATED_GRACE => {
                // Still being written, most likely: look again later.
                self.seen.insert(path, Seen::Settling(stamp, since));
                return;
            }
            Err(LoadError::Io(reason)) => {
                // Reported once (again only if the reason changes); retried on every scan.
                let same =
                    matches!(self.seen.get(&path), Some(Seen::Unreadable(r)) if *r == reason);
                self.seen
                    .insert(path.clone(), Seen::Unreadable(reason.clone()));
                if !same {
                    self.flagged.insert(path.clone());
                    events.push(FolderEvent::Failed { path, reason });
                }
                return;
            }
            Err(e) => {
                let reason = match e {
                    LoadError::Incomplete => "file ends early (truncated torrent)".to_string(),
                    LoadError::Bad(r) => r,
                    LoadError::Io(_) => unreachable!("handled above"),
                };
                self.flagged.insert(path.clone());
                self.seen.insert(path.clone(), Seen::Failed(stamp));
                events.push(FolderEvent::Failed { path, reason });
                return;
            }
        };
        let name = meta.display_name();
        let hash = meta.info_hash();
        self.seen.insert(path.clone(), Seen::Loaded(stamp));
        if let Some(removals) = &self.removals {
            if let Ok(mut r) = removals.lock() {
                if r.is_removed(&hash, &stamp.key()) {
                    tracing::info!(path = %path.display(), "skipped: removed in the menu (change or copy the file again to add it)");
                    return;
                }
                if r.contains(&hash) {
                    // The file changed since: a new add.
                    if let Err(e) = r.forget(&hash) {
                        tracing::warn!(error = %e, "removal list not updated");
                    }
                }
            }
        }
        match sink.add(meta) {
            Ok(info_hash) => {
                self.owners.insert(info_hash, path.clone());
                if self.flagged.remove(&path) {
                    events.push(FolderEvent::Cleared { path: path.clone() });
                }
                events.push(FolderEvent::Added {
                    path,
                    name,
                    info_hash,
                });
            }
            Err(AddError::Duplicate(h)) => {
                let owner = self.owners.get(&h).cloned();
                match owner {
                    // The same file, rewritten with the same torrent: nothing new.
                    Some(o) if o == path => {}
                    // The first file was removed from the folder: this one takes over.
                    Some(o) if !o.exists() => {
                        self.owners.insert(h, path);
                    }
                    _ => {
                        let of = owner.unwrap_or_else(|| PathBuf::from("(already loaded)"));
                        self.flagged.insert(path.clone());
                        events.push(FolderEvent::Duplicate {
                            path,
                            info_hash: h,
                            of,
                            name,
                        });
                    }
                }
                let _ = hash;
            }
            Err(AddError::Other(reason)) => {
                self.flagged.insert(path.clone());
                self.seen.insert(path.clone(), Seen::Failed(stamp));
                events.push(FolderEvent::Failed { path, reason });
            }
        }
    }
}

enum LoadError {
    /// A prefix of bencode (or empty): probably still being written.
    Incomplete,
    /// The file could not be opened or read (permissions, ...): may pass without the file
    /// changing.
    Io(String),
    /// Anything else, with the reason.
    Bad(String),
}

/// What a file of the watch folder holds, by its extension (any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Torrent,
    Magnet,
}

impl Kind {
    fn of(path: &Path) -> Option<Kind> {
        let ext = path.extension()?;
        if ext.eq_ignore_ascii_case("torrent") {
            Some(Kind::Torrent)
        } else if ext.eq_ignore_ascii_case("magnet") {
            Some(Kind::Magnet)
        } else {
            None
        }
    }
}

fn read_source(path: &Path) -> Result<AddTorrent, LoadError> {
    match Kind::of(path) {
        Some(Kind::Magnet) => read_magnet(path).map(AddTorrent::Magnet),
        _ => read_torrent(path).map(AddTorrent::Metainfo),
    }
}

/// A `.magnet` file: one magnet link (surrounding whitespace and blank lines allowed).
fn read_magnet(path: &Path) -> Result<Magnet, LoadError> {
    let bytes = read_watched(path, MAX_MAGNET_FILE)?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    if text.is_empty() {
        return Err(LoadError::Incomplete);
    }
    Magnet::parse(text).map_err(|e| LoadError::Bad(format!("bad magnet link: {e}")))
}

fn read_torrent(path: &Path) -> Result<Metainfo, LoadError> {
    let bytes = read_watched(path, MAX_TORRENT_SIZE as u64)?;
    if bytes.is_empty() {
        return Err(LoadError::Incomplete);
    }
    Metainfo::from_bytes(&bytes).map_err(|e| match e {
        // A cut-off file ends inside a value, or inside a string whose length runs past the end.
        MetainfoError::Bencode(
            BencodeError::UnexpectedEof { .. } | BencodeError::BadLength { .. },
        ) => LoadError::Incomplete,
        other => LoadError::Bad(other.to_string()),
    })
}

/// Read a file of the watch folder, at most `max` bytes, without ever blocking on it.
///
/// The scan saw a regular file, but by the time it is opened it may have been replaced by a
/// FIFO (an open for reading would wait for a writer forever) or a device. So the open is
/// non-blocking, the type is checked on the open descriptor (`fstat`, no second lookup of the
/// name), and anything but a regular file is refused. `O_NONBLOCK` changes nothing for reads of
/// a regular file. `O_NOCTTY`: a terminal swapped in must not become our controlling terminal.
/// Symlinks are still followed (no `O_NOFOLLOW`): a link to a torrent kept elsewhere is a
/// feature of the watch folder, the folder is the user's own, and the file is only read, and
/// whatever the link points at passes the same checks.
fn read_watched(path: &Path, max: u64) -> Result<Vec<u8>, LoadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what: &str, e: std::io::Error| {
        LoadError::Io(format!("cannot {what} {}: {e}", path.display()))
    };
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| io("open", e))?;
    let md = file.metadata().map_err(|e| io("read", e))?;
    if !md.file_type().is_file() {
        return Err(LoadError::Bad(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    let too_large = || LoadError::Bad(format!("{} is larger than {max} bytes", path.display()));
    if md.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    // The size may grow after the fstat: the cap holds whatever it says.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io("read", e))?;
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

/// Run the watcher until `stop` fires: scans at start, on events and periodically; reports
/// through `events`.
pub async fn run_watcher(
    dir: PathBuf,
    removals: Option<Arc<Mutex<Removals>>>,
    sink: Weak<Session>,
    events: mpsc::UnboundedSender<FolderEvent>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut folder = WatchFolder::new(dir.clone()).with_removals(removals);
    let (notify_tx, mut notify_rx) = mpsc::unbounded_channel::<()>();
    // The watcher lives as long as this task; if it cannot start, the periodic rescan remains.
    let watcher = start_notify(&dir, notify_tx);
    let period = if watcher.is_some() {
        RESCAN_WITH_EVENTS
    } else {
        RESCAN_INTERVAL
    };
    let send = |evs: Vec<FolderEvent>| {
        for e in evs {
            let _ = events.send(e);
        }
    };
    // Scans read the folder, stat and read files: off the runtime's worker threads.
    let scan = |mut folder: WatchFolder, startup: bool| {
        let sink = sink.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let evs = folder.scan(&sink, startup);
                (folder, evs)
            })
            .await
        }
    };
    // A scan may take long (a slow file system, a costly file): stopping does not wait for it.
    // The scan goes on by itself on the blocking pool and its result is dropped.
    let first = tokio::select! {
        _ = stopped(&mut stop) => return,
        r = scan(folder, true) => r,
    };
    let Ok((f, evs)) = first else {
        return;
    };
    folder = f;
    send(evs);
    let mut rescan = tokio::time::interval(period);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rescan.tick().await;
    loop {
        let settle = folder.settling();
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = rescan.tick() => {}
            Some(()) = notify_rx.recv() => {
                tokio::time::sleep(EVENT_DEBOUNCE).await;
                while notify_rx.try_recv().is_ok() {}
            }
            _ = tokio::time::sleep(SETTLE_INTERVAL), if settle => {}
        }
        let done = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = scan(folder, false) => r,
        };
        let Ok((f, evs)) = done else {
            // The scan panicked or the runtime is shutting down.
            return;
        };
        folder = f;
        send(evs);
    }
}

/// Resolves once `stop` is set (or its sender is gone).
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

fn start_notify(dir: &Path, tx: mpsc::UnboundedSender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let handler = move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if !ev.kind.is_access() {
                let _ = tx.send(());
            }
        }
    };
    match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "no file-system events; rescanning periodically");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "no file-system watcher; rescanning periodically");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A session stand-in that records what was added.
    #[derive(Default)]
    struct Sink(Mutex<Vec<InfoHash>>);

    impl TorrentSink for Sink {
        fn add(&self, torrent: AddTorrent) -> Result<InfoHash, AddError> {
            let hash = torrent.info_hash();
            let mut v = self.0.lock().unwrap();
            if v.contains(&hash) {
                return Err(AddError::Duplicate(hash));
            }
            v.push(hash);
            Ok(hash)
        }
    }

    fn torrent_bytes(dir: &Path, name: &str) -> Vec<u8> {
        let src = dir.join(format!("src-{name}"));
        std::fs::write(&src, name.repeat(100)).unwrap();
        let opts = zigtorrent_engine::metainfo::CreateOptions {
            piece_length: Some(16 * 1024),
            ..Default::default()
        };
        zigtorrent_engine::metainfo::create_torrent(&src, &opts).unwrap()
    }

    /// A scratch dir, an empty watch folder `w` in it, a sink and a watcher on that folder.
    fn fixture() -> (tempfile::TempDir, PathBuf, Sink, WatchFolder) {
        let tmp = tempfile::tempdir().unwrap();
        let watch = tmp.path().join("w");
        std::fs::create_dir(&watch).unwrap();
        let w = WatchFolder::new(watch.clone());
        (tmp, watch, Sink::default(), w)
    }

    #[test]
    fn startup_takes_files_and_reports_bad_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let watch = tmp.path().join("w");
        std::fs::create_dir(&watch).unwrap();
        std::fs::write(watch.join("a.torrent"), torrent_bytes(tmp.path(), "a")).unwrap();
        std::fs::write(watch.join("bad.torrent"), b"hello").unwrap();
        std::fs::write(watch.join("note.txt"), b"hello").unwrap();
        let sink = Sink::default();
        let mut w = WatchFolder::new(watch.clone());
        let evs = w.scan(&sink, true);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert!(matches!(&evs[0], FolderEvent::Added { name, .. } if name == "src-a"));
        assert!(
            matches!(&evs[1], FolderEvent::Failed { path, .. } if path.ends_with("bad.torrent"))
        );
        // Nothing changes: nothing new.
        assert!(w.scan(&sink, false).is_empty());
    }

    #[test]
    fn new_file_needs_two_equal_looks_and_duplicates_are_named() {
        let (tmp, watch, sink, mut w) = fixture();
        assert!(w.scan(&sink, true).is_empty());
        let bytes = torrent_bytes(tmp.path(), "b");
        std::fs::write(watch.join("b.torrent"), &bytes).unwrap();
        assert!(w.scan(&sink, false).is_empty());
        assert!(w.settling());
        let evs = w.scan(&sink, false);
        assert!(matches!(&evs[..], [FolderEvent::Added { .. }]), "{evs:?}");
        std::fs::write(watch.join("copy.torrent"), &bytes).unwrap();
        w.scan(&sink, false);
        let evs = w.scan(&sink, false);
        assert!(
            matches!(&evs[..], [FolderEvent::Duplicate { of, .. }] if of.ends_with("b.torrent")),
            "{evs:?}"
        );
        assert_eq!(sink.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn truncated_file_waits_then_is_taken_when_complete() {
        let (tmp, watch, sink, mut w) = fixture();
        let bytes = torrent_bytes(tmp.path(), "c");
        let path = watch.join("c.torrent");
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        // Even at startup a half-written file is not an error: it is retried.
        assert!(w.scan(&sink, true).is_empty());
        assert!(w.scan(&sink, false).is_empty());
        assert!(w.settling());
        std::fs::write(&path, &bytes).unwrap();
        w.scan(&sink, false);
        let evs = w.scan(&sink, false);
        assert!(matches!(&evs[..], [FolderEvent::Added { .. }]), "{evs:?}");
    }

    #[test]
    fn fixed_file_clears_its_error() {
        let (tmp, watch, sink, mut w) = fixture();
        let path = watch.join("d.torrent");
        std::fs::write(&path, b"d4:infoi3ee").unwrap();
        let evs = w.scan(&sink, true);
        assert!(matches!(&evs[..], [FolderEvent::Failed { .. }]), "{evs:?}");
        std::fs::write(&path, torrent_bytes(tmp.path(), "d")).unwrap();
        w.scan(&sink, false);
        let evs = w.scan(&sink, false);
        assert!(
            matches!(
                &evs[..],
                [FolderEvent::Cleared { .. }, FolderEvent::Added { .. }]
            ),
            "{evs:?}"
        );
    }
    fn stamp(path: &Path) -> Stamp {
        Stamp::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn chmod_and_replacement_change_the_stamp() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("a.torrent");
        std::fs::write(&path, b"same").unwrap();
        let before = stamp(&path);
        // ctime has the kernel's coarse clock: let it tick.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let after_chmod = stamp(&path);
        assert_eq!(
            (after_chmod.size, after_chmod.mtime),
            (before.size, before.mtime)
        );
        assert_ne!(after_chmod, before);
        // Another file with the same size and mtime renamed over it: another inode.
        let other = tmp.path().join("b.tmp");
        std::fs::write(&other, b"same").unwrap();
        let f = std::fs::File::options().write(true).open(&other).unwrap();
        f.set_modified(before.mtime.unwrap()).unwrap();
        drop(f);
        std::fs::rename(&other, &path).unwrap();
        let replaced = stamp(&path);
        assert_eq!((replaced.size, replaced.mtime), (before.size, before.mtime));
        assert_ne!(replaced.ino, after_chmod.ino);
    }

    #[test]
    fn unreadable_file_is_reported_once_and_retried_on_every_scan() {
        let (tmp, watch, sink, mut w) = fixture();
        // A "regular file" whose reads fail with EIO even for root.
        let path = watch.join("e.torrent");
        std::os::unix::fs::symlink("/proc/self/mem", &path).unwrap();
        let evs = w.scan(&sink, true);
        assert!(
            matches!(&evs[..], [FolderEvent::Failed { reason, .. }] if reason.contains("cannot read")),
            "{evs:?}"
        );
        assert!(matches!(w.seen.get(&path), Some(Seen::Unreadable(_))));
        assert!(!w.settling());
        // Retried, but the same error is not reported again.
        assert!(w.scan(&sink, false).is_empty());
        assert!(matches!(w.seen.get(&path), Some(Seen::Unreadable(_))));
        // Readable now (as after a chmod): taken on the next scan, not only once it changes.
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, torrent_bytes(tmp.path(), "e")).unwrap();
        let evs = w.scan(&sink, false);
        assert!(
            matches!(
                &evs[..],
                [FolderEvent::Cleared { .. }, FolderEvent::Added { .. }]
            ),
            "{evs:?}"
        );
    }

    #[test]
    fn files_with_a_future_mtime_settle() {
        let (tmp, watch, sink, mut w) = fixture();
        assert!(w.scan(&sink, true).is_empty());
        let future = SystemTime::now() + Duration::from_secs(3600);
        let write = |name: &str, bytes: &[u8]| {
            let path = watch.join(name);
            std::fs::write(&path, bytes).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(future).unwrap();
            path
        };
        // A complete one: taken once seen unchanged twice.
        write("g.torrent", &torrent_bytes(tmp.path(), "g"));
        assert!(w.scan(&sink, false).is_empty());
        let evs = w.scan(&sink, false);
        assert!(matches!(&evs[..], [FolderEvent::Added { .. }]), "{evs:?}");
        // A truncated one: waits, then is reported once unchanged for the grace time.
        let bytes = torrent_bytes(tmp.path(), "h");
        let path = write("h.torrent", &bytes[..bytes.len() / 2]);
        assert!(w.scan(&sink, false).is_empty());
        assert!(w.scan(&sink, false).is_empty());
        assert!(w.settling());
        // Pretend it was first seen long ago.
        let Some(Seen::Settling(s, _)) = w.seen.get(&path) else {
            panic!("{:?}", w.seen.get(&path));
        };
        let long_ago = Instant::now() - TRUNCATED_GRACE - Duration::from_secs(1);
        w.seen.insert(path.clone(), Seen::Settling(*s, long_ago));
        let evs = w.scan(&sink, false);
        assert!(
            matches!(&evs[..], [FolderEvent::Failed { reason, .. }] if reason.contains("truncated")),
            "{evs:?}"
        );
    }

    /// Run `f` on another thread; a call that blocks (what these tests guard against) fails
    /// the test instead of hanging it.
    fn without_blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("blocked on a file of the watch folder")
    }

    #[test]
    fn a_fifo_or_device_swapped_in_after_the_scan_is_refused_without_blocking() {
        let (_tmp, watch, _sink, mut w) = fixture();
        let fifo = watch.join("x.torrent");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        // The scan skips it (not a regular file), as it always did.
        assert!(w.scan(&Sink::default(), true).is_empty());
        // But a file that was regular at the scan and is a FIFO at the open (nobody ever
        // writes to it: an ordinary open would wait forever).
        let path = fifo.clone();
        let stamp = stamp(&fifo);
        let (w, evs) = without_blocking(move || {
            let mut evs = Vec::new();
            w.take(
                path,
                stamp,
                Instant::now(),
                SETTLED_AGE,
                &Sink::default(),
                &mut evs,
            );
            (w, evs)
        });
        assert!(
            matches!(&evs[..], [FolderEvent::Failed { reason, .. }] if reason.contains("not a regular file")),
            "{evs:?}"
        );
        // An error entry, retried only when the file changes.
        assert!(matches!(w.seen.get(&fifo), Some(Seen::Failed(_))));
        // Devices likewise, whether named directly or through a link.
        let link = watch.join("zero.torrent");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        for path in [link, PathBuf::from("/dev/null")] {
            let r = without_blocking(move || read_watched(&path, 1024).map(|b| b.len()));
            assert!(matches!(r, Err(LoadError::Bad(ref m)) if m.contains("not a regular file")));
        }
    }

    #[test]
    fn a_file_over_the_cap_is_an_error_entry() {
        let (tmp, watch, sink, mut w) = fixture();
        let path = watch.join("big.torrent");
        let bytes = torrent_bytes(tmp.path(), "big");
        std::fs::write(&path, &bytes).unwrap();
        let cap = bytes.len() as u64 - 1;
        assert!(
            matches!(read_watched(&path, cap), Err(LoadError::Bad(ref m)) if m.contains("larger than")),
        );
        assert_eq!(read_watched(&path, cap + 1).ok(), Some(bytes));
        // Past the real cap (sparse, so it costs no disk): reported, not read.
        let f = std::fs::File::create(watch.join("huge.torrent")).unwrap();
        f.set_len(MAX_TORRENT_SIZE as u64 + 1).unwrap();
        let evs = w.scan(&sink, true);
        assert!(
            evs.iter()
                .any(|e| matches!(e, FolderEvent::Failed { path, reason }
                if path.ends_with("huge.torrent") && reason.contains("larger than"))),
            "{evs:?}"
        );
    }

    #[test]
    fn magnet_files_are_taken_and_bad_ones_named() {
        let (_tmp, watch, sink, mut w) = fixture();
        let hash = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
        std::fs::write(
            watch.join("m.MAGNET"),
            format!("\n  magnet:?xt=urn:btih:{hash}&dn=Some+Name\n\n"),
        )
        .unwrap();
        std::fs::write(watch.join("bad.magnet"), "magnet:?dn=no-hash\n").unwrap();
        std::fs::write(watch.join("ignored.txt"), "magnet:?xt=urn:btih:{hash}").unwrap();
        let evs = w.scan(&sink, true);
        assert_eq!(evs.len(), 2, "{evs:?}");
        assert!(
            matches!(&evs[0], FolderEvent::Failed { path, reason }
                if path.ends_with("bad.magnet") && reason.starts_with("bad magnet link")),
            "{evs:?}"
        );
        assert!(
            matches!(&evs[1], FolderEvent::Added { path, name, info_hash }
                if path.ends_with("m.MAGNET") && name == "Some Name"
                    && info_hash.to_hex() == hash),
            "{evs:?}"
        );
        // The same link in a second file is a duplicate of the first.
        std::fs::write(
            watch.join("n.magnet"),
            format!("magnet:?xt=urn:btih:{}", hash.to_uppercase()),
        )
        .unwrap();
        let evs = w.scan(&sink, true);
        assert!(
            matches!(&evs[..], [FolderEvent::Duplicate { of, .. }] if of.ends_with("m.MAGNET")),
            "{evs:?}"
        );
    }

    #[test]
    fn an_empty_magnet_file_waits_for_its_link() {
        let (_tmp, watch, sink, mut w) = fixture();
        let path = watch.join("e.magnet");
        std::fs::write(&path, "").unwrap();
        assert!(w.scan(&sink, true).is_empty());
        assert!(w.settling());
    }
}
