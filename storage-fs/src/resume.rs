//! The resume file `<state_dir>/<info-hash hex>.resume`: which pieces were complete at the last
//! flush, and what every data file looked like then.
//!
//! Format (version 2): the 8-byte magic `ZTRESUME`, a little-endian `u32` version, a
//! little-endian `u64` body length, the SHA-1 of the body, then the body as bencode. The checksum
//! is checked before the body is parsed, so a torn or corrupted file is simply "no resume state";
//! the body then goes through the engine's bounded bencode scanner (depth, size), so even a file
//! with a valid checksum cannot exhaust the stack or memory. It is replaced atomically: temp
//! file, fsync, rename, fsync the folder.
//!
//! Version 1 (wave 1) had the same body; its `Part` meant `<final>.part` beside the final path,
//! where version 2 keeps incomplete files under the state folder. Version 1 is still read, so
//! downloads in progress move over (see `FsStorage::open`).

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use zigtorrent_engine::{InfoHash, Layout, StorageError};

use crate::paths::sync_dir;

const MAGIC: &[u8; 8] = b"ZTRESUME";
const VERSION: u32 = 2;
/// The wave 1 format, still read.
pub(crate) const LEGACY_VERSION: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 20;
/// A resume body is a bitfield plus ~100 bytes per file; 256 MiB is far beyond any real torrent
/// and keeps a damaged length field from allocating without bound.
const MAX_BODY: u64 = 256 << 20;

/// Where a data file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub(crate) enum Location {
    /// No data of ours, and nothing at the final path.
    Absent,
    /// Our incomplete file under the state folder.
    Part,
    /// Ours, complete, at the final path.
    Final,
    /// At the final path, not (known to be) written by us: read-only until a recheck settles
    /// it. Never recorded in a resume file.
    Foreign,
}

impl From<Location> for u8 {
    fn from(l: Location) -> u8 {
        match l {
            Location::Absent => 0,
            Location::Part => 1,
            Location::Final => 2,
            Location::Foreign => 3,
        }
    }
}

impl TryFrom<u8> for Location {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Location::Absent),
            1 => Ok(Location::Part),
            2 => Ok(Location::Final),
            _ => Err(format!("bad location {v}")),
        }
    }
}

/// Identity and state of a data file: which inode it is, its size, and when its contents or its
/// inode last changed. The change time (ctime) cannot be set by a user, so a file replaced by one
/// with the same size and a restored mtime (`cp -p`, `rsync -t`) still looks different.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    pub size: u64,
    pub mtime_s: i64,
    pub mtime_ns: i64,
    /// Added in format 2 (absent from format 1 records: zero).
    #[serde(default)]
    pub dev: u64,
    #[serde(default)]
    pub ino: u64,
    #[serde(default)]
    pub ctime_s: i64,
    #[serde(default)]
    pub ctime_ns: i64,
}

impl Stamp {
    pub(crate) fn of(meta: &fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: meta.size(),
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            dev: meta.dev(),
            ino: meta.ino(),
            ctime_s: meta.ctime(),
            ctime_ns: meta.ctime_nsec(),
        }
    }

    /// The same file: the same inode of the same device.
    pub(crate) fn same_inode(&self, other: &Stamp) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }

    /// Whether `observed` matches this record; a format 1 record only knows size and mtime.
    pub(crate) fn matches(&self, observed: &Stamp, legacy: bool) -> bool {
        if legacy {
            self.size == observed.size
                && self.mtime_s == observed.mtime_s
                && self.mtime_ns == observed.mtime_ns
        } else {
            self == observed
        }
    }
}

/// One data file as recorded at flush time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct FileRecord {
    #[serde(with = "serde_bytes")]
    pub path: Vec<u8>,
    pub length: u64,
    pub location: Location,
    pub stamp: Stamp,
    /// 1: a file at its final path that this client did not create (found there and adopted
    /// after it verified, or taken in and completed): deleting the torrent's data keeps it.
    /// Absent from older records (0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub adopted: u8,
}

fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// The recorded state of one torrent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumeBody {
    #[serde(with = "serde_bytes")]
    pub info_hash: Vec<u8>,
    pub piece_length: u64,
    pub piece_count: u64,
    pub total_length: u64,
    #[serde(with = "serde_bytes")]
    pub completed: Vec<u8>,
    pub files: Vec<FileRecord>,
}

impl ResumeBody {
    /// Whether this record was written for exactly this torrent and layout.
    pub(crate) fn matches(&self, info_hash: &InfoHash, layout: &Layout) -> bool {
        use std::os::unix::ffi::OsStrExt;
        self.info_hash == info_hash.0
            && self.piece_length == layout.piece_length as u64
            && self.piece_count == layout.piece_count() as u64
            && self.total_length == layout.total_length
            && self.files.len() == layout.files.len()
            && self
                .files
                .iter()
                .zip(&layout.files)
                .all(|(r, f)| r.length == f.length && r.path == f.path.as_os_str().as_bytes())
    }
}

/// `<state_dir>/<hex>.resume`.
pub(crate) fn resume_path(state_dir: &Path, info_hash: &InfoHash) -> PathBuf {
    state_dir.join(format!("{}.resume", info_hash.to_hex()))
}

/// A loaded resume file.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Loaded {
    pub version: u32,
    pub body: ResumeBody,
}

/// Nesting of a resume body: a dictionary of a list of dictionaries of a dictionary.
const MAX_DEPTH: usize = 5;

/// Load the resume file; `Ok(None)` when it is missing, torn, corrupted or of another version.
pub(crate) fn load(path: &Path) -> Result<Option<Loaded>, StorageError> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::from_io(path, e)),
    };
    let mut header = [0u8; HEADER_LEN];
    if file.read_exact(&mut header).is_err() || &header[..8] != MAGIC {
        return Ok(None);
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let len = u64::from_le_bytes(header[12..20].try_into().expect("8 bytes"));
    if (version != VERSION && version != LEGACY_VERSION) || len > MAX_BODY {
        return Ok(None);
    }
    let mut body = Vec::new();
    file.take(len + 1)
        .read_to_end(&mut body)
        .map_err(|e| StorageError::from_io(path, e))?;
    Ok(check_body(&header, &body))
}

/// Parse a whole resume file held in memory (the fuzz target's entry; `load` reads the header
/// first so a damaged length never makes it read more than the cap).
pub(crate) fn parse(bytes: &[u8]) -> Option<Loaded> {
    let (header, body) = bytes.split_at_checked(HEADER_LEN)?;
    if &header[..8] != MAGIC {
        return None;
    }
    let header: &[u8; HEADER_LEN] = header.try_into().ok()?;
    check_body(header, body)
}

/// The checks after the header: version, length, checksum, then the bounded decode.
fn check_body(header: &[u8; HEADER_LEN], body: &[u8]) -> Option<Loaded> {
    let version = u32::from_le_bytes(header[8..12].try_into().ok()?);
    let len = u64::from_le_bytes(header[12..20].try_into().ok()?);
    if (version != VERSION && version != LEGACY_VERSION) || len > MAX_BODY {
        return None;
    }
    if body.len() as u64 != len || Sha1::digest(body)[..] != header[20..40] {
        return None;
    }
    decode_body(body).map(|body| Loaded { version, body })
}

/// The bytes `store` writes for `body` (header and body).
fn encode(body: &ResumeBody) -> Result<Vec<u8>, serde_bencode::Error> {
    let encoded = serde_bencode::to_bytes(body)?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + encoded.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(encoded.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&Sha1::digest(&encoded));
    bytes.extend_from_slice(&encoded);
    Ok(bytes)
}

/// Fuzzing entry (see `fuzz/`): parse `bytes` as a resume file; whatever parses must encode
/// and parse back to itself. Panics only on a broken invariant.
#[doc(hidden)]
pub fn fuzz_resume_file(bytes: &[u8]) {
    if let Some(loaded) = parse(bytes) {
        let again = encode(&loaded.body).expect("a decoded body encodes");
        let back = parse(&again).expect("an encoded body parses");
        assert_eq!(back.body, loaded.body, "resume body round trip");
    }
}

/// Decode a resume body through the bounded scanner; `None` if it is not one.
pub(crate) fn decode_body(body: &[u8]) -> Option<ResumeBody> {
    let limits = zigtorrent_engine::bencode::Limits {
        max_depth: MAX_DEPTH,
        max_size: body.len(),
    };
    zigtorrent_engine::bencode::decode(body, limits).ok()
}

/// Atomically replace the resume file: temp file, fsync, rename, fsync the folder.
pub(crate) fn store(state_dir: &Path, path: &Path, body: &ResumeBody) -> Result<(), StorageError> {
    let bytes = encode(body).map_err(|e| StorageError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })?;

    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()
    })();
    result.map_err(|e| StorageError::from_io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StorageError::from_io(path, e))?;
    sync_dir(state_dir)
}

/// Remove a stale resume file (one that no longer matches the data) so it can never be trusted
/// later by accident.
pub(crate) fn remove(state_dir: &Path, path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(state_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StorageError::from_io(path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.resume");
        let body = ResumeBody {
            info_hash: vec![1; 20],
            piece_length: 16384,
            piece_count: 3,
            total_length: 40000,
            completed: vec![0xa0],
            files: vec![FileRecord {
                path: b"t/a".to_vec(),
                length: 40000,
                location: Location::Part,
                stamp: Stamp {
                    size: 40000,
                    mtime_s: 1_700_000_000,
                    mtime_ns: 123_456_789,
                    dev: 2049,
                    ino: 12,
                    ctime_s: 1_700_000_001,
                    ctime_ns: 5,
                },
                adopted: 1,
            }],
        };
        assert_eq!(load(&path).unwrap(), None);
        store(dir.path(), &path, &body).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            Some(Loaded {
                version: VERSION,
                body
            })
        );
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 2;
        bytes[last] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert_eq!(
            load(&path).unwrap(),
            None,
            "checksum must catch a flipped bit"
        );
        fs::write(&path, &bytes[..10]).unwrap();
        assert_eq!(load(&path).unwrap(), None, "torn file is no resume state");
    }

    #[test]
    fn fuzz_entry_round_trips_real_files_and_survives_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.resume");
        let body = ResumeBody {
            info_hash: vec![9; 20],
            piece_length: 16384,
            piece_count: 1,
            total_length: 10,
            completed: vec![0x80],
            files: vec![],
        };
        store(dir.path(), &path, &body).unwrap();
        let bytes = fs::read(&path).unwrap();
        assert_eq!(parse(&bytes).map(|l| l.body), Some(body));
        fuzz_resume_file(&bytes);
        for cut in 0..bytes.len() {
            fuzz_resume_file(&bytes[..cut]);
            assert!(
                parse(&bytes[..cut]).is_none(),
                "a torn file at {cut} parsed"
            );
        }
    }

    /// The fuzz corpus's valid seeds really are resume files (so fuzzing starts from the format,
    /// not from noise).
    #[test]
    fn corpus_seeds_parse() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/resume_file");
        for (name, version) in [
            ("single-final", 2),
            ("multi-part", 2),
            ("legacy-v1", 1),
            ("empty-files", 2),
        ] {
            let bytes = fs::read(dir.join(name)).unwrap();
            let loaded = parse(&bytes).unwrap_or_else(|| panic!("{name} does not parse"));
            assert_eq!(loaded.version, version, "{name}");
        }
        for name in ["bad-location", "bad-checksum", "torn", "huge-length-field"] {
            assert!(
                parse(&fs::read(dir.join(name)).unwrap()).is_none(),
                "{name} parsed"
            );
        }
    }

    /// Fuzzing from outside found 15,000 nested lists with a valid checksum overflowing the
    /// stack on every start; the bounded scanner refuses them.
    #[test]
    fn deep_nesting_is_no_resume_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.resume");
        let mut body = vec![b'l'; 15_000];
        body.extend(std::iter::repeat_n(b'e', 15_000));
        let mut bytes = Vec::new();
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&Sha1::digest(&body));
        bytes.extend_from_slice(&body);
        fs::write(&path, bytes).unwrap();
        assert_eq!(load(&path).unwrap(), None);
    }
}
