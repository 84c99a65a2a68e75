//! Named backends. The cli fills a [`Registry`] with the built-in transports and storages (and,
//! later, whatever plugins add), then selects from it with `--transport` and `--storage`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::storage::StorageBackend;
use crate::transport::{Transport, TransportError, TransportOptions};

/// Builds a transport from options.
pub type TransportFactory =
    Arc<dyn Fn(&TransportOptions) -> Result<Arc<dyn Transport>, TransportError> + Send + Sync>;

/// Where a registered backend came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into the binary.
    BuiltIn,
    /// Loaded from a dynamic library at this path.
    Plugin(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in"),
            Origin::Plugin(p) => write!(f, "{}", p.display()),
        }
    }
}

/// A name that is not registered, or registered twice.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    /// Nothing under this name.
    #[error("unknown {kind} backend '{name}' (available: {available})")]
    Unknown {
        /// `transport` or `storage`.
        kind: &'static str,
        /// The name asked for.
        name: String,
        /// Comma-separated registered names.
        available: String,
    },
    /// The name is already taken.
    #[error("{kind} backend '{name}' is already registered")]
    Duplicate {
        /// `transport` or `storage`.
        kind: &'static str,
        /// The name.
        name: String,
    },
}

/// Transports and storages by name.
#[derive(Default)]
pub struct Registry {
    transports: BTreeMap<String, (Origin, TransportFactory)>,
    storages: BTreeMap<String, (Origin, Arc<dyn StorageBackend>)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a transport factory under `name`.
    pub fn register_transport(
        &mut self,
        name: &str,
        origin: Origin,
        factory: TransportFactory,
    ) -> Result<(), RegistryError> {
        if self.transports.contains_key(name) {
            return Err(RegistryError::Duplicate {
                kind: "transport",
                name: name.into(),
            });
        }
        self.transports.insert(name.into(), (origin, factory));
        Ok(())
    }

    /// Add a storage backend under its own name.
    pub fn register_storage(
        &mut self,
        origin: Origin,
        backend: Arc<dyn StorageBackend>,
    ) -> Result<(), RegistryError> {
        let name = backend.name().to_string();
        if self.storages.contains_key(&name) {
            return Err(RegistryError::Duplicate {
                kind: "storage",
                name,
            });
        }
        self.storages.insert(name, (origin, backend));
        Ok(())
    }

    /// Build the transport registered as `name`.
    pub fn transport(
        &self,
        name: &str,
        options: &TransportOptions,
    ) -> Result<Result<Arc<dyn Transport>, TransportError>, RegistryError> {
        let (_, factory) = self
            .transports
            .get(name)
            .ok_or_else(|| RegistryError::Unknown {
                kind: "transport",
                name: name.into(),
                available: join(self.transports.keys()),
            })?;
        Ok(factory(options))
    }

    /// The storage backend registered as `name`.
    pub fn storage(&self, name: &str) -> Result<Arc<dyn StorageBackend>, RegistryError> {
        self.storages
            .get(name)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| RegistryError::Unknown {
                kind: "storage",
                name: name.into(),
                available: join(self.storages.keys()),
            })
    }

    /// `(name, origin)` of every transport, sorted by name.
    pub fn transports(&self) -> impl Iterator<Item = (&str, &Origin)> {
        self.transports.iter().map(|(n, (o, _))| (n.as_str(), o))
    }

    /// `(name, origin)` of every storage, sorted by name.
    pub fn storages(&self) -> impl Iterator<Item = (&str, &Origin)> {
        self.storages.iter().map(|(n, (o, _))| (n.as_str(), o))
    }
}

fn join<'a>(names: impl Iterator<Item = &'a String>) -> String {
    names.map(String::as_str).collect::<Vec<_>>().join(", ")
}
