//! Path rules: where a layout file lives on disk, refusing anything that could leave
//! `download_dir`, creating folders durably, and moving a finished file into place without ever
//! replacing what is there.
//!
//! Incomplete data never lives at a name a torrent can choose: file `i` of a torrent is
//! `<state_dir>/parts/<info-hash hex>/<i>.part` until it is complete. So no torrent can name
//! another torrent's incomplete data (or its own), a 255-byte file name needs no longer `.part`
//! name, and a `.part` file a user happens to have is never ours.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Component, Path, PathBuf};

use zigtorrent_engine::{InfoHash, StorageError};

/// Suffix of a file that is not yet complete (wave 1 kept them beside the final path; see
/// `legacy_part_path`).
pub(crate) const PART_SUFFIX: &str = ".part";

/// `<state_dir>/parts/<hex>`: one torrent's incomplete files.
pub(crate) fn parts_dir(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir.join("parts").join(info_hash.to_hex())
}

/// `<parts_dir>/<file>.part`.
pub(crate) fn part_file(parts_dir: &Path, file: usize) -> PathBuf {
    parts_dir.join(format!("{file}{PART_SUFFIX}"))
}

/// `<final>.part`: where wave 1 (resume format 1) kept an incomplete file.
pub(crate) fn legacy_part_path(final_path: &Path) -> PathBuf {
    let mut s: OsString = final_path.as_os_str().to_owned();
    s.push(PART_SUFFIX);
    PathBuf::from(s)
}

/// Rename `from` to `to`, failing with `AlreadyExists` if anything is at `to`: never replaces.
/// Uses `renameat2(RENAME_NOREPLACE)`; where the file system lacks it, a hard link (which also
/// refuses an existing name) and an unlink. Cross-device moves fail with the OS's `EXDEV`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::INVAL || e == rustix::io::Errno::NOSYS => {
            fs::hard_link(from, to)?;
            fs::remove_file(from)
        }
        Err(e) => Err(io::Error::from_raw_os_error(e.raw_os_error())),
    }
}

/// Whether `e` is the OS saying a rename would cross file systems.
pub(crate) fn is_cross_device(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EXDEV)
}

/// Copy `from` into a new file `tmp` (created exclusively: never an existing file), fsync it and
/// return it open. For moves across file systems, done without any lock held; the caller then
/// renames `tmp` into place with [`rename_noreplace`] and removes `from`. On error, a file this
/// call created is removed; one that was already at `tmp` is never touched.
pub(crate) fn copy_to_new(from: &Path, tmp: &Path) -> io::Result<File> {
    let mut src = File::open(from)?;
    // Exclusive: if anything is at `tmp`, this fails and nothing of it is touched.
    let mut dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)?;
    // From here on `tmp` is the file we just created: ours to remove on failure.
    let copied = io::copy(&mut src, &mut dst).and_then(|_| dst.sync_all());
    if let Err(e) = copied {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    Ok(dst)
}

/// A fresh temporary name beside `final_path` for a cross-device move of file `file` of torrent
/// `info_hash` to copy into (created exclusively: if anything is there the copy fails, nothing is
/// removed). Unique per process and moment, so it can't be predicted by a torrent; a copy left
/// by a crash mid-copy stays behind under a `.zigtorrent-` name.
pub(crate) fn move_temp(final_path: &Path, info_hash: &InfoHash, file: usize) -> PathBuf {
    let hex = info_hash.to_hex();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    final_path.parent().unwrap_or(Path::new(".")).join(format!(
        ".zigtorrent-{}-{file}-{}-{nanos}.tmp",
        &hex[..16],
        std::process::id()
    ))
}

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
            legacy_part_path(Path::new("d/f.bin")),
            PathBuf::from("d/f.bin.part")
        );
    }

    #[test]
    fn moves_never_replace() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        fs::write(&a, b"ours").unwrap();
        fs::write(&b, b"theirs").unwrap();
        let err = rename_noreplace(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&b).unwrap(), b"theirs");
        assert_eq!(fs::read(&a).unwrap(), b"ours");
        let err = copy_to_new(&a, &b).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(
            fs::read(&b).unwrap(),
            b"theirs",
            "a copy never lands on a file"
        );
        fs::remove_file(&b).unwrap();
        rename_noreplace(&a, &b).unwrap();
        assert_eq!(fs::read(&b).unwrap(), b"ours");
        assert!(!a.exists());
    }
}
