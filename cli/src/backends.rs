//! The built-in backends, registered by name, plus whatever `--plugin` libraries add.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use zigtorrent_engine::transport_pair::{TransportPair, DEFAULT_HEAD_START};
use zigtorrent_engine::{MemoryBackend, Origin, Registry};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_transport_tcp::TcpTransport;
use zigtorrent_transport_utp::UtpTransport;

/// The selector `--transport both`: uTP and TCP on one port number, uTP tried first.
pub const BOTH: &str = "both";

/// A registry holding every backend compiled into this binary.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    // Names are distinct constants, so registration cannot collide.
    r.register_transport(
        zigtorrent_transport_tcp::NAME,
        Origin::BuiltIn,
        Arc::new(|o| Ok(Arc::new(TcpTransport::new(o)))),
    )
    .expect("built-in names are unique");
    r.register_transport(
        zigtorrent_transport_utp::NAME,
        Origin::BuiltIn,
        Arc::new(|o| Ok(Arc::new(UtpTransport::new(o)))),
    )
    .expect("built-in names are unique");
    r.register_transport(
        BOTH,
        Origin::BuiltIn,
        Arc::new(|o| {
            Ok(Arc::new(TransportPair::new(
                BOTH,
                Arc::new(UtpTransport::new(o)),
                Arc::new(TcpTransport::new(o)),
                DEFAULT_HEAD_START,
            )))
        }),
    )
    .expect("built-in names are unique");
    r.register_storage(Origin::BuiltIn, Arc::new(FsBackend::new()))
        .expect("built-in names are unique");
    r.register_storage(Origin::BuiltIn, Arc::new(MemoryBackend::new()))
        .expect("built-in names are unique");
    r
}

/// The built-in backends plus every plugin in `paths`, loaded in order. The first plugin that
/// cannot be loaded is the error (it names the library and what is wrong).
pub fn registry_with_plugins(paths: &[PathBuf]) -> anyhow::Result<Registry> {
    let mut r = registry();
    for path in paths {
        let loaded = zigtorrent_engine::plugin::load(&mut r, path)?;
        tracing::info!(
            plugin = %loaded.path.display(),
            transports = ?loaded.transports,
            storages = ?loaded.storages,
            "plugin loaded"
        );
    }
    Ok(r)
}

/// Arguments of `zigtorrent backends`.
#[derive(Args, Debug)]
pub struct BackendsArgs {
    /// Load backends from this plugin library first (repeatable).
    #[arg(long = "plugin", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,
}

/// `zigtorrent backends`: every selectable transport and storage, one per line, with where it
/// came from (`built-in` or the plugin's path).
pub fn list(args: &BackendsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let registry = registry_with_plugins(&args.plugins)?;
    let mut out = std::io::stdout().lock();
    for (name, origin) in registry.transports() {
        writeln!(out, "transport {name} ({origin})")?;
    }
    for (name, origin) in registry.storages() {
        writeln!(out, "storage {name} ({origin})")?;
    }
    Ok(())
}
