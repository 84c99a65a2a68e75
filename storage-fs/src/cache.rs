//! A small least-recently-used cache of open data files, so a torrent with 100,000 files keeps at
//! most a bounded number of descriptors open.

use std::collections::HashMap;
use std::fs::File;
use std::sync::Arc;

/// An open data file and whether it was opened for writing.
#[derive(Clone, Debug)]
pub(crate) struct Handle {
    pub file: Arc<File>,
    pub writable: bool,
}

/// Open handles by file index. Eviction only drops the cache's reference: an operation still
/// using the handle keeps it open until it finishes.
#[derive(Debug)]
pub(crate) struct FdCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<usize, (Handle, u64)>,
}

impl FdCache {
    pub(crate) fn new(capacity: usize) -> Self {
        FdCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
        }
    }

    /// The cached handle of `file`, if any, marking it most recently used.
    pub(crate) fn get(&mut self, file: usize) -> Option<Handle> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&file).map(|(h, t)| {
            *t = tick;
            h.clone()
        })
    }

    /// Cache `handle` for `file`, evicting the least recently used entry when full.
    pub(crate) fn insert(&mut self, file: usize, handle: Handle) {
        self.tick += 1;
        if !self.entries.contains_key(&file) && self.entries.len() >= self.capacity {
            // Linear scan: the cache is small (default 128) and opening a file costs far more.
            if let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(file, (handle, self.tick));
    }

    /// Forget `file`'s handle (after it moved, or to reopen it differently).
    pub(crate) fn remove(&mut self, file: usize) {
        self.entries.remove(&file);
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let h = || Handle {
            file: Arc::new(File::create(dir.path().join("x")).unwrap()),
            writable: true,
        };
        let mut c = FdCache::new(2);
        c.insert(1, h());
        c.insert(2, h());
        assert!(c.get(1).is_some());
        c.insert(3, h());
        assert_eq!(c.len(), 2);
        assert!(c.get(2).is_none(), "2 was least recently used");
        assert!(c.get(1).is_some() && c.get(3).is_some());
    }
}
