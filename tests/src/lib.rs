//! Shared helpers for ZigTorrent's cross-crate tests.
