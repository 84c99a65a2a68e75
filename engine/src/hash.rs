//! The piece-hash seam. v1 torrents use SHA-1; v2 (BEP 52) will add SHA-256 merkle roots here
//! without touching the callers. Hashing is CPU work: callers run it on the blocking pool.

use bytes::Bytes;
use sha1::{Digest, Sha1};

/// A v1 piece hash.
pub type PieceHash = [u8; 20];

/// SHA-1 over the concatenation of `chunks`, without concatenating them.
pub fn sha1_chunks(chunks: &[Bytes]) -> PieceHash {
    let mut h = Sha1::new();
    for c in chunks {
        h.update(c);
    }
    h.finalize().into()
}

/// SHA-1 of one byte slice.
pub fn sha1(data: &[u8]) -> PieceHash {
    Sha1::digest(data).into()
}
