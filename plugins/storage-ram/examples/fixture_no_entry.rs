//! Test fixture: a perfectly good dynamic library that is not a ZigTorrent plugin (it exports
//! no `zigtorrent_plugin_v1`). The loader must say so.
// `no_mangle` gives the library one exported symbol, so it is not empty.
#![allow(unsafe_code)]

/// Some unrelated exported function.
#[no_mangle]
pub extern "C" fn not_a_zigtorrent_plugin() -> u32 {
    42
}
