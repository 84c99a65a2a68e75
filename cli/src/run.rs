//! `zigtorrent run`: merge the options, start a session and the watch folder, then hand over to
//! the terminal menu or to headless status lines; both end through [`Running::shutdown`].

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zigtorrent_engine::metainfo::MAX_TORRENT_SIZE;
use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{Metainfo, TorrentState, TorrentStatus, TransportOptions};

pub use crate::settings::RunArgs;
use crate::settings::Settings;
use crate::watch::{self, FolderEvent};
use crate::{format, tui};

/// How long a graceful stop may take before we exit anyway (DESIGN: exit within 5 s).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
/// Name of the log file in the state folder while the menu is up.
pub const LOG_FILE: &str = "zigtorrent.log";

/// Parse a .torrent file, naming the file in every error.
pub fn load_torrent(path: &Path) -> anyhow::Result<Metainfo> {
    let bytes = crate::read_file(path, MAX_TORRENT_SIZE as u64)?;
    Metainfo::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// Entry point of `zigtorrent run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
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
    let headless = s.headless || !std::io::stdout().is_terminal();
    let registry = crate::backends::registry_with_plugins(&s.plugins)?;
    let transport = registry
        .transport(&s.transport, &TransportOptions::default())?
        .context("cannot start transport")?;
    let backend = registry.storage(&s.storage)?;
    for (what, dir) in [
        ("torrents", &s.torrents),
        ("downloads", &s.downloads),
        ("state", &s.state),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {what} folder {}", dir.display()))?;
        if !dir.is_dir() {
            bail!("{what} folder {} is not a directory", dir.display());
        }
    }
    init_logging(&s, headless)?;
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
        let session = Session::start(config, transport, backend, TrackerClient::new()).await?;
        let signals = Signals::new()?;
        let (running, events) = Running::start(session, &s);
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
    result
}

fn init_logging(s: &Settings, headless: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&s.log_level)
        .with_context(|| format!("bad log level '{}'", s.log_level))?;
    if headless {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
    } else {
        // The menu owns the screen: logs go to a file so they never garble it.
        let path = s.state.join(LOG_FILE);
        let file = crate::logfile::RotatingLog::open(&path, crate::logfile::MAX_BYTES)
            .with_context(|| format!("cannot open log file {}", path.display()))?;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(file)
            .init();
    }
    Ok(())
}

/// The stop signals: SIGINT, SIGTERM, SIGHUP.
pub struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        Ok(Signals {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            hup: signal(SignalKind::hangup()).context("cannot handle SIGHUP")?,
        })
    }

    /// Wait for any of them; returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
            _ = self.hup.recv() => "SIGHUP",
        }
    }
}

/// A session with its watch folder running.
pub struct Running {
    /// The session (shared with the watcher and with actions in flight).
    pub session: Arc<Session>,
    watcher: JoinHandle<()>,
    stop_watcher: tokio::sync::watch::Sender<bool>,
}

impl Running {
    fn start(session: Session, s: &Settings) -> (Running, mpsc::UnboundedReceiver<FolderEvent>) {
        let session = Arc::new(session);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop_watcher, stop) = tokio::sync::watch::channel(false);
        let watcher = tokio::spawn(watch::run_watcher(
            s.torrents.clone(),
            session.clone(),
            tx,
            stop,
        ));
        (
            Running {
                session,
                watcher,
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
    /// Everything else holding the session must be gone by now.
    pub async fn shutdown(self) {
        let _ = self.stop_watcher.send(true);
        let _ = self.watcher.await;
        match Arc::try_unwrap(self.session) {
            Ok(session) => session.shutdown(SHUTDOWN_TIMEOUT).await,
            Err(_) => tracing::error!("session still in use at shutdown; not flushed"),
        }
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
    loop {
        // A reader that went away (`zigtorrent run | head`) is a stop request: take the
        // graceful path rather than dying on the next write.
        let open = tokio::select! {
            sig = signals.recv() => {
                tracing::info!(signal = sig, "stopping");
                break;
            }
            Some(ev) = events.recv() => print_folder_event(&ev),
            _ = status.tick() => print_status(&running.snapshot(), s.status_bytes),
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
                "error: {}: {}",
                format::printable(&path.display().to_string()),
                format::printable(reason)
            );
            true
        }
        FolderEvent::Duplicate { path, of, name } => emit(&[format!(
            "duplicate: {} holds {}, already loaded from {}",
            format::printable(&path.display().to_string()),
            format::printable(name),
            format::printable(&of.display().to_string())
        )]),
        FolderEvent::Cleared { .. } => true,
    }
}

/// One line per torrent: `<name>: <pct>% down <rate> up <rate> peers <c>/<k> <state>`
/// (scripts parse it); with `bytes`, also `bytes <name>: have N downloaded N wasted N`.
fn print_status(torrents: &[TorrentStatus], bytes: bool) -> bool {
    let mut lines: Vec<String> = Vec::new();
    for s in torrents {
        let state = match &s.state {
            TorrentState::Checking { progress } => format!("checking {:.0}%", progress * 100.0),
            TorrentState::Error(e) => format!("error: {}", format::printable(e)),
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
                "bytes {}: have {} downloaded {} wasted {}",
                name, s.have_bytes, s.downloaded, s.wasted
            ));
        }
    }
    lines.sort();
    emit(&lines)
}
