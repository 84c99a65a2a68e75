//! Moving a finished torrent to another download folder ([`StorageBackend::move_data`]), and
//! settling a move that a crash interrupted.
//!
//! The torrent's storage is closed first (a backend refuses while it is open). Only files the
//! resume file vouches for move: recorded as ours and finished (`Final`), not adopted, and
//! still the very file we left (same inode, size, mtime, ctime), plus the torrent's empty files.
//! If any finished file fails that test, nothing moves ([`MoveOutcome::NotMoved`]): a torrent
//! is never split between two folders. Files not at their final path (skipped ones, whose
//! incomplete data lives under the state folder) stay where they are; they are named by
//! info-hash, not by folder.
//!
//! Steps, each leaving every file whole at one place or the other:
//!
//! 1. every destination name is checked to be free (a name taken is
//!    [`PathConflict::DestinationTaken`] and nothing moves);
//! 2. the journal `<state>/<hex>.move` (the old and new folder) is written durably;
//! 3. each file moves: `renameat2(RENAME_NOREPLACE)` on one file system; across file systems
//!    (or when [`FsBackend::with_copy_moves`] forces it, for tests) it is copied to an
//!    exclusively created temporary name beside its destination, fsynced, its mtime set to the
//!    source's, compared byte for byte with the source, moved into place without replacing,
//!    the folder fsynced, and only then is the source removed. A name that gets taken meanwhile
//!    moves the files already moved back, and the torrent stays where it was;
//! 4. the resume file is rewritten with the files' new identities (a rename changes the ctime,
//!    a copy the inode), so the next open trusts them without hashing;
//! 5. the journal stays until the engine has recorded the new folder and opens the torrent
//!    there: the record is the commit point. [`settle`], called by every open, finishes the
//!    move when the torrent is opened at the new folder and moves the files back when it is
//!    opened at the old one (a crash before the record changed). A file found at both places
//!    is kept at the one the torrent opens at only when both hold the same bytes (the source
//!    is then removed); otherwise nothing is removed and the open fails naming the path.
//!
//! A copy interrupted by a crash leaves its temporary `.zigtorrent-…tmp` file behind (never
//! removed unless this very move created it); the source is intact.
//!
//! [`StorageBackend::move_data`]: zigtorrent_engine::StorageBackend::move_data
//! [`MoveOutcome::NotMoved`]: zigtorrent_engine::MoveOutcome::NotMoved
//! [`PathConflict::DestinationTaken`]: zigtorrent_engine::PathConflict::DestinationTaken
//! [`FsBackend::with_copy_moves`]: crate::FsBackend::with_copy_moves

use std::fs::{self, File};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zigtorrent_engine::{InfoHash, MoveOutcome, PathConflict, StorageError, StorageSpec};

use crate::claims::Claims;
use crate::paths::{
    check_relative, copy_to_new, create_dirs, create_root, is_cross_device, move_temp,
    rename_noreplace, sync_dir,
};
use crate::resume::{self, Location, ResumeBody, Stamp, LEGACY_VERSION};

/// First bytes of a journal file (then the old folder, NUL, the new folder).
const JOURNAL_MAGIC: &[u8] = b"ZTMOVE1\n";
/// Two paths of at most `PATH_MAX` (4,096 on Linux) each, and the magic: anything larger is
/// not a journal of ours.
const MAX_JOURNAL: u64 = 2 * 4096 + 64;
/// Bytes compared at a time when checking a copy.
const COMPARE_CHUNK: usize = 1 << 20;

/// `<state>/<hex>.move`.
pub(crate) fn journal_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.move", info_hash.to_hex()))
}

/// A move in progress: from which folder to which.
#[derive(Debug, PartialEq, Eq)]
struct Journal {
    from: PathBuf,
    to: PathBuf,
}

fn write_journal(state_dir: &Path, path: &Path, j: &Journal) -> Result<(), StorageError> {
    let mut bytes = JOURNAL_MAGIC.to_vec();
    bytes.extend_from_slice(j.from.as_os_str().as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(j.to.as_os_str().as_bytes());
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })()
    .map_err(|e| StorageError::from_io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StorageError::from_io(path, e))?;
    sync_dir(state_dir)
}

/// The journal, `None` if there is none or it is not one of ours (then it is ignored).
fn read_journal(path: &Path) -> Result<Option<Journal>, StorageError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::from_io(path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_JOURNAL + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| StorageError::from_io(path, e))?;
    Ok(parse_journal(&bytes))
}

fn parse_journal(bytes: &[u8]) -> Option<Journal> {
    if bytes.len() as u64 > MAX_JOURNAL {
        return None;
    }
    let rest = bytes.strip_prefix(JOURNAL_MAGIC)?;
    let nul = rest.iter().position(|&b| b == 0)?;
    let (from, to) = (&rest[..nul], &rest[nul + 1..]);
    if from.is_empty() || to.is_empty() || to.contains(&0) {
        return None;
    }
    Some(Journal {
        from: PathBuf::from(std::ffi::OsString::from_vec(from.to_vec())),
        to: PathBuf::from(std::ffi::OsString::from_vec(to.to_vec())),
    })
}

fn remove_journal(state_dir: &Path, path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(state_dir),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

/// The resume body the move trusts: this torrent's, in the current format.
fn vouching_body(spec: &StorageSpec) -> Result<Option<ResumeBody>, StorageError> {
    let path = resume::resume_path(&spec.state_dir, &spec.info_hash);
    Ok(resume::load(&path)?
        .filter(|l| l.version != LEGACY_VERSION)
        .map(|l| l.body)
        .filter(|b| b.matches(&spec.info_hash, &spec.layout)))
}

/// The files that live at their final path: finished ones the record calls ours, and the
/// torrent's empty files that are not skipped.
fn movable(spec: &StorageSpec, body: &ResumeBody) -> Vec<usize> {
    let skipped = |i: usize| spec.skipped_files.get(i).copied().unwrap_or(false);
    spec.layout
        .files
        .iter()
        .enumerate()
        .filter(|(i, f)| {
            if f.length == 0 {
                !skipped(*i)
            } else {
                body.files
                    .get(*i)
                    .is_some_and(|r| r.location == Location::Final)
            }
        })
        .map(|(i, _)| i)
        .collect()
}

/// Metadata of `path` without following a final link; `None` when nothing is there.
fn lstat(path: &Path) -> Result<Option<fs::Metadata>, StorageError> {
    match fs::symlink_metadata(path) {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

fn taken(path: PathBuf) -> StorageError {
    StorageError::PathInUse {
        path,
        why: PathConflict::DestinationTaken,
    }
}

/// Move `spec`'s finished files from `spec.download_dir` to `to` (see the module doc). The
/// journal is left for the next open to settle.
pub(crate) fn move_data(
    spec: &StorageSpec,
    to: &Path,
    claims: &Arc<Claims>,
    force_copy: bool,
) -> Result<MoveOutcome, StorageError> {
    // Held to the end: the torrent's storage cannot open while its files move.
    let Some(_moving) = claims.begin_move(spec.info_hash) else {
        return Err(StorageError::Io {
            path: spec.download_dir.clone(),
            source: std::io::Error::other("the torrent's storage is still open"),
        });
    };
    for f in &spec.layout.files {
        check_relative(&f.path)?;
    }
    let from = spec.download_dir.as_path();
    let Some(body) = vouching_body(spec)? else {
        return Ok(MoveOutcome::NotMoved {
            reasons: vec![(
                from.to_path_buf(),
                "no resume record vouches that this client wrote the files".into(),
            )],
        });
    };
    let files = movable(spec, &body);

    // Every file must be ours, or none moves.
    let mut reasons = Vec::new();
    for &i in &files {
        let f = &spec.layout.files[i];
        let src = from.join(&f.path);
        let meta = lstat(&src)?;
        let why = match meta {
            None => continue, // gone: nothing to move (the next open notices)
            Some(m) if !m.is_file() => Some("not a regular file"),
            Some(m) if f.length == 0 => (m.len() != 0).then_some("not empty"),
            Some(m) => match body.files.get(i) {
                Some(r) if r.adopted != 0 => Some("found in place, not written by this client"),
                Some(r) if r.stamp == Stamp::of(&m) => None,
                _ => Some("changed since this client finished it"),
            },
        };
        if let Some(why) = why {
            reasons.push((src, why.to_string()));
        }
    }
    // A wanted file at its final path that the record does not call finished (a flush that
    // did not happen): moving the rest would split the torrent.
    let skipped = |i: usize| spec.skipped_files.get(i).copied().unwrap_or(false);
    let mut moving = vec![false; spec.layout.files.len()];
    for &i in &files {
        moving[i] = true;
    }
    for (i, f) in spec.layout.files.iter().enumerate() {
        if f.length > 0 && !skipped(i) && !moving[i] {
            let src = from.join(&f.path);
            if lstat(&src)?.is_some() {
                reasons.push((src, "not recorded as finished by this client".into()));
            }
        }
    }
    if !reasons.is_empty() {
        return Ok(MoveOutcome::NotMoved { reasons });
    }
    // Nothing at any destination name, and the place free for this torrent (not another
    // torrent's, not the client's own), before anything moves.
    for &i in &files {
        let dst = to.join(&spec.layout.files[i].path);
        if lstat(&dst)?.is_some() {
            return Err(taken(dst));
        }
    }
    create_root(to)?;
    claims.check_free(spec.info_hash, &spec.layout, to, &spec.state_dir)?;
    let journal = journal_path(&spec.state_dir, &spec.info_hash);
    write_journal(
        &spec.state_dir,
        &journal,
        // Absolute, so that a start from another working folder still finds both places.
        &Journal {
            from: std::path::absolute(from).map_err(|e| StorageError::from_io(from, e))?,
            to: std::path::absolute(to).map_err(|e| StorageError::from_io(to, e))?,
        },
    )?;
    let mut done = Vec::new();
    if let Err(e) = relocate(spec, &body, &files, from, to, force_copy, &mut done) {
        // Put back what moved (only that: a name taken at the destination is not ours); if even
        // that fails, the journal lets the next open do it.
        match relocate(spec, &body, &done, to, from, force_copy, &mut Vec::new()) {
            Ok(()) => remove_journal(&spec.state_dir, &journal)?,
            Err(back) => {
                tracing::error!(error = %back, "moving files back failed; the next start retries")
            }
        }
        return Err(e);
    }
    Ok(MoveOutcome::Moved {
        files: files
            .iter()
            .map(|&i| spec.layout.files[i].path.clone())
            .collect(),
    })
}

/// Settle a move a crash interrupted, before `spec`'s storage opens (see the module doc).
pub(crate) fn settle(spec: &StorageSpec, claims: &Claims) -> Result<(), StorageError> {
    let path = journal_path(&spec.state_dir, &spec.info_hash);
    let Some(journal) = read_journal(&path)? else {
        return Ok(());
    };
    let here = spec.download_dir.as_path();
    let other = if same_dir(here, &journal.to) {
        journal.from.as_path()
    } else if same_dir(here, &journal.from) {
        journal.to.as_path()
    } else {
        tracing::warn!(
            journal = %path.display(),
            "a move between other folders is pending for this torrent; left as it is"
        );
        return Ok(());
    };
    if let Some(body) = vouching_body(spec)? {
        let files = movable(spec, &body);
        relocate(spec, &body, &files, other, here, false, &mut Vec::new())?;
        claims.forget_marker(&spec.info_hash, &spec.layout, other, &spec.state_dir);
        remove_empty_folders(spec, other);
    }
    remove_journal(&spec.state_dir, &path)
}

/// Whether two names lead to the same folder (`./dl` and `/home/u/dl`, or through a link).
fn same_dir(a: &Path, b: &Path) -> bool {
    let norm = |p: &Path| {
        fs::canonicalize(p)
            .or_else(|_| std::path::absolute(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    norm(a) == norm(b)
}

/// Bring `files` from `from` to `to` (noting in `done` each one moved), then record the
/// identities of every movable file there. Files already at `to` stay; one at both places is
/// settled only if both hold the same bytes.
fn relocate(
    spec: &StorageSpec,
    body: &ResumeBody,
    files: &[usize],
    from: &Path,
    to: &Path,
    force_copy: bool,
    done: &mut Vec<usize>,
) -> Result<(), StorageError> {
    for &i in files {
        let rel = &spec.layout.files[i].path;
        let (src, dst) = (from.join(rel), to.join(rel));
        let src_meta = lstat(&src)?.filter(fs::Metadata::is_file);
        let dst_meta = lstat(&dst)?;
        match (src_meta, dst_meta) {
            (Some(_), None) => {
                move_file(&spec.info_hash, i, &src, &dst, to, force_copy)?;
                done.push(i);
            }
            (Some(s), Some(d)) => {
                // A copy whose source was not yet removed, or someone else's file.
                if d.is_file() && !same_inode(&s, &d) && same_bytes(&src, &dst)? {
                    fs::remove_file(&src).map_err(|e| StorageError::from_io(&src, e))?;
                    sync_dir(src.parent().unwrap_or(from))?;
                } else {
                    return Err(taken(dst));
                }
            }
            (None, _) => {}
        }
    }
    // New identities: trusted only for a file with the recorded size and mtime (a rename keeps
    // both, a copy is given the source's mtime); anything else is left for the recheck.
    let mut body = body.clone();
    for i in movable(spec, &body) {
        let Some(rec) = body.files.get_mut(i) else {
            continue;
        };
        if rec.location != Location::Final {
            continue;
        }
        let dst = to.join(&spec.layout.files[i].path);
        if let Some(m) = lstat(&dst)?.filter(fs::Metadata::is_file) {
            let now = Stamp::of(&m);
            if now.size == rec.stamp.size
                && now.mtime_s == rec.stamp.mtime_s
                && now.mtime_ns == rec.stamp.mtime_ns
            {
                rec.stamp = now;
            }
        }
    }
    let resume_path = resume::resume_path(&spec.state_dir, &spec.info_hash);
    resume::store(&spec.state_dir, &resume_path, &body)
}

fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

/// Move one file without replacing anything: a rename, or a verified copy (module doc, step 3).
fn move_file(
    info_hash: &InfoHash,
    index: usize,
    src: &Path,
    dst: &Path,
    to: &Path,
    force_copy: bool,
) -> Result<(), StorageError> {
    let dst_dir = dst.parent().unwrap_or(to);
    let src_dir = src.parent().unwrap_or(Path::new("."));
    create_dirs(to, dst_dir)?;
    if !force_copy {
        match rename_noreplace(src, dst) {
            Ok(()) => {
                sync_dir(dst_dir)?;
                return sync_dir(src_dir);
            }
            Err(e) if is_cross_device(&e) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(taken(dst.into())),
            Err(e) => return Err(StorageError::from_io(dst, e)),
        }
    }
    let tmp = move_temp(dst, info_hash, index);
    let copy = copy_to_new(src, &tmp).map_err(|e| StorageError::from_io(&tmp, e))?;
    // From here `tmp` is ours: removed on any failure.
    let placed = (|| {
        let mtime = fs::metadata(src)
            .and_then(|m| m.modified())
            .map_err(|e| StorageError::from_io(src, e))?;
        copy.set_modified(mtime)
            .and_then(|()| copy.sync_all())
            .map_err(|e| StorageError::from_io(&tmp, e))?;
        drop(copy);
        if !same_bytes(src, &tmp)? {
            return Err(StorageError::Io {
                path: tmp.clone(),
                source: std::io::Error::other("the copy differs from its source"),
            });
        }
        match rename_noreplace(&tmp, dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Err(taken(dst.into())),
            Err(e) => Err(StorageError::from_io(dst, e)),
        }
    })();
    if let Err(e) = placed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dst_dir)?;
    fs::remove_file(src).map_err(|e| StorageError::from_io(src, e))?;
    sync_dir(src_dir)
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> Result<bool, StorageError> {
    let mut fa = File::open(a).map_err(|e| StorageError::from_io(a, e))?;
    let mut fb = File::open(b).map_err(|e| StorageError::from_io(b, e))?;
    let la = fa
        .metadata()
        .map_err(|e| StorageError::from_io(a, e))?
        .len();
    let lb = fb
        .metadata()
        .map_err(|e| StorageError::from_io(b, e))?
        .len();
    if la != lb {
        return Ok(false);
    }
    let mut ba = vec![0u8; COMPARE_CHUNK];
    let mut bb = vec![0u8; COMPARE_CHUNK];
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| StorageError::from_io(a, e))?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| StorageError::from_io(b, e))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

/// Fill `buf` as far as the file goes.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Folders of the torrent's paths under `base` left empty by the move, deepest first (`rmdir`
/// only: a folder holding anything stays).
fn remove_empty_folders(spec: &StorageSpec, base: &Path) {
    for rel in crate::delete::torrent_folders(&spec.layout) {
        let dir = base.join(&rel);
        if lstat(&dir).ok().flatten().is_some_and(|m| m.is_dir()) {
            let _ = fs::remove_dir(&dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_round_trips_and_refuses_junk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.move");
        let j = Journal {
            from: "/a/b".into(),
            to: "/c d/e".into(),
        };
        write_journal(dir.path(), &path, &j).unwrap();
        assert_eq!(read_journal(&path).unwrap(), Some(j));
        assert_eq!(parse_journal(b"ZTMOVE1\n/a"), None, "no separator");
        assert_eq!(parse_journal(b"ZTMOVE1\n\0/b"), None, "empty from");
        assert_eq!(
            parse_journal(b"ZTMOVE1\n/a\0/b\0/c"),
            None,
            "two separators"
        );
        assert_eq!(parse_journal(b"OTHER\n/a\0/b"), None, "foreign magic");
        let mut big = JOURNAL_MAGIC.to_vec();
        big.resize(MAX_JOURNAL as usize + 1, b'a');
        big[20] = 0;
        assert_eq!(parse_journal(&big), None, "over the cap");
    }
}
