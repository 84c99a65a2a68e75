//! The plugin libraries tests load, built on demand.
//!
//! Tests cannot count on `cargo test --workspace` having built the cdylib members before they
//! run (nor on it building them at all under `-p`), so the first test that needs one runs
//! `cargo build -p zigtorrent-plugin-storage-ram --lib --examples` with the cargo that is
//! running the tests, into the same target folder and profile, once per test process.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The package holding the example plugin and the loader's fixtures.
pub const PLUGIN_PACKAGE: &str = "zigtorrent-plugin-storage-ram";

/// Paths of the built libraries.
#[derive(Debug)]
pub struct BuiltPlugins {
    /// The example plugin: the `ram` storage.
    pub ram: PathBuf,
    /// A library whose entry point declares plugin API version 999.
    pub wrong_api: PathBuf,
    /// A library without the entry point.
    pub no_entry: PathBuf,
}

/// Build the plugin package (once per process) and return where its libraries are.
pub fn built_plugins() -> &'static BuiltPlugins {
    static BUILT: OnceLock<BuiltPlugins> = OnceLock::new();
    BUILT.get_or_init(build)
}

fn build() -> BuiltPlugins {
    // Test binaries live in `<target>/[<triple>/]<profile>/deps/`.
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary is in <target>/<profile>/deps")
        .to_path_buf();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile folder name")
        .to_string();
    let above = profile_dir.parent().expect("target folder");
    // Cargo leaves CACHEDIR.TAG and .rustc_info.json at the root of a target folder. Only when
    // they are one level higher were the tests built with `--target <triple>`.
    let is_root = |d: &Path| d.join("CACHEDIR.TAG").exists() || d.join(".rustc_info.json").exists();
    let (target_dir, triple) = match above.parent() {
        Some(up) if !is_root(above) && is_root(up) => (
            up.to_path_buf(),
            above.file_name().and_then(|n| n.to_str()).map(String::from),
        ),
        _ => (above.to_path_buf(), None),
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace");
    let mut cmd = Command::new(env!("CARGO"));
    // Cargo gives the test process variables describing the test's package. Build scripts of
    // dependencies (ring's) ask to rerun when some of them change, so passing them on would
    // rebuild half the tree on every alternation between `cargo test` and this build.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let describes_test = [
            "CARGO_MANIFEST_",
            "CARGO_PKG_",
            "CARGO_CRATE_NAME",
            "CARGO_BIN_",
            "CARGO_PRIMARY_PACKAGE",
            "CARGO_TARGET_TMPDIR",
            "CARGO_RUSTC_CURRENT_DIR",
        ]
        .iter()
        .any(|p| key.starts_with(p));
        if describes_test {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(workspace)
        .args([
            "build",
            "--quiet",
            "-p",
            PLUGIN_PACKAGE,
            "--lib",
            "--examples",
        ])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    if let Some(t) = &triple {
        cmd.args(["--target", t]);
    }
    let out = cmd.output().expect("run cargo to build the plugin");
    assert!(
        out.status.success(),
        "building {PLUGIN_PACKAGE} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = |dir: &Path, name: &str| {
        let file = format!(
            "{}{name}{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        );
        let path = dir.join(file);
        assert!(path.is_file(), "{} was not built", path.display());
        path
    };
    BuiltPlugins {
        ram: lib(&profile_dir, "zigtorrent_plugin_storage_ram"),
        wrong_api: lib(&profile_dir.join("examples"), "fixture_wrong_api"),
        no_entry: lib(&profile_dir.join("examples"), "fixture_no_entry"),
    }
}
