//! uTP (BEP 29) transport for ZigTorrent. Not implemented yet: this crate exists so the
//! workspace layout is complete; `--transport utp` is not registered until it lands.

/// The name this transport will register under.
pub const NAME: &str = "utp";
