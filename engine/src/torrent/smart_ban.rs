//! Smart ban (libtorrent's idea): when a piece fails its hash, remember who sent each of its
//! blocks and a digest of what they sent; when the piece later verifies, the senders whose
//! blocks differ from the verified data are the ones that lied. Honest peers that merely shared
//! a bad piece with a liar are never blamed.
//!
//! Owns only those records, bounded in pieces and in entries. Sans-IO: digests are computed by
//! the caller (on the blocking pool), nothing here reads the clock.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use crate::types::PieceIndex;

/// Failed pieces remembered at once; the oldest record goes first. A swarm with a liar fails a
/// handful of pieces before the liar is caught, and a piece usually verifies within seconds of
/// failing, so this many covers every piece in flight (the picker works on far fewer).
pub(super) const MAX_FAILED_PIECES: usize = 64;
/// Block records kept over all failed pieces (each ~40 bytes: ~1.3 MB at most). Pieces may be
/// 64 MiB (4,096 blocks), so the piece count alone would not bound memory.
pub(super) const MAX_BLOCK_RECORDS: usize = 32 * 1024;
/// Distinct (sender, digest) versions kept per block. A block is re-requested after each
/// failure; more versions than this means several liars on one block, and the first ones seen
/// are enough to catch some of them.
pub(super) const MAX_VERSIONS_PER_BLOCK: usize = 4;

/// A digest of one block: the first 8 bytes of its SHA-1. Forging a block with the same prefix
/// as the good one (to escape blame) is a 64-bit second-preimage search.
pub(super) type BlockDigest = u64;

/// The digest of one block's bytes.
pub(super) fn block_digest(data: &[u8]) -> BlockDigest {
    let h = crate::hash::sha1(data);
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&h[..8]);
    u64::from_be_bytes(prefix)
}

#[derive(Debug, Default)]
struct Record {
    /// Per block: who sent which version.
    blocks: Vec<Vec<(SocketAddr, BlockDigest)>>,
    entries: usize,
}

/// Records of failed pieces, waiting for the piece to verify.
#[derive(Debug, Default)]
pub(super) struct SmartBan {
    records: HashMap<PieceIndex, Record>,
    /// Pieces in the order first recorded (oldest first).
    order: VecDeque<PieceIndex>,
    entries: usize,
}

impl SmartBan {
    /// Whether `piece` has a record (its next good version should be digested).
    pub(super) fn is_tracked(&self, piece: PieceIndex) -> bool {
        self.records.contains_key(&piece)
    }

    /// Pieces currently recorded.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.records.len()
    }

    /// Remember a failed version of `piece`: `blocks[i]` is the sender and digest of block `i`.
    pub(super) fn record_failure(
        &mut self,
        piece: PieceIndex,
        blocks: &[(SocketAddr, BlockDigest)],
    ) {
        if !self.records.contains_key(&piece) {
            self.order.push_back(piece);
        }
        let record = self.records.entry(piece).or_default();
        if record.blocks.len() < blocks.len() {
            record.blocks.resize_with(blocks.len(), Vec::new);
        }
        for (versions, &(addr, digest)) in record.blocks.iter_mut().zip(blocks) {
            if versions.len() < MAX_VERSIONS_PER_BLOCK && !versions.contains(&(addr, digest)) {
                versions.push((addr, digest));
                record.entries += 1;
                self.entries += 1;
            }
        }
        self.trim();
    }

    /// Drop the oldest records until both bounds hold; the newest record always stays, even
    /// alone over the entry bound (one piece's blocks × versions is bounded on its own).
    fn trim(&mut self) {
        while (self.records.len() > MAX_FAILED_PIECES || self.entries > MAX_BLOCK_RECORDS)
            && self.order.len() > 1
        {
            if let Some(old) = self.order.pop_front() {
                self.forget(old);
            }
        }
    }

    fn forget(&mut self, piece: PieceIndex) {
        if let Some(r) = self.records.remove(&piece) {
            self.entries -= r.entries;
        }
        self.order.retain(|p| *p != piece);
    }

    /// `piece` verified with these block digests: the senders of any recorded version that
    /// differs are to blame (each named once). The record is dropped.
    pub(super) fn on_verified(
        &mut self,
        piece: PieceIndex,
        good: &[BlockDigest],
    ) -> Vec<SocketAddr> {
        let Some(record) = self.records.get(&piece) else {
            return Vec::new();
        };
        let mut guilty = Vec::new();
        for (versions, good) in record.blocks.iter().zip(good) {
            for (addr, digest) in versions {
                if digest != good && !guilty.contains(addr) {
                    guilty.push(*addr);
                }
            }
        }
        self.forget(piece);
        guilty
    }

    /// Forget `piece` without a verdict (e.g. it was reset).
    #[allow(dead_code)]
    pub(super) fn discard(&mut self, piece: PieceIndex) {
        self.forget(piece);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, port as u8], port))
    }

    #[test]
    fn only_senders_of_differing_blocks_are_blamed() {
        let mut sb = SmartBan::default();
        let good = [
            block_digest(b"one"),
            block_digest(b"two"),
            block_digest(b"three"),
        ];
        // Honest a(1) sent blocks 0 and 2, liar a(2) sent block 1 wrong.
        sb.record_failure(
            7,
            &[
                (a(1), good[0]),
                (a(2), block_digest(b"junk")),
                (a(1), good[2]),
            ],
        );
        assert!(sb.is_tracked(7));
        // The piece failed again: a(3) lied about block 0, a(1) was honest on block 1.
        sb.record_failure(
            7,
            &[
                (a(3), block_digest(b"bad")),
                (a(1), good[1]),
                (a(1), good[2]),
            ],
        );
        let mut guilty = sb.on_verified(7, &good);
        guilty.sort();
        assert_eq!(guilty, vec![a(2), a(3)]);
        assert!(!sb.is_tracked(7), "a verdict drops the record");
        assert!(sb.on_verified(7, &good).is_empty());
    }

    #[test]
    fn a_piece_that_failed_for_no_one_blames_no_one() {
        let mut sb = SmartBan::default();
        let good = [block_digest(b"x"), block_digest(b"y")];
        sb.record_failure(1, &[(a(1), good[0]), (a(2), good[1])]);
        assert!(sb.on_verified(1, &good).is_empty());
    }

    #[test]
    fn records_stay_bounded_oldest_first() {
        let mut sb = SmartBan::default();
        for piece in 0..(MAX_FAILED_PIECES as u32 + 10) {
            sb.record_failure(piece, &[(a(1), 1), (a(2), 2)]);
        }
        assert_eq!(sb.len(), MAX_FAILED_PIECES);
        assert!(!sb.is_tracked(0), "oldest forgotten");
        assert!(sb.is_tracked(MAX_FAILED_PIECES as u32 + 9), "newest kept");

        // Entry bound with huge pieces: 4,096 blocks each.
        let mut sb = SmartBan::default();
        let big: Vec<(SocketAddr, BlockDigest)> = (0..4096).map(|i| (a(1), i)).collect();
        for piece in 0..20 {
            sb.record_failure(piece, &big);
        }
        assert!(sb.entries <= MAX_BLOCK_RECORDS);
        assert!(sb.is_tracked(19));
        // Versions per block are capped, repeats are not stored twice.
        let mut sb = SmartBan::default();
        for v in 0..10u64 {
            sb.record_failure(3, &[(a(1), v)]);
            sb.record_failure(3, &[(a(1), v)]);
        }
        assert_eq!(sb.entries, MAX_VERSIONS_PER_BLOCK);
    }
}
