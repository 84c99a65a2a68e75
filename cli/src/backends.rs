//! The built-in backends, registered by name.

use std::sync::Arc;

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
