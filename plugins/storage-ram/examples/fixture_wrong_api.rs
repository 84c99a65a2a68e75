//! Test fixture: a library with the right entry point declaring plugin API version 999, as a
//! library built for a future (or long gone) plugin interface would. The loader must refuse it
//! after reading only the version field.
// `no_mangle` is how the loader finds the entry point; the function returns a static.
#![allow(unsafe_code)]

use zigtorrent_engine::plugin::{PluginDeclaration, PluginRegistrar};

/// The entry point, with a declaration the loader must refuse.
#[no_mangle]
pub extern "C" fn zigtorrent_plugin_v1() -> *const PluginDeclaration {
    static DECLARATION: PluginDeclaration = PluginDeclaration {
        api_version: 999,
        ..PluginDeclaration::current(register)
    };
    &DECLARATION
}

fn register(_: &mut PluginRegistrar) -> Result<(), String> {
    Err("a plugin with the wrong API version must never be registered".into())
}
