//! Records the compiler that builds the engine, so a plugin and the binary loading it can prove
//! they were built by the same `rustc` (see `src/plugin.rs`: Rust trait objects have no stable
//! ABI, so this is part of what makes loading a plugin sound).

use std::process::Command;

fn main() {
    // Cargo tells build scripts which compiler builds the crate; ask that one, not whatever
    // `rustc` is first on PATH.
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty() && !v.contains('\0'));
    let Some(version) = version else {
        panic!("cannot run `{rustc} -V` to record the compiler version for plugin checks");
    };
    println!("cargo:rustc-env=ZIGTORRENT_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
