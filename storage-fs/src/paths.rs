//! Path rules: where a layout file lives on disk, refusing anything that could leave
//! `download_dir`, and creating folders durably.

use std::ffi::OsString;
use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};

use zigtorrent_engine::StorageError;

/// Suffix of a file that is not yet complete.
pub(crate) const PART_SUFFIX: &str = ".part";

/// Defense in depth: layout paths are sanitised by the metainfo parser, but storage still
/// refuses anything but plain relative components, so nothing is written outside
/// `download_dir`.
pub(crate) fn check_relative(path: &Path) -> Result<(), StorageError> {
    let mut any = false;
    for c in path.components() {
        match c {
            Component::Normal(_) => any = true,
            _ => {
                return Err(StorageError::PermissionDenied {
                    path: path.to_path_buf(),
                })
            }
        }
    }
    if !any {
        return Err(StorageError::PermissionDenied {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// `<final>.part`.
pub(crate) fn part_path(final_path: &Path) -> PathBuf {
    let mut s: OsString = final_path.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// fsync a folder so that entries created, renamed or removed in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::from_io(dir, e))
}

/// Create `dir` (and missing ancestors below `base`), fsyncing the parent of every folder
/// created so the new entries survive a crash. `dir` must be `base` or below it.
pub(crate) fn create_dirs(base: &Path, dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    let rel = dir.strip_prefix(base).unwrap_or(Path::new(""));
    let mut cur = base.to_path_buf();
    let mut created_in: Vec<PathBuf> = Vec::new();
    for c in rel.components() {
        let parent = cur.clone();
        cur.push(c);
        match fs::create_dir(&cur) {
            Ok(()) => created_in.push(parent),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && cur.is_dir() => {}
            Err(e) => return Err(StorageError::from_io(&cur, e)),
        }
    }
    for parent in created_in {
        sync_dir(&parent)?;
    }
    Ok(())
}

/// Create `dir` and all its ancestors (used for the top-level download and state folders).
pub(crate) fn create_root(dir: &Path) -> Result<(), StorageError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(|e| StorageError::from_io(dir, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_escapes() {
        assert!(check_relative(Path::new("a/b.txt")).is_ok());
        for bad in ["/etc/passwd", "../x", "a/../../x", "", ".", "a/./b"] {
            // "a/./b" normalises to a/b in `components`, so only flag the ones that escape.
            if bad == "a/./b" {
                assert!(check_relative(Path::new(bad)).is_ok());
                continue;
            }
            assert!(
                matches!(
                    check_relative(Path::new(bad)),
                    Err(StorageError::PermissionDenied { .. })
                ),
                "{bad:?} accepted"
            );
        }
        assert_eq!(
            part_path(Path::new("d/f.bin")),
            PathBuf::from("d/f.bin.part")
        );
    }
}
