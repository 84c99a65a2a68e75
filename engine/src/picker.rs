//! Which blocks to ask which peer for: rarest-first with random first pieces, partial pieces
//! finished first, endgame duplicates at the tail. Sans-IO: no clocks, no sockets.
//!
//! ## What it owns
//!
//! The picker is the one record of which blocks are wanted, outstanding (and from whom) or
//! received, and of how many connected peers have each piece. It never sees block data, never
//! hashes and never times requests out: the torrent task tells it what happened (`on_block`,
//! `release`, `on_piece_verified`, ...) and asks it what to do next (`pick`).
//!
//! ## Shape, and why
//!
//! - Pieces are *unstarted* (kept in buckets by availability), *in flight* (a compact per-block
//!   state array exists) or *had*. Only in-flight pieces cost memory, and `pick` continues them
//!   before starting new ones, because the engine buffers in-flight pieces in RAM.
//! - `pick` and `on_block` are O(1) per block in the common case: each in-flight piece keeps a
//!   cursor to its first free block, and starting a new piece takes the first matching entry of
//!   the lowest non-empty availability bucket. A byte-wise "does this peer have any unstarted
//!   piece" test keeps peers with nothing new from scanning the buckets.
//! - Endgame (every missing block outstanding) allows the same block to be outstanding to up to
//!   [`ENDGAME_MAX_REQUESTERS`] peers, never twice to one peer.
//!
//! ## Priorities and order
//!
//! The user's file choice arrives as [`PiecePriorities`] ([`PiecePicker::set_priorities`]).
//! Unwanted pieces are never queued, so they are never started and never count for interest,
//! endgame or completion ([`PiecePicker::is_complete`]: every *wanted* piece verified). When a
//! peer offers unstarted high-priority pieces, only those are started. In sequential mode
//! ([`PiecePicker::set_sequential`]) new pieces start at the lowest index offered instead of
//! rarest first; the pipeline stays as deep as ever, so several consecutive pieces are in flight
//! at once and the stream arrives roughly in order.
//!
//! ## Late blocks
//!
//! A block that arrives after its request was released (e.g. the peer choked us, then sent it
//! anyway) is accepted if its piece is still in flight and the block still missing: it is good
//! data (the piece hash decides) and saves a round trip. Blocks of pieces that are not in flight
//! (never started, abandoned with nothing received, failed and reset, or verified) are
//! `Unexpected`, so a peer cannot make the engine buffer pieces it never asked for.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::selection::PiecePriorities;
use crate::storage::Layout;
use crate::types::{Bitfield, BlockRef, PieceIndex, BLOCK_SIZE};

/// Identifies a connected peer to the picker and choker.
pub type PeerKey = u64;

/// While we have fewer complete pieces than this, new pieces are chosen at random rather than
/// rarest-first, so we quickly have something to trade (BEP 3 "random first piece").
pub const RANDOM_FIRST_PIECES: usize = 4;

/// Endgame cap: one block is outstanding to at most this many peers at once.
pub const ENDGAME_MAX_REQUESTERS: usize = 3;

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

/// Position marker for a piece that is not in any availability bucket.
const NOT_QUEUED: u32 = u32::MAX;

/// The peers a block is outstanding to; inline so a block costs no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Requesters {
    keys: [PeerKey; ENDGAME_MAX_REQUESTERS],
    n: u8,
}

impl Requesters {
    fn one(peer: PeerKey) -> Self {
        let mut keys = [0; ENDGAME_MAX_REQUESTERS];
        keys[0] = peer;
        Requesters { keys, n: 1 }
    }
    fn as_slice(&self) -> &[PeerKey] {
        &self.keys[..self.n as usize]
    }
    fn contains(&self, peer: PeerKey) -> bool {
        self.as_slice().contains(&peer)
    }
    fn is_full(&self) -> bool {
        self.n as usize == ENDGAME_MAX_REQUESTERS
    }
    /// Caller checks `!is_full() && !contains(peer)`.
    fn add(&mut self, peer: PeerKey) {
        self.keys[self.n as usize] = peer;
        self.n += 1;
    }
    /// Returns whether `peer` was there.
    fn remove(&mut self, peer: PeerKey) -> bool {
        let n = self.n as usize;
        match self.keys[..n].iter().position(|&k| k == peer) {
            Some(i) => {
                self.keys[i] = self.keys[n - 1];
                self.n -= 1;
                true
            }
            None => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Block {
    /// Wanted, not outstanding.
    Free,
    /// Outstanding to these peers (at least one).
    Requested(Requesters),
    /// Arrived (the piece is not verified yet).
    Received,
}

/// Per-block state of one in-flight piece.
#[derive(Debug)]
struct InFlight {
    blocks: Box<[Block]>,
    free: u32,
    received: u32,
    /// No block before this index is `Free`.
    cursor: u32,
}

/// Block-level download planner for one torrent.
#[derive(Debug)]
pub struct PiecePicker {
    piece_count: u32,
    piece_length: u32,
    last_piece_len: u32,
    have: Bitfield,
    /// How many connected peers announced each piece.
    availability: Vec<u32>,
    /// Unstarted, missing pieces by availability.
    buckets: Vec<Vec<PieceIndex>>,
    /// Index of each piece in its bucket, or `NOT_QUEUED`.
    bucket_pos: Vec<u32>,
    /// The same set as the buckets, as bits, for fast "anything new from this peer?" tests.
    unstarted: Bitfield,
    /// Block state of in-flight pieces, indexed by piece.
    pieces: Vec<Option<Box<InFlight>>>,
    /// In-flight pieces, oldest first.
    in_flight: Vec<PieceIndex>,
    /// In-flight pieces with at least one free block; continued before new pieces start.
    open: Vec<PieceIndex>,
    /// Pieces the user wants (some file of theirs is not skipped).
    wanted: Bitfield,
    /// Pieces of high-priority files: started before any other.
    high: Bitfield,
    /// Wanted and not yet verified: what interest and completion are about.
    needed: Bitfield,
    /// New pieces in index order rather than rarest first.
    sequential: bool,
    rng: StdRng,
}

impl PiecePicker {
    /// A picker for `layout` where `have` is already complete.
    pub fn new(layout: &Layout, have: &Bitfield) -> Self {
        Self::with_seed(layout, have, rand::random())
    }

    /// Like [`PiecePicker::new`], with random choices (first pieces, tie breaks) drawn from a
    /// generator seeded with `seed`, so tests and simulations are reproducible.
    pub fn with_seed(layout: &Layout, have: &Bitfield, seed: u64) -> Self {
        let piece_count = layout.piece_count();
        let n = piece_count as usize;
        let mut own = Bitfield::new(n);
        for i in have.iter_ones().filter(|&i| i < n) {
            own.set(i);
        }
        let mut picker = PiecePicker {
            piece_count,
            piece_length: layout.piece_length,
            last_piece_len: if n == 0 {
                0
            } else {
                layout.piece_len(piece_count - 1)
            },
            have: own,
            availability: vec![0; n],
            buckets: vec![Vec::new()],
            bucket_pos: vec![NOT_QUEUED; n],
            unstarted: Bitfield::new(n),
            pieces: (0..n).map(|_| None).collect(),
            in_flight: Vec::new(),
            open: Vec::new(),
            wanted: Bitfield::full(n),
            high: Bitfield::new(n),
            needed: Bitfield::new(n),
            sequential: false,
            rng: StdRng::seed_from_u64(seed),
        };
        for p in 0..piece_count {
            if !picker.have.get(p as usize) {
                picker.needed.set(p as usize);
                picker.enqueue(p);
            }
        }
        picker
    }

    /// Apply the user's file choice. Pieces that became wanted are queued; unstarted pieces that
    /// became unwanted leave the queue; in-flight pieces that became unwanted and are not yet
    /// whole are dropped and returned, so the caller can cancel their requests and free their
    /// buffers (blocks of them that still arrive are `Unexpected`).
    pub fn set_priorities(&mut self, priorities: &PiecePriorities) -> Vec<PieceIndex> {
        let n = self.piece_count as usize;
        if priorities.wanted.len() != n || priorities.high.len() != n {
            return Vec::new();
        }
        let mut dropped = Vec::new();
        for p in 0..self.piece_count {
            let i = p as usize;
            let (was, now) = (self.wanted.get(i), priorities.wanted.get(i));
            if self.have.get(i) || was == now {
                continue;
            }
            if now {
                self.needed.set(i);
                if self.pieces[i].is_none() {
                    self.enqueue(p);
                }
            } else {
                self.needed.clear(i);
                self.dequeue(p);
                let whole = self.pieces[i]
                    .as_ref()
                    .is_some_and(|s| s.received as usize == s.blocks.len());
                if !whole && self.drop_in_flight(p) {
                    dropped.push(p);
                }
            }
        }
        self.wanted = priorities.wanted.clone();
        self.high = priorities.high.clone();
        dropped
    }

    /// Start new pieces in index order (true) or rarest first (false).
    pub fn set_sequential(&mut self, on: bool) {
        self.sequential = on;
    }

    /// Whether `piece` is wanted (some file of it is not skipped).
    pub fn is_wanted(&self, piece: PieceIndex) -> bool {
        self.wanted.get(piece as usize)
    }

    /// Pieces wanted by the user's choice.
    pub fn wanted(&self) -> &Bitfield {
        &self.wanted
    }

    /// Every wanted piece is verified: nothing left to download.
    pub fn is_complete(&self) -> bool {
        self.needed.count_ones() == 0
    }

    /// Pieces verified so far.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Number of pieces started and not yet verified (the engine buffers these).
    pub fn pieces_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How many peers announced `piece`.
    pub fn availability(&self, piece: PieceIndex) -> u32 {
        self.availability.get(piece as usize).copied().unwrap_or(0)
    }

    /// A peer announced its bitfield (availability +1 for each of its pieces).
    pub fn add_peer_bitfield(&mut self, bitfield: &Bitfield) {
        let n = self.piece_count as usize;
        for p in bitfield.iter_ones().take_while(|&p| p < n) {
            self.change_availability(p as PieceIndex, 1);
        }
    }

    /// A peer left (availability -1 for each of its pieces).
    pub fn remove_peer_bitfield(&mut self, bitfield: &Bitfield) {
        let n = self.piece_count as usize;
        for p in bitfield.iter_ones().take_while(|&p| p < n) {
            self.change_availability(p as PieceIndex, -1);
        }
    }

    /// A peer sent `have`.
    pub fn add_peer_have(&mut self, piece: PieceIndex) {
        if piece < self.piece_count {
            self.change_availability(piece, 1);
        }
    }

    /// Whether a peer with `peer_has` has anything we still need (a wanted piece we lack).
    pub fn is_interesting(&self, peer_has: &Bitfield) -> bool {
        intersects(peer_has.as_bytes(), self.needed.as_bytes())
    }

    /// Append up to `max` blocks to request from `peer`, which has `peer_has`.
    ///
    /// Order: free blocks of pieces already in flight (oldest first), then new pieces (random
    /// while we have fewer than [`RANDOM_FIRST_PIECES`], then rarest first), then, in endgame,
    /// blocks already outstanding to other peers.
    pub fn pick(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        max: usize,
        out: &mut Vec<BlockRef>,
    ) {
        let mut left = max;
        let mut i = 0;
        while i < self.open.len() && left > 0 {
            let p = self.open[i];
            if peer_has.get(p as usize) {
                left -= self.take_free(p, peer, left, out);
                if self.free_blocks(p) == 0 {
                    self.open.remove(i);
                    continue;
                }
            }
            i += 1;
        }
        while left > 0 {
            let Some(p) = self.choose_new_piece(peer_has) else {
                break;
            };
            self.start(p);
            left -= self.take_free(p, peer, left, out);
            if self.free_blocks(p) == 0 {
                self.open.retain(|&q| q != p);
            }
        }
        if left > 0 && self.in_endgame() {
            self.pick_duplicates(peer, peer_has, left, out);
        }
    }

    /// `peer` delivered `block`.
    ///
    /// Accepted when the block belongs to an in-flight piece and is still missing, whether it
    /// was outstanding to `peer`, to other peers only, or released (late block, see the module
    /// docs). Every other peer it was outstanding to is returned in `cancel` and forgotten.
    pub fn on_block(&mut self, peer: PeerKey, block: BlockRef) -> BlockOutcome {
        let Some(b) = self.block_index(block) else {
            return BlockOutcome::Unexpected;
        };
        let p = block.piece;
        let Some(state) = self.pieces[p as usize].as_deref_mut() else {
            return BlockOutcome::Unexpected;
        };
        let (cancel, closes_open_piece) = match state.blocks[b] {
            Block::Received => return BlockOutcome::Unexpected,
            Block::Free => {
                state.free -= 1;
                (Vec::new(), state.free == 0)
            }
            Block::Requested(r) => (
                r.as_slice()
                    .iter()
                    .copied()
                    .filter(|&k| k != peer)
                    .collect(),
                false,
            ),
        };
        state.blocks[b] = Block::Received;
        state.received += 1;
        let piece_complete = state.received as usize == state.blocks.len();
        if closes_open_piece {
            self.open.retain(|&q| q != p);
        }
        BlockOutcome::Accepted {
            cancel,
            piece_complete,
        }
    }

    /// A request to `peer` will not be answered (rejected, timed out, choked): make it pickable.
    pub fn release(&mut self, peer: PeerKey, block: BlockRef) {
        let Some(b) = self.block_index(block) else {
            return;
        };
        if self.release_block(block.piece, b, peer) {
            self.abandon_if_untouched(block.piece);
        }
    }

    /// `peer` is gone: release all its outstanding requests.
    pub fn release_peer(&mut self, peer: PeerKey) {
        let mut touched = Vec::new();
        for idx in 0..self.in_flight.len() {
            let p = self.in_flight[idx];
            let n = self.pieces[p as usize]
                .as_ref()
                .map_or(0, |s| s.blocks.len());
            let mut any = false;
            for b in 0..n {
                any |= self.release_block(p, b, peer);
            }
            if any {
                touched.push(p);
            }
        }
        for p in touched {
            self.abandon_if_untouched(p);
        }
    }

    /// The piece hashed correctly and is stored.
    pub fn on_piece_verified(&mut self, piece: PieceIndex) {
        if piece >= self.piece_count || !self.have.set(piece as usize) {
            return;
        }
        self.needed.clear(piece as usize);
        self.dequeue(piece);
        self.drop_in_flight(piece);
    }

    /// The piece failed its hash: all its blocks become pickable again.
    ///
    /// The piece goes back among the unstarted pieces; blocks of its old round that still
    /// arrive are `Unexpected`. Pieces we already have are left alone.
    pub fn on_piece_failed(&mut self, piece: PieceIndex) {
        if piece >= self.piece_count || self.have.get(piece as usize) {
            return;
        }
        if self.drop_in_flight(piece) && self.wanted.get(piece as usize) {
            self.enqueue(piece);
        }
    }

    /// Whether every missing block is already requested (duplicates now allowed).
    pub fn in_endgame(&self) -> bool {
        self.unstarted.count_ones() == 0 && self.open.is_empty() && !self.in_flight.is_empty()
    }

    // ---- block geometry ----

    fn piece_len(&self, piece: PieceIndex) -> u32 {
        if piece + 1 == self.piece_count {
            self.last_piece_len
        } else {
            self.piece_length
        }
    }

    fn block_ref(&self, piece: PieceIndex, b: usize) -> BlockRef {
        let begin = b as u32 * BLOCK_SIZE;
        BlockRef {
            piece,
            begin,
            length: BLOCK_SIZE.min(self.piece_len(piece) - begin),
        }
    }

    /// Index of `block` within its piece, if it is exactly one of the piece's blocks.
    fn block_index(&self, block: BlockRef) -> Option<usize> {
        let index = block.begin / BLOCK_SIZE;
        if block.piece >= self.piece_count || index * BLOCK_SIZE != block.begin {
            return None;
        }
        let len = self.piece_len(block.piece);
        (block.begin < len && block.length == BLOCK_SIZE.min(len - block.begin))
            .then_some(index as usize)
    }

    // ---- unstarted pieces: availability buckets ----

    fn enqueue(&mut self, p: PieceIndex) {
        let a = self.availability[p as usize] as usize;
        if self.buckets.len() <= a {
            self.buckets.resize_with(a + 1, Vec::new);
        }
        self.bucket_pos[p as usize] = self.buckets[a].len() as u32;
        self.buckets[a].push(p);
        self.unstarted.set(p as usize);
    }

    fn dequeue(&mut self, p: PieceIndex) -> bool {
        let pos = self.bucket_pos[p as usize];
        if pos == NOT_QUEUED {
            return false;
        }
        let bucket = &mut self.buckets[self.availability[p as usize] as usize];
        bucket.swap_remove(pos as usize);
        if let Some(&moved) = bucket.get(pos as usize) {
            self.bucket_pos[moved as usize] = pos;
        }
        self.bucket_pos[p as usize] = NOT_QUEUED;
        self.unstarted.clear(p as usize);
        true
    }

    fn change_availability(&mut self, p: PieceIndex, delta: i32) {
        let queued = self.dequeue(p);
        let a = &mut self.availability[p as usize];
        *a = a.saturating_add_signed(delta);
        if queued {
            self.enqueue(p);
        }
    }

    /// The unstarted piece `peer_has` offers that we should start next: among high-priority
    /// pieces if it offers any, then the lowest index (sequential), a random one (while we
    /// have fewer than [`RANDOM_FIRST_PIECES`]) or the rarest.
    fn choose_new_piece(&mut self, peer_has: &Bitfield) -> Option<PieceIndex> {
        let (offered, unstarted) = (peer_has.as_bytes(), self.unstarted.as_bytes());
        let high = (self.high.count_ones() > 0
            && first_common(offered, unstarted, Some(self.high.as_bytes())).is_some())
        .then_some(&self.high);
        if self.sequential {
            return first_common(offered, unstarted, high.map(Bitfield::as_bytes))
                .map(|p| p as PieceIndex);
        }
        let high_only = high.is_some();
        if !high_only && !intersects(offered, unstarted) {
            return None;
        }
        let high = &self.high;
        let eligible = |p: usize| peer_has.get(p) && (!high_only || high.get(p));
        if self.have.count_ones() < RANDOM_FIRST_PIECES {
            let n = self.piece_count as usize;
            let start = self.rng.gen_range(0..n);
            return (start..n)
                .chain(0..start)
                .find(|&p| self.unstarted.get(p) && eligible(p))
                .map(|p| p as PieceIndex);
        }
        // Rarest first; bucket 0 last (only reachable if the caller under-reports
        // availability). Within a bucket, start at a random offset so ties break randomly.
        let order = (1..self.buckets.len()).chain(std::iter::once(0));
        for a in order {
            let bucket = &self.buckets[a];
            if bucket.is_empty() {
                continue;
            }
            let start = self.rng.gen_range(0..bucket.len());
            let (tail, head) = (&bucket[start..], &bucket[..start]);
            if let Some(&p) = tail.iter().chain(head).find(|&&p| eligible(p as usize)) {
                return Some(p);
            }
        }
        None
    }

    // ---- in-flight pieces ----

    fn start(&mut self, p: PieceIndex) {
        self.dequeue(p);
        let n = self.piece_len(p).div_ceil(BLOCK_SIZE);
        self.pieces[p as usize] = Some(Box::new(InFlight {
            blocks: vec![Block::Free; n as usize].into_boxed_slice(),
            free: n,
            received: 0,
            cursor: 0,
        }));
        self.in_flight.push(p);
        self.open.push(p);
    }

    /// Forget the block state of `p`; returns whether it was in flight.
    fn drop_in_flight(&mut self, p: PieceIndex) -> bool {
        if self.pieces[p as usize].take().is_none() {
            return false;
        }
        self.in_flight.retain(|&q| q != p);
        self.open.retain(|&q| q != p);
        true
    }

    /// Nothing outstanding and nothing received: back among the unstarted pieces, so it costs
    /// no memory and competes on rarity again.
    fn abandon_if_untouched(&mut self, p: PieceIndex) {
        let untouched = self.pieces[p as usize]
            .as_ref()
            .is_some_and(|s| s.received == 0 && s.free as usize == s.blocks.len());
        if untouched && self.drop_in_flight(p) && self.wanted.get(p as usize) {
            self.enqueue(p);
        }
    }

    fn free_blocks(&self, p: PieceIndex) -> u32 {
        self.pieces[p as usize].as_ref().map_or(0, |s| s.free)
    }

    /// Request up to `max` free blocks of in-flight piece `p` from `peer`; returns how many.
    fn take_free(
        &mut self,
        p: PieceIndex,
        peer: PeerKey,
        max: usize,
        out: &mut Vec<BlockRef>,
    ) -> usize {
        let len = self.piece_len(p);
        let Some(state) = self.pieces[p as usize].as_deref_mut() else {
            return 0;
        };
        let mut taken = 0;
        let mut cursor = state.cursor as usize;
        while taken < max && state.free > 0 && cursor < state.blocks.len() {
            if state.blocks[cursor] == Block::Free {
                state.blocks[cursor] = Block::Requested(Requesters::one(peer));
                state.free -= 1;
                taken += 1;
                let begin = cursor as u32 * BLOCK_SIZE;
                out.push(BlockRef {
                    piece: p,
                    begin,
                    length: BLOCK_SIZE.min(len - begin),
                });
            }
            cursor += 1;
        }
        state.cursor = cursor as u32;
        taken
    }

    /// Remove `peer` from block `b` of piece `p`; returns whether it was a requester.
    fn release_block(&mut self, p: PieceIndex, b: usize, peer: PeerKey) -> bool {
        let Some(state) = self.pieces[p as usize].as_deref_mut() else {
            return false;
        };
        let Block::Requested(r) = &mut state.blocks[b] else {
            return false;
        };
        if !r.remove(peer) {
            return false;
        }
        if r.n == 0 {
            state.blocks[b] = Block::Free;
            state.free += 1;
            state.cursor = state.cursor.min(b as u32);
            if state.free == 1 {
                // Older pieces first: finishing them frees the engine's piece buffers.
                self.open.insert(0, p);
            }
        }
        true
    }

    /// Endgame: duplicate outstanding blocks to `peer`, least-duplicated first.
    fn pick_duplicates(
        &mut self,
        peer: PeerKey,
        peer_has: &Bitfield,
        mut left: usize,
        out: &mut Vec<BlockRef>,
    ) {
        for level in 1..ENDGAME_MAX_REQUESTERS {
            for idx in 0..self.in_flight.len() {
                let p = self.in_flight[idx];
                if !peer_has.get(p as usize) {
                    continue;
                }
                let Some(state) = self.pieces[p as usize].as_deref_mut() else {
                    continue;
                };
                let mut picked = Vec::new();
                for (b, block) in state.blocks.iter_mut().enumerate() {
                    if left == 0 {
                        break;
                    }
                    if let Block::Requested(r) = block {
                        if r.n as usize == level && !r.is_full() && !r.contains(peer) {
                            r.add(peer);
                            picked.push(b);
                            left -= 1;
                        }
                    }
                }
                out.extend(picked.into_iter().map(|b| self.block_ref(p, b)));
                if left == 0 {
                    return;
                }
            }
        }
    }
}

/// The lowest index set in `a`, `b` and (if given) `c`: bits are most significant first (BEP 3).
fn first_common(a: &[u8], b: &[u8], c: Option<&[u8]>) -> Option<usize> {
    let n = a.len().min(b.len()).min(c.map_or(usize::MAX, <[u8]>::len));
    (0..n).find_map(|i| {
        let byte = a[i] & b[i] & c.map_or(0xff, |c| c[i]);
        (byte != 0).then(|| i * 8 + byte.leading_zeros() as usize)
    })
}

/// Whether two bit strings share a set bit.
fn intersects(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut wa = a.chunks_exact(8);
    let mut wb = b.chunks_exact(8);
    for (x, y) in (&mut wa).zip(&mut wb) {
        // chunks_exact yields exactly eight bytes.
        let x = u64::from_ne_bytes(x.try_into().expect("8-byte chunk"));
        let y = u64::from_ne_bytes(y.try_into().expect("8-byte chunk"));
        if x & y != 0 {
            return true;
        }
    }
    wa.remainder()
        .iter()
        .zip(wb.remainder())
        .any(|(x, y)| x & y != 0)
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    const KIB: u32 = 1024;

    /// `pieces` pieces of `piece_len` bytes, the last one `last` bytes.
    fn layout(piece_len: u32, pieces: u32, last: u32) -> Layout {
        let total = piece_len as u64 * (pieces as u64 - 1) + last as u64;
        Layout::new(piece_len, [("f".into(), total)])
    }

    fn bits(n: usize, ones: &[usize]) -> Bitfield {
        let mut b = Bitfield::new(n);
        for &i in ones {
            b.set(i);
        }
        b
    }

    fn pick(p: &mut PiecePicker, peer: PeerKey, has: &Bitfield, max: usize) -> Vec<BlockRef> {
        let mut out = Vec::new();
        p.pick(peer, has, max, &mut out);
        out
    }

    fn accepted(o: BlockOutcome) -> (Vec<PeerKey>, bool) {
        match o {
            BlockOutcome::Accepted {
                cancel,
                piece_complete,
            } => (cancel, piece_complete),
            BlockOutcome::Unexpected => panic!("block unexpectedly refused"),
        }
    }

    /// A picker past the random-first phase: pieces `0..4` are had.
    fn warmed(pieces: u32) -> (PiecePicker, Layout) {
        let l = layout(64 * KIB, pieces, 64 * KIB);
        let have = bits(pieces as usize, &[0, 1, 2, 3]);
        (PiecePicker::with_seed(&l, &have, 1), l)
    }

    #[test]
    fn rarest_first_ordering() {
        let (mut p, _) = warmed(10);
        // Availability: piece 4 ×3, 5 ×1, 6 ×2, others ×3.
        let all = Bitfield::full(10);
        p.add_peer_bitfield(&all);
        p.add_peer_bitfield(&bits(10, &[4, 6, 7, 8, 9]));
        p.add_peer_bitfield(&bits(10, &[4, 7, 8, 9]));
        assert_eq!(p.availability(5), 1);
        let got = pick(&mut p, 1, &all, 4);
        assert!(got.iter().all(|b| b.piece == 5), "{got:?}");
        let got = pick(&mut p, 1, &all, 4);
        assert!(got.iter().all(|b| b.piece == 6), "{got:?}");
        let got = pick(&mut p, 1, &all, 4);
        assert!(
            got.iter().all(|b| [4, 7, 8, 9].contains(&b.piece)),
            "{got:?}"
        );
        // A peer lacking the rarest piece still gets its own rarest.
        let mut q = warmed(10).0;
        q.add_peer_bitfield(&all);
        q.add_peer_bitfield(&bits(10, &[4, 6, 7, 8, 9]));
        let got = pick(&mut q, 2, &bits(10, &[6, 9]), 1);
        assert_eq!(got[0].piece, 6);
    }

    #[test]
    fn random_first_pieces_then_rarest() {
        let l = layout(16 * KIB, 200, 16 * KIB);
        let mut firsts = HashSet::new();
        for seed in 0..20 {
            let mut p = PiecePicker::with_seed(&l, &Bitfield::new(200), seed);
            let all = Bitfield::full(200);
            p.add_peer_bitfield(&all);
            p.add_peer_bitfield(&bits(200, &(1..200).collect::<Vec<_>>()));
            // Piece 0 is the rarest, but we have nothing yet: the choice is random.
            firsts.insert(pick(&mut p, 1, &all, 1)[0].piece);
        }
        assert!(firsts.len() > 10, "first pieces not random: {firsts:?}");
        let mut p = PiecePicker::with_seed(&l, &bits(200, &[10, 20, 30, 40]), 3);
        p.add_peer_bitfield(&Bitfield::full(200));
        p.add_peer_bitfield(&bits(200, &(1..200).collect::<Vec<_>>()));
        assert_eq!(pick(&mut p, 1, &Bitfield::full(200), 1)[0].piece, 0);
    }

    #[test]
    fn partial_pieces_are_finished_first() {
        let (mut p, _) = warmed(10);
        let all = Bitfield::full(10);
        p.add_peer_bitfield(&all);
        // Peer 1 starts a piece (4 blocks) but takes only 2.
        let first = pick(&mut p, 1, &all, 2);
        let piece = first[0].piece;
        assert_eq!(p.pieces_in_flight(), 1);
        // Peer 2 continues that piece before starting another.
        let second = pick(&mut p, 2, &all, 3);
        assert_eq!(second[0].piece, piece);
        assert_eq!(second[1].piece, piece);
        assert_ne!(second[2].piece, piece);
        assert_eq!(p.pieces_in_flight(), 2);
        // A released block is taken again before anything new.
        p.release(1, first[0]);
        assert_eq!(pick(&mut p, 3, &all, 1), vec![first[0]]);
    }

    #[test]
    fn no_duplicate_requests_outside_endgame() {
        let (mut p, _) = warmed(30);
        let all = Bitfield::full(30);
        for _ in 0..3 {
            p.add_peer_bitfield(&all);
        }
        let mut seen = HashSet::new();
        // 26 missing pieces of 4 blocks: 6 rounds of 3 × 5 blocks stay short of endgame.
        for round in 0..6 {
            for peer in 1..=3 {
                for b in pick(&mut p, peer, &all, 5) {
                    assert!(seen.insert(b), "round {round}: {b:?} requested twice");
                    assert!(!p.have().get(b.piece as usize));
                }
            }
        }
        assert!(!p.in_endgame());
        // Pieces the peer lacks are never picked.
        let some = bits(30, &[20]);
        for b in pick(&mut p, 9, &some, 50) {
            assert_eq!(b.piece, 20);
        }
    }

    #[test]
    fn endgame_duplicates_and_cancel_lists() {
        let l = layout(32 * KIB, 2, 32 * KIB);
        let mut p = PiecePicker::with_seed(&l, &bits(2, &[0]), 7);
        let all = Bitfield::full(2);
        for _ in 0..4 {
            p.add_peer_bitfield(&all);
        }
        let a = pick(&mut p, 1, &all, 10);
        assert_eq!(a.len(), 2);
        assert!(p.in_endgame());
        // Peer 1 never gets the same block twice.
        assert!(pick(&mut p, 1, &all, 10).is_empty());
        let b = pick(&mut p, 2, &all, 10);
        assert_eq!(b, a);
        let c = pick(&mut p, 3, &all, 1);
        assert_eq!(c, vec![a[0]]);
        // Cap: three requesters for block 0, so peer 4 gets only block 1.
        let d = pick(&mut p, 4, &all, 10);
        assert_eq!(d, vec![a[1]]);
        assert!(pick(&mut p, 5, &all, 10).is_empty());

        let (mut cancel, done) = accepted(p.on_block(2, a[0]));
        cancel.sort();
        assert_eq!((cancel, done), (vec![1, 3], false));
        assert_eq!(p.on_block(1, a[0]), BlockOutcome::Unexpected);
        assert_eq!(p.on_block(3, a[0]), BlockOutcome::Unexpected);
        let (mut cancel, done) = accepted(p.on_block(4, a[1]));
        cancel.sort();
        assert_eq!((cancel, done), (vec![1, 2], true));
        p.on_piece_verified(1);
        assert!(p.have().is_full());
        assert!(!p.in_endgame());
        assert!(pick(&mut p, 1, &all, 10).is_empty());
    }

    #[test]
    fn release_peer_returns_its_blocks() {
        let (mut p, _) = warmed(10);
        let all = Bitfield::full(10);
        p.add_peer_bitfield(&all);
        let a = pick(&mut p, 1, &all, 6);
        let b = pick(&mut p, 2, &all, 2);
        accepted(p.on_block(1, a[0]));
        p.release_peer(1);
        // Peer 1's piece had a received block, so it stays in flight; the fully untouched
        // second piece went back to the unstarted pool.
        assert_eq!(p.pieces_in_flight(), 2);
        let again = pick(&mut p, 3, &all, 5);
        let expect: HashSet<_> = a[1..].iter().copied().collect();
        assert_eq!(again.iter().copied().collect::<HashSet<_>>(), expect);
        // Peer 2's requests are untouched.
        for blk in &b {
            accepted(p.on_block(2, *blk));
        }
        // Releasing a block that is not outstanding to the peer does nothing.
        p.release(1, a[1]);
        assert_eq!(p.on_block(1, b[0]), BlockOutcome::Unexpected);
    }

    #[test]
    fn late_block_after_release_is_accepted() {
        let (mut p, _) = warmed(10);
        let all = Bitfield::full(10);
        p.add_peer_bitfield(&all);
        let a = pick(&mut p, 1, &all, 4);
        accepted(p.on_block(1, a[0]));
        p.release_peer(1); // choked
        let (cancel, done) = accepted(p.on_block(1, a[1]));
        assert!(cancel.is_empty() && !done);
        // Re-requested from peer 2, then peer 1's late copy arrives: peer 2 gets a cancel.
        let b = pick(&mut p, 2, &all, 1);
        assert_eq!(b, vec![a[2]]);
        assert_eq!(accepted(p.on_block(1, a[2])), (vec![2], false));
        assert_eq!(p.on_block(2, a[2]), BlockOutcome::Unexpected);
        // Unsolicited blocks of pieces not in flight are refused.
        let other = (0..10).find(|&i| i >= 4 && i != a[0].piece).unwrap_or(9);
        let blk = BlockRef {
            piece: other,
            begin: 0,
            length: BLOCK_SIZE,
        };
        assert_eq!(p.on_block(1, blk), BlockOutcome::Unexpected);
    }

    #[test]
    fn failed_piece_is_picked_again() {
        let (mut p, _) = warmed(5);
        let has = bits(5, &[4]);
        p.add_peer_bitfield(&has);
        let a = pick(&mut p, 1, &has, 10);
        assert_eq!(a.len(), 4);
        let mut done = false;
        for b in &a {
            done = accepted(p.on_block(1, *b)).1;
        }
        assert!(done);
        assert!(pick(&mut p, 1, &has, 10).is_empty());
        p.on_piece_failed(4);
        assert_eq!(p.pieces_in_flight(), 0);
        // Stale copies from the failed round are not taken.
        assert_eq!(p.on_block(1, a[0]), BlockOutcome::Unexpected);
        let again = pick(&mut p, 2, &has, 10);
        assert_eq!(again, a);
        for b in &again {
            accepted(p.on_block(2, *b));
        }
        p.on_piece_verified(4);
        assert!(p.have().is_full());
        assert!(!p.is_interesting(&has));
    }

    #[test]
    fn short_last_piece_and_block() {
        // 3 pieces of 40 KiB; the last is 20 KiB + 5 bytes.
        let l = layout(40 * KIB, 3, 20 * KIB + 5);
        let mut p = PiecePicker::with_seed(&l, &bits(3, &[0, 1]), 0);
        let has = Bitfield::full(3);
        p.add_peer_bitfield(&has);
        let got = pick(&mut p, 1, &has, 10);
        assert_eq!(
            got,
            vec![
                BlockRef {
                    piece: 2,
                    begin: 0,
                    length: BLOCK_SIZE
                },
                BlockRef {
                    piece: 2,
                    begin: BLOCK_SIZE,
                    length: 4 * KIB + 5
                },
            ]
        );
        // Wrong geometry is never accepted.
        let bad = BlockRef {
            piece: 2,
            begin: BLOCK_SIZE,
            length: BLOCK_SIZE,
        };
        assert_eq!(p.on_block(1, bad), BlockOutcome::Unexpected);
        let bad = BlockRef {
            piece: 2,
            begin: 1,
            length: 4 * KIB + 4,
        };
        assert_eq!(p.on_block(1, bad), BlockOutcome::Unexpected);
        let bad = BlockRef {
            piece: 3,
            begin: 0,
            length: BLOCK_SIZE,
        };
        assert_eq!(p.on_block(1, bad), BlockOutcome::Unexpected);

        // A middle piece of 40 KiB has a short third block too.
        let mut p = PiecePicker::with_seed(&l, &bits(3, &[0, 2]), 0);
        p.add_peer_bitfield(&has);
        let got = pick(&mut p, 1, &has, 10);
        assert_eq!(got.len(), 3);
        assert_eq!(
            got[2],
            BlockRef {
                piece: 1,
                begin: 2 * BLOCK_SIZE,
                length: 8 * KIB
            }
        );
    }

    #[test]
    fn interest_and_availability_bookkeeping() {
        let (mut p, _) = warmed(10);
        assert!(!p.is_interesting(&bits(10, &[0, 3])));
        assert!(p.is_interesting(&bits(10, &[0, 9])));
        p.add_peer_bitfield(&bits(10, &[5, 9]));
        p.add_peer_have(9);
        p.add_peer_have(99); // out of range: ignored
        assert_eq!(p.availability(9), 2);
        p.remove_peer_bitfield(&bits(10, &[5, 9]));
        assert_eq!((p.availability(5), p.availability(9)), (0, 1));
        // Zero-piece torrent.
        let l = Layout::new(16 * KIB, Vec::<(std::path::PathBuf, u64)>::new());
        let mut e = PiecePicker::new(&l, &Bitfield::new(0));
        assert!(pick(&mut e, 1, &Bitfield::new(0), 5).is_empty());
        assert!(!e.in_endgame());
    }

    /// Three files over 10 pieces of 64 KiB: `a` = pieces 0..4 (its last byte in piece 3),
    /// `b` = pieces 3..7 (sharing piece 3 with `a`), `c` = pieces 7..10.
    fn three_files() -> Layout {
        let piece = 64 * KIB as u64;
        Layout::new(
            64 * KIB,
            [
                ("a".into(), 3 * piece + 100),
                ("b".into(), 4 * piece - 100),
                ("c".into(), 3 * piece),
            ],
        )
    }

    /// Download everything `p` will pick from one peer having everything; the order in which
    /// pieces were started.
    fn drain(p: &mut PiecePicker, n: usize) -> Vec<PieceIndex> {
        let all = Bitfield::full(n);
        let mut started = Vec::new();
        loop {
            let got = pick(p, 1, &all, 4);
            if got.is_empty() {
                return started;
            }
            for b in got {
                if !started.contains(&b.piece) {
                    started.push(b.piece);
                }
                if accepted(p.on_block(1, b)).1 {
                    p.on_piece_verified(b.piece);
                }
            }
        }
    }

    #[test]
    fn skipped_files_are_never_picked_but_shared_pieces_are() {
        use crate::selection::FilePriority::*;
        let l = three_files();
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(10), 3);
        p.add_peer_bitfield(&Bitfield::full(10));
        assert!(p
            .set_priorities(&PiecePriorities::from_files(&l, &[Skip, Normal, Skip]))
            .is_empty());
        // A peer with only pieces of skipped files is not interesting.
        assert!(!p.is_interesting(&bits(10, &[0, 1, 2, 7, 8, 9])));
        assert!(p.is_interesting(&bits(10, &[3])));
        let mut got = drain(&mut p, 10);
        got.sort();
        // Piece 3 is shared with the skipped `a`: fetched and verified like any other.
        assert_eq!(got, vec![3, 4, 5, 6]);
        assert!(p.is_complete());
        assert!(!p.have().is_full());
        assert!(!p.in_endgame());
        // Un-skipping `c` makes its pieces wanted again.
        p.set_priorities(&PiecePriorities::from_files(&l, &[Skip, Normal, Normal]));
        assert!(!p.is_complete());
        let mut got = drain(&mut p, 10);
        got.sort();
        assert_eq!(got, vec![7, 8, 9]);
        assert!(p.is_complete());
    }

    #[test]
    fn high_priority_pieces_come_first() {
        use crate::selection::FilePriority::*;
        let l = three_files();
        // Past the random-first phase (pieces 0..4 had), so the order is by priority alone.
        for seed in 0..10 {
            let mut p = PiecePicker::with_seed(&l, &bits(10, &[0, 1, 2, 3]), seed);
            p.add_peer_bitfield(&Bitfield::full(10));
            // Make piece 4 the rarest: rarity must not beat priority.
            p.add_peer_bitfield(&bits(10, &[5, 6, 7, 8, 9]));
            p.set_priorities(&PiecePriorities::from_files(&l, &[Normal, Normal, High]));
            let got = drain(&mut p, 10);
            let mut head = got[..3].to_vec();
            head.sort();
            assert_eq!(head, vec![7, 8, 9], "seed {seed}: {got:?}");
            assert_eq!(got.len(), 6);
        }
        // Also while the first pieces are random: the random choice is among high pieces.
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(10), 1);
        p.set_priorities(&PiecePriorities::from_files(&l, &[Normal, High, Skip]));
        let got = drain(&mut p, 10);
        let mut head = got[..4].to_vec();
        head.sort();
        assert_eq!(head, vec![3, 4, 5, 6], "{got:?}");
        // A peer without high pieces still gets normal ones.
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(10), 1);
        p.set_priorities(&PiecePriorities::from_files(&l, &[Normal, High, Skip]));
        assert_eq!(pick(&mut p, 2, &bits(10, &[1]), 1)[0].piece, 1);
    }

    #[test]
    fn sequential_starts_pieces_in_order() {
        use crate::selection::FilePriority::*;
        let l = three_files();
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(10), 9);
        p.add_peer_bitfield(&Bitfield::full(10));
        p.add_peer_bitfield(&bits(10, &[3, 4, 5, 6, 7, 8, 9]));
        p.set_sequential(true);
        // From the first wanted piece: `a` is skipped, so piece 3 (shared) comes first.
        p.set_priorities(&PiecePriorities::from_files(&l, &[Skip, Normal, Normal]));
        assert_eq!(drain(&mut p, 10), vec![3, 4, 5, 6, 7, 8, 9]);
        // A deep pipeline spans several consecutive pieces (4 blocks each).
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(10), 9);
        p.set_sequential(true);
        let got = pick(&mut p, 1, &Bitfield::full(10), 10);
        let pieces: Vec<PieceIndex> = got.iter().map(|b| b.piece).collect();
        assert_eq!(pieces, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
        // A peer lacking the next piece gets the next one it has.
        assert_eq!(pick(&mut p, 2, &bits(10, &[8, 5]), 1)[0].piece, 5);
    }

    #[test]
    fn skipping_drops_pieces_in_flight() {
        use crate::selection::FilePriority::*;
        let l = three_files();
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(10), 2);
        p.set_sequential(true);
        let all = Bitfield::full(10);
        let first = pick(&mut p, 1, &all, 6); // piece 0 whole, half of piece 1
        accepted(p.on_block(1, first[4]));
        for b in &first[..4] {
            accepted(p.on_block(1, *b));
        }
        // Piece 0 is whole (waiting for its hash): kept. Piece 1 is dropped.
        let dropped = p.set_priorities(&PiecePriorities::from_files(&l, &[Skip, Normal, Normal]));
        assert_eq!(dropped, vec![1]);
        assert_eq!(p.on_block(1, first[5]), BlockOutcome::Unexpected);
        p.on_piece_verified(0);
        assert_eq!(pick(&mut p, 1, &all, 1)[0].piece, 3);
    }

    /// Seeds answering in order (as TCP does) keep few pieces in flight.
    #[test]
    fn in_order_delivery_keeps_few_pieces_in_flight() {
        let (mut p, _) = warmed(200);
        let all = Bitfield::full(200);
        let mut queues: Vec<std::collections::VecDeque<BlockRef>> = vec![Default::default(); 3];
        for _ in 0..3 {
            p.add_peer_bitfield(&all);
        }
        let mut rng = StdRng::seed_from_u64(5);
        let mut max_in_flight = 0;
        while !p.have().is_full() {
            let peer = rng.gen_range(0..3usize);
            let mut fresh = Vec::new();
            p.pick(peer as PeerKey, &all, 8 - queues[peer].len(), &mut fresh);
            queues[peer].extend(fresh);
            if !p.in_endgame() {
                max_in_flight = max_in_flight.max(p.pieces_in_flight());
            }
            let Some(blk) = queues[peer].pop_front() else {
                continue;
            };
            if let BlockOutcome::Accepted {
                cancel,
                piece_complete,
            } = p.on_block(peer as u64, blk)
            {
                for c in cancel {
                    queues[c as usize].retain(|b| *b != blk);
                }
                if piece_complete {
                    p.on_piece_verified(blk.piece);
                }
            }
        }
        // 24 outstanding blocks make at least 6 pieces; a picker that spread requests over new
        // pieces would reach 24. Interleaving peers fragments pieces somewhat, hence 12.
        assert!(
            max_in_flight <= 12,
            "too many pieces in flight: {max_in_flight}"
        );
    }

    /// Three peers with overlapping pieces, random deliveries, drops, chokes and a corrupting
    /// peer; ends with every piece verified and no block ever requested twice from one peer.
    #[test]
    fn simulated_download_with_three_peers() {
        let pieces = 40u32;
        let l = layout(64 * KIB, pieces, 10 * KIB + 3);
        let mut p = PiecePicker::with_seed(&l, &Bitfield::new(pieces as usize), 42);
        let mut rng = StdRng::seed_from_u64(9);
        let n = pieces as usize;
        let has: Vec<Bitfield> = vec![
            Bitfield::full(n),
            bits(n, &(0..n).filter(|i| i % 2 == 0).collect::<Vec<_>>()),
            bits(n, &(0..n).filter(|i| i % 3 != 0).collect::<Vec<_>>()),
        ];
        for h in &has {
            p.add_peer_bitfield(h);
        }
        let mut outstanding: Vec<Vec<BlockRef>> = vec![Vec::new(); 3];
        // Which peers sent blocks of each piece in its current round (to blame on failure).
        let mut senders: HashMap<PieceIndex, HashSet<usize>> = HashMap::new();
        let mut failed_once = false;
        let mut saw_endgame = false;
        for _step in 0..100_000 {
            if p.have().is_full() {
                break;
            }
            let peer = rng.gen_range(0..3usize);
            let key = peer as PeerKey;
            let mut fresh = Vec::new();
            p.pick(
                key,
                &has[peer],
                8usize.saturating_sub(outstanding[peer].len()),
                &mut fresh,
            );
            for b in &fresh {
                assert!(has[peer].get(b.piece as usize));
                assert!(!outstanding[peer].contains(b), "{b:?} twice to peer {peer}");
            }
            outstanding[peer].extend(fresh);
            saw_endgame |= p.in_endgame();
            if outstanding[peer].is_empty() {
                continue;
            }
            let i = rng.gen_range(0..outstanding[peer].len());
            let blk = outstanding[peer].swap_remove(i);
            match rng.gen_range(0..20) {
                0 => p.release(key, blk),
                1 => {
                    // Choked: everything outstanding to this peer is released.
                    p.release_peer(key);
                    outstanding[peer].clear();
                }
                _ => {
                    if let BlockOutcome::Accepted {
                        cancel,
                        piece_complete,
                    } = p.on_block(key, blk)
                    {
                        senders.entry(blk.piece).or_default().insert(peer);
                        for c in cancel {
                            outstanding[c as usize].retain(|b| *b != blk);
                        }
                        if piece_complete {
                            let bad = !failed_once && senders[&blk.piece].contains(&2);
                            senders.remove(&blk.piece);
                            if bad {
                                failed_once = true;
                                p.on_piece_failed(blk.piece);
                            } else {
                                p.on_piece_verified(blk.piece);
                            }
                        }
                    }
                }
            }
        }
        assert!(p.have().is_full(), "download stalled: {:?}", p.have());
        assert!(failed_once && saw_endgame);
        assert_eq!(p.pieces_in_flight(), 0);
    }
}
