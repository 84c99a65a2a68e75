//! `zigtorrent run`: start a session, load the watch folder, keep it in sync, print status,
//! stop gracefully on a signal.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use zigtorrent_engine::metainfo::MAX_TORRENT_SIZE;
use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::{Metainfo, TorrentHandle, TorrentState, TransportOptions};

use crate::format;

/// How long a graceful stop may take before we exit anyway (DESIGN: exit within 5 s).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(4);
/// How often the watch folder is rescanned.
const RESCAN_INTERVAL: Duration = Duration::from_secs(1);

/// Arguments of `zigtorrent run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Watch folder of .torrent files.
    #[arg(long, default_value = "torrents", value_name = "DIR")]
    torrents: PathBuf,
    /// Where downloads go.
    #[arg(long, default_value = "downloads", value_name = "DIR")]
    downloads: PathBuf,
    /// Where resume state goes [default: <downloads>/.zigtorrent].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Transport backend.
    #[arg(long, default_value = "tcp")]
    transport: String,
    /// Storage backend.
    #[arg(long, default_value = "fs")]
    storage: String,
    /// Load backends from this plugin library before selecting them (repeatable).
    #[arg(long = "plugin", value_name = "PATH")]
    plugins: Vec<PathBuf>,
    /// Listening port (the next free one is used if taken).
    #[arg(long, default_value_t = 6881)]
    listen: u16,
    /// Address to listen on.
    #[arg(long, default_value_t = IpAddr::V4(Ipv4Addr::UNSPECIFIED))]
    bind: IpAddr,
    /// A peer to add to every torrent (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    peers: Vec<SocketAddr>,
    /// Print status lines instead of the terminal menu (the only mode so far).
    #[arg(long)]
    headless: bool,
    /// Seconds between status lines.
    #[arg(long, default_value_t = 2)]
    status_interval: u64,
    /// Peer connections per torrent.
    #[arg(long, default_value_t = 50)]
    max_peers: usize,
    /// Peer connections in all.
    #[arg(long, default_value_t = 300)]
    max_peers_total: usize,
    /// Log filter (error, warn, info, debug, trace, or a tracing filter).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

/// Parse a .torrent file, naming the file in every error.
pub fn load_torrent(path: &Path) -> anyhow::Result<Metainfo> {
    let bytes = crate::read_file(path, MAX_TORRENT_SIZE as u64)?;
    Metainfo::from_bytes(&bytes).with_context(|| format!("{}", path.display()))
}

/// Entry point of `zigtorrent run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("bad --log-level '{}'", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if args.status_interval == 0 {
        bail!("--status-interval must be at least 1 second");
    }
    let registry = crate::backends::registry_with_plugins(&args.plugins)?;
    let options = TransportOptions::default();
    let transport = registry
        .transport(&args.transport, &options)?
        .context("cannot start transport")?;
    let backend = registry.storage(&args.storage)?;
    let state = args
        .state
        .clone()
        .unwrap_or_else(|| args.downloads.join(".zigtorrent"));
    for (what, dir) in [
        ("torrents", &args.torrents),
        ("downloads", &args.downloads),
        ("state", &state),
    ] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {what} folder {}", dir.display()))?;
        if !dir.is_dir() {
            bail!("{what} folder {} is not a directory", dir.display());
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start runtime")?;
    runtime.block_on(async move {
        let mut config = SessionConfig::new(args.downloads.clone(), state);
        config.listen = SocketAddr::new(args.bind, args.listen);
        config.extra_peers = args.peers.clone();
        config.max_peers_per_torrent = args.max_peers;
        config.max_peers_total = args.max_peers_total;
        let session = Session::start(config, transport, backend, TrackerClient::new()).await?;
        println!(
            "listening on port {} ({})",
            session.listen_port(),
            args.transport
        );
        serve(&session, &args).await?;
        println!("stopping…");
        session.shutdown(SHUTDOWN_TIMEOUT).await;
        println!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    // Don't wait for blocking-pool threads still finishing: everything is flushed.
    runtime.shutdown_timeout(Duration::from_millis(200));
    Ok(())
}

/// Run until a stop signal: rescan the folder, print status.
async fn serve(session: &Session, args: &RunArgs) -> anyhow::Result<()> {
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut watch = WatchFolder::new(args.torrents.clone());
    watch.scan(session, true);
    let mut rescan = tokio::time::interval(RESCAN_INTERVAL);
    let mut status = tokio::time::interval(Duration::from_secs(args.status_interval));
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = rescan.tick() => watch.scan(session, false),
            _ = status.tick() => print_status(&session.torrents()),
        }
    }
    // A second signal while stopping exits at once; finished files are already complete.
    tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => {},
            _ = sigterm.recv() => {},
        }
        eprintln!("forced exit");
        std::process::exit(130);
    });
    Ok(())
}

fn print_status(torrents: &[TorrentHandle]) {
    let mut lines: Vec<String> = torrents
        .iter()
        .map(|t| {
            let s = t.status();
            let state = match &s.state {
                TorrentState::Checking { progress } => format!("checking {:.0}%", progress * 100.0),
                TorrentState::Error(e) => format!("error: {e}"),
                other => other.label().to_string(),
            };
            format!(
                "{}: {:.1}% down {} up {} peers {}/{} {}",
                s.name,
                s.progress() * 100.0,
                format::rate(s.download_rate),
                format::rate(s.upload_rate),
                s.peers_connected,
                s.peers_known,
                state
            )
        })
        .collect();
    lines.sort();
    for l in lines {
        println!("{l}");
    }
}

/// What we know of one file in the watch folder.
enum Seen {
    /// Seen once with this size and mtime; taken when a later scan sees the same.
    Settling(u64, Option<SystemTime>),
    /// Loaded as this torrent.
    Loaded,
    /// Could not be used in this version of the file; retried when it changes.
    Failed(u64, Option<SystemTime>),
}

/// The watch folder, rescanned periodically. Files are never modified or deleted.
struct WatchFolder {
    dir: PathBuf,
    seen: HashMap<PathBuf, Seen>,
}

impl WatchFolder {
    fn new(dir: PathBuf) -> Self {
        WatchFolder {
            dir,
            seen: HashMap::new(),
        }
    }

    /// Look for new or changed `.torrent` files. At `startup` files are taken at once; later a
    /// file must keep the same size and mtime across two scans (a download may still be writing).
    fn scan(&mut self, session: &Session, startup: bool) {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read watch folder");
                return;
            }
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x.eq_ignore_ascii_case("torrent"))
                    && p.is_file()
            })
            .collect();
        paths.sort();
        for path in paths {
            let Ok(md) = std::fs::metadata(&path) else {
                continue;
            };
            let (size, mtime) = (md.len(), md.modified().ok());
            let ready = match self.seen.get(&path) {
                Some(Seen::Loaded) => continue,
                Some(Seen::Failed(s, m)) if *s == size && *m == mtime => continue,
                Some(Seen::Settling(s, m)) => *s == size && *m == mtime,
                _ => startup,
            };
            if !ready {
                self.seen.insert(path, Seen::Settling(size, mtime));
                continue;
            }
            let result = load_torrent(&path).and_then(|meta| {
                let name = meta.info.name.clone();
                let handle = session
                    .add(meta)
                    .with_context(|| format!("{}", path.display()))?;
                Ok((handle.info_hash(), name))
            });
            match result {
                Ok((hash, name)) => {
                    println!("added {} ({}) from {}", name, hash, path.display());
                    self.seen.insert(path, Seen::Loaded);
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    self.seen.insert(path, Seen::Failed(size, mtime));
                }
            }
        }
    }
}
