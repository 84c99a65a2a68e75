//! Who uses which path under a download folder: no two torrents, and no two files of one
//! torrent, may share a place on disk.
//!
//! Every open torrent claims its *root*, the first component of its paths (the file of a
//! single-file torrent, the folder of a multi-file one), for itself alone: a second torrent with
//! the same root is refused with [`PathConflict::OtherTorrent`] however its files differ, so two
//! torrents never write into one folder. Inside a torrent, two files with the same path, or a
//! file whose path is another's folder (`a` and `a/b`), are refused with
//! [`PathConflict::SameTorrent`]. A root that is the state folder (when it lives inside the
//! download folder, as by default) is refused with [`PathConflict::StateFolder`].
//!
//! Names are compared byte for byte, or case-folded where the download folder's file system
//! folds case (probed once per folder by creating a lower-case name and looking up its
//! upper-case twin). A claim lasts as long as the torrent's storage; the same torrent opening
//! again takes its claim over.
//!
//! Claims also outlive the process: the first torrent to claim a root leaves a marker,
//! `<state>/roots/<sha1 of folder and root>`, holding its info-hash. Another torrent is refused
//! that root while the marker's owner still has resume state and something is at the root, so
//! after a restart the order in which torrents are added cannot hand an earlier torrent's
//! finished files to a later one with the same name.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::hash::{Hash, Hasher};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use sha1::{Digest, Sha1};
use zigtorrent_engine::{InfoHash, Layout, PathConflict, StorageError};

/// The claims of every torrent opened by one backend.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    inner: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    next_generation: u64,
    /// (download folder, root key) → owner.
    roots: HashMap<(PathBuf, Vec<u8>), Owner>,
    /// Whether each download folder's file system folds case.
    folds_case: HashMap<PathBuf, bool>,
    /// Torrents whose files are being moved (`relocate`): not opened meanwhile.
    moving: std::collections::HashSet<InfoHash>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Owner {
    info_hash: InfoHash,
    generation: u64,
}

/// A torrent's claim; released when dropped.
#[derive(Debug)]
pub(crate) struct Claim {
    claims: Arc<Claims>,
    key: (PathBuf, Vec<u8>),
    owner: Owner,
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut t = lock(&self.claims.inner);
        if t.roots.get(&self.key) == Some(&self.owner) {
            t.roots.remove(&self.key);
        }
    }
}

/// A move in progress (see [`Claims::begin_move`]); ends when dropped.
#[derive(Debug)]
pub(crate) struct MoveGuard {
    claims: Arc<Claims>,
    info_hash: InfoHash,
}

impl Drop for MoveGuard {
    fn drop(&mut self) {
        lock(&self.claims.inner).moving.remove(&self.info_hash);
    }
}

fn lock(m: &Mutex<Table>) -> MutexGuard<'_, Table> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The torrent's top name: its file, or its folder.
fn root_name(layout: &Layout) -> Result<&std::ffi::OsStr, StorageError> {
    layout
        .files
        .first()
        .and_then(|f| f.path.components().next())
        .map(|c| c.as_os_str())
        .ok_or(StorageError::NotSupported("a torrent without files"))
}

fn conflict(path: PathBuf, why: PathConflict) -> StorageError {
    StorageError::PathInUse { path, why }
}

/// The comparison key of a name: its bytes, lower-cased where the file system folds case.
fn key(name: &[u8], fold: bool) -> Vec<u8> {
    if fold {
        String::from_utf8_lossy(name).to_lowercase().into_bytes()
    } else {
        name.to_vec()
    }
}

impl Claims {
    /// Claim the paths of `layout` under `download_dir` for `info_hash`. Paths are already
    /// checked to be plain relative components. `state_dir` is refused as a root when it lies
    /// directly or deeper inside `download_dir`.
    pub(crate) fn claim(
        self: &Arc<Self>,
        info_hash: InfoHash,
        layout: &Layout,
        download_dir: &Path,
        state_dir: &Path,
    ) -> Result<Claim, StorageError> {
        let (k, marker) = self.check(info_hash, layout, download_dir, state_dir)?;
        let mut t = lock(&self.inner);
        if t.moving.contains(&info_hash) {
            return Err(StorageError::Io {
                path: download_dir.to_path_buf(),
                source: std::io::Error::other(
                    "its files are being moved to the completed folder; try again once that is done",
                ),
            });
        }
        match t.roots.get(&k) {
            Some(other) if other.info_hash != info_hash => {
                return Err(conflict(
                    download_dir.join(root_name(layout)?),
                    PathConflict::OtherTorrent(other.info_hash),
                ));
            }
            _ => {}
        }
        t.next_generation += 1;
        let owner = Owner {
            info_hash,
            generation: t.next_generation,
        };
        t.roots.insert(k.clone(), owner);
        drop(t);
        if marker_owner(&marker) != Some(info_hash) {
            // Best effort: without it, only the restart-order protection is lost.
            if let Err(e) = write_marker(&marker, &info_hash) {
                tracing::warn!(error = %e, path = %marker.display(), "cannot record a path claim");
            }
        }
        Ok(Claim {
            claims: self.clone(),
            key: k,
            owner,
        })
    }

    /// Whether [`Claims::claim`] would give `info_hash` the paths of `layout` under
    /// `download_dir` (an existing folder), without claiming them: the checks a move makes
    /// before it takes a torrent there.
    pub(crate) fn check_free(
        &self,
        info_hash: InfoHash,
        layout: &Layout,
        download_dir: &Path,
        state_dir: &Path,
    ) -> Result<(), StorageError> {
        let (k, _) = self.check(info_hash, layout, download_dir, state_dir)?;
        match lock(&self.inner).roots.get(&k) {
            Some(other) if other.info_hash != info_hash => Err(conflict(
                download_dir.join(root_name(layout)?),
                PathConflict::OtherTorrent(other.info_hash),
            )),
            _ => Ok(()),
        }
    }

    /// The checks of a claim that need no table: paths inside the torrent, the state folder,
    /// reserved names, another torrent's lasting marker. Returns the table key and the marker.
    fn check(
        &self,
        info_hash: InfoHash,
        layout: &Layout,
        download_dir: &Path,
        state_dir: &Path,
    ) -> Result<((PathBuf, Vec<u8>), PathBuf), StorageError> {
        let dl =
            fs::canonicalize(download_dir).map_err(|e| StorageError::from_io(download_dir, e))?;
        let fold = self.folds_case(&dl);
        check_within_torrent(layout, download_dir, fold)?;
        let root = root_name(layout)?;
        let root_key = key(root.as_bytes(), fold);
        let root_path = download_dir.join(root);
        if let Ok(state) = fs::canonicalize(state_dir) {
            if let Ok(rel) = state.strip_prefix(&dl) {
                let reserved = match rel.components().next() {
                    Some(Component::Normal(first)) => key(first.as_bytes(), fold) == root_key,
                    // The state folder *is* the download folder: the client's own names in it
                    // (incomplete data, resume files, lock and log) are off limits.
                    _ => is_state_name(&root_key),
                };
                if reserved {
                    return Err(conflict(root_path, PathConflict::StateFolder));
                }
            }
        }
        // The client's own names beside a user's files (temporary copies, the default state
        // folder) are never a torrent's.
        if root_key.starts_with(b".zigtorrent") {
            return Err(conflict(root_path, PathConflict::Reserved));
        }
        let marker = marker_path(state_dir, &dl, &root_key);
        if let Some(owner) = marker_owner(&marker) {
            let owner_has_state = state_dir
                .join(format!("{}.resume", owner.to_hex()))
                .exists();
            if owner != info_hash && owner_has_state && root_path.symlink_metadata().is_ok() {
                return Err(conflict(root_path, PathConflict::OtherTorrent(owner)));
            }
        }
        Ok(((dl, root_key), marker))
    }

    /// Mark `info_hash` as being moved (or its data deleted), so no storage of it opens and
    /// no other move or deletion of it starts until the guard drops; `None` if one is open or
    /// another such operation runs.
    pub(crate) fn begin_move(self: &Arc<Self>, info_hash: InfoHash) -> Option<MoveGuard> {
        let mut t = lock(&self.inner);
        if t.roots.values().any(|o| o.info_hash == info_hash) || !t.moving.insert(info_hash) {
            return None;
        }
        Some(MoveGuard {
            claims: self.clone(),
            info_hash,
        })
    }

    /// The torrent's data is gone: forget its lasting claim on its root (the marker), if the
    /// marker names it. Returns the marker's path when it was removed.
    pub(crate) fn forget_marker(
        &self,
        info_hash: &InfoHash,
        layout: &Layout,
        download_dir: &Path,
        state_dir: &Path,
    ) -> Option<PathBuf> {
        let dl = fs::canonicalize(download_dir).ok()?;
        let fold = self.folds_case(&dl);
        let root = layout.files.first()?.path.components().next()?;
        let marker = marker_path(state_dir, &dl, &key(root.as_os_str().as_bytes(), fold));
        (marker_owner(&marker) == Some(*info_hash) && fs::remove_file(&marker).is_ok())
            .then_some(marker)
    }

    fn folds_case(&self, dir: &Path) -> bool {
        if let Some(&f) = lock(&self.inner).folds_case.get(dir) {
            return f;
        }
        let f = probe_case_folding(dir);
        lock(&self.inner).folds_case.insert(dir.to_path_buf(), f);
        f
    }
}

/// `<state>/roots/<hex>`: the marker of `root_key` under the download folder `dl`.
fn marker_path(state_dir: &Path, dl: &Path, root_key: &[u8]) -> PathBuf {
    let mut h = Sha1::new();
    h.update(dl.as_os_str().as_bytes());
    h.update([0]);
    h.update(root_key);
    state_dir.join("roots").join(hex::encode(h.finalize()))
}

/// The info-hash a marker names; `None` if there is none or it is not one (damaged: ignored).
fn marker_owner(marker: &Path) -> Option<InfoHash> {
    use std::io::Read;
    // 40 hex digits; read no more than that, whatever the file holds.
    let mut text = Vec::with_capacity(40);
    fs::File::open(marker)
        .ok()?
        .take(40)
        .read_to_end(&mut text)
        .ok()?;
    let bytes = hex::decode(text.get(..40)?).ok()?;
    Some(InfoHash(bytes.try_into().ok()?))
}

fn write_marker(marker: &Path, info_hash: &InfoHash) -> std::io::Result<()> {
    let dir = marker.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = marker.as_os_str().to_owned();
    tmp.push(".tmp");
    fs::write(&tmp, info_hash.to_hex())?;
    fs::rename(&tmp, marker)
}

/// Names the client itself keeps in its state folder (compared lower-cased, conservatively).
fn is_state_name(key: &[u8]) -> bool {
    let k = String::from_utf8_lossy(key).to_lowercase();
    k == "parts"
        || k.ends_with(".resume")
        || k.ends_with(".resume.tmp")
        || k.starts_with("zigtorrent.")
        || k.starts_with(".zigtorrent")
}

/// Create a lower-case probe file in `dir` and look its upper-case twin up. Unknown (say, a
/// read-only folder) counts as not folding: the torrent will fail on its first write anyway.
fn probe_case_folding(dir: &Path) -> bool {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let lower = dir.join(format!(
        ".zigtorrent-case-probe-{}-{nanos}",
        std::process::id()
    ));
    let upper = dir.join(format!(
        ".ZIGTORRENT-CASE-PROBE-{}-{nanos}",
        std::process::id()
    ));
    if OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&lower)
        .is_err()
    {
        return false;
    }
    let folds = upper.symlink_metadata().is_ok();
    let _ = fs::remove_file(&lower);
    folds
}

/// No two files of the torrent at one path, and no file where another needs a folder. Linear in
/// the total path length: folder prefixes are kept as running hashes, not as strings (a false
/// match needs a 64-bit collision and only refuses a torrent).
fn check_within_torrent(
    layout: &Layout,
    download_dir: &Path,
    fold: bool,
) -> Result<(), StorageError> {
    let mut files: HashSet<Vec<u8>> = HashSet::with_capacity(layout.files.len());
    let mut file_hashes: HashSet<u64> = HashSet::with_capacity(layout.files.len());
    let mut folders: HashSet<u64> = HashSet::new();
    for f in &layout.files {
        let mut h = DefaultHasher::new();
        let mut full = Vec::new();
        let mut components = f.path.components().peekable();
        while let Some(c) = components.next() {
            let k = key(c.as_os_str().as_bytes(), fold);
            k.hash(&mut h);
            full.extend_from_slice(&k);
            full.push(b'/');
            let prefix = h.finish();
            if components.peek().is_some() {
                // A folder of this file: no file may be here.
                if file_hashes.contains(&prefix) {
                    return Err(conflict(
                        download_dir.join(&f.path),
                        PathConflict::SameTorrent,
                    ));
                }
                folders.insert(prefix);
            } else if folders.contains(&prefix) || !files.insert(full.clone()) {
                return Err(conflict(
                    download_dir.join(&f.path),
                    PathConflict::SameTorrent,
                ));
            } else {
                file_hashes.insert(prefix);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(paths: &[&str]) -> Layout {
        Layout::new(16384, paths.iter().map(|p| (PathBuf::from(p), 10)))
    }

    #[test]
    fn files_of_one_torrent_never_share_a_place() {
        let dl = Path::new("/dl");
        assert!(check_within_torrent(&layout(&["t/a", "t/b", "t/c/d"]), dl, false).is_ok());
        for bad in [
            &["t/a", "t/a"][..],
            &["t/a", "t/a/b"],
            &["t/a/b", "t/a"],
            &["t/x/y/z", "t/x/y"],
        ] {
            let r = check_within_torrent(&layout(bad), dl, false);
            assert!(
                matches!(
                    r,
                    Err(StorageError::PathInUse {
                        why: PathConflict::SameTorrent,
                        ..
                    })
                ),
                "{bad:?}: {r:?}"
            );
        }
        // Case matters only where the file system folds it.
        assert!(check_within_torrent(&layout(&["t/README", "t/readme"]), dl, false).is_ok());
        assert!(check_within_torrent(&layout(&["t/README", "t/readme"]), dl, true).is_err());
        assert!(check_within_torrent(&layout(&["t/Dir/a", "t/dir"]), dl, true).is_err());
    }

    #[test]
    fn a_torrent_being_moved_never_opens_and_an_open_one_never_moves() {
        let tmp = tempfile::tempdir().unwrap();
        let dl = tmp.path().join("dl");
        fs::create_dir(&dl).unwrap();
        let state = tmp.path().join("state");
        let claims = Arc::new(Claims::default());
        let (a, b) = (InfoHash([1; 20]), InfoHash([2; 20]));
        let moving = claims.begin_move(a).expect("nothing open");
        assert!(claims.begin_move(a).is_none(), "one move at a time");
        assert!(claims.claim(a, &layout(&["t/x"]), &dl, &state).is_err());
        // Other torrents are not held up.
        let other = claims.claim(b, &layout(&["u/x"]), &dl, &state).unwrap();
        drop(moving);
        let open = claims.claim(a, &layout(&["t/x"]), &dl, &state).unwrap();
        assert!(claims.begin_move(a).is_none(), "open: not moved");
        drop(open);
        assert!(claims.begin_move(a).is_some());
        drop(other);
    }

    #[test]
    fn roots_are_exclusive_and_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dl = tmp.path().join("dl");
        fs::create_dir(&dl).unwrap();
        let state = dl.join(".zigtorrent");
        fs::create_dir(&state).unwrap();
        let claims = Arc::new(Claims::default());
        let (a, b) = (InfoHash([1; 20]), InfoHash([2; 20]));
        let first = claims.claim(a, &layout(&["x/1"]), &dl, &state).unwrap();
        let r = claims.claim(b, &layout(&["x/2"]), &dl, &state);
        assert!(
            matches!(r, Err(StorageError::PathInUse { why: PathConflict::OtherTorrent(h), .. }) if h == a),
            "{r:?}"
        );
        // x.part beside x: another root, fine.
        let _other = claims.claim(b, &layout(&["x.part"]), &dl, &state).unwrap();
        // The same torrent opening again takes over its claim; the old claim's drop keeps it.
        let again = claims.claim(a, &layout(&["x/1"]), &dl, &state).unwrap();
        drop(first);
        assert!(claims
            .claim(InfoHash([3; 20]), &layout(&["x"]), &dl, &state)
            .is_err());
        drop(again);
        assert!(claims
            .claim(InfoHash([3; 20]), &layout(&["x"]), &dl, &state)
            .is_ok());
        let r = claims.claim(InfoHash([4; 20]), &layout(&[".zigtorrent/a"]), &dl, &state);
        assert!(
            matches!(
                r,
                Err(StorageError::PathInUse {
                    why: PathConflict::StateFolder,
                    ..
                })
            ),
            "{r:?}"
        );
        // State folder = download folder: the client's own names are refused as roots.
        for name in [
            "parts/0123/0.part",
            "abc.resume",
            "zigtorrent.lock",
            "zigtorrent.log",
        ] {
            let r = claims.claim(InfoHash([5; 20]), &layout(&[name]), &dl, &dl);
            assert!(
                matches!(
                    r,
                    Err(StorageError::PathInUse {
                        why: PathConflict::StateFolder,
                        ..
                    })
                ),
                "{name}: {r:?}"
            );
        }
        assert!(claims
            .claim(InfoHash([5; 20]), &layout(&["movie"]), &dl, &dl)
            .is_ok());
        assert!(!probe_case_folding(&dl), "ext4/tmpfs do not fold case");
        let probes = fs::read_dir(&dl)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains("case-probe")
            })
            .count();
        assert_eq!(probes, 0, "probe file removed");
    }
}
