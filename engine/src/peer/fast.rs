//! The BEP 6 allowed-fast set: which pieces we serve a peer even while we choke it. Pure: the
//! set depends only on the peer's address, the info-hash and the piece count, so a peer that
//! reconnects gets the same pieces (and cannot collect more by redialling).

use std::net::Ipv4Addr;

use sha1::{Digest, Sha1};

use crate::types::InfoHash;

/// Pieces we grant each peer. BEP 6 leaves `k` to the implementation and its example uses
/// 7 and 9; libtorrent's default (`allowed_fast_set_size`) is 5. We take 10: a new peer that
/// we choke can then finish a whole piece or two of even a small torrent's worth of data from
/// us and have something to trade, while the cost stays a few pieces per address (the set is
/// fixed per /24, so redialling from the same network gains nothing).
pub const ALLOWED_FAST_PIECES: usize = 10;

/// BEP 6's canonical allowed-fast set of `k` distinct piece indices for a peer at `ip` in a
/// torrent of `piece_count` pieces. `k` is capped below `piece_count` (a torrent of that few
/// pieces would otherwise be given away whole, and the generator could not find `k` distinct
/// indices); an empty torrent gets none.
pub fn allowed_fast_set(
    ip: Ipv4Addr,
    info_hash: &InfoHash,
    piece_count: u32,
    k: usize,
) -> Vec<u32> {
    let k = k.min(piece_count.saturating_sub(1) as usize);
    let mut set = Vec::with_capacity(k);
    if k == 0 {
        return set;
    }
    // BEP 6: the first three bytes of the address (its /24), then the info-hash, hashed; then
    // the digest hashed again for as long as more indices are needed, each digest giving five
    // big-endian u32 values taken modulo the piece count.
    let ip = u32::from(ip) & 0xffff_ff00;
    let mut x = Vec::with_capacity(24);
    x.extend_from_slice(&ip.to_be_bytes());
    x.extend_from_slice(&info_hash.0);
    // Each digest adds a new index with probability ≥ 1/piece_count: bound the rounds anyway,
    // so no input can loop (unreachable for k < piece_count in practice).
    for _ in 0..(64 * piece_count.max(1) as usize).min(1 << 20) {
        let digest = Sha1::digest(&x);
        for word in digest.chunks_exact(4) {
            if set.len() == k {
                return set;
            }
            // `chunks_exact(4)` yields four-byte slices.
            let y = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
            let index = y % piece_count;
            if !set.contains(&index) {
                set.push(index);
            }
        }
        if set.len() == k {
            return set;
        }
        x = digest.to_vec();
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BEP 6's published example: 80.4.4.200, an info-hash of twenty 0xaa bytes, 1313 pieces.
    #[test]
    fn the_bep_example() {
        let ip = Ipv4Addr::new(80, 4, 4, 200);
        let hash = InfoHash([0xaa; 20]);
        assert_eq!(
            allowed_fast_set(ip, &hash, 1313, 7),
            [1059, 431, 808, 1217, 287, 376, 1188]
        );
        assert_eq!(
            allowed_fast_set(ip, &hash, 1313, 9),
            [1059, 431, 808, 1217, 287, 376, 1188, 353, 508]
        );
        // Only the /24 counts.
        assert_eq!(
            allowed_fast_set(Ipv4Addr::new(80, 4, 4, 1), &hash, 1313, 7),
            allowed_fast_set(ip, &hash, 1313, 7)
        );
        assert_ne!(
            allowed_fast_set(Ipv4Addr::new(80, 4, 5, 200), &hash, 1313, 7),
            allowed_fast_set(ip, &hash, 1313, 7)
        );
    }

    #[test]
    fn small_torrents_get_fewer_pieces_than_they_have() {
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        let hash = InfoHash([1; 20]);
        assert!(allowed_fast_set(ip, &hash, 0, 10).is_empty());
        assert!(allowed_fast_set(ip, &hash, 1, 10).is_empty());
        for n in 2..40 {
            let set = allowed_fast_set(ip, &hash, n, ALLOWED_FAST_PIECES);
            assert_eq!(
                set.len(),
                ALLOWED_FAST_PIECES.min(n as usize - 1),
                "{n} pieces"
            );
            assert!(set.iter().all(|&p| p < n));
            let mut sorted = set.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), set.len(), "duplicates in {set:?}");
        }
    }
}
