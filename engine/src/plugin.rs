//! Backends from dynamic libraries: a plugin adds transports and storages to a [`Registry`] at
//! run time, and they are then selected by name exactly like the built-in ones.
//!
//! # The contract (why loading is `unsafe` underneath, and what makes it sound)
//!
//! A plugin hands the engine Rust trait objects (`Arc<dyn StorageBackend>`, transport
//! factories). Rust has no stable ABI: the layout of `Arc<dyn Trait>`, of its vtable, of
//! `StorageSpec`, `Bytes`, `StorageError` and of the futures `async-trait` boxes may change with
//! the compiler and with the engine's source. So a plugin is only sound to call when it was
//! built
//!
//! 1. by the **same `rustc`** (checked: [`RUSTC_VERSION`], recorded by the engine's `build.rs`
//!    from `$RUSTC -V` on both sides),
//! 2. against the **same `zigtorrent-engine` version** (checked: [`ENGINE_VERSION`]), and with
//!    the same versions of the crates in the engine's public types (`bytes`; the plugin
//!    API version in [`PLUGIN_API_VERSION`] also guards the declaration's own shape) — in
//!    practice: in this workspace, or with its `Cargo.lock`,
//! 3. with neither side setting a `#[global_allocator]`, since memory allocated on one side is
//!    freed on the other (both use the system allocator by default).
//!
//! The loader checks 1 and 2 and the API version before it calls any Rust-ABI code, and
//! refuses a mismatch with a [`PluginError`] naming the library. Only the first part of the
//! declaration ([`PluginDeclaration`]: a `u32` then two C strings) is read before those checks,
//! and that part is `#[repr(C)]`, so reading it is sound whatever built the library.
//!
//! What the checks cannot cover, and plugin authors must know:
//! - A plugin has its **own copy of `std`, tokio and every other crate**. Its statics and
//!   thread-locals are not the host's: `tokio::spawn`, `spawn_blocking`, `tokio::time` and
//!   `tokio::net` called from plugin code find no runtime and panic. Plugin futures must be
//!   runtime-agnostic (do blocking work on a thread of your own and await a
//!   `futures::channel::oneshot`, as the example `ram` plugin does). `tracing` events from a
//!   plugin go to the plugin's own (empty) dispatcher.
//! - A **panic that unwinds out of plugin code into the engine aborts the process** (the two
//!   `std` copies do not recognise each other's panics). Registration is wrapped in
//!   `catch_unwind` by [`declare_plugin!`]; backend methods must not panic.
//! - Loading runs the library's initialisers: only load plugins you trust.
//!
//! # Lifetime
//!
//! Everything a plugin registers is wrapped in a struct holding an `Arc` of the library, so the
//! library outlives what it registered. Beyond that, the library is **never unloaded** (the
//! handle is leaked when the last `Arc` goes): values its code produced can outlive every
//! registered object (a `Bytes` whose vtable is a static in the plugin, a boxed error, a
//! thread-local destructor, a thread it spawned), and unmapping the code under them would be
//! use-after-free. A plugin is loaded once per process, so this costs nothing in practice.
//!
//! # Writing one
//!
//! ```text
//! use std::sync::Arc;
//! use zigtorrent_engine::plugin::PluginRegistrar;
//!
//! zigtorrent_engine::declare_plugin!(register);
//!
//! fn register(r: &mut PluginRegistrar) -> Result<(), String> {
//!     r.register_storage(Arc::new(MyBackend::default()));
//!     Ok(())
//! }
//! ```
//!
//! with `crate-type = ["cdylib"]`; see `docs/PLUGINS.md` and `plugins/storage-ram`.
// The one module of the engine allowed to use `unsafe`: loading code from a file and calling
// into it cannot be expressed in safe Rust. Every block states what makes it sound.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr};
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use libloading::Library;

use crate::registry::{Origin, Registry, RegistryError, TransportFactory};
use crate::storage::{DeletedData, Storage, StorageBackend, StorageError, StorageSpec};
use crate::transport::{Transport, TransportError, TransportOptions};

/// Version of the plugin interface: the shape of [`PluginDeclaration`] and
/// [`PluginRegistrar`]. Bumped on any change to them; the entry point's name carries it too.
pub const PLUGIN_API_VERSION: u32 = 1;

/// The symbol every plugin exports (see [`declare_plugin!`]).
pub const ENTRY_POINT: &str = "zigtorrent_plugin_v1";

/// The engine version plugins are checked against (`CARGO_PKG_VERSION` of this crate).
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The compiler that built this engine (`rustc -V`, recorded by `build.rs`).
pub const RUSTC_VERSION: &str = env!("ZIGTORRENT_RUSTC_VERSION");

/// NUL-terminated twins of the constants above, for the C-layout part of the declaration.
const ENGINE_VERSION_C: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
const RUSTC_VERSION_C: &str = concat!(env!("ZIGTORRENT_RUSTC_VERSION"), "\0");

/// The registration function of a plugin, wrapped by [`declare_plugin!`] so that a panic in it
/// is caught on the plugin's side.
pub type RegisterFn = fn(&mut PluginRegistrar) -> Result<(), String>;

/// What a plugin's entry point returns, as a pointer to a static.
///
/// Layout contract: every version of this struct starts with `api_version: u32`, so a loader
/// can always read it; in version 1 the two NUL-terminated version strings follow, also
/// C-layout. Only after all three match is `register`, a Rust-ABI function, read and called.
#[repr(C)]
pub struct PluginDeclaration {
    /// [`PLUGIN_API_VERSION`] of the engine the plugin was built against.
    pub api_version: u32,
    /// [`ENGINE_VERSION`], NUL-terminated.
    pub engine_version: *const c_char,
    /// [`RUSTC_VERSION`], NUL-terminated.
    pub rustc_version: *const c_char,
    /// Adds the plugin's backends to a registrar.
    pub register: RegisterFn,
}

// SAFETY: the declaration is immutable, and its pointers point to `'static` string constants
// that are never written; sharing it between threads cannot race. (Needed so that
// `declare_plugin!` can keep it in a `static`.)
unsafe impl Sync for PluginDeclaration {}

impl PluginDeclaration {
    /// A declaration for this engine, compiler and API version, registering with `register`.
    /// Used by [`declare_plugin!`].
    pub const fn current(register: RegisterFn) -> Self {
        PluginDeclaration {
            api_version: PLUGIN_API_VERSION,
            engine_version: ENGINE_VERSION_C.as_ptr().cast(),
            rustc_version: RUSTC_VERSION_C.as_ptr().cast(),
            register,
        }
    }
}

/// Declare the plugin's entry point. Give it a function
/// `fn(&mut PluginRegistrar) -> Result<(), String>` that registers the plugin's backends.
///
/// Expands to the one `#[no_mangle] extern "C"` function the loader looks up
/// ([`ENTRY_POINT`]), returning a static [`PluginDeclaration`] stamped with this engine's API
/// version, engine version and compiler. Panics in `register` are caught here, on the
/// plugin's side of the boundary, and reported as a registration error. Use it once per
/// library, at the crate root of a `cdylib`.
#[macro_export]
macro_rules! declare_plugin {
    ($register:path) => {
        /// Entry point looked up by the ZigTorrent plugin loader.
        // `no_mangle` is what makes the loader find this function by name; the function only
        // returns a pointer to a static, so nothing here can be unsound.
        #[allow(unsafe_code)]
        #[no_mangle]
        pub extern "C" fn zigtorrent_plugin_v1() -> *const $crate::plugin::PluginDeclaration {
            fn __zigtorrent_register(
                registrar: &mut $crate::plugin::PluginRegistrar,
            ) -> ::std::result::Result<(), ::std::string::String> {
                let f: $crate::plugin::RegisterFn = $register;
                // A panic must not unwind into the host: its `std` cannot catch ours.
                match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| f(registrar))) {
                    Ok(result) => result,
                    Err(payload) => Err($crate::plugin::panic_message(&*payload)),
                }
            }
            static DECLARATION: $crate::plugin::PluginDeclaration =
                $crate::plugin::PluginDeclaration::current(__zigtorrent_register);
            &DECLARATION
        }
    };
}

/// The text of a caught panic (used by [`declare_plugin!`]).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("panicked: {text}")
}

/// What a plugin's registration function fills in. The loader then adds everything to the
/// registry under [`Origin::Plugin`], or nothing if any name is taken.
#[derive(Default)]
pub struct PluginRegistrar {
    storages: Vec<Arc<dyn StorageBackend>>,
    transports: Vec<(String, TransportFactory)>,
}

impl PluginRegistrar {
    /// Offer a storage backend, selectable by its [`StorageBackend::name`].
    pub fn register_storage(&mut self, backend: Arc<dyn StorageBackend>) {
        self.storages.push(backend);
    }

    /// Offer a transport factory under `name`.
    pub fn register_transport(&mut self, name: &str, factory: TransportFactory) {
        self.transports.push((name.to_string(), factory));
    }
}

/// Why a plugin was refused. Every message names the library.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Nothing at the path.
    #[error("plugin {}: no such file", path.display())]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The OS could not load it (not a library, wrong architecture, missing dependency, ...).
    #[error("plugin {}: cannot load as a dynamic library: {reason}", path.display())]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's own words.
        reason: String,
    },
    /// A library, but not a ZigTorrent plugin of this API generation.
    #[error("plugin {}: not a ZigTorrent plugin (no `{ENTRY_POINT}` entry point)", path.display())]
    NoEntryPoint {
        /// The library.
        path: PathBuf,
    },
    /// The entry point returned nothing usable.
    #[error("plugin {}: bad declaration: {reason}", path.display())]
    BadDeclaration {
        /// The library.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Built for another plugin API.
    #[error(
        "plugin {}: plugin API version {found}, this zigtorrent supports {expected}",
        path.display()
    )]
    ApiVersion {
        /// The library.
        path: PathBuf,
        /// What it declares.
        found: u32,
        /// [`PLUGIN_API_VERSION`].
        expected: u32,
    },
    /// Built against another engine version.
    #[error(
        "plugin {}: built against zigtorrent-engine {found}, this zigtorrent is {expected}; \
         rebuild the plugin",
        path.display()
    )]
    EngineVersion {
        /// The library.
        path: PathBuf,
        /// What it declares.
        found: String,
        /// [`ENGINE_VERSION`].
        expected: String,
    },
    /// Built by another compiler.
    #[error(
        "plugin {}: built with {found}, this zigtorrent with {expected}; rebuild the plugin \
         with the same compiler",
        path.display()
    )]
    Compiler {
        /// The library.
        path: PathBuf,
        /// What it declares.
        found: String,
        /// [`RUSTC_VERSION`].
        expected: String,
    },
    /// Its registration function reported an error (or panicked).
    #[error("plugin {}: registration failed: {message}", path.display())]
    Registration {
        /// The library.
        path: PathBuf,
        /// What it said.
        message: String,
    },
    /// It registered a name that is already taken (nothing of it was registered).
    #[error("plugin {}: {clash}", path.display())]
    Registry {
        /// The library.
        path: PathBuf,
        /// The clash.
        clash: RegistryError,
    },
    /// It registered nothing at all.
    #[error("plugin {}: registered no transport or storage", path.display())]
    Empty {
        /// The library.
        path: PathBuf,
    },
}

/// What one plugin added to a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedPlugin {
    /// The library, as recorded in [`Origin::Plugin`] (canonical path).
    pub path: PathBuf,
    /// Names of the transports it registered.
    pub transports: Vec<String>,
    /// Names of the storages it registered.
    pub storages: Vec<String>,
}

/// A loaded library that is never unloaded (see the module docs, "Lifetime").
struct PluginLibrary {
    // Never dropped: `ManuallyDrop` keeps the handle, and with it the mapping, for the rest of
    // the process.
    _library: ManuallyDrop<Library>,
}

/// Load the plugin at `path` and add everything it registers to `registry`, under
/// [`Origin::Plugin`] with the library's canonical path.
///
/// Refuses (with nothing registered) a missing path, a file the OS cannot load, a library
/// without the entry point, one declaring another API version, engine version or compiler,
/// one whose registration fails, and one registering a name already taken.
pub fn load(registry: &mut Registry, path: &Path) -> Result<LoadedPlugin, PluginError> {
    // Resolving the path ourselves means the OS loader never searches its library path for
    // a bare name, and the origin shown to users is unambiguous.
    let path = std::fs::canonicalize(path).map_err(|_| PluginError::NotFound {
        path: path.to_path_buf(),
    })?;
    if !path.is_file() {
        return Err(PluginError::Open {
            path,
            reason: "not a file".into(),
        });
    }
    let library = open(&path)?;
    let declaration = declaration(&library, &path)?;
    check(declaration, &path)?;

    // From here on the library passed every check: it was built by our compiler against our
    // engine, so its Rust-ABI function and the trait objects it returns have our layout.
    let mut registrar = PluginRegistrar::default();
    (declaration.register)(&mut registrar).map_err(|message| PluginError::Registration {
        path: path.clone(),
        message,
    })?;
    if registrar.storages.is_empty() && registrar.transports.is_empty() {
        return Err(PluginError::Empty { path });
    }
    add_all(registry, registrar, &path, library)
}

/// Open `path` with the OS loader.
fn open(path: &Path) -> Result<Library, PluginError> {
    let failed = |e: libloading::Error| PluginError::Open {
        path: path.to_path_buf(),
        reason: one_line(&e.to_string()),
    };
    #[cfg(unix)]
    {
        use libloading::os::unix::{Library as UnixLibrary, RTLD_LOCAL, RTLD_NOW};
        // SAFETY: loading runs the library's initialisers; trusting them is the user's choice
        // in passing `--plugin` (documented in docs/PLUGINS.md). RTLD_NOW resolves every
        // symbol now, so a library with a missing dependency fails here with a message rather
        // than later mid-download; RTLD_LOCAL keeps its symbols out of the global namespace.
        let lib = unsafe { UnixLibrary::open(Some(path), RTLD_NOW | RTLD_LOCAL) };
        lib.map(Library::from).map_err(failed)
    }
    #[cfg(not(unix))]
    {
        // SAFETY: as above: the user chose to trust this library's initialisers.
        unsafe { Library::new(path) }.map_err(failed)
    }
}

/// Find the entry point and call it.
fn declaration<'lib>(
    library: &'lib Library,
    path: &Path,
) -> Result<&'lib PluginDeclaration, PluginError> {
    type Entry = extern "C" fn() -> *const PluginDeclaration;
    let symbol = format!("{ENTRY_POINT}\0");
    // SAFETY: the type we give the symbol is the one `declare_plugin!` exports under this
    // name, a C-ABI function without arguments returning a pointer. A library exporting the
    // name with another signature breaks the plugin contract; we cannot check it.
    let entry = unsafe { library.get::<Entry>(symbol.as_bytes()) }.map_err(|_| {
        PluginError::NoEntryPoint {
            path: path.to_path_buf(),
        }
    })?;
    let ptr = entry();
    if ptr.is_null() {
        return Err(PluginError::BadDeclaration {
            path: path.to_path_buf(),
            reason: "entry point returned a null pointer",
        });
    }
    // SAFETY: non-null, and by contract a pointer to a static declaration inside the
    // library, valid while the library is mapped (forever: it is never unloaded) and never
    // written. Nothing but its C-layout prefix is read before `check` passes.
    Ok(unsafe { &*ptr })
}

/// Compare the declaration with this engine: API version first (its offset is the same in
/// every version), then the strings that version 1 places after it.
fn check(d: &PluginDeclaration, path: &Path) -> Result<(), PluginError> {
    if d.api_version != PLUGIN_API_VERSION {
        return Err(PluginError::ApiVersion {
            path: path.to_path_buf(),
            found: d.api_version,
            expected: PLUGIN_API_VERSION,
        });
    }
    let engine = c_string(d.engine_version, path)?;
    let rustc = c_string(d.rustc_version, path)?;
    check_versions(&engine, &rustc, path)
}

/// The pure part of the check, on strings.
fn check_versions(engine: &str, rustc: &str, path: &Path) -> Result<(), PluginError> {
    if engine != ENGINE_VERSION {
        return Err(PluginError::EngineVersion {
            path: path.to_path_buf(),
            found: engine.to_string(),
            expected: ENGINE_VERSION.to_string(),
        });
    }
    if rustc != RUSTC_VERSION {
        return Err(PluginError::Compiler {
            path: path.to_path_buf(),
            found: rustc.to_string(),
            expected: RUSTC_VERSION.to_string(),
        });
    }
    Ok(())
}

/// Longest version string we accept; a declaration is tiny, anything longer is garbage.
const MAX_VERSION_LEN: usize = 256;

/// Read one NUL-terminated string of a version-1 declaration.
fn c_string(ptr: *const c_char, path: &Path) -> Result<String, PluginError> {
    let bad = |reason| PluginError::BadDeclaration {
        path: path.to_path_buf(),
        reason,
    };
    if ptr.is_null() {
        return Err(bad("null version string"));
    }
    // SAFETY: a version-1 declaration (the API version matched) holds pointers to
    // NUL-terminated strings in the library's static data, alive forever (never unloaded).
    let s = unsafe { CStr::from_ptr(ptr) };
    let s = s.to_str().map_err(|_| bad("version string is not UTF-8"))?;
    if s.len() > MAX_VERSION_LEN {
        return Err(bad("version string too long"));
    }
    Ok(s.to_string())
}

/// Register everything the plugin offered, or nothing if a name is taken.
fn add_all(
    registry: &mut Registry,
    registrar: PluginRegistrar,
    path: &Path,
    library: Library,
) -> Result<LoadedPlugin, PluginError> {
    let clash = |clash| PluginError::Registry {
        path: path.to_path_buf(),
        clash,
    };
    let mut transports: Vec<String> = registrar.transports.iter().map(|t| t.0.clone()).collect();
    let mut storages: Vec<String> = registrar
        .storages
        .iter()
        .map(|s| s.name().to_string())
        .collect();
    check_free("transport", &transports, registry.transports().map(|t| t.0)).map_err(clash)?;
    check_free("storage", &storages, registry.storages().map(|s| s.0)).map_err(clash)?;

    let library = Arc::new(PluginLibrary {
        _library: ManuallyDrop::new(library),
    });
    let origin = Origin::Plugin(path.to_path_buf());
    for (name, factory) in registrar.transports {
        let holder = Arc::new(PluginTransportFactory {
            factory,
            library: library.clone(),
        });
        let factory: TransportFactory = Arc::new(move |options| holder.build(options));
        registry
            .register_transport(&name, origin.clone(), factory)
            .map_err(clash)?;
    }
    for backend in registrar.storages {
        let backend = Arc::new(PluginStorageBackend {
            inner: backend,
            _library: library.clone(),
        });
        registry
            .register_storage(origin.clone(), backend)
            .map_err(clash)?;
    }
    transports.sort();
    storages.sort();
    Ok(LoadedPlugin {
        path: path.to_path_buf(),
        transports,
        storages,
    })
}

/// Refuse names already in the registry or offered twice.
fn check_free<'a>(
    kind: &'static str,
    offered: &[String],
    taken: impl Iterator<Item = &'a str>,
) -> Result<(), RegistryError> {
    let mut seen: std::collections::BTreeSet<&str> = taken.collect();
    for name in offered {
        if !seen.insert(name) {
            return Err(RegistryError::Duplicate {
                kind,
                name: name.clone(),
            });
        }
    }
    Ok(())
}

/// The OS loader's message, on one line (callers print errors as one line).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A plugin's storage backend, keeping its library loaded.
struct PluginStorageBackend {
    // Declared before `_library`, so it is dropped first: its drop code lives in the library.
    inner: Arc<dyn StorageBackend>,
    _library: Arc<PluginLibrary>,
}

#[async_trait]
impl StorageBackend for PluginStorageBackend {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn open(&self, spec: StorageSpec) -> Result<Arc<dyn Storage>, StorageError> {
        self.inner.open(spec).await
    }

    async fn delete_data(&self, spec: StorageSpec) -> Result<DeletedData, StorageError> {
        self.inner.delete_data(spec).await
    }

    async fn move_data(
        &self,
        spec: StorageSpec,
        to: std::path::PathBuf,
    ) -> Result<crate::storage::MoveOutcome, StorageError> {
        self.inner.move_data(spec, to).await
    }
}

/// A plugin's transport factory, keeping its library loaded.
struct PluginTransportFactory {
    // Dropped before `library`, as above.
    factory: TransportFactory,
    library: Arc<PluginLibrary>,
}

impl PluginTransportFactory {
    fn build(&self, options: &TransportOptions) -> Result<Arc<dyn Transport>, TransportError> {
        let inner = (self.factory)(options)?;
        Ok(Arc::new(PluginTransport {
            inner,
            _library: self.library.clone(),
        }))
    }
}

/// A transport built by a plugin's factory, keeping its library loaded.
struct PluginTransport {
    inner: Arc<dyn Transport>,
    _library: Arc<PluginLibrary>,
}

#[async_trait]
impl Transport for PluginTransport {
    fn name(&self) -> &str {
        self.inner.name()
    }

    async fn connect(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<crate::transport::BoxStream, TransportError> {
        self.inner.connect(addr).await
    }

    async fn listen(
        &self,
        addr: std::net::SocketAddr,
    ) -> Result<Box<dyn crate::transport::Listener>, TransportError> {
        self.inner.listen(addr).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declaration_prefix_is_c_layout() {
        // The loader reads these offsets from libraries of any API generation.
        assert_eq!(std::mem::offset_of!(PluginDeclaration, api_version), 0);
        let d = PluginDeclaration::current(|_| Ok(()));
        assert_eq!(d.api_version, PLUGIN_API_VERSION);
        let p = Path::new("x.so");
        assert_eq!(c_string(d.engine_version, p).unwrap(), ENGINE_VERSION);
        assert_eq!(c_string(d.rustc_version, p).unwrap(), RUSTC_VERSION);
        assert!(check(&d, p).is_ok());
        assert!(RUSTC_VERSION.starts_with("rustc "), "{RUSTC_VERSION}");
    }

    #[test]
    fn mismatches_name_the_library_and_both_sides() {
        let p = Path::new("/plugins/libx.so");
        let e = check_versions("0.0.9", RUSTC_VERSION, p).unwrap_err();
        assert!(matches!(e, PluginError::EngineVersion { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("/plugins/libx.so") && msg.contains("0.0.9"),
            "{msg}"
        );
        assert!(msg.contains(ENGINE_VERSION), "{msg}");

        let e = check_versions(ENGINE_VERSION, "rustc 1.0.0 (a 2015-05-15)", p).unwrap_err();
        assert!(matches!(e, PluginError::Compiler { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("rustc 1.0.0") && msg.contains(RUSTC_VERSION),
            "{msg}"
        );

        let mut d = PluginDeclaration::current(|_| Ok(()));
        d.api_version = 2;
        let msg = check(&d, p).unwrap_err().to_string();
        assert!(
            msg.contains("API version 2") && msg.contains("supports 1"),
            "{msg}"
        );

        d.api_version = PLUGIN_API_VERSION;
        d.engine_version = std::ptr::null();
        assert!(matches!(
            check(&d, p),
            Err(PluginError::BadDeclaration { .. })
        ));
    }

    #[test]
    fn missing_and_non_library_files_are_refused() {
        let mut r = Registry::new();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.so");
        let e = load(&mut r, &missing).unwrap_err();
        assert!(matches!(e, PluginError::NotFound { .. }), "{e}");
        assert!(e.to_string().contains("nope.so"), "{e}");

        let text = dir.path().join("text.so");
        std::fs::write(&text, "not a library\n").unwrap();
        let e = load(&mut r, &text).unwrap_err();
        assert!(matches!(e, PluginError::Open { .. }), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");

        let e = load(&mut r, dir.path()).unwrap_err();
        assert!(matches!(e, PluginError::Open { .. }), "{e}");
        assert_eq!(r.storages().count(), 0);
    }

    #[test]
    fn duplicate_names_are_refused_before_anything_is_registered() {
        let mut r = Registry::new();
        r.register_storage(Origin::BuiltIn, Arc::new(crate::MemoryBackend::new()))
            .unwrap();
        let taken = r.storages().map(|s| s.0);
        let e = check_free("storage", &["x".into(), "memory".into()], taken).unwrap_err();
        assert_eq!(
            e,
            RegistryError::Duplicate {
                kind: "storage",
                name: "memory".into()
            }
        );
        let e = check_free("storage", &["y".into(), "y".into()], std::iter::empty()).unwrap_err();
        assert!(matches!(e, RegistryError::Duplicate { .. }));
    }

    fn panicking_register(_: &mut PluginRegistrar) -> Result<(), String> {
        panic!("cannot register today")
    }

    mod expanded {
        crate::declare_plugin!(super::panicking_register);
    }

    #[test]
    fn declared_entry_point_stamps_versions_and_catches_panics() {
        let d = expanded::zigtorrent_plugin_v1();
        // SAFETY: the macro returns a pointer to its static declaration.
        let d = unsafe { &*d };
        assert!(check(d, Path::new("self")).is_ok());
        let mut registrar = PluginRegistrar::default();
        let e = (d.register)(&mut registrar).unwrap_err();
        assert_eq!(e, "panicked: cannot register today");
    }

    #[test]
    fn panic_messages_are_kept() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "panicked: boom 1");
    }
}
