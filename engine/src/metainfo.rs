//! `.torrent` files: parsing (bounded, validated, paths sanitised) and creation.
//!
//! Parsing owns the whole trip from untrusted bytes to a [`Metainfo`] the rest of the engine can
//! trust: size cap, [`crate::bencode::scan`] (depth, lengths, one value), info-hash over the raw
//! `info` span, serde_bencode decoding into a generic value, then validation of every field the
//! engine relies on (geometry, lengths, paths, trackers). It never touches the file system.
//! Creation ([`create_torrent`]) lives in `create.rs`; the path policy in [`sanitize`].
//!
//! Decisions:
//! - fields are read from a generic bencode value rather than a derived struct, so a malformed
//!   optional field (`comment` given as an integer, a non-UTF-8 key) is ignored instead of
//!   failing the torrent; required fields are checked strictly;
//! - text prefers the `<key>.utf-8` variant when present and valid, else converts lossily;
//! - unsafe paths reject the torrent (see [`sanitize`]); an empty `name` falls back to the
//!   info-hash in hex;
//! - a torrent of zero total bytes is rejected (nothing to download, no pieces to check);
//! - BEP 47 padding files are kept as ordinary files so the piece geometry stays right;
//! - file count, components per path and bytes per path are capped ([`MAX_FILES`],
//!   [`MAX_PATH_DEPTH`], [`MAX_PATH_BYTES`]), each with its own error variant, and the depth is
//!   checked before a path's components are looked at;
//! - two files at one sanitised path, or a file where another needs a folder (`a` and `a/b`),
//!   reject the torrent; the check compares bytes exactly (case folding is storage's business)
//!   and costs time linear in the total path bytes (`tree.rs`).

mod create;
pub mod sanitize;
mod tree;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use tree::{Conflict, PathTree};

use serde_bencode::value::Value;

use crate::bencode::{self, Limits};
use crate::hash::PieceHash;
use crate::storage::{FileSpec, Layout};
use crate::types::InfoHash;

pub use create::{
    auto_piece_length, create_torrent, CreateError, CreateOptions, MAX_AUTO_PIECE_LENGTH,
    MIN_PIECE_LENGTH,
};

/// Largest `.torrent` file accepted.
pub const MAX_TORRENT_SIZE: usize = 16 * 1024 * 1024;

/// Largest piece length accepted. BEP 3 sets none; 64 MiB is far above what creators use and
/// keeps a single piece's buffer bounded.
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;

/// Most files accepted in one torrent; bounds the work of path checks and storage set-up (one
/// open or create per file). Large real torrents (software mirrors, photo archives, datasets)
/// carry thousands to tens of thousands of files; a 16 MiB `.torrent` could describe about
/// 700,000 minimal ones, so without this cap the file size alone would be the bound.
pub const MAX_FILES: usize = 100_000;

/// Most components in one file's path (the `name` folder of a multi-file torrent included).
/// BEP 3 sets no limit. Real trees are a few dozen levels deep at most (Windows' 260-character
/// `MAX_PATH` alone keeps its users' trees under 130); 256 is far above any of them, and refusing
/// deeper paths before looking at their components keeps a hostile 80,000-level path cheap.
pub const MAX_PATH_DEPTH: usize = 256;

/// Longest path of one file, in bytes of its sanitised UTF-8 form with `/` separators, `name`
/// included. Linux's `PATH_MAX` (4096, the terminating NUL counted) is the longest path one
/// system call accepts, and this path is still relative to the downloads folder, so no longer
/// path could be opened by name on Linux anyway.
pub const MAX_PATH_BYTES: usize = 4096;

/// Most bencode values (keys included) accepted in a `.torrent`. Decoding builds one tree node
/// per value, so this bounds memory: without it 16 MiB of `le` would become 8 million nodes.
/// 100,000 files at a few values each stay well inside it.
pub const MAX_ITEMS: usize = 2_000_000;

/// Most `nodes` entries kept (the rest are dropped, not fatal).
pub const MAX_NODES: usize = 64;

/// Most tracker URLs kept from `announce` / `announce-list` (the rest are dropped, not fatal).
pub const MAX_TRACKERS: usize = 200;

/// A parsed v1 torrent.
#[derive(Clone, Debug)]
pub struct Metainfo {
    /// SHA-1 over the raw `info` bytes as they appear in the file.
    pub info_hash: InfoHash,
    /// The `info` dictionary.
    pub info: Info,
    /// BEP 12 tiers; a lone `announce` becomes one tier of one URL.
    pub announce_tiers: Vec<Vec<String>>,
    /// `comment`.
    pub comment: Option<String>,
    /// `created by`.
    pub created_by: Option<String>,
    /// `creation date` (Unix seconds).
    pub creation_date: Option<i64>,
    /// The `info` dictionary exactly as in the file: served to peers that ask for metadata
    /// (BEP 9) and saved for magnets, so its SHA-1 stays the info-hash.
    pub info_bytes: bytes::Bytes,
    /// BEP 5 `nodes`: DHT nodes (host, port) the torrent's creator suggests, at most
    /// [`MAX_NODES`].
    pub dht_nodes: Vec<(String, u16)>,
}

/// The validated `info` dictionary.
#[derive(Clone, Debug)]
pub struct Info {
    /// Suggested name (sanitised).
    pub name: String,
    /// One hash per piece.
    pub pieces: Vec<PieceHash>,
    /// Files (sanitised relative paths; multi-file torrents under `name/`) and piece geometry.
    pub layout: Layout,
    /// BEP 27 private flag.
    pub private: bool,
}

impl Info {
    /// Number of pieces (equal to `pieces.len()` for a parsed torrent).
    pub fn piece_count(&self) -> u32 {
        self.layout.piece_count()
    }

    /// Nominal piece length in bytes.
    pub fn piece_length(&self) -> u32 {
        self.layout.piece_length
    }

    /// Sum of all file lengths.
    pub fn total_length(&self) -> u64 {
        self.layout.total_length
    }

    /// Files in torrent order.
    pub fn files(&self) -> &[FileSpec] {
        &self.layout.files
    }

    /// Expected hash of `piece`, if it exists.
    pub fn piece_hash(&self, piece: crate::types::PieceIndex) -> Option<&PieceHash> {
        self.pieces.get(piece as usize)
    }
}

impl Metainfo {
    /// Every tracker URL, tier by tier.
    pub fn trackers(&self) -> impl Iterator<Item = &str> {
        self.announce_tiers.iter().flatten().map(String::as_str)
    }
}

/// Why a `.torrent` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    /// Not bencode, or over a limit.
    #[error(transparent)]
    Bencode(#[from] crate::bencode::BencodeError),
    /// Well-formed bencode that is not a valid torrent.
    #[error("invalid torrent: {0}")]
    Invalid(String),
    /// More files than [`MAX_FILES`].
    #[error("invalid torrent: {count} files (limit {max})")]
    TooManyFiles {
        /// Files in the torrent.
        count: usize,
        /// The limit, [`MAX_FILES`].
        max: usize,
    },
    /// A file's path has more components than [`MAX_PATH_DEPTH`].
    #[error("invalid torrent: file {file}: path of {depth} components (limit {max})")]
    PathTooDeep {
        /// Index of the file in the torrent.
        file: usize,
        /// Components in its path, `name` included.
        depth: usize,
        /// The limit, [`MAX_PATH_DEPTH`].
        max: usize,
    },
    /// A file's path is longer than [`MAX_PATH_BYTES`].
    #[error("invalid torrent: file {file}: path of {bytes} bytes (limit {max})")]
    PathTooLong {
        /// Index of the file in the torrent.
        file: usize,
        /// Bytes in its sanitised path (separators and `name` included), counted at least up
        /// to the point where the limit was passed.
        bytes: usize,
        /// The limit, [`MAX_PATH_BYTES`].
        max: usize,
    },
    /// Two files have the same path after sanitising (compared byte for byte).
    #[error("invalid torrent: files {first} and {second} are both at {path:?}")]
    DuplicatePath {
        /// The earlier file's index.
        first: usize,
        /// The later file's index.
        second: usize,
        /// The shared path.
        path: String,
    },
    /// One file's path is a folder in another file's path (`a` and `a/b`).
    #[error("invalid torrent: {path:?} is file {file} and a folder of file {in_folder}")]
    FileIsFolder {
        /// Index of the file at `path`.
        file: usize,
        /// Index of a file under `path`.
        in_folder: usize,
        /// The clashing path.
        path: String,
    },
}

fn invalid(msg: impl Into<String>) -> MetainfoError {
    MetainfoError::Invalid(msg.into())
}

type Dict = HashMap<Vec<u8>, Value>;

impl Metainfo {
    /// Parse and validate untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let scanned = bencode::scan(bytes, Limits::with_max_size(MAX_TORRENT_SIZE))?;
        if scanned.items > MAX_ITEMS {
            return Err(invalid(format!(
                "{} bencode values (limit {MAX_ITEMS})",
                scanned.items
            )));
        }
        let span = scanned
            .info_span
            .ok_or_else(|| invalid("no `info` dictionary"))?;
        let info_hash = InfoHash(crate::hash::sha1(&bytes[span.clone()]));

        let root: Value = serde_bencode::from_bytes(bytes)
            .map_err(|e| MetainfoError::Bencode(bencode::BencodeError::Shape(e.to_string())))?;
        let Value::Dict(root) = root else {
            return Err(invalid("top level is not a dictionary"));
        };
        let Some(Value::Dict(info)) = root.get(&b"info"[..]) else {
            return Err(invalid("`info` is not a dictionary"));
        };

        Ok(Metainfo {
            info: parse_info(info, &info_hash)?,
            info_hash,
            info_bytes: bytes::Bytes::copy_from_slice(&bytes[span]),
            dht_nodes: dht_nodes(&root),
            announce_tiers: announce_tiers(&root),
            comment: text(&root, "comment"),
            created_by: text(&root, "created by"),
            creation_date: match root.get(&b"creation date"[..]) {
                Some(Value::Int(t)) => Some(*t),
                _ => None,
            },
        })
    }
}

impl Metainfo {
    /// A torrent from a bare `info` dictionary (metadata fetched from peers, BEP 9) and the
    /// trackers a magnet named (each its own tier). Checked exactly like a `.torrent` file.
    pub fn from_info_bytes(info: &[u8], trackers: &[String]) -> Result<Metainfo, MetainfoError> {
        let mut mi = Metainfo::from_bytes(&Metainfo::wrap_info(info, &[]))?;
        mi.announce_tiers = trackers
            .iter()
            .take(MAX_TRACKERS)
            .map(|t| vec![t.clone()])
            .collect();
        Ok(mi)
    }

    /// A `.torrent` file of this torrent: the raw `info` bytes and the tracker tiers, so
    /// parsing it again gives the same info-hash (used to keep fetched metadata).
    pub fn to_torrent_bytes(&self) -> Vec<u8> {
        Metainfo::wrap_info(&self.info_bytes, &self.announce_tiers)
    }

    fn wrap_info(info: &[u8], tiers: &[Vec<String>]) -> Vec<u8> {
        fn put_str(out: &mut Vec<u8>, s: &[u8]) {
            out.extend_from_slice(s.len().to_string().as_bytes());
            out.push(b':');
            out.extend_from_slice(s);
        }
        let mut out = Vec::with_capacity(info.len() + 64);
        out.push(b'd');
        // Keys in sorted order, as bencode requires.
        if !tiers.is_empty() {
            put_str(&mut out, b"announce-list");
            out.push(b'l');
            for tier in tiers {
                out.push(b'l');
                for url in tier {
                    put_str(&mut out, url.as_bytes());
                }
                out.push(b'e');
            }
            out.push(b'e');
        }
        put_str(&mut out, b"info");
        out.extend_from_slice(info);
        out.push(b'e');
        out
    }
}

/// BEP 5: `nodes` is a list of `[host, port]` pairs; malformed entries are skipped.
fn dht_nodes(root: &Dict) -> Vec<(String, u16)> {
    let Some(Value::List(list)) = root.get(&b"nodes"[..]) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|node| match node {
            Value::List(pair) => match pair.as_slice() {
                [Value::Bytes(host), Value::Int(port)] => {
                    let host = std::str::from_utf8(host).ok()?;
                    let port = u16::try_from(*port).ok().filter(|p| *p != 0)?;
                    (!host.is_empty() && host.len() <= 253).then(|| (host.to_string(), port))
                }
                _ => None,
            },
            _ => None,
        })
        .take(MAX_NODES)
        .collect()
}

fn parse_info(info: &Dict, info_hash: &InfoHash) -> Result<Info, MetainfoError> {
    let piece_length = match info.get(&b"piece length"[..]) {
        Some(Value::Int(n)) => u32::try_from(*n)
            .ok()
            .filter(|n| (1..=MAX_PIECE_LENGTH).contains(n))
            .ok_or_else(|| {
                invalid(format!(
                    "piece length {n} out of range 1..={MAX_PIECE_LENGTH}"
                ))
            })?,
        _ => return Err(invalid("missing `piece length`")),
    };

    let Some(Value::Bytes(raw_pieces)) = info.get(&b"pieces"[..]) else {
        return Err(invalid("missing `pieces`"));
    };
    if raw_pieces.len() % 20 != 0 {
        return Err(invalid(format!(
            "`pieces` is {} bytes, not a multiple of 20",
            raw_pieces.len()
        )));
    }
    let pieces: Vec<PieceHash> = raw_pieces
        .chunks_exact(20)
        .map(|c| {
            let mut h = [0u8; 20];
            h.copy_from_slice(c);
            h
        })
        .collect();

    let name = text(info, "name").unwrap_or_default();
    let name = if name.is_empty() {
        info_hash.to_hex()
    } else {
        name
    };
    sanitize::check_component(&name).map_err(|e| invalid(format!("name: {e}")))?;

    let files: Vec<(PathBuf, u64)> = match (info.get(&b"length"[..]), info.get(&b"files"[..])) {
        (Some(length), None) => {
            check_path_bytes(0, name.len())?;
            vec![(PathBuf::from(&name), file_length(length)?)]
        }
        (None, Some(Value::List(entries))) => parse_files(&name, entries)?,
        (None, Some(_)) => return Err(invalid("`files` is not a list")),
        (Some(_), Some(_)) => return Err(invalid("both `length` and `files` present")),
        (None, None) => return Err(invalid("neither `length` nor `files` present")),
    };

    let mut total: u64 = 0;
    for (path, len) in &files {
        total = total
            .checked_add(*len)
            .ok_or_else(|| invalid(format!("total length overflows at {}", path.display())))?;
    }
    if total == 0 {
        return Err(invalid("total length is zero"));
    }
    let expected = total.div_ceil(u64::from(piece_length));
    if expected != pieces.len() as u64 {
        return Err(invalid(format!(
            "{} piece hashes for {total} bytes in pieces of {piece_length} (expected {expected})",
            pieces.len()
        )));
    }

    Ok(Info {
        name,
        pieces,
        layout: Layout::new(piece_length, files),
        private: matches!(info.get(&b"private"[..]), Some(Value::Int(1))),
    })
}

fn file_length(v: &Value) -> Result<u64, MetainfoError> {
    match v {
        Value::Int(n) => {
            u64::try_from(*n).map_err(|_| invalid(format!("negative file length {n}")))
        }
        _ => Err(invalid("file length is not an integer")),
    }
}

fn parse_files(name: &str, entries: &[Value]) -> Result<Vec<(PathBuf, u64)>, MetainfoError> {
    if entries.is_empty() {
        return Err(invalid("`files` is empty"));
    }
    if entries.len() > MAX_FILES {
        return Err(MetainfoError::TooManyFiles {
            count: entries.len(),
            max: MAX_FILES,
        });
    }
    // First every entry's length and path (each check linear in the entry's size), then the
    // conflict check over all of them (linear in the total path bytes, see `tree`).
    let mut out: Vec<(PathBuf, u64)> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let Value::Dict(entry) = entry else {
            return Err(invalid(format!("file {i} is not a dictionary")));
        };
        let length = file_length(
            entry
                .get(&b"length"[..])
                .ok_or_else(|| invalid(format!("file {i} has no length")))?,
        )?;
        let components = path_components(i, entry)?
            .ok_or_else(|| invalid(format!("file {i} has no usable `path`")))?;
        let mut bytes = name.len();
        for c in &components {
            sanitize::check_component(c).map_err(|e| {
                invalid(format!(
                    "file {i} {}: {e}",
                    sanitize::Components(&components)
                ))
            })?;
            bytes += 1 + c.len();
            check_path_bytes(i, bytes)?;
        }
        let mut path = PathBuf::with_capacity(bytes);
        path.push(name);
        path.extend(&components);
        out.push((path, length));
    }

    let mut tree = PathTree::with_capacity(out.len());
    for (i, (path, _)) in out.iter().enumerate() {
        // Every path starts with `name`, the tree's implicit root.
        tree.insert(i, path.iter().skip(1)).map_err(|conflict| {
            // The clashing path: `name` and the first `depth` components.
            let prefix = |depth: usize| path.iter().take(depth + 1).collect::<PathBuf>();
            match conflict {
                Conflict::SamePath { other } => MetainfoError::DuplicatePath {
                    first: other,
                    second: i,
                    path: path.display().to_string(),
                },
                Conflict::FileAndFolder {
                    other: Some(other),
                    depth,
                } => MetainfoError::FileIsFolder {
                    file: other,
                    in_folder: i,
                    path: prefix(depth).display().to_string(),
                },
                Conflict::FileAndFolder { other: None, depth } => {
                    // Some earlier file lies under this one's path; name the first.
                    let in_folder = out[..i]
                        .iter()
                        .position(|(p, _)| p != path && p.starts_with(path))
                        .unwrap_or(i);
                    MetainfoError::FileIsFolder {
                        file: i,
                        in_folder,
                        path: prefix(depth).display().to_string(),
                    }
                }
            }
        })?;
    }
    Ok(out)
}

fn check_path_bytes(file: usize, bytes: usize) -> Result<(), MetainfoError> {
    if bytes > MAX_PATH_BYTES {
        return Err(MetainfoError::PathTooLong {
            file,
            bytes,
            max: MAX_PATH_BYTES,
        });
    }
    Ok(())
}

/// The components of file `index`'s path: `path.utf-8` when every component is valid UTF-8,
/// else `path` converted lossily. `None` when missing, empty or not a list of strings; an error
/// when either list holds more than [`MAX_PATH_DEPTH`] components with `name` (checked before
/// anything is converted).
fn path_components(index: usize, entry: &Dict) -> Result<Option<Vec<String>>, MetainfoError> {
    let strings = |key: &[u8]| -> Result<Option<Vec<&[u8]>>, MetainfoError> {
        let Some(Value::List(items)) = entry.get(key) else {
            return Ok(None);
        };
        // `name` is the first component of every path in a multi-file torrent.
        let depth = items.len().saturating_add(1);
        if depth > MAX_PATH_DEPTH {
            return Err(MetainfoError::PathTooDeep {
                file: index,
                depth,
                max: MAX_PATH_DEPTH,
            });
        }
        let parts: Option<Vec<&[u8]>> = items
            .iter()
            .map(|v| match v {
                Value::Bytes(b) => Some(b.as_slice()),
                _ => None,
            })
            .collect();
        Ok(parts.filter(|p| !p.is_empty()))
    };
    if let Some(parts) = strings(b"path.utf-8")? {
        let utf8: Option<Vec<String>> = parts
            .iter()
            .map(|p| std::str::from_utf8(p).ok().map(str::to_owned))
            .collect();
        if utf8.is_some() {
            return Ok(utf8);
        }
    }
    Ok(strings(b"path")?.map(|parts| {
        parts
            .iter()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect()
    }))
}

/// Text field `key`, preferring a valid `<key>.utf-8` variant; lossy otherwise.
fn text(dict: &Dict, key: &str) -> Option<String> {
    if let Some(Value::Bytes(b)) = dict.get(format!("{key}.utf-8").as_bytes()) {
        if let Ok(s) = std::str::from_utf8(b) {
            return Some(s.to_owned());
        }
    }
    match dict.get(key.as_bytes()) {
        Some(Value::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    }
}

/// BEP 12: `announce-list` wins when it holds any usable URL; else a lone `announce` is one tier.
/// Unusable entries (not UTF-8, empty, repeated) are dropped, and at most [`MAX_TRACKERS`] kept.
fn announce_tiers(root: &Dict) -> Vec<Vec<String>> {
    let mut seen = HashSet::new();
    let mut kept = 0usize;
    let mut accept = |v: &Value| -> Option<String> {
        let Value::Bytes(b) = v else { return None };
        let url = std::str::from_utf8(b).ok()?.trim();
        if url.is_empty() || kept >= MAX_TRACKERS || !seen.insert(url.to_owned()) {
            return None;
        }
        kept += 1;
        Some(url.to_owned())
    };
    let mut tiers = Vec::new();
    if let Some(Value::List(list)) = root.get(&b"announce-list"[..]) {
        for tier in list {
            let Value::List(urls) = tier else { continue };
            let tier: Vec<String> = urls.iter().filter_map(&mut accept).collect();
            if !tier.is_empty() {
                tiers.push(tier);
            }
        }
    }
    if tiers.is_empty() {
        if let Some(url) = root.get(&b"announce"[..]).and_then(accept) {
            tiers.push(vec![url]);
        }
    }
    tiers
}

#[cfg(test)]
mod tests;
