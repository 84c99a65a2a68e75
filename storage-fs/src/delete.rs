//! Deleting a torrent's data ([`StorageBackend::delete_data`]): only what this client wrote.
//!
//! The torrent's storage is closed first (a backend refuses while it is open). What goes:
//!
//! - its incomplete data, `<state>/parts/<hex>/` (ours by construction: no torrent can name it;
//!   removed without following links inside it), its resume file and its root marker;
//! - each file at its final path that the resume file vouches for: recorded as ours and
//!   finished (`Final`), not adopted, and still the very file we left (same inode, size, mtime,
//!   ctime: a file replaced or changed since is someone's);
//! - an empty zero-length file of the torrent (it holds no data), unless the file is skipped;
//! - folders of the torrent's paths left empty, deepest first (`rmdir` only: a folder holding
//!   anything, the user's files included, stays).
//!
//! What stays, listed in [`DeletedData::kept`] when it is there: a file the client found in
//! place and adopted after it verified, or took in from there and completed (it was the user's
//! before it was the torrent's: when in doubt, keep); a file with no record (`Foreign`, or
//! finished after the last flush, which a clean stop makes impossible); anything that is not a
//! regular file; anything reached through a symbolic link. Never touched: the download folder
//! itself, anything outside the torrent's own paths (so neither the watch folder nor a
//! `.torrent` file, unless they sit inside the torrent's own folder, which only loses an empty
//! folder there), another torrent's files (two torrents never share a root, see `claims`).
//! A resume file of wave 1's format is not trusted for this: its files are kept.
//!
//! [`StorageBackend::delete_data`]: zigtorrent_engine::StorageBackend::delete_data
//! [`DeletedData::kept`]: zigtorrent_engine::DeletedData::kept

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zigtorrent_engine::{DeletedData, Layout, StorageError, StorageSpec};

use crate::claims::Claims;
use crate::paths::{check_relative, parts_dir};
use crate::resume::{self, Location, Stamp, LEGACY_VERSION};

/// Delete what we wrote for `spec`'s torrent (see the module doc).
pub(crate) fn delete_data(
    spec: &StorageSpec,
    claims: &Arc<Claims>,
) -> Result<DeletedData, StorageError> {
    // Held to the end: the torrent cannot open, or move, while its data goes.
    let Some(_busy) = claims.begin_move(spec.info_hash) else {
        return Err(StorageError::Io {
            path: spec.download_dir.clone(),
            source: std::io::Error::other(
                "the torrent's storage is still open, or its files are moving",
            ),
        });
    };
    let layout = &spec.layout;
    for f in &layout.files {
        check_relative(&f.path)?;
    }
    let resume_path = resume::resume_path(&spec.state_dir, &spec.info_hash);
    let body = resume::load(&resume_path)?
        .filter(|l| l.version != LEGACY_VERSION)
        .map(|l| l.body)
        .filter(|b| b.matches(&spec.info_hash, layout));
    let mut out = DeletedData::default();
    let skipped = |i: usize| spec.skipped_files.get(i).copied().unwrap_or(false);

    for (i, f) in layout.files.iter().enumerate() {
        let path = spec.download_dir.join(&f.path);
        if through_link(&spec.download_dir, &f.path) {
            if fs::symlink_metadata(&path).is_ok() {
                out.kept
                    .push((path, "reached through a symbolic link".into()));
            }
            continue;
        }
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(e) => return Err(StorageError::from_io(&path, e)),
        };
        if !meta.is_file() {
            out.kept.push((path, "not a regular file".into()));
            continue;
        }
        let verdict = if f.length == 0 {
            match (meta.len(), skipped(i)) {
                (0, false) => Ok(()),
                (0, true) => Err("skipped, so not created by this client"),
                _ => Err("not empty, so not written by this client"),
            }
        } else {
            match body.as_ref().and_then(|b| b.files.get(i)) {
                Some(r) if r.location == Location::Final && r.adopted != 0 => {
                    Err("found in place, not written by this client")
                }
                Some(r) if r.location == Location::Final && r.stamp == Stamp::of(&meta) => Ok(()),
                Some(r) if r.location == Location::Final => {
                    Err("changed since this client finished it")
                }
                _ => Err("not written by this client"),
            }
        };
        match verdict {
            Ok(()) => remove_file(&path, &mut out)?,
            Err(why) => out.kept.push((path, why.into())),
        }
    }

    let parts = parts_dir(&spec.state_dir, &spec.info_hash);
    match fs::symlink_metadata(&parts) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(&parts).map_err(|e| StorageError::from_io(&parts, e))?;
            out.removed.push(parts);
        }
        // Not ours to follow: remove the entry itself.
        Ok(_) => remove_file(&parts, &mut out)?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::from_io(&parts, e)),
    }
    remove_file(&resume_path, &mut out)?;
    // A move left unsettled no longer has a record to vouch for anything.
    remove_file(
        &crate::relocate::journal_path(&spec.state_dir, &spec.info_hash),
        &mut out,
    )?;
    if let Some(marker) =
        claims.forget_marker(&spec.info_hash, layout, &spec.download_dir, &spec.state_dir)
    {
        out.removed.push(marker);
    }

    // Folders of the torrent's paths, deepest first; only empty ones go.
    for rel in torrent_folders(layout) {
        if through_link(&spec.download_dir, &rel.join("x")) {
            continue;
        }
        let dir = spec.download_dir.join(&rel);
        if fs::remove_dir(&dir).is_ok() {
            out.removed.push(dir);
        }
    }
    Ok(out)
}

/// Whether a folder between `base` and `base/rel` (excluding `base`, excluding the last
/// component) is a symbolic link or not a folder: then `base/rel` is not where it seems.
fn through_link(base: &Path, rel: &Path) -> bool {
    let mut cur = base.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in &parents[..parents.len().saturating_sub(1)] {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return true,
            // Missing: nothing below it exists either.
            Err(_) => return false,
        }
    }
    false
}

/// Remove one file (not following a link), noting it; a missing file is fine.
fn remove_file(path: &Path, out: &mut DeletedData) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => {
            out.removed.push(path.to_path_buf());
            Ok(())
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

/// The folders of a torrent's paths (relative), deepest first, so that removing each one that
/// is empty in turn removes a tree emptied from the bottom.
pub(crate) fn torrent_folders(layout: &Layout) -> Vec<PathBuf> {
    let folders: BTreeSet<PathBuf> = layout
        .files
        .iter()
        .flat_map(|f| f.path.ancestors().skip(1).map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let mut folders: Vec<PathBuf> = folders.into_iter().collect();
    folders.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    folders
}
