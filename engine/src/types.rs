//! Small value types shared by every module: hashes, peer ids, piece indices and bitfields.

use std::fmt;

/// SHA-1 info-hash of a v1 torrent: the hash of the raw `info` dictionary bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lower-case hex, 40 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// The 20-byte id a peer announces in its handshake.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerId(pub [u8; 20]);

impl PeerId {
    /// A fresh Azureus-style id: `-ZG0100-` followed by 12 random bytes.
    pub fn generate() -> Self {
        let mut id = [0u8; 20];
        id[..8].copy_from_slice(b"-ZG0100-");
        let tail: [u8; 12] = rand::random();
        // Printable tail: some trackers log peer ids and choke on raw bytes.
        for (dst, b) in id[8..].iter_mut().zip(tail) {
            *dst = b"0123456789abcdefghijklmnopqrstuvwxyz"[(b % 36) as usize];
        }
        PeerId(id)
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", String::from_utf8_lossy(&self.0))
    }
}

/// Index of a piece within a torrent.
pub type PieceIndex = u32;

/// A block inside a piece: what one `request`/`piece` message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockRef {
    /// Piece index.
    pub piece: PieceIndex,
    /// Byte offset of the block within the piece.
    pub begin: u32,
    /// Block length in bytes.
    pub length: u32,
}

/// BEP 3: blocks are requested 16 KiB at a time; larger requests may be refused by peers.
pub const BLOCK_SIZE: u32 = 16 * 1024;

/// A fixed-length set of piece indices, stored as the BEP 3 `bitfield` bytes (high bit first).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Bitfield {
    bits: Vec<u8>,
    len: usize,
    ones: usize,
}

/// A bitfield from the wire that does not fit the torrent.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BitfieldError {
    /// The byte count is not `ceil(len / 8)`.
    #[error("bitfield has {got} bytes, expected {expected}")]
    WrongLength {
        /// Bytes received.
        got: usize,
        /// Bytes expected for this torrent.
        expected: usize,
    },
    /// BEP 3: spare bits at the end must be cleared.
    #[error("bitfield has spare bits set")]
    SpareBitsSet,
}

impl Bitfield {
    /// An empty set able to hold `len` indices.
    pub fn new(len: usize) -> Self {
        Bitfield {
            bits: vec![0; len.div_ceil(8)],
            len,
            ones: 0,
        }
    }

    /// A full set of `len` indices.
    pub fn full(len: usize) -> Self {
        let mut b = Bitfield::new(len);
        for i in 0..len {
            b.set(i);
        }
        b
    }

    /// Parse wire bytes for a torrent of `len` pieces, checking the length and spare bits.
    pub fn from_bytes(bytes: &[u8], len: usize) -> Result<Self, BitfieldError> {
        let expected = len.div_ceil(8);
        if bytes.len() != expected {
            return Err(BitfieldError::WrongLength {
                got: bytes.len(),
                expected,
            });
        }
        let spare = expected * 8 - len;
        if spare > 0 {
            let mask = (1u8 << spare) - 1;
            if bytes[expected - 1] & mask != 0 {
                return Err(BitfieldError::SpareBitsSet);
            }
        }
        let ones = bytes.iter().map(|b| b.count_ones() as usize).sum();
        Ok(Bitfield {
            bits: bytes.to_vec(),
            len,
            ones,
        })
    }

    /// Number of indices this set can hold.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the set holds no indices at all (`len() == 0`).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `i` is in the set; out-of-range indices are not.
    pub fn get(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 8] & (0x80 >> (i % 8)) != 0
    }

    /// Add `i`; returns true when it was not there before. Out-of-range indices are ignored.
    pub fn set(&mut self, i: usize) -> bool {
        if i >= self.len || self.get(i) {
            return false;
        }
        self.bits[i / 8] |= 0x80 >> (i % 8);
        self.ones += 1;
        true
    }

    /// Remove `i`; returns true when it was there.
    pub fn clear(&mut self, i: usize) -> bool {
        if !self.get(i) {
            return false;
        }
        self.bits[i / 8] &= !(0x80 >> (i % 8));
        self.ones -= 1;
        true
    }

    /// How many indices are set.
    pub fn count_ones(&self) -> usize {
        self.ones
    }

    /// True when every index is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// The wire bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Iterate over the set indices in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len).filter(move |&i| self.get(i))
    }
}

impl fmt::Debug for Bitfield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bitfield({}/{})", self.ones, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_round_trip_and_spare_bits() {
        let mut b = Bitfield::new(10);
        assert!(b.set(0));
        assert!(b.set(9));
        assert!(!b.set(9));
        assert!(!b.set(10));
        assert_eq!(b.as_bytes(), &[0x80, 0x40]);
        assert_eq!(b.count_ones(), 2);
        let c = Bitfield::from_bytes(b.as_bytes(), 10).unwrap();
        assert_eq!(b, c);
        assert_eq!(
            Bitfield::from_bytes(&[0x80, 0x20], 10),
            Err(BitfieldError::SpareBitsSet)
        );
        assert!(matches!(
            Bitfield::from_bytes(&[0], 10),
            Err(BitfieldError::WrongLength { .. })
        ));
        assert!(b.clear(0));
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![9]);
        assert!(Bitfield::full(10).is_full());
    }
}
