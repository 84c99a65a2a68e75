//! Options of `zigtorrent run`, merged in layers: built-in defaults < `zigtorrent.toml` (XDG
//! config folder, then the working directory, or only `--config FILE`) < `ZIGTORRENT_*`
//! environment variables < command-line flags.
//!
//! Flags are all `Option`s so that a flag the user did not give never hides a file or
//! environment value; the defaults live here, in one place.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use config::{Config, Environment, File, FileFormat};
use serde::{Deserialize, Deserializer, Serialize};
use zigtorrent_engine::EncryptionPolicy;

/// File name looked for in the working directory and the XDG config folder.
pub const CONFIG_FILE: &str = "zigtorrent.toml";
/// Prefix of the environment variables (`ZIGTORRENT_LISTEN=7000`).
const ENV_PREFIX: &str = "ZIGTORRENT";

/// Arguments of `zigtorrent run`. Every option can also come from the config file or the
/// environment; see `--print-config`.
#[derive(Args, Debug, Default)]
pub struct RunArgs {
    #[command(flatten)]
    folders: FolderArgs,
    /// Transport backend: tcp, utp, or both (uTP first, TCP fallback) [default: both].
    #[arg(long)]
    transport: Option<String>,
    /// Storage backend [default: fs].
    #[arg(long)]
    storage: Option<String>,
    /// Listening port; the next free one is used if taken [default: 6881].
    #[arg(long, value_name = "PORT")]
    listen: Option<u16>,
    /// Address to listen on [default: 0.0.0.0].
    #[arg(long, value_name = "IP")]
    bind: Option<IpAddr>,
    /// A peer to add to every torrent (repeatable).
    #[arg(long = "peer", value_name = "IP:PORT")]
    peers: Vec<SocketAddr>,
    /// Load backends from this plugin library before selecting them (repeatable; added after
    /// the config file's `plugins`).
    #[arg(long = "plugin", value_name = "PATH")]
    plugins: Vec<PathBuf>,
    /// Print status lines instead of the terminal menu (always so when stdout is not a terminal).
    #[arg(long)]
    headless: bool,
    /// Seconds between status lines in headless mode, fractions allowed [default: 2].
    #[arg(long, value_name = "SECONDS")]
    status_interval: Option<f64>,
    /// Also print `bytes <name>: have N downloaded N wasted N` lines in headless mode.
    #[arg(long)]
    status_bytes: bool,
    /// Run no DHT node (BEP 5): peers come from trackers, peer exchange and `--peer` only.
    #[arg(long)]
    no_dht: bool,
    /// No peer exchange (BEP 11) with connected peers.
    #[arg(long)]
    no_pex: bool,
    /// No local service discovery (BEP 14 multicast on the LAN).
    #[arg(long)]
    no_lsd: bool,
    /// Message stream encryption (MSE/PE): prefer (encrypted first, plaintext fallback; both
    /// accepted), require (RC4 only, both ways), or disable (plaintext only) [default: prefer].
    #[arg(long, value_name = "POLICY")]
    encryption: Option<String>,
    /// A DHT node to bootstrap from, HOST:PORT (repeatable); replaces the public routers and
    /// turns the DHT on (unless --no-dht).
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = parse_host_port)]
    dht_bootstrap: Vec<String>,
    /// Peer connections per torrent [default: 50].
    #[arg(long, value_name = "N")]
    max_peers: Option<usize>,
    /// Peer connections in all [default: 300].
    #[arg(long, value_name = "N")]
    max_peers_total: Option<usize>,
    /// Download limit for the whole session in bytes/s, K/M/G suffixes allowed; 0: none [default: 0].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    download_limit: Option<u64>,
    /// Upload limit for the whole session in bytes/s, K/M/G suffixes allowed; 0: none [default: 0].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    upload_limit: Option<u64>,
    /// Stop seeding a torrent once it uploaded R times its size (all-time; fractions
    /// allowed); 0: no ratio goal [default: 0]. Torrents may have their own.
    #[arg(long, value_name = "R", value_parser = parse_ratio)]
    seed_ratio: Option<f64>,
    /// Stop seeding a torrent after seeding this many minutes (all-time); 0: no time goal
    /// [default: 0].
    #[arg(long, value_name = "MINUTES")]
    seed_time: Option<u64>,
    /// Torrents downloading at once (magnets fetching metadata count); the rest wait queued;
    /// 0: no limit [default: 5].
    #[arg(long, value_name = "N")]
    max_active_downloads: Option<usize>,
    /// Complete torrents seeding at once; the rest wait queued; 0: no limit [default: 0].
    #[arg(long, value_name = "N")]
    max_active_seeds: Option<usize>,
    /// Log filter: error, warn, info, debug, trace, or a tracing filter [default: warn,librqbit_utp=error].
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// When a torrent finishes downloading, run PROGRAM with its name and its path as the two
    /// arguments (no shell; also in the environment as ZIGTORRENT_NAME, ZIGTORRENT_PATH and
    /// ZIGTORRENT_INFO_HASH).
    #[arg(long, value_name = "PROGRAM")]
    on_complete: Option<PathBuf>,
    /// Move each torrent's files here when it finishes downloading (keeping their paths) and
    /// seed from there; only files this client wrote move, never over a name already taken.
    #[arg(long, value_name = "DIR")]
    completed: Option<PathBuf>,
    /// Print the merged options (defaults, file, environment, flags) and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Also run these for this session: magnet links or .torrent files (not remembered for
    /// the next start: put a .torrent or .magnet file in the watch folder for that).
    #[arg(value_name = "SOURCE")]
    pub sources: Vec<String>,
}

/// The folders (and the config file naming them) that `run` works on and `add` hands to.
#[derive(Args, Debug, Default, Clone)]
pub struct FolderArgs {
    /// Watch folder of .torrent and .magnet files [default: torrents].
    #[arg(long, value_name = "DIR")]
    torrents: Option<PathBuf>,
    /// Where downloads go [default: downloads].
    #[arg(long, value_name = "DIR")]
    downloads: Option<PathBuf>,
    /// Where resume state and the log go [default: <downloads>/.zigtorrent].
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// Read options from this file instead of ./zigtorrent.toml and the XDG config folder.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Arguments of `zigtorrent add`: the folders name the client to hand the torrents to, with
/// the same defaults, config file and environment as `run`.
#[derive(Args, Debug, Default)]
pub struct AddArgs {
    #[command(flatten)]
    folders: FolderArgs,
    /// What to add: .torrent files, http(s) URLs of .torrent files, or magnet links.
    #[arg(value_name = "SOURCE", required = true)]
    pub sources: Vec<String>,
}

impl AddArgs {
    /// The client's options, as `run` with the same folder flags would merge them.
    pub fn load(&self) -> anyhow::Result<Settings> {
        let run = RunArgs {
            folders: self.folders.clone(),
            ..RunArgs::default()
        };
        Ok(run.load()?.settings)
    }
}

/// The merged options of `zigtorrent run`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Watch folder.
    pub torrents: PathBuf,
    /// Downloads folder.
    pub downloads: PathBuf,
    /// State folder (resume state, log file); empty until resolved: `<downloads>/.zigtorrent`.
    #[serde(default)]
    pub state: PathBuf,
    /// Transport backend name.
    pub transport: String,
    /// Storage backend name.
    pub storage: String,
    /// Listening port.
    pub listen: u16,
    /// Listening address.
    pub bind: IpAddr,
    /// Peers added to every torrent.
    #[serde(default, deserialize_with = "peers_list")]
    pub peers: Vec<SocketAddr>,
    /// Plugin libraries loaded, in order, before backends are selected.
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
    /// Status lines instead of the menu.
    pub headless: bool,
    /// Seconds between status lines.
    pub status_interval: f64,
    /// Extra byte-count lines in headless mode.
    pub status_bytes: bool,
    /// Run a DHT node.
    pub dht: bool,
    /// DHT bootstrap nodes (HOST:PORT); empty: the public routers.
    #[serde(default)]
    pub dht_bootstrap: Vec<String>,
    /// Local service discovery.
    pub lsd: bool,
    /// Peer exchange.
    pub pex: bool,
    /// Encryption policy: prefer, require or disable.
    pub encryption: String,
    /// Connections per torrent.
    pub max_peers: usize,
    /// Connections in all.
    pub max_peers_total: usize,
    /// Session download limit in bytes/s (0: none).
    #[serde(deserialize_with = "rate_value")]
    pub download_limit: u64,
    /// Session upload limit in bytes/s (0: none).
    #[serde(deserialize_with = "rate_value")]
    pub upload_limit: u64,
    /// Default ratio goal (0: none).
    pub seed_ratio: f64,
    /// Default seeding-time goal in minutes (0: none).
    pub seed_time: u64,
    /// Active downloads at once (0: no limit).
    pub max_active_downloads: usize,
    /// Active seeds at once (0: no limit).
    pub max_active_seeds: usize,
    /// Log filter.
    pub log_level: String,
    /// Program run when a torrent finishes downloading.
    #[serde(default)]
    pub on_complete: Option<PathBuf>,
    /// Folder finished torrents move to (none: they stay in `downloads`).
    #[serde(default)]
    pub completed: Option<PathBuf>,
}

impl Settings {
    /// The encryption policy ([`RunArgs::load`] refused any other name).
    pub fn encryption_policy(&self) -> EncryptionPolicy {
        EncryptionPolicy::from_name(&self.encryption).unwrap_or_default()
    }
}

/// Where the merged options came from, for `--print-config`.
#[derive(Debug)]
pub struct Loaded {
    /// The options.
    pub settings: Settings,
    /// Config files read, in order.
    pub files: Vec<PathBuf>,
}

impl RunArgs {
    /// Merge defaults, config files, the environment and these flags.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        let env = utf8_env(std::env::vars_os())?;
        self.load_with(&env, std::env::current_dir().ok().as_deref())
    }

    /// [`RunArgs::load`] with the environment and working directory given (for tests).
    pub fn load_with(
        &self,
        env: &[(String, String)],
        cwd: Option<&Path>,
    ) -> anyhow::Result<Loaded> {
        let var = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let mut builder = Config::builder()
            .set_default("torrents", "torrents")?
            .set_default("downloads", "downloads")?
            .set_default("state", "")?
            .set_default("transport", crate::backends::BOTH)?
            .set_default("storage", "fs")?
            .set_default("listen", 6881)?
            .set_default("bind", "0.0.0.0")?
            .set_default("peers", Vec::<String>::new())?
            .set_default("plugins", Vec::<String>::new())?
            .set_default("headless", false)?
            .set_default("status_interval", 2.0)?
            .set_default("status_bytes", false)?
            .set_default("dht", true)?
            .set_default("dht_bootstrap", Vec::<String>::new())?
            .set_default("lsd", true)?
            .set_default("pex", true)?
            .set_default("encryption", "prefer")?
            .set_default("max_peers", 50)?
            .set_default("max_peers_total", 300)?
            .set_default("download_limit", 0)?
            .set_default("upload_limit", 0)?
            .set_default("seed_ratio", 0.0)?
            .set_default("seed_time", 0)?
            // Transmission's default (download-queue-size 5): enough to use a fast line, few
            // enough that a folder of many torrents finishes some rather than all slowly.
            .set_default("max_active_downloads", DEFAULT_ACTIVE_DOWNLOADS)?
            // No seed limit by default (as Transmission): an idle seed costs little and the
            // swarms gain.
            .set_default("max_active_seeds", 0)?
            // librqbit-utp warns at every start when the kernel caps its UDP buffer: noise.
            .set_default("log_level", "warn,librqbit_utp=error")?;
        let mut files = Vec::new();
        let explicit = self
            .folders
            .config
            .clone()
            .or_else(|| var("ZIGTORRENT_CONFIG").map(PathBuf::from));
        if let Some(file) = explicit {
            if !file.is_file() {
                bail!("config file {} not found", file.display());
            }
            files.push(file);
        } else {
            let xdg = var("XDG_CONFIG_HOME")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| Path::new(&h).join(".config")));
            let xdg_file = xdg.map(|dir| dir.join("zigtorrent").join(CONFIG_FILE));
            if let Some(f) = &xdg_file {
                files.push(f.clone());
            }
            if let Some(cwd) = cwd {
                let local = cwd.join(CONFIG_FILE);
                // Run from inside the config folder, the working directory's file *is* the
                // user's own: read it once, as that.
                if local.is_file() && !same_file(&local, xdg_file.as_deref()) {
                    refuse_plugins_in_working_directory(&local, xdg_file.as_deref())?;
                    files.push(local);
                }
            }
            files.retain(|f| f.is_file());
        }
        for f in &files {
            check_file_keys(f)?;
            builder = builder.add_source(File::from(f.as_path()).format(FileFormat::Toml));
        }
        let env_map = settings_env(env)?;
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .source(Some(env_map))
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("peers")
                .with_list_parse_key("plugins")
                .with_list_parse_key("dht_bootstrap"),
        );
        builder = builder
            .set_override_option("torrents", path_flag("--torrents", &self.folders.torrents)?)?
            .set_override_option(
                "downloads",
                path_flag("--downloads", &self.folders.downloads)?,
            )?
            .set_override_option("state", path_flag("--state", &self.folders.state)?)?
            .set_override_option("transport", self.transport.clone())?
            .set_override_option("storage", self.storage.clone())?
            .set_override_option("listen", self.listen)?
            .set_override_option("bind", self.bind.map(|b| b.to_string()))?
            .set_override_option("headless", self.headless.then_some(true))?
            .set_override_option("dht", self.no_dht.then_some(false))?
            .set_override_option("lsd", self.no_lsd.then_some(false))?
            .set_override_option("pex", self.no_pex.then_some(false))?
            .set_override_option("encryption", self.encryption.clone())?
            .set_override_option("status_interval", self.status_interval)?
            .set_override_option("status_bytes", self.status_bytes.then_some(true))?
            .set_override_option("max_peers", self.max_peers.map(|n| n as u64))?
            .set_override_option("max_peers_total", self.max_peers_total.map(|n| n as u64))?
            .set_override_option("download_limit", self.download_limit)?
            .set_override_option("upload_limit", self.upload_limit)?
            .set_override_option("seed_ratio", self.seed_ratio)?
            .set_override_option("seed_time", self.seed_time)?
            .set_override_option(
                "max_active_downloads",
                self.max_active_downloads.map(|n| n as u64),
            )?
            .set_override_option("max_active_seeds", self.max_active_seeds.map(|n| n as u64))?
            .set_override_option("log_level", self.log_level.clone())?
            .set_override_option(
                "on_complete",
                path_flag("--on-complete", &self.on_complete)?,
            )?
            .set_override_option("completed", path_flag("--completed", &self.completed)?)?;
        if !self.dht_bootstrap.is_empty() {
            // Naming bootstrap nodes on the command line asks for a DHT.
            builder = builder
                .set_override("dht_bootstrap", self.dht_bootstrap.clone())?
                .set_override("dht", !self.no_dht)?;
        }
        if !self.peers.is_empty() {
            let peers: Vec<String> = self.peers.iter().map(|p| p.to_string()).collect();
            builder = builder.set_override("peers", peers)?;
        }
        let mut settings: Settings = builder
            .build()
            .context("cannot read configuration")?
            .try_deserialize()
            .context("bad configuration")?;
        // Flags add to the file's plugins rather than replace them: each names one more library.
        settings.plugins.extend(self.plugins.iter().cloned());
        if settings.state.as_os_str().is_empty() {
            settings.state = settings.downloads.join(".zigtorrent");
        }
        for node in &settings.dht_bootstrap {
            parse_host_port(node).map_err(|e| anyhow::anyhow!("dht_bootstrap: {e}"))?;
        }
        if let Some(program) = &settings.on_complete {
            crate::hook::check_program(program).context("on_complete")?;
        }
        if EncryptionPolicy::from_name(&settings.encryption).is_none() {
            bail!(
                "encryption: {:?} is not one of prefer, require, disable",
                settings.encryption
            );
        }
        check_ratio(settings.seed_ratio, &settings.seed_ratio.to_string())
            .map_err(|e| anyhow::anyhow!("seed_ratio: {e}"))?;
        if settings.seed_time > MAX_SEED_TIME_MINUTES {
            bail!("seed_time: at most {MAX_SEED_TIME_MINUTES} minutes (0: no time goal)");
        }
        if !settings.status_interval.is_finite() || settings.status_interval < 0.05 {
            bail!("status_interval must be at least 0.05 seconds");
        }
        Ok(Loaded { settings, files })
    }
}

/// `HOST:PORT` (IPv6 literals in brackets), a port from 1 to 65535.
fn parse_host_port(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: the port must be a number from 1 to 65535"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.len() > 253 || host.contains(char::is_whitespace) {
        return Err(format!("{s:?}: no usable host"));
    }
    if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!(
            "{s:?}: an IPv6 address must be in brackets, e.g. [::1]:6881"
        ));
    }
    Ok(format!(
        "{}:{port}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    ))
}

/// The keys of [`Settings`]: what `zigtorrent.toml` may hold, and (upper-cased, after
/// `ZIGTORRENT_`) the environment variables read.
const KEYS: &[&str] = &[
    "torrents",
    "downloads",
    "state",
    "transport",
    "storage",
    "listen",
    "bind",
    "peers",
    "plugins",
    "headless",
    "status_interval",
    "status_bytes",
    "dht",
    "dht_bootstrap",
    "lsd",
    "pex",
    "encryption",
    "max_peers",
    "max_peers_total",
    "download_limit",
    "upload_limit",
    "seed_ratio",
    "seed_time",
    "max_active_downloads",
    "max_active_seeds",
    "log_level",
    "on_complete",
    "completed",
];

/// `ZIGTORRENT_*` variables that are not options: the config file, and the binary used by
/// test scripts.
const ENV_OTHER: &[&str] = &["ZIGTORRENT_CONFIG", "ZIGTORRENT_BIN"];

/// The process environment as strings. Variables that are not UTF-8 are left out (they cannot
/// be ours), except a `ZIGTORRENT_*` one, which is an error.
fn utf8_env(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> anyhow::Result<Vec<(String, String)>> {
    use std::os::unix::ffi::OsStrExt;
    let mut env = Vec::new();
    for (k, v) in vars {
        let ours = k.as_bytes().starts_with(b"ZIGTORRENT_");
        match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => env.push((k, v)),
            (Ok(k), Err(_)) if ours => bail!("environment variable {k} is not valid UTF-8"),
            (Err(k), _) if ours => bail!(
                "environment variable {} has a name that is not valid UTF-8",
                k.to_string_lossy()
            ),
            _ => {}
        }
    }
    Ok(env)
}

/// The `ZIGTORRENT_*` option variables of `env`, for the config crate; an unknown one is an
/// error (a typo would otherwise be ignored).
fn settings_env(env: &[(String, String)]) -> anyhow::Result<HashMap<String, String>> {
    let mut map = HashMap::new();
    for (k, v) in env {
        let Some(key) = k.strip_prefix("ZIGTORRENT_") else {
            continue;
        };
        if ENV_OTHER.contains(&k.as_str()) {
            continue;
        }
        if !KEYS.iter().any(|n| n.to_ascii_uppercase() == key) {
            let known: Vec<String> = KEYS
                .iter()
                .map(|n| format!("ZIGTORRENT_{}", n.to_ascii_uppercase()))
                .chain(ENV_OTHER.iter().map(|n| n.to_string()))
                .collect();
            bail!(
                "unknown environment variable {k}; known: {}",
                known.join(", ")
            );
        }
        map.insert(k.clone(), v.clone());
    }
    Ok(map)
}

/// Fail on a key of config file `file` that is not an option (a typo would otherwise be
/// ignored). A file that is not TOML is left for the config crate to report.
fn check_file_keys(file: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    if let Some(key) = table.keys().find(|k| !KEYS.contains(&k.as_str())) {
        bail!(
            "unknown option '{key}' in {}; known: {}",
            file.display(),
            KEYS.join(", ")
        );
    }
    Ok(())
}

/// Whether `a` and `b` are the same existing file.
fn same_file(a: &Path, b: Option<&Path>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Some(b), Ok(ma)) = (b, std::fs::metadata(a)) else {
        return false;
    };
    std::fs::metadata(b).is_ok_and(|mb| (ma.dev(), ma.ino()) == (mb.dev(), mb.ino()))
}

/// A `zigtorrent.toml` in the working directory may set options but never load a plugin: the
/// working directory may be anyone's (a downloaded archive, a shared folder), and a plugin is
/// code run with the user's rights. Only `--plugin`, `--config FILE` (or `ZIGTORRENT_CONFIG`),
/// `ZIGTORRENT_PLUGINS` and the user's own config folder may name one. Refusing to start says
/// why; silently ignoring the list would leave the user wondering where the backend went.
/// An empty list (as `--print-config` writes it) loads nothing and is allowed.
fn refuse_plugins_in_working_directory(file: &Path, xdg_file: Option<&Path>) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        // Not TOML: the config crate reports it with its position.
        return Ok(());
    };
    let empty = match table.get("plugins") {
        None => true,
        Some(toml::Value::Array(a)) => a.is_empty(),
        Some(toml::Value::String(s)) => s.trim().is_empty(),
        Some(_) => false,
    };
    if !empty {
        let own = xdg_file
            .map(|f| format!(", or in {}", f.display()))
            .unwrap_or_default();
        bail!(
            "{} sets `plugins`, but a config file in the working directory may not load plugins; \
             name them with --plugin, in a file given with --config{own}",
            file.display()
        );
    }
    Ok(())
}

/// A path flag as a string for the config crate; a path that is not UTF-8 is an error rather
/// than silently becoming another path.
fn path_flag(flag: &str, p: &Option<PathBuf>) -> anyhow::Result<Option<String>> {
    match p {
        None => Ok(None),
        Some(p) => match p.to_str() {
            Some(s) => Ok(Some(s.to_string())),
            None => bail!("{flag}: path {} is not valid UTF-8", p.display()),
        },
    }
}

impl Settings {
    /// The merged options as TOML (what `--print-config` prints).
    pub fn to_toml(&self) -> String {
        // Every field is a plain value, so serialising cannot fail.
        toml::to_string(self).expect("settings serialise to TOML")
    }
}

/// Active downloads by default: Transmission's `download-queue-size`.
const DEFAULT_ACTIVE_DOWNLOADS: u64 = 5;
/// Largest seeding-time goal: a century of minutes, far beyond any use, so the seconds never
/// overflow.
const MAX_SEED_TIME_MINUTES: u64 = 100 * 366 * 24 * 60;
/// Largest ratio goal: far beyond any use; torrent records keep ratios in thousandths.
const MAX_SEED_RATIO: f64 = 1_000_000.0;

/// A ratio goal: a number from 0 (no goal) up to [`MAX_SEED_RATIO`], fractions allowed.
pub fn parse_ratio(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("bad ratio '{s}': expected a number such as 2 or 1.5"))?;
    check_ratio(v, s)
}

/// Smallest ratio goal: records keep goals in thousandths.
const MIN_SEED_RATIO: f64 = 0.001;

fn check_ratio(v: f64, s: &str) -> Result<f64, String> {
    if !v.is_finite() || !(0.0..=MAX_SEED_RATIO).contains(&v) || (v > 0.0 && v < MIN_SEED_RATIO) {
        return Err(format!(
            "bad ratio '{s}': expected 0 (no goal) or a number from {MIN_SEED_RATIO} to {MAX_SEED_RATIO}"
        ));
    }
    Ok(v)
}

impl Settings {
    /// The default seeding goals and queue limits as the session takes them (0 means none).
    pub fn queue_config(&self) -> (Option<f64>, Option<Duration>, Option<usize>, Option<usize>) {
        let some = |n: usize| (n > 0).then_some(n);
        (
            (self.seed_ratio > 0.0).then_some(self.seed_ratio),
            (self.seed_time > 0).then(|| Duration::from_secs(self.seed_time * 60)),
            some(self.max_active_downloads),
            some(self.max_active_seeds),
        )
    }
}

/// `500`, `64K`, `1.5M`, `2G` (powers of 1024) → bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_uppercase() {
                'K' => 1024.0,
                'M' => 1024.0 * 1024.0,
                'G' => 1024.0 * 1024.0 * 1024.0,
                _ => return Err(format!("bad rate '{s}': unit must be K, M or G")),
            };
            (&t[..i], mult)
        }
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad rate '{s}': expected a number of bytes/s such as 500K"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad rate '{s}'"));
    }
    Ok((v * mult) as u64)
}

fn rate_value<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_rate(&s).map_err(serde::de::Error::custom),
    }
}

fn peers_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let list = match Raw::deserialize(d)? {
        Raw::One(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| p.trim().to_string())
            .collect(),
        Raw::Many(v) => v,
    };
    list.iter()
        .map(|p| {
            p.parse()
                .map_err(|_| serde::de::Error::custom(format!("bad peer address '{p}'")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        args: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        let mut all = vec!["run"];
        all.extend_from_slice(flags);
        Cmd::parse_from(all).args
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let s = args(&[]).load_with(&[], Some(dir.path())).unwrap().settings;
        assert_eq!(s.torrents, PathBuf::from("torrents"));
        assert_eq!(s.state, PathBuf::from("downloads/.zigtorrent"));
        assert_eq!(s.listen, 6881);
        assert_eq!(s.transport, "both");
        assert_eq!(s.encryption_policy(), EncryptionPolicy::Prefer);
        assert_eq!(s.download_limit, 0);
        assert!(!s.headless);
        assert_eq!(s.log_level, "warn,librqbit_utp=error");
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "listen = 7000\nmax_peers = 10\nlog_level = \"info\"\ndownloads = \"/d\"\n\
             upload_limit = \"1M\"\npeers = [\"127.0.0.1:1\"]\n",
        )
        .unwrap();
        // File only.
        let s = args(&[]).load_with(&[], Some(dir.path())).unwrap().settings;
        assert_eq!((s.listen, s.max_peers), (7000, 10));
        assert_eq!(s.upload_limit, 1024 * 1024);
        assert_eq!(s.state, PathBuf::from("/d/.zigtorrent"));
        assert_eq!(s.peers, vec!["127.0.0.1:1".parse().unwrap()]);
        // Environment over file.
        let e = env(&[
            ("ZIGTORRENT_LISTEN", "7001"),
            ("ZIGTORRENT_LOG_LEVEL", "debug"),
            ("ZIGTORRENT_PEERS", "127.0.0.1:2,127.0.0.1:3"),
            ("ZIGTORRENT_DOWNLOAD_LIMIT", "64K"),
        ]);
        let s = args(&[]).load_with(&e, Some(dir.path())).unwrap().settings;
        assert_eq!((s.listen, s.max_peers), (7001, 10));
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.download_limit, 64 * 1024);
        // Flags over environment; flags not given leave the lower layers alone.
        let s = args(&["--listen", "7002", "--peer", "127.0.0.1:9"])
            .load_with(&e, Some(dir.path()))
            .unwrap()
            .settings;
        assert_eq!(s.listen, 7002);
        assert_eq!(s.log_level, "debug");
        assert_eq!(s.max_peers, 10);
        assert_eq!(s.peers, vec!["127.0.0.1:9".parse().unwrap()]);
    }

    #[test]
    fn encryption_comes_from_every_layer_and_a_bad_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "encryption = \"disable\"\n").unwrap();
        let s = args(&[]).load_with(&[], Some(dir.path())).unwrap().settings;
        assert_eq!(s.encryption_policy(), EncryptionPolicy::Disable);
        let e = env(&[("ZIGTORRENT_ENCRYPTION", "require")]);
        let s = args(&[]).load_with(&e, Some(dir.path())).unwrap().settings;
        assert_eq!(s.encryption_policy(), EncryptionPolicy::Require);
        let s = args(&["--encryption", "prefer"])
            .load_with(&e, Some(dir.path()))
            .unwrap()
            .settings;
        assert_eq!(s.encryption_policy(), EncryptionPolicy::Prefer);
        let err = args(&["--encryption", "forced"])
            .load_with(&[], Some(dir.path()))
            .unwrap_err();
        assert!(
            format!("{err:#}")
                .contains("encryption: \"forced\" is not one of prefer, require, disable"),
            "{err:#}"
        );
    }

    #[test]
    fn explicit_config_file_replaces_the_search() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "listen = 7000\n").unwrap();
        let other = dir.path().join("other.toml");
        std::fs::write(&other, "listen = 8000\n").unwrap();
        let a = args(&["--config", other.to_str().unwrap()]);
        let loaded = a.load_with(&[], Some(dir.path())).unwrap();
        assert_eq!(loaded.settings.listen, 8000);
        assert_eq!(loaded.files, vec![other]);
        let missing = args(&["--config", "/no/such/file.toml"]);
        assert!(missing.load_with(&[], Some(dir.path())).is_err());
    }

    #[test]
    fn xdg_file_is_read_and_the_working_directory_wins() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("xdg");
        std::fs::create_dir_all(xdg.join("zigtorrent")).unwrap();
        std::fs::write(
            xdg.join("zigtorrent").join(CONFIG_FILE),
            "listen = 7100\ntransport = \"tcp\"\nmax_peers = 3\n",
        )
        .unwrap();
        let cwd = dir.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        std::fs::write(cwd.join(CONFIG_FILE), "listen = 7200\n").unwrap();
        let e = env(&[("XDG_CONFIG_HOME", xdg.to_str().unwrap())]);
        let s = args(&[]).load_with(&e, Some(&cwd)).unwrap().settings;
        assert_eq!((s.listen, s.max_peers), (7200, 3));
    }

    #[test]
    fn bad_values_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), "listen = \"many\"\n").unwrap();
        let err = args(&[]).load_with(&[], Some(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("listen"), "{err:#}");
        assert_eq!(parse_rate("1.5K"), Ok(1536));
        assert!(parse_rate("5X").is_err());
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn seeding_goals_and_queue_limits() {
        let dir = tempfile::tempdir().unwrap();
        let s = args(&[]).load_with(&[], Some(dir.path())).unwrap().settings;
        assert_eq!(s.queue_config(), (None, None, Some(5), None));
        let s = args(&[
            "--seed-ratio",
            "1.5",
            "--seed-time",
            "90",
            "--max-active-downloads",
            "0",
            "--max-active-seeds",
            "3",
        ])
        .load_with(&[], Some(dir.path()))
        .unwrap()
        .settings;
        assert_eq!(
            s.queue_config(),
            (Some(1.5), Some(Duration::from_secs(5400)), None, Some(3))
        );
        // From the file and the environment, like every option.
        std::fs::write(
            dir.path().join(CONFIG_FILE),
            "seed_ratio = 2\nmax_active_downloads = 1\n",
        )
        .unwrap();
        let s = args(&[])
            .load_with(&env(&[("ZIGTORRENT_SEED_TIME", "10")]), Some(dir.path()))
            .unwrap()
            .settings;
        assert_eq!(
            s.queue_config(),
            (Some(2.0), Some(Duration::from_secs(600)), Some(1), None)
        );
        // Bad values say which option and why.
        for bad in ["-1", "nan", "inf", "x", "2000000"] {
            let err = parse_ratio(bad).unwrap_err();
            assert!(err.contains("bad ratio"), "{bad}: {err}");
        }
        std::fs::write(dir.path().join(CONFIG_FILE), "seed_ratio = -2\n").unwrap();
        let err = args(&[]).load_with(&[], Some(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("seed_ratio"), "{err:#}");
        std::fs::write(dir.path().join(CONFIG_FILE), "seed_time = -2\n").unwrap();
        let err = args(&[]).load_with(&[], Some(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("seed_time"), "{err:#}");
        std::fs::write(dir.path().join(CONFIG_FILE), "seed_time = 999999999999\n").unwrap();
        let err = args(&[]).load_with(&[], Some(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("seed_time: at most"), "{err:#}");
    }

    #[test]
    fn printed_config_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = args(&["--peer", "127.0.0.1:5", "--upload-limit", "2M"])
            .load_with(&[], Some(dir.path()))
            .unwrap()
            .settings;
        let text = s.to_toml();
        let file = dir.path().join("printed.toml");
        std::fs::write(&file, &text).unwrap();
        let back = args(&["--config", file.to_str().unwrap()])
            .load_with(&[], Some(dir.path()))
            .unwrap()
            .settings;
        assert_eq!(back, s, "{text}");
    }
    #[test]
    fn keys_list_matches_the_settings_fields() {
        let dir = tempfile::tempdir().unwrap();
        // Optional keys are printed only when set.
        let s = args(&["--on-complete", "true", "--completed", "/done"])
            .load_with(&[], Some(dir.path()))
            .unwrap()
            .settings;
        let table: toml::Table = s.to_toml().parse().unwrap();
        let mut fields: Vec<&str> = table.keys().map(|k| k.as_str()).collect();
        let mut keys = KEYS.to_vec();
        // Empty lists are still written as `[]`.
        fields.sort_unstable();
        keys.sort_unstable();
        assert_eq!(fields, keys);
    }

    #[test]
    fn environment_that_is_not_utf8() {
        use std::ffi::{OsStr, OsString};
        use std::os::unix::ffi::OsStrExt;
        let os = |b: &[u8]| OsStr::from_bytes(b).to_os_string();
        let good = (OsString::from("HOME"), OsString::from("/h"));
        // Someone else's bad variable is left out.
        let env = utf8_env(vec![
            (os(b"BAD"), os(b"\xff")),
            (os(b"B\xffD"), os(b"x")),
            good.clone(),
        ])
        .unwrap();
        assert_eq!(env, vec![("HOME".to_string(), "/h".to_string())]);
        // Ours is an error naming it.
        let err = utf8_env(vec![
            good.clone(),
            (os(b"ZIGTORRENT_STATE"), os(b"/a\xffb")),
        ])
        .unwrap_err();
        assert!(format!("{err:#}").contains("ZIGTORRENT_STATE"), "{err:#}");
        assert!(utf8_env(vec![(os(b"ZIGTORRENT_\xff"), os(b"1"))]).is_err());
    }

    #[test]
    fn path_flags_that_are_not_utf8_are_rejected() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        for flag in ["--torrents", "--downloads", "--state"] {
            let a = Cmd::parse_from([
                OsStr::new("run"),
                OsStr::new(flag),
                OsStr::from_bytes(b"/x/a\xffb"),
            ])
            .args;
            let err = a.load_with(&[], Some(dir.path())).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(flag) && msg.contains("UTF-8"), "{msg}");
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(CONFIG_FILE);
        std::fs::write(&file, "listen = 7000\nmax_peer = 5\n").unwrap();
        let err = args(&[]).load_with(&[], Some(dir.path())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("max_peer") && msg.contains(&*file.to_string_lossy()),
            "{msg}"
        );
        // Also through --config.
        let err = args(&["--config", file.to_str().unwrap()])
            .load_with(&[], Some(dir.path()))
            .unwrap_err();
        assert!(format!("{err:#}").contains("max_peer"), "{err:#}");
    }

    #[test]
    fn unknown_environment_variables_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let e = env(&[("ZIGTORRENT_MAXPEERS", "5")]);
        let err = args(&[]).load_with(&e, Some(dir.path())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("ZIGTORRENT_MAXPEERS"), "{msg}");
        assert!(msg.contains("ZIGTORRENT_MAX_PEERS"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        // The test scripts' variables and others' variables are fine.
        let e = env(&[
            ("ZIGTORRENT_BIN", "/bin/zigtorrent"),
            ("ZIGTORRENTX", "1"),
            ("OTHER", "1"),
            ("ZIGTORRENT_MAX_PEERS", "5"),
        ]);
        let s = args(&[]).load_with(&e, Some(dir.path())).unwrap().settings;
        assert_eq!(s.max_peers, 5);
    }

    #[test]
    fn only_the_user_may_name_plugins() {
        let dir = tempfile::tempdir().unwrap();
        let xdg = dir.path().join("xdg");
        let own = xdg.join("zigtorrent");
        std::fs::create_dir_all(&own).unwrap();
        let cwd = dir.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        let e = env(&[("XDG_CONFIG_HOME", xdg.to_str().unwrap())]);
        let plugin_line = "plugins = [\"/tmp/libevil.so\"]\n";

        // In the working directory: refused, naming the file and where plugins may go.
        let local = cwd.join(CONFIG_FILE);
        std::fs::write(&local, format!("listen = 7000\n{plugin_line}")).unwrap();
        let err = args(&[]).load_with(&e, Some(&cwd)).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&*local.to_string_lossy())
                && msg.contains("--plugin")
                && msg.contains(&*own.join(CONFIG_FILE).to_string_lossy()),
            "{msg}"
        );
        assert!(!msg.contains('\n'), "{msg}");
        // Also as a comma-separated string.
        std::fs::write(&local, "plugins = \"/tmp/libevil.so\"\n").unwrap();
        assert!(args(&[]).load_with(&e, Some(&cwd)).is_err());
        // An empty list loads nothing: fine, and the file's other options apply.
        std::fs::write(&local, "listen = 7000\nplugins = []\n").unwrap();
        let s = args(&[]).load_with(&e, Some(&cwd)).unwrap().settings;
        assert_eq!((s.listen, s.plugins.len()), (7000, 0));

        // The same file named with --config, or in the user's config folder: loaded.
        std::fs::write(&local, plugin_line).unwrap();
        let a = args(&["--config", local.to_str().unwrap()]);
        let s = a.load_with(&e, Some(&cwd)).unwrap().settings;
        assert_eq!(s.plugins, vec![PathBuf::from("/tmp/libevil.so")]);
        std::fs::remove_file(&local).unwrap();
        std::fs::write(own.join(CONFIG_FILE), plugin_line).unwrap();
        let s = args(&[]).load_with(&e, Some(&cwd)).unwrap().settings;
        assert_eq!(s.plugins, vec![PathBuf::from("/tmp/libevil.so")]);
        // Run from inside the config folder, that file is still the user's own, read once.
        let loaded = args(&[]).load_with(&e, Some(&own)).unwrap();
        assert_eq!(loaded.settings.plugins.len(), 1);
        assert_eq!(loaded.files, vec![own.join(CONFIG_FILE)]);
    }
}
