//! `zigtorrent run`: merge the options, start a session and the watch folder, then hand over to
//! the terminal menu or to headless status lines; both end through [`Running::shutdown`].

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zigtorrent_engine::dht::Bootstrap;
use zigtorrent_engine::metainfo::MAX_TORRENT_SIZE;
use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{
    AddTorrent, InfoHash, Magnet, Metainfo, TorrentState, TorrentStatus, TransportOptions,
};

use crate::library::{self, Removals};
pub use crate::settings::RunArgs;
use crate::settings::Settings;
pub use crate::signals::Signals;
use crate::watch::{self, FolderEvent};
use crate::{format, tui};

/// How long a graceful stop may take before we exit anyway (DESIGN: exit within 5 s).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
/// How long quitting waits for the watch folder to stop (it stops between scans; a scan
/// stuck on a slow file is left behind).
const WATCHER_STOP_TIMEOUT: Duration = Duration::from_millis(500);
/// Tries, and the pause between them, for the last other holder of the session to let go.
const SESSION_RELEASE_TRIES: u32 = 50;
const SESSION_RELEASE_DELAY: Duration = Duration::from_millis(10);
/// Name of the log file in the state folder while the menu is up.
pub const LOG_FILE: &str = "zigtorrent.log";

/// A magnet link, or a .torrent file by path, given on the command line; errors name it.
pub fn load_source(source: &str) -> anyhow::Result<AddTorrent> {
    if source.len() >= 7 && source[..7].eq_ignore_ascii_case("magnet:") {
        let magnet = Magnet::parse(source)
            .map_err(|e| anyhow::anyhow!("bad magnet link {}: {e}", format::printable(source)))?;
        return Ok(AddTorrent::Magnet(magnet));
    }
    Ok(AddTorrent::Metainfo(load_torrent(Path::new(source))?))
}

/// Parse a .torrent file, naming the file in every error.
pub fn load_torrent(path: &Path) -> anyhow::Result<Metainfo> {
    let bytes = crate::read_file(path, MAX_TORRENT_SIZE as u64)?;
    Metainfo::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// Entry point of `zigtorrent run`. `signals` were installed first thing in `main`: a stop
/// signal during any set-up step ends set-up there (everything taken so far is released by
/// dropping it) and the run ends with `Ok`.
pub fn run(args: RunArgs, mut signals: Signals) -> anyhow::Result<()> {
    let loaded = args.load()?;
    let s = loaded.settings;
    if args.print_config {
        println!("# zigtorrent run: merged options");
        println!("# layers: defaults < config files < ZIGTORRENT_* environment < flags");
        if loaded.files.is_empty() {
            println!("# config files: none found");
        }
        for f in &loaded.files {
            println!("# config file: {}", f.display());
        }
        print!("{}", s.to_toml());
        return Ok(());
    }
    if signals.arrived() {
        return Ok(());
    }
    let sources = args
        .sources
        .iter()
        .map(|src| load_source(src))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let headless = s.headless || !std::io::stdout().is_terminal();
    let registry = crate::backends::registry_with_plugins(&s.plugins)?;
    let transport = registry
        .transport(&s.transport, &TransportOptions::default())?
        .context("cannot start transport")?;
    let backend = registry.storage(&s.storage)?;
    if signals.arrived() {
        return Ok(());
    }
    // The client's own files (lock, log, resume state, incomplete data) must never share a
    // folder with a user's downloads, where a name of theirs could be one of ours.
    if same_folder(&s.state, &s.downloads) {
        bail!(
            "the state folder {} is the downloads folder: give --state a folder of its own (default: <downloads>/.zigtorrent)",
            s.state.display()
        );
    }
    let downloads_abs = std::fs::canonicalize(&s.downloads)
        .or_else(|_| std::path::absolute(&s.downloads))
        .unwrap_or_else(|_| s.downloads.clone());
    if downloads_abs
        .ancestors()
        .skip(1)
        .any(|a| same_folder(a, &s.state))
    {
        bail!(
            "the downloads folder {} is inside the state folder {}: torrents could reach the client's own files",
            s.downloads.display(),
            s.state.display()
        );
    }
    let completed = match &s.completed {
        Some(dir) => Some(check_completed(dir, &s.state)?),
        None => None,
    };
    // The state folder first: its lock must be held before anything looks inside the folders.
    create_folder("state", &s.state)?;
    let lock = crate::instance::acquire(&s.state)?;
    create_folder("torrents", &s.torrents)?;
    create_folder("downloads", &s.downloads)?;
    if let Some(dir) = &completed {
        create_folder("completed", dir)?;
    }
    if signals.arrived() {
        return Ok(());
    }
    init_logging(&s, headless)?;
    tracing::debug!(lock = %lock.path().display(), "instance lock held");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start runtime")?;
    let result = runtime.block_on(async move {
        let mut config = SessionConfig::new(s.downloads.clone(), s.state.clone());
        config.listen = SocketAddr::new(s.bind, s.listen);
        config.extra_peers = s.peers.clone();
        config.max_peers_per_torrent = s.max_peers;
        config.max_peers_total = s.max_peers_total;
        config.download_limit = s.download_limit;
        config.upload_limit = s.upload_limit;
        config.lsd = s.lsd;
        config.pex = s.pex;
        config.encryption = s.encryption_policy();
        config.completed_dir = completed;
        (
            config.seed_ratio,
            config.seed_time,
            config.max_active_downloads,
            config.max_active_seeds,
        ) = s.queue_config();
        config.dht = s.dht.then(|| {
            if s.dht_bootstrap.is_empty() {
                Bootstrap::PublicRouters
            } else {
                Bootstrap::Nodes(s.dht_bootstrap.clone())
            }
        });
        let session = tokio::select! {
            biased;
            sig = signals.recv() => {
                tracing::info!(signal = sig, "stopped during set-up");
                return Ok(());
            }
            session = Session::start(config, transport, backend, TrackerClient::new()) => session?,
        };
        let (running, events) = Running::start(session, &s);
        for source in sources {
            let name = format::printable(&source.display_name()).into_owned();
            if let Err(e) = running.session.add(source) {
                tracing::warn!(%name, error = %e, "not added");
            }
        }
        if headless {
            emit(&[format!(
                "listening on port {} ({})",
                running.session.listen_port(),
                s.transport
            )]);
            headless_serve(running, events, signals, &s).await
        } else {
            tui::serve(running, events, signals, &s).await
        }
    });
    // Don't wait for blocking-pool threads still finishing: everything is flushed.
    runtime.shutdown_timeout(Duration::from_millis(200));
    drop(lock);
    result
}

/// Whether `a` and `b` name the same folder: the same inode when both exist, else the same
/// absolute path with `.` and `..` resolved by name.
fn same_folder(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return ma.dev() == mb.dev() && ma.ino() == mb.ino();
    }
    let norm = |p: &Path| -> Option<PathBuf> {
        let abs = std::path::absolute(p).ok()?;
        let mut out = PathBuf::new();
        for c in abs.components() {
            match c {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                c => out.push(c),
            }
        }
        Some(out)
    };
    norm(a).is_some_and(|x| Some(x) == norm(b))
}

/// The completed folder as an absolute path (kept in torrents' records), refused where a
/// torrent moved there could reach the client's own files: the state folder itself, a folder
/// inside it, or a folder holding it (unless the state folder's name starts with
/// `.zigtorrent`, which no torrent may use as its top name).
fn check_completed(dir: &Path, state: &Path) -> anyhow::Result<PathBuf> {
    let abs =
        std::path::absolute(dir).with_context(|| format!("completed folder {}", dir.display()))?;
    let canonical = std::fs::canonicalize(&abs).unwrap_or_else(|_| abs.clone());
    if canonical.ancestors().any(|a| same_folder(a, state)) {
        bail!(
            "the completed folder {} is the state folder or inside it: torrents could reach the client's own files",
            dir.display()
        );
    }
    let state_abs = std::fs::canonicalize(state)
        .or_else(|_| std::path::absolute(state))
        .unwrap_or_else(|_| state.to_path_buf());
    let reserved = state_abs
        .file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b".zigtorrent"));
    if !reserved
        && state_abs
            .ancestors()
            .skip(1)
            .any(|a| same_folder(a, &canonical))
    {
        bail!(
            "the state folder {} is inside the completed folder {}: a torrent moved there could reach the client's own files",
            state.display(),
            dir.display()
        );
    }
    Ok(abs)
}

/// Create `dir` if missing; it must be a directory.
fn create_folder(what: &str, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create {what} folder {}", dir.display()))?;
    if !dir.is_dir() {
        bail!("{what} folder {} is not a directory", dir.display());
    }
    Ok(())
}

fn init_logging(s: &Settings, headless: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log_level)
        .with_context(|| format!("bad log level '{}'", s.log_level))?;
    // Logged text comes from trackers, peers and torrents: `Printable` replaces its control
    // characters, which also rules out our own colour codes (so no ANSI at all).
    if headless {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(|| crate::logfile::Printable(std::io::stderr()))
            .init();
    } else {
        // The menu owns the screen: logs go to a file so they never garble it.
        let path = s.state.join(LOG_FILE);
        let file = crate::logfile::RotatingLog::open(&path, crate::logfile::MAX_BYTES)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        let file = std::sync::Mutex::new(crate::logfile::Printable(
            file.into_inner().unwrap_or_else(|e| e.into_inner()),
        ));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(file)
            .init();
    }
    Ok(())
}

/// A session with its watch folders running.
pub struct Running {
    /// The session (shared with the watcher and with actions in flight).
    pub session: Arc<Session>,
    /// The state folder.
    pub state: PathBuf,
    /// Torrents removed in the menu (shared with the watch folder's watcher).
    pub removals: Arc<std::sync::Mutex<Removals>>,
    /// The watch folder's watcher and that of `<state>/added/`.
    watchers: Vec<JoinHandle<()>>,
    stop_watcher: tokio::sync::watch::Sender<bool>,
}

impl Running {
    fn start(session: Session, s: &Settings) -> (Running, mpsc::UnboundedReceiver<FolderEvent>) {
        let session = Arc::new(session);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_watcher, stop) = tokio::sync::watch::channel(false);
        let removals = Arc::new(std::sync::Mutex::new(Removals::load(&s.state)));
        let added = library::added_dir(&s.state);
        if let Err(e) = std::fs::create_dir_all(&added) {
            tracing::warn!(dir = %added.display(), error = %e, "cannot create the folder of added torrents");
        }
        let mut watchers = vec![
            tokio::spawn(watch::run_watcher(
                s.torrents.clone(),
                Some(removals.clone()),
                Arc::downgrade(&session),
                tx.clone(),
                stop.clone(),
            )),
            tokio::spawn(watch::run_watcher(
                added,
                None,
                Arc::downgrade(&session),
                tx,
                stop.clone(),
            )),
        ];
        if let Some(program) = &s.on_complete {
            watchers.push(tokio::spawn(crate::hook::run(
                program.clone(),
                s.downloads.clone(),
                Arc::downgrade(&session),
                stop,
            )));
        }
        (
            Running {
                session,
                state: s.state.clone(),
                removals,
                watchers,
                stop_watcher,
            },
            rx,
        )
    }

    /// Every torrent's latest snapshot.
    pub fn snapshot(&self) -> Vec<TorrentStatus> {
        self.session.torrents().iter().map(|t| t.status()).collect()
    }

    /// Stop the watcher, then every torrent gracefully (flush, resume state, `stopped`).
    /// Everything else holding the session must be gone by now. A watcher stuck in a scan
    /// (a slow file system, a costly file) is not waited for beyond [`WATCHER_STOP_TIMEOUT`]:
    /// its scan holds only a weak reference to the session, so the session still stops.
    pub async fn shutdown(self) {
        let _ = self.stop_watcher.send(true);
        for mut watcher in self.watchers {
            if tokio::time::timeout(WATCHER_STOP_TIMEOUT, &mut watcher)
                .await
                .is_err()
            {
                tracing::warn!("watch folder did not stop in time; leaving it");
                watcher.abort();
            }
        }
        // A scan on the blocking pool may be adding a torrent right now (it upgrades its weak
        // reference for the length of one `add`): give it a moment to let go.
        let mut session = self.session;
        for _ in 0..SESSION_RELEASE_TRIES {
            match Arc::try_unwrap(session) {
                Ok(s) => {
                    let started = std::time::Instant::now();
                    s.shutdown(SHUTDOWN_TIMEOUT).await;
                    let ms = started.elapsed().as_millis() as u64;
                    tracing::info!(ms, "every torrent stopped");
                    return;
                }
                Err(still_shared) => {
                    session = still_shared;
                    tokio::time::sleep(SESSION_RELEASE_DELAY).await;
                }
            }
        }
        tracing::error!("session still in use at shutdown; not flushed");
    }
}

/// Headless: status lines on stdout until a stop signal.
async fn headless_serve(
    running: Running,
    mut events: mpsc::UnboundedReceiver<FolderEvent>,
    mut signals: Signals,
    s: &Settings,
) -> anyhow::Result<()> {
    let mut status = tokio::time::interval(Duration::from_secs_f64(s.status_interval));
    let mut errors = ErrorLines::default();
    let mut shown = ShownLines::default();
    loop {
        // A reader that went away (`zigtorrent run | head`) is a stop request: take the
        // graceful path rather than dying on the next write.
        let open = tokio::select! {
            sig = signals.recv() => {
                tracing::info!(signal = sig, "stopping");
                break;
            }
            Some(ev) = events.recv() => print_folder_event(&ev),
            _ = status.tick() => {
                let (mut lines, mut problems) = (Vec::new(), Vec::new());
                let gone = shown.update(&running.session, |st, fresh| {
                    errors.see(st, &mut problems);
                    status_lines(st, s.status_bytes, fresh);
                }, &mut lines);
                errors.forget(&gone);
                for line in problems {
                    // A closed stderr is no reason to stop; stdout decides that.
                    let _ = writeln!(std::io::stderr(), "{line}");
                }
                lines.sort_unstable();
                emit(&lines)
            }
        };
        if !open {
            tracing::info!("stdout closed; stopping");
            break;
        }
    }
    emit(&["stopping…".to_string()]);
    // A second signal while stopping exits at once; finished files are already complete.
    tokio::spawn(async move {
        signals.recv().await;
        let _ = writeln!(std::io::stderr(), "forced exit");
        std::process::exit(130);
    });
    running.shutdown().await;
    emit(&["stopped".to_string()]);
    Ok(())
}

/// The status lines last printed for each torrent. A torrent's lines are printed when they
/// change (and when it appears), not again every interval: a session of thousands of seeds
/// nobody wants would otherwise print (and format) thousands of identical lines every two
/// seconds, which cost more than the torrents themselves.
#[derive(Default)]
struct ShownLines {
    /// The lines last printed for each torrent.
    torrents: HashMap<InfoHash, Vec<String>>,
    /// Where to ask the session for changes from next (`None`: look at every torrent).
    next: Option<u64>,
}

impl ShownLines {
    /// Visit each torrent whose status changed since the last call (all of them the first
    /// time), as the session's change log names them: `render` gets its status and fills its
    /// lines; those that differ from the last printed go to `out`. Returns the torrents gone
    /// since. At rest nothing is visited: 10,000 torrents looked at every interval were most
    /// of an idle session's CPU.
    fn update(
        &mut self,
        session: &zigtorrent_engine::Session,
        mut render: impl FnMut(&TorrentStatus, &mut Vec<String>),
        out: &mut Vec<String>,
    ) -> Vec<InfoHash> {
        let changes = session.status_changes(self.next);
        self.next = Some(changes.next);
        let mut gone = Vec::new();
        match changes.changed {
            None => {
                let mut present = HashSet::new();
                session.for_each_torrent(|t| {
                    present.insert(t.info_hash());
                    self.show(t, &mut render, out);
                });
                self.torrents.retain(|h, _| {
                    let keep = present.contains(h);
                    if !keep {
                        gone.push(*h);
                    }
                    keep
                });
            }
            Some(changed) => {
                for h in changed {
                    match session.torrent(&h) {
                        Some(t) => self.show(&t, &mut render, out),
                        None => {
                            if self.torrents.remove(&h).is_some() {
                                gone.push(h);
                            }
                        }
                    }
                }
            }
        }
        gone
    }

    /// Render one torrent; its lines go to `out` if they differ from the last printed.
    fn show(
        &mut self,
        t: &zigtorrent_engine::TorrentHandle,
        render: &mut impl FnMut(&TorrentStatus, &mut Vec<String>),
        out: &mut Vec<String>,
    ) {
        let mut lines = Vec::new();
        t.with_status(|st| render(st, &mut lines));
        let shown = self.torrents.entry(t.info_hash()).or_default();
        if lines != *shown {
            out.extend(lines.iter().cloned());
            *shown = lines;
        }
    }
}

/// Write lines to stdout; false once stdout is gone (the caller stops). Never panics.
fn emit(lines: &[String]) -> bool {
    let mut out = std::io::stdout().lock();
    lines.iter().all(|l| writeln!(out, "{l}").is_ok()) && out.flush().is_ok()
}

/// One line per folder event; false once stdout is gone. Names and reasons come from files
/// and trackers, so control characters are replaced before they reach a terminal.
fn print_folder_event(ev: &FolderEvent) -> bool {
    match ev {
        FolderEvent::Added {
            path,
            name,
            info_hash,
        } => emit(&[format!(
            "added {} ({info_hash}) from {}",
            format::printable(name),
            format::printable(&path.display().to_string())
        )]),
        FolderEvent::Failed { path, reason } => {
            // A closed stderr is no reason to stop; stdout decides that.
            let _ = writeln!(
                std::io::stderr(),
                "{}",
                error_line(&path.display().to_string(), reason)
            );
            true
        }
        FolderEvent::Duplicate { path, of, name, .. } => emit(&[format!(
            "duplicate: {} holds {}, already loaded from {}",
            format::printable(&path.display().to_string()),
            format::printable(name),
            format::printable(&of.display().to_string())
        )]),
        FolderEvent::Cleared { .. } => true,
    }
}

/// Headless: one `error: <name>: <reason>` line on stderr when a torrent enters an error
/// state, not one per status interval. The same error is reported again only after the
/// torrent left it (a recheck that failed the same way twice is two events).
/// Likewise one `note: <name>: not moved to <dir>: <why>` line when a finished torrent could
/// not move to the completed folder.
#[derive(Default)]
struct ErrorLines {
    reported: HashMap<InfoHash, String>,
    notes: HashMap<InfoHash, String>,
}

impl ErrorLines {
    /// The lines to print for this snapshot.
    #[cfg(test)]
    fn report(&mut self, torrents: &[TorrentStatus]) -> Vec<String> {
        let mut lines = Vec::new();
        for t in torrents {
            self.see(t, &mut lines);
        }
        let gone: Vec<InfoHash> = self
            .reported
            .keys()
            .chain(self.notes.keys())
            .filter(|h| !torrents.iter().any(|t| t.info_hash == **h))
            .copied()
            .collect();
        self.forget(&gone);
        lines
    }

    /// Add the lines `t` needs now to `lines`.
    fn see(&mut self, t: &TorrentStatus, lines: &mut Vec<String>) {
        if let Some(note) = &t.move_refused {
            if self.notes.get(&t.info_hash) != Some(note) {
                lines.push(format!(
                    "note: {}: {}",
                    format::printable(&t.name),
                    format::printable(note)
                ));
                self.notes.insert(t.info_hash, note.clone());
            }
        }
        let TorrentState::Error(reason) = &t.state else {
            self.reported.remove(&t.info_hash);
            return;
        };
        if self.reported.get(&t.info_hash) == Some(reason) {
            return;
        }
        lines.push(error_line(&t.name, reason));
        self.reported.insert(t.info_hash, reason.clone());
    }

    /// Forget torrents that are gone (one added again is reported again).
    fn forget(&mut self, gone: &[InfoHash]) {
        for h in gone {
            self.reported.remove(h);
            self.notes.remove(h);
        }
    }
}

/// `error: <name>: <reason>`, control characters replaced (both come from the torrent or
/// from the file system).
fn error_line(name: &str, reason: &str) -> String {
    format!(
        "error: {}: {}",
        format::printable(name),
        format::printable(reason)
    )
}

/// One line per torrent: `<name>: <pct>% down <rate> up <rate> peers <c>/<k> <state>`
/// (scripts parse it); with `bytes`, also `bytes <name>: have N downloaded N wasted N
/// all-time down N up N`.
/// The status line(s) of one torrent (see [`headless_serve`]).
fn status_lines(s: &TorrentStatus, bytes: bool, lines: &mut Vec<String>) {
    {
        let state = match &s.state {
            TorrentState::Checking { progress } => format!("checking {:.0}%", progress * 100.0),
            TorrentState::Error(e) => format!("error: {}", format::printable(e)),
            TorrentState::Finished(goal) => format!("done ({})", goal.label()),
            other => other.label().to_string(),
        };
        let name = format::printable(&s.name);
        lines.push(format!(
            "{}: {:.1}% down {} up {} peers {}/{} {}",
            name,
            s.progress() * 100.0,
            format::rate(s.download_rate),
            format::rate(s.upload_rate),
            s.peers_connected,
            s.peers_known,
            state
        ));
        if bytes {
            lines.push(format!(
                "bytes {}: have {} downloaded {} wasted {} all-time down {} up {}",
                name,
                s.have_bytes,
                s.downloaded,
                s.wasted,
                s.all_time_downloaded,
                s.all_time_uploaded
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn torrent(byte: u8, name: &str, state: TorrentState) -> TorrentStatus {
        let mut t = TorrentStatus::new(name.to_string(), InfoHash([byte; 20]), 100, 1);
        t.state = state;
        t
    }

    #[test]
    fn a_torrent_error_is_one_line_per_distinct_error() {
        let mut errors = ErrorLines::default();
        let broken = |reason: &str| torrent(1, "pack\x1b[2J", TorrentState::Error(reason.into()));
        let fine = torrent(2, "fine", TorrentState::Downloading);
        assert!(errors.report(std::slice::from_ref(&fine)).is_empty());
        let first = errors.report(&[
            broken("cannot open storage: /d/pack: Not a directory"),
            fine.clone(),
        ]);
        assert_eq!(
            first,
            vec!["error: pack?[2J: cannot open storage: /d/pack: Not a directory".to_string()]
        );
        // The same error on later status ticks: nothing more.
        for _ in 0..3 {
            assert!(errors
                .report(&[
                    broken("cannot open storage: /d/pack: Not a directory"),
                    fine.clone()
                ])
                .is_empty());
        }
        // Another error is another line; leaving the error state and failing again as well.
        assert_eq!(errors.report(&[broken("recheck failed: gone")]).len(), 1);
        assert!(errors
            .report(&[torrent(1, "pack", TorrentState::Checking { progress: 0.0 })])
            .is_empty());
        assert_eq!(errors.report(&[broken("recheck failed: gone")]).len(), 1);
    }

    #[test]
    fn a_refused_move_is_one_note() {
        let mut lines = ErrorLines::default();
        let mut t = torrent(3, "kept", TorrentState::Seeding);
        assert!(lines.report(std::slice::from_ref(&t)).is_empty());
        t.move_refused = Some("not moved to /done: /dl/kept/a: found in place".into());
        assert_eq!(
            lines.report(std::slice::from_ref(&t)),
            ["note: kept: not moved to /done: /dl/kept/a: found in place"]
        );
        assert!(lines.report(std::slice::from_ref(&t)).is_empty(), "once");
    }
}
