//! Which blocks to ask which peer for: rarest-first with random first pieces, partial pieces
//! finished first, endgame duplicates at the tail. Sans-IO: no clocks, no sockets.
//! (Stub: API fixed, implementation pending.)

use crate::storage::Layout;
use crate::types::{Bitfield, BlockRef, PieceIndex};

/// Identifies a connected peer to the picker and choker.
pub type PeerKey = u64;

/// What receiving a block meant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// Not requested from this peer, or already received: drop the data.
    Unexpected,
    /// Accepted. `cancel` lists other peers that were also asked for it (endgame) and should
    /// get a `cancel`; `piece_complete` is true when this was the piece's last missing block.
    Accepted {
        /// Other peers holding a duplicate request for this block.
        cancel: Vec<PeerKey>,
        /// Every block of the piece has now arrived.
        piece_complete: bool,
    },
}

/// Block-level download planner for one torrent.
#[derive(Debug)]
pub struct PiecePicker {}

impl PiecePicker {
    /// A picker for `layout` where `have` is already complete.
    pub fn new(layout: &Layout, have: &Bitfield) -> Self {
        let _ = (layout, have);
        unimplemented!("PiecePicker::new")
    }
    /// Pieces verified so far.
    pub fn have(&self) -> &Bitfield {
        unimplemented!()
    }
    /// A peer announced its bitfield (availability +1 for each of its pieces).
    pub fn add_peer_bitfield(&mut self, bitfield: &Bitfield) {
        let _ = bitfield;
        unimplemented!()
    }
    /// A peer left (availability -1 for each of its pieces).
    pub fn remove_peer_bitfield(&mut self, bitfield: &Bitfield) {
        let _ = bitfield;
        unimplemented!()
    }
    /// A peer sent `have`.
    pub fn add_peer_have(&mut self, piece: PieceIndex) {
        let _ = piece;
        unimplemented!()
    }
    /// Whether a peer with `peer_has` has anything we still need.
    pub fn is_interesting(&self, peer_has: &Bitfield) -> bool {
        let _ = peer_has;
        unimplemented!()
    }
    /// Append up to `max` blocks to request from `peer`, which has `peer_has`.
    pub fn pick(&mut self, peer: PeerKey, peer_has: &Bitfield, max: usize, out: &mut Vec<BlockRef>) {
        let _ = (peer, peer_has, max, out);
        unimplemented!()
    }
    /// `peer` delivered `block`.
    pub fn on_block(&mut self, peer: PeerKey, block: BlockRef) -> BlockOutcome {
        let _ = (peer, block);
        unimplemented!()
    }
    /// A request to `peer` will not be answered (rejected, timed out, choked): make it pickable.
    pub fn release(&mut self, peer: PeerKey, block: BlockRef) {
        let _ = (peer, block);
        unimplemented!()
    }
    /// `peer` is gone: release all its outstanding requests.
    pub fn release_peer(&mut self, peer: PeerKey) {
        let _ = peer;
        unimplemented!()
    }
    /// The piece hashed correctly and is stored.
    pub fn on_piece_verified(&mut self, piece: PieceIndex) {
        let _ = piece;
        unimplemented!()
    }
    /// The piece failed its hash: all its blocks become pickable again.
    pub fn on_piece_failed(&mut self, piece: PieceIndex) {
        let _ = piece;
        unimplemented!()
    }
    /// Whether every missing block is already requested (duplicates now allowed).
    pub fn in_endgame(&self) -> bool {
        unimplemented!()
    }
}
