//! `.torrent` files: parsing (bounded, validated, paths sanitised) and creation.
//! (Stub: API fixed, implementation pending.)

use std::path::Path;

use crate::hash::PieceHash;
use crate::storage::Layout;
use crate::types::InfoHash;

/// Largest `.torrent` file accepted.
pub const MAX_TORRENT_SIZE: usize = 16 * 1024 * 1024;

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

/// Why a `.torrent` could not be used.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    /// Not bencode, or over a limit.
    #[error(transparent)]
    Bencode(#[from] crate::bencode::BencodeError),
    /// Well-formed bencode that is not a valid torrent.
    #[error("invalid torrent: {0}")]
    Invalid(String),
}

impl Metainfo {
    /// Parse and validate untrusted bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Metainfo, MetainfoError> {
        let _ = bytes;
        unimplemented!("Metainfo::from_bytes")
    }
}

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

/// Build the bencoded bytes of a v1 torrent of the file or folder at `path` (blocking: reads and
/// hashes everything).
pub fn create_torrent(path: &Path, options: &CreateOptions) -> Result<Vec<u8>, CreateError> {
    let _ = (path, options);
    unimplemented!("create_torrent")
}
