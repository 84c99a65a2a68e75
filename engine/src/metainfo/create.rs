//! Creating v1 torrents from a file or folder (blocking: reads and hashes everything).
//!
//! Decisions:
//! - every regular file under the folder is included, zero-length and hidden ones too, in a
//!   stable order: components compared as byte strings (`a/z` before `a.txt/...` before `b`);
//! - symbolic links *inside* the folder are skipped (following them could loop or pull in data
//!   from outside the folder); the path given on the command line itself is followed;
//!   sockets, FIFOs and devices are skipped;
//! - names that our own parser would refuse (not UTF-8, `\`, NUL, drive prefixes) fail creation
//!   rather than producing a torrent nobody should load;
//! - empty input (no files, or only zero-length files) fails: such a torrent has no pieces;
//! - the output is canonical bencode (serde_bencode sorts every dictionary's keys), checked by
//!   the tests with [`crate::bencode::Scanned::keys_sorted`].

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{sanitize, MAX_PATH_BYTES, MAX_PATH_DEPTH, MAX_PIECE_LENGTH, MAX_TORRENT_SIZE};

/// Smallest piece length accepted or chosen: one BEP 3 block.
pub const MIN_PIECE_LENGTH: u32 = crate::types::BLOCK_SIZE;

/// Largest piece length the automatic choice goes up to.
pub const MAX_AUTO_PIECE_LENGTH: u32 = 16 * 1024 * 1024;

/// The automatic choice doubles the piece length while the torrent would have more pieces than
/// this, giving roughly 1,000–2,000 pieces.
const AUTO_MAX_PIECES: u64 = 2000;

/// What `created by` says.
const CREATED_BY: &str = concat!("ZigTorrent/", env!("CARGO_PKG_VERSION"));

/// Options for [`create_torrent`].
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// Announce URLs; each its own tier.
    pub trackers: Vec<String>,
    /// Piece length; `None` picks a power of two from 16 KiB to 16 MiB for ~1,000–2,000 pieces.
    pub piece_length: Option<u32>,
    /// BEP 27 private flag.
    pub private: bool,
    /// `comment`.
    pub comment: Option<String>,
}

/// Why a torrent could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Reading the source failed.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad options or source.
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CreateError + '_ {
    move |source| CreateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One file to include: its components inside the torrent, length and where it is on disk.
struct Source {
    components: Vec<String>,
    length: u64,
    disk_path: PathBuf,
}

/// The piece length [`create_torrent`] picks for `total` bytes when none is given.
pub fn auto_piece_length(total: u64) -> u32 {
    let mut len = MIN_PIECE_LENGTH;
    while len < MAX_AUTO_PIECE_LENGTH && total.div_ceil(u64::from(len)) > AUTO_MAX_PIECES {
        len *= 2;
    }
    len
}

/// Build the bencoded bytes of a v1 torrent of the file or folder at `path` (blocking: reads and
/// hashes everything).
pub fn create_torrent(path: &Path, options: &CreateOptions) -> Result<Vec<u8>, CreateError> {
    let meta = std::fs::metadata(path).map_err(io_err(path))?;
    let name = match path.file_name() {
        Some(n) => n.to_owned(),
        // `.` or `..`: name the torrent after the folder they resolve to.
        None => path
            .canonicalize()
            .map_err(io_err(path))?
            .file_name()
            .ok_or_else(|| {
                CreateError::Invalid(format!(
                    "{}: cannot name a torrent after it",
                    path.display()
                ))
            })?
            .to_owned(),
    };
    let name = utf8_name(&name, path)?;

    let (sources, single) = if meta.is_file() {
        (
            vec![Source {
                components: Vec::new(),
                length: meta.len(),
                disk_path: path.to_path_buf(),
            }],
            true,
        )
    } else if meta.is_dir() {
        (walk(path)?, false)
    } else {
        return Err(CreateError::Invalid(format!(
            "{}: not a file or folder",
            path.display()
        )));
    };
    if sources.is_empty() {
        return Err(CreateError::Invalid(format!(
            "{}: no files to share",
            path.display()
        )));
    }
    // Our own parser refuses paths past these caps; refuse to make such a torrent instead.
    for s in &sources {
        let depth = 1 + s.components.len();
        let bytes = name.len() + s.components.iter().map(|c| 1 + c.len()).sum::<usize>();
        if depth > MAX_PATH_DEPTH || bytes > MAX_PATH_BYTES {
            return Err(CreateError::Invalid(format!(
                "{}: path of {depth} components and {bytes} bytes in the torrent (limits {MAX_PATH_DEPTH} and {MAX_PATH_BYTES})",
                s.disk_path.display()
            )));
        }
    }
    let total = sources
        .iter()
        .try_fold(0u64, |acc, s| acc.checked_add(s.length))
        .ok_or_else(|| CreateError::Invalid("total size overflows".into()))?;
    if total == 0 {
        return Err(CreateError::Invalid(format!(
            "{}: every file is empty; nothing to share",
            path.display()
        )));
    }

    let piece_length = match options.piece_length {
        Some(len) => {
            if !len.is_power_of_two() || !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&len) {
                return Err(CreateError::Invalid(format!(
                    "piece length {len} must be a power of two from {MIN_PIECE_LENGTH} to {MAX_PIECE_LENGTH}"
                )));
            }
            len
        }
        None => auto_piece_length(total),
    };
    let piece_count = total.div_ceil(u64::from(piece_length));
    // Leave room for everything but the hashes; our own parser refuses larger files.
    if piece_count.saturating_mul(20) > (MAX_TORRENT_SIZE / 2) as u64 {
        return Err(CreateError::Invalid(format!(
            "{piece_count} pieces of {piece_length} bytes make too large a torrent; use a larger piece length"
        )));
    }

    let trackers = check_trackers(&options.trackers)?;
    let pieces = hash_pieces(&sources, piece_length)?;

    let files = (!single).then(|| {
        sources
            .iter()
            .map(|s| FileOut {
                length: s.length,
                path: s.components.iter().map(String::as_str).collect(),
            })
            .collect()
    });
    let torrent = TorrentOut {
        announce: trackers.first().copied(),
        announce_list: trackers.iter().map(|t| vec![*t]).collect(),
        comment: options.comment.as_deref().filter(|c| !c.is_empty()),
        created_by: CREATED_BY,
        creation_date: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)),
        info: InfoOut {
            length: single.then_some(total),
            files,
            name: &name,
            piece_length,
            pieces: serde_bytes::Bytes::new(&pieces),
            private: options.private.then_some(1),
        },
    };
    serde_bencode::to_bytes(&torrent)
        .map_err(|e| CreateError::Invalid(format!("encoding failed: {e}")))
}

fn utf8_name(name: &std::ffi::OsStr, at: &Path) -> Result<String, CreateError> {
    let name = name
        .to_str()
        .ok_or_else(|| CreateError::Invalid(format!("{}: name is not UTF-8", at.display())))?;
    sanitize::check_component(name)
        .map_err(|e| CreateError::Invalid(format!("{}: {e}", at.display())))?;
    Ok(name.to_owned())
}

/// Every regular file under `root`, sorted by components (see the module docs).
fn walk(root: &Path) -> Result<Vec<Source>, CreateError> {
    let mut out = Vec::new();
    // Folders still to read, with their components relative to `root`.
    let mut pending: Vec<(PathBuf, Vec<String>)> = vec![(root.to_path_buf(), Vec::new())];
    while let Some((dir, prefix)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let entry = entry.map_err(io_err(&dir))?;
            let disk_path = entry.path();
            // `DirEntry::file_type` does not follow symlinks, which is what skips them.
            let kind = entry.file_type().map_err(io_err(&disk_path))?;
            if !kind.is_file() && !kind.is_dir() {
                continue;
            }
            let mut components = prefix.clone();
            components.push(utf8_name(&entry.file_name(), &disk_path)?);
            if kind.is_dir() {
                pending.push((disk_path, components));
            } else {
                let length = entry.metadata().map_err(io_err(&disk_path))?.len();
                out.push(Source {
                    components,
                    length,
                    disk_path,
                });
                if out.len() > super::MAX_FILES {
                    return Err(CreateError::Invalid(format!(
                        "{}: more than {} files",
                        root.display(),
                        super::MAX_FILES
                    )));
                }
            }
        }
    }
    out.sort_by(|a, b| a.components.cmp(&b.components));
    Ok(out)
}

fn check_trackers(trackers: &[String]) -> Result<Vec<&str>, CreateError> {
    let mut out: Vec<&str> = Vec::with_capacity(trackers.len());
    for t in trackers {
        let t = t.trim();
        if t.is_empty() || !t.contains("://") || t.chars().any(char::is_control) {
            return Err(CreateError::Invalid(format!("tracker {t:?} is not a URL")));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// SHA-1 of each piece of the concatenated files, read through one reusable piece buffer.
fn hash_pieces(sources: &[Source], piece_length: u32) -> Result<Vec<u8>, CreateError> {
    let piece_length = piece_length as usize;
    let mut buf = vec![0u8; piece_length];
    let mut filled = 0usize;
    let mut pieces = Vec::new();
    for s in sources.iter().filter(|s| s.length > 0) {
        let mut file = File::open(&s.disk_path).map_err(io_err(&s.disk_path))?;
        let mut remaining = s.length;
        while remaining > 0 {
            // Bounded by the piece length, so the cast back to usize cannot truncate.
            let want =
                (piece_length - filled).min(usize::try_from(remaining).unwrap_or(usize::MAX));
            file.read_exact(&mut buf[filled..filled + want])
                .map_err(|source| {
                    if source.kind() == std::io::ErrorKind::UnexpectedEof {
                        CreateError::Io {
                            path: s.disk_path.clone(),
                            source: std::io::Error::new(
                                source.kind(),
                                "file shrank while being hashed",
                            ),
                        }
                    } else {
                        CreateError::Io {
                            path: s.disk_path.clone(),
                            source,
                        }
                    }
                })?;
            filled += want;
            remaining -= want as u64;
            if filled == piece_length {
                pieces.extend_from_slice(&crate::hash::sha1(&buf));
                filled = 0;
            }
        }
    }
    if filled > 0 {
        pieces.extend_from_slice(&crate::hash::sha1(&buf[..filled]));
    }
    Ok(pieces)
}

/// The torrent as written. serde_bencode sorts the keys of every dictionary it writes, so field
/// order here does not matter; `None` fields are left out.
#[derive(Serialize)]
struct TorrentOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    announce: Option<&'a str>,
    #[serde(rename = "announce-list", skip_serializing_if = "Vec::is_empty")]
    announce_list: Vec<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    #[serde(rename = "created by")]
    created_by: &'a str,
    #[serde(rename = "creation date")]
    creation_date: i64,
    info: InfoOut<'a>,
}

#[derive(Serialize)]
struct InfoOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    files: Option<Vec<FileOut<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    length: Option<u64>,
    name: &'a str,
    #[serde(rename = "piece length")]
    piece_length: u32,
    pieces: &'a serde_bytes::Bytes,
    #[serde(skip_serializing_if = "Option::is_none")]
    private: Option<u8>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    length: u64,
    path: Vec<&'a str>,
}
