//! BEP 9 metadata exchange (`ut_metadata`), sans-IO: the message codec, the assembler that
//! fetches a torrent's `info` dictionary from several peers, and serving ours.
//!
//! Owns the bytes of the info dictionary while it is being fetched, and the decisions of whom
//! to ask for which 16 KiB piece. It never touches a socket or reads the clock: time comes in
//! as `now`, peers are opaque `u64` keys, and what to send or whom to drop comes back as return
//! values. Memory is bounded by [`MAX_METADATA_SIZE`] (plus per-peer bookkeeping of at most one
//! entry per piece).
//!
//! Untrusted input: a peer's `metadata_size` is checked against the cap before anything is
//! allocated for it; a `data` message whose piece we did not ask that peer for, or whose length
//! is not the piece's, marks the peer as garbage ([`FetchError`]); the assembled bytes count
//! only if their SHA-1 is the info-hash.
//!
//! Peers disagreeing about the size: the size claimed first is fetched, and peers claiming
//! another are not asked. If the assembled bytes then fail the hash, the next size claimed by
//! a connected peer that has not failed yet is tried (a liar who spoke first costs one round).

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use serde_bencode::value::Value;

use crate::bencode::{self, Limits};
use crate::metainfo::MAX_TORRENT_SIZE;
use crate::types::InfoHash;

/// BEP 9: metadata is sent in pieces of 16 KiB, the last one shorter.
pub const PIECE_SIZE: u32 = 16 * 1024;

/// Largest `metadata_size` we fetch: our `.torrent` cap ([`MAX_TORRENT_SIZE`], 16 MiB) less
/// 128 KiB, so the fetched `info` wrapped into a `.torrent` with a magnet's trackers (at most
/// 64 KiB of URI) still parses under that cap. libtorrent's default `max_metadata_size` is
/// `3 * 1024 * 10240` bytes (30 MiB, `settings_pack.cpp`); we stay at our own `.torrent` cap,
/// since a fetched torrent must load like a file one. 16 MiB of info already holds ~800,000
/// piece hashes. At most 1016 pieces of 16 KiB.
pub const MAX_METADATA_SIZE: u32 = (MAX_TORRENT_SIZE - 128 * 1024) as u32;

/// Requests outstanding per peer. BEP 9 pieces are small and peers answer from memory; two
/// keep a peer busy without letting one slow peer hold many pieces.
pub const MAX_OUTSTANDING_PER_PEER: usize = 2;

/// How long a request may go unanswered before the piece is asked of someone else. libtorrent
/// gives metadata requests the peer's request timeout (tens of seconds); BEP 9 has none.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest dictionary in a `ut_metadata` message: the three keys take ~60 bytes; some clients
/// add a few more. The piece data after it is bounded by the frame cap and checked by length.
const MAX_DICT_LEN: usize = 1024;

/// BEP 9 `msg_type` values.
mod msg_type {
    pub const REQUEST: i64 = 0;
    pub const DATA: i64 = 1;
    pub const REJECT: i64 = 2;
}

/// One `ut_metadata` message (the payload after the extension id byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetadataMessage {
    /// `msg_type` 0: please send piece `piece`.
    Request {
        /// Piece index.
        piece: u32,
    },
    /// `msg_type` 1: piece `piece` of metadata of `total_size` bytes.
    Data {
        /// Piece index.
        piece: u32,
        /// Size of the whole info dictionary, as the sender claims.
        total_size: u32,
        /// The piece's bytes (shares the receive buffer when decoded from `Bytes`).
        data: Bytes,
    },
    /// `msg_type` 2: the sender will not send piece `piece`.
    Reject {
        /// Piece index.
        piece: u32,
    },
}

/// A `ut_metadata` message we cannot read: the peer is dropped.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MessageError {
    /// The dictionary is not well-formed bencode within the limits.
    #[error("bad ut_metadata message: {0}")]
    Bencode(#[from] bencode::BencodeError),
    /// Well-formed, but not a dictionary.
    #[error("bad ut_metadata message: not a dictionary")]
    NotADictionary,
    /// `msg_type`, `piece` or (in a data message) `total_size` missing or out of range.
    #[error("bad ut_metadata message: `{0}` missing or not a 32-bit unsigned integer")]
    BadField(&'static str),
}

impl MetadataMessage {
    /// The piece index the message is about.
    pub fn piece(&self) -> u32 {
        match self {
            MetadataMessage::Request { piece }
            | MetadataMessage::Data { piece, .. }
            | MetadataMessage::Reject { piece } => *piece,
        }
    }

    /// The payload after the extension id byte: the dictionary, then a data message's bytes.
    pub fn encode(&self) -> Bytes {
        let (kind, piece, total) = match self {
            MetadataMessage::Request { piece } => (msg_type::REQUEST, *piece, None),
            MetadataMessage::Data {
                piece, total_size, ..
            } => (msg_type::DATA, *piece, Some(*total_size)),
            MetadataMessage::Reject { piece } => (msg_type::REJECT, *piece, None),
        };
        let data = match self {
            MetadataMessage::Data { data, .. } => &data[..],
            _ => &[],
        };
        let mut out = BytesMut::with_capacity(64 + data.len());
        // Keys in sorted order, as bencode asks.
        out.put_slice(format!("d8:msg_typei{kind}e5:piecei{piece}e").as_bytes());
        if let Some(total) = total {
            out.put_slice(format!("10:total_sizei{total}e").as_bytes());
        }
        out.put_u8(b'e');
        out.put_slice(data);
        out.freeze()
    }

    /// Read a message. `Ok(None)`: a `msg_type` BEP 9 does not define, which BEP 9 says to
    /// ignore. A data message's bytes are the rest of `payload` after the dictionary (no copy);
    /// their length is checked by whoever knows the size ([`MetadataFetch::on_data`]). Unknown
    /// keys are ignored, and so are bytes after a request's or reject's dictionary.
    pub fn decode(payload: Bytes) -> Result<Option<MetadataMessage>, MessageError> {
        let limits = Limits {
            max_depth: 4,
            max_size: MAX_DICT_LEN,
        };
        let (_, end) = bencode::scan_prefix(&payload, limits)?;
        let value: Value = serde_bencode::from_bytes(&payload[..end])
            .map_err(|e| bencode::BencodeError::Shape(e.to_string()))?;
        let Value::Dict(fields) = value else {
            return Err(MessageError::NotADictionary);
        };
        let field = |key: &'static str| -> Result<u32, MessageError> {
            match fields.get(key.as_bytes()) {
                Some(Value::Int(n)) => u32::try_from(*n).map_err(|_| MessageError::BadField(key)),
                _ => Err(MessageError::BadField(key)),
            }
        };
        let kind = match fields.get(&b"msg_type"[..]) {
            Some(Value::Int(n)) => *n,
            _ => return Err(MessageError::BadField("msg_type")),
        };
        let piece = field("piece")?;
        Ok(Some(match kind {
            msg_type::REQUEST => MetadataMessage::Request { piece },
            msg_type::DATA => MetadataMessage::Data {
                piece,
                total_size: field("total_size")?,
                data: payload.slice(end..),
            },
            msg_type::REJECT => MetadataMessage::Reject { piece },
            _ => return Ok(None),
        }))
    }
}

/// Number of BEP 9 pieces in metadata of `size` bytes.
pub fn piece_count(size: u32) -> u32 {
    size.div_ceil(PIECE_SIZE)
}

/// Length of piece `piece` of metadata of `size` bytes (0 if out of range).
pub fn piece_len(size: u32, piece: u32) -> u32 {
    let start = u64::from(piece) * u64::from(PIECE_SIZE);
    // `min` keeps the result at most PIECE_SIZE, so it fits u32.
    (u64::from(size).saturating_sub(start)).min(u64::from(PIECE_SIZE)) as u32
}

/// Our answer to a request for piece `piece` of our metadata `info`: the data, or a reject
/// for a piece that does not exist.
pub fn serve(info: &[u8], piece: u32) -> MetadataMessage {
    let start = u64::from(piece) * u64::from(PIECE_SIZE);
    let Some(start) = usize::try_from(start).ok().filter(|&s| s < info.len()) else {
        return MetadataMessage::Reject { piece };
    };
    let end = (start + PIECE_SIZE as usize).min(info.len());
    MetadataMessage::Data {
        piece,
        // The info dictionary came from a `.torrent` under MAX_TORRENT_SIZE or from a fetch
        // under MAX_METADATA_SIZE; either fits u32.
        total_size: u32::try_from(info.len()).unwrap_or(u32::MAX),
        data: Bytes::copy_from_slice(&info[start..end]),
    }
}

/// How many metadata requests one peer gets answered per minute: twice the piece count (a
/// whole copy, and a retry of each piece), at least 8. Beyond that the caller answers nothing,
/// so a peer asking for the same piece a thousand times costs us bounded work and bandwidth.
#[derive(Clone, Debug)]
pub struct ServeBudget {
    window_start: Option<Instant>,
    used: u32,
}

/// Length of a [`ServeBudget`] window.
pub const SERVE_WINDOW: Duration = Duration::from_secs(60);

impl Default for ServeBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl ServeBudget {
    /// A fresh budget (one per peer).
    pub fn new() -> Self {
        ServeBudget {
            window_start: None,
            used: 0,
        }
    }

    /// Whether to answer one more request now, for metadata of `pieces` pieces; counts it if so.
    pub fn allow(&mut self, now: Instant, pieces: u32) -> bool {
        let limit = pieces.saturating_mul(2).max(8);
        match self.window_start {
            Some(start) if now.saturating_duration_since(start) < SERVE_WINDOW => {}
            _ => {
                self.window_start = Some(now);
                self.used = 0;
            }
        }
        if self.used >= limit {
            return false;
        }
        self.used += 1;
        true
    }
}

/// A peer misbehaved: the caller drops it (and may ban it).
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum FetchError {
    /// The peer claims a metadata size of 0.
    #[error("peer claims an empty info dictionary (metadata_size 0; the limit is 1 to {MAX_METADATA_SIZE} bytes)")]
    EmptyMetadata,
    /// The peer claims a size over our cap.
    #[error("peer claims an info dictionary of {size} bytes; the limit is {max} bytes")]
    TooLarge {
        /// The claimed size.
        size: u32,
        /// [`MAX_METADATA_SIZE`].
        max: u32,
    },
    /// Data for a piece we did not ask this peer for (or never added the peer).
    #[error("peer sent metadata piece {piece} that was not requested from it")]
    Unrequested {
        /// The piece.
        piece: u32,
    },
    /// Data of the wrong length for the piece.
    #[error("peer sent {got} bytes for metadata piece {piece}, which has {expected}")]
    WrongLength {
        /// The piece.
        piece: u32,
        /// Its length.
        expected: u32,
        /// What arrived.
        got: usize,
    },
}

/// What a piece of metadata data led to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Stored (or a harmless late duplicate); more pieces are needed.
    Pending,
    /// Every piece is in and the SHA-1 matches: the raw `info` dictionary.
    Complete(Bytes),
    /// Every piece was in but the hash did not match. Everything was discarded and the fetch
    /// starts over (with the next claimed size, if any). `contributors` sent the pieces, sorted
    /// and without repeats: if only one did, it lied.
    HashMismatch {
        /// Peers whose pieces made up the failed assembly.
        contributors: Vec<u64>,
    },
}

#[derive(Clone, Debug)]
enum Slot {
    Missing,
    Requested { by: u64, at: Instant },
    Have { data: Bytes, from: u64 },
}

#[derive(Clone, Debug)]
struct Peer {
    /// Its `metadata_size`.
    size: u32,
    /// Pieces asked of it and not yet answered, with when they were asked.
    requested: Vec<(u32, Instant)>,
    /// Pieces it refused (not asked again until a new round).
    rejected: Vec<u32>,
    /// Pieces asked of it before the current round (a size change, a failed hash, or
    /// completion): an answer to one is ignored rather than taken for garbage.
    stale: Vec<u32>,
}

impl Peer {
    fn retire_requests(&mut self) {
        self.stale = self.requested.drain(..).map(|(p, _)| p).collect();
    }
}

/// Fetches one torrent's info dictionary from peers (BEP 9). See the module doc.
#[derive(Debug)]
pub struct MetadataFetch {
    info_hash: InfoHash,
    /// Size being fetched and one slot per piece; `None` until a peer claims a size.
    size: Option<u32>,
    slots: Vec<Slot>,
    /// Peers in the order they were added (the order sizes are tried in).
    peers: Vec<(u64, Peer)>,
    /// Sizes whose assembly failed the hash, oldest first.
    failed_sizes: Vec<u32>,
    done: bool,
}

impl MetadataFetch {
    /// A fetch of the info dictionary whose SHA-1 is `info_hash`.
    pub fn new(info_hash: InfoHash) -> Self {
        MetadataFetch {
            info_hash,
            size: None,
            slots: Vec::new(),
            peers: Vec::new(),
            failed_sizes: Vec::new(),
            done: false,
        }
    }

    /// The size being fetched, once a peer claimed one.
    pub fn size(&self) -> Option<u32> {
        self.size
    }

    /// Pieces received so far, and the number of pieces (0 before a size is known).
    pub fn progress(&self) -> (usize, usize) {
        let have = self
            .slots
            .iter()
            .filter(|s| matches!(s, Slot::Have { .. }))
            .count();
        (have, self.slots.len())
    }

    /// Whether the metadata was assembled and verified.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// A peer with the metadata (its handshake's `metadata_size`). A size of 0 or over the cap
    /// is an error: the caller drops the peer, or at least never asks it. Adding a known peer
    /// again replaces its size and forgets its requests.
    pub fn add_peer(&mut self, key: u64, metadata_size: u32) -> Result<(), FetchError> {
        if metadata_size == 0 {
            return Err(FetchError::EmptyMetadata);
        }
        if metadata_size > MAX_METADATA_SIZE {
            return Err(FetchError::TooLarge {
                size: metadata_size,
                max: MAX_METADATA_SIZE,
            });
        }
        self.remove_peer(key);
        self.peers.push((
            key,
            Peer {
                size: metadata_size,
                requested: Vec::new(),
                rejected: Vec::new(),
                stale: Vec::new(),
            },
        ));
        self.choose_size();
        Ok(())
    }

    /// A peer went away: its outstanding pieces become free for others at once.
    pub fn remove_peer(&mut self, key: u64) {
        let Some(i) = self.peers.iter().position(|(k, _)| *k == key) else {
            return;
        };
        self.peers.remove(i);
        for slot in &mut self.slots {
            if matches!(slot, Slot::Requested { by, .. } if *by == key) {
                *slot = Slot::Missing;
            }
        }
        self.choose_size();
    }

    /// The next piece to request from `key`, if any; the caller sends
    /// [`MetadataMessage::Request`] for it. Free pieces come first, then pieces whose request
    /// to another peer timed out, then (only peer left) its own timed-out ones. `None` when the
    /// peer has [`MAX_OUTSTANDING_PER_PEER`] live requests, claims another size, or nothing is
    /// left to ask.
    pub fn next_request(&mut self, key: u64, now: Instant) -> Option<u32> {
        if self.done {
            return None;
        }
        let size = self.size?;
        let peer = &self.peers.iter().find(|(k, _)| *k == key)?.1;
        if peer.size != size {
            return None;
        }
        let live = peer
            .requested
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(*at) < REQUEST_TIMEOUT)
            .count();
        if live >= MAX_OUTSTANDING_PER_PEER {
            return None;
        }
        let askable = |i: usize| !peer.rejected.contains(&(i as u32));
        let timed_out = |slot: &Slot, other: bool| match slot {
            Slot::Requested { by, at } => {
                now.saturating_duration_since(*at) >= REQUEST_TIMEOUT && ((*by != key) == other)
            }
            _ => false,
        };
        let pick = self
            .slots
            .iter()
            .enumerate()
            .position(|(i, s)| matches!(s, Slot::Missing) && askable(i))
            .or_else(|| {
                (0..self.slots.len()).find(|&i| askable(i) && timed_out(&self.slots[i], true))
            })
            .or_else(|| {
                // Its own timed-out pieces only when no other peer could be asked instead.
                let alone = !self.peers.iter().any(|(k, p)| *k != key && p.size == size);
                (0..self.slots.len())
                    .find(|&i| alone && askable(i) && timed_out(&self.slots[i], false))
            })?;
        let piece = pick as u32;
        self.slots[pick] = Slot::Requested { by: key, at: now };
        let peer = &mut self.peers.iter_mut().find(|(k, _)| *k == key)?.1;
        match peer.requested.iter_mut().find(|(p, _)| *p == piece) {
            Some(entry) => entry.1 = now,
            None => peer.requested.push((piece, now)),
        }
        Some(piece)
    }

    /// Piece `piece` arrived from `key`. An error means the peer sent garbage (a piece not
    /// asked of it, or of the wrong length): drop it. A late answer to a timed-out request is
    /// accepted if the piece is still needed, ignored if another peer already sent it; an
    /// answer to a request from before a restart (or after completion) is ignored. After
    /// completion the result is `Pending` for such answers; check [`Self::is_complete`].
    pub fn on_data(
        &mut self,
        key: u64,
        piece: u32,
        data: Bytes,
        _now: Instant,
    ) -> Result<Progress, FetchError> {
        let Some(peer) = self
            .peers
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p)
        else {
            return Err(FetchError::Unrequested { piece });
        };
        let Some(pos) = peer.requested.iter().position(|(p, _)| *p == piece) else {
            if let Some(i) = peer.stale.iter().position(|p| *p == piece) {
                peer.stale.swap_remove(i);
                return Ok(Progress::Pending);
            }
            return Err(FetchError::Unrequested { piece });
        };
        // A peer is only asked for pieces of the current size, and requests are forgotten when
        // the size changes, so `self.size` is set and the piece is in range here.
        let size = self.size.unwrap_or(0);
        let expected = piece_len(size, piece);
        if data.len() != expected as usize {
            return Err(FetchError::WrongLength {
                piece,
                expected,
                got: data.len(),
            });
        }
        peer.requested.swap_remove(pos);
        let Some(slot) = self.slots.get_mut(piece as usize) else {
            return Err(FetchError::Unrequested { piece });
        };
        if matches!(slot, Slot::Have { .. }) {
            return Ok(Progress::Pending);
        }
        *slot = Slot::Have { data, from: key };
        if self.slots.iter().all(|s| matches!(s, Slot::Have { .. })) {
            return Ok(self.assemble());
        }
        Ok(Progress::Pending)
    }

    /// `key` refused piece `piece`: it is not asked of that peer again this round.
    pub fn on_reject(&mut self, key: u64, piece: u32) {
        let Some((_, peer)) = self.peers.iter_mut().find(|(k, _)| *k == key) else {
            return;
        };
        peer.requested.retain(|(p, _)| *p != piece);
        if !peer.rejected.contains(&piece) && (piece as usize) < self.slots.len() {
            peer.rejected.push(piece);
        }
        if let Some(slot) = self.slots.get_mut(piece as usize) {
            if matches!(slot, Slot::Requested { by, .. } if *by == key) {
                *slot = Slot::Missing;
            }
        }
    }

    /// Every piece is in: hash, then hand out the bytes or start over.
    fn assemble(&mut self) -> Progress {
        let mut info = BytesMut::with_capacity(self.size.unwrap_or(0) as usize);
        let mut contributors = Vec::new();
        for slot in &self.slots {
            if let Slot::Have { data, from } = slot {
                info.put_slice(data);
                contributors.push(*from);
            }
        }
        let info = info.freeze();
        if crate::hash::sha1(&info) == self.info_hash.0 {
            self.done = true;
            self.slots.clear();
            for (_, p) in &mut self.peers {
                p.retire_requests();
            }
            return Progress::Complete(info);
        }
        contributors.sort_unstable();
        contributors.dedup();
        if let Some(size) = self.size {
            self.failed_sizes.retain(|&s| s != size);
            self.failed_sizes.push(size);
        }
        self.size = None;
        self.choose_size();
        Progress::HashMismatch { contributors }
    }

    /// Pick the size to fetch when there is none, or when nobody connected claims the current
    /// one and nothing of it has arrived. Prefers the first claim (in arrival order) that has
    /// not failed; if every claim failed, the one that failed longest ago.
    fn choose_size(&mut self) {
        if self.done {
            return;
        }
        // Keep the current size while someone connected can finish it; pieces of a size
        // nobody claims any more are dropped (at most the metadata size, re-fetched if a peer
        // claiming it comes back).
        if let Some(size) = self.size {
            if self.peers.iter().any(|(_, p)| p.size == size) {
                return;
            }
        }
        let fresh = self
            .peers
            .iter()
            .map(|(_, p)| p.size)
            .find(|s| !self.failed_sizes.contains(s));
        let retry = || {
            self.failed_sizes
                .iter()
                .copied()
                .find(|s| self.peers.iter().any(|(_, p)| p.size == *s))
        };
        let next = fresh.or_else(retry);
        if next == self.size && next.is_some() {
            return;
        }
        self.size = next;
        self.slots = match next {
            Some(size) => vec![Slot::Missing; piece_count(size) as usize],
            None => Vec::new(),
        };
        // A new round: refusals no longer mean anything, and answers to old requests are
        // tolerated and ignored.
        for (_, p) in &mut self.peers {
            p.retire_requests();
            p.rejected.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn info_of(len: usize) -> (Bytes, InfoHash) {
        let info: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let hash = InfoHash(crate::hash::sha1(&info));
        (Bytes::from(info), hash)
    }

    fn piece_of(info: &[u8], piece: u32) -> Bytes {
        match serve(info, piece) {
            MetadataMessage::Data { data, .. } => data,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn message_bytes_and_round_trip() {
        let req = MetadataMessage::Request { piece: 0 };
        assert_eq!(&req.encode()[..], b"d8:msg_typei0e5:piecei0ee");
        let rej = MetadataMessage::Reject { piece: 3 };
        assert_eq!(&rej.encode()[..], b"d8:msg_typei2e5:piecei3ee");
        let data = MetadataMessage::Data {
            piece: 1,
            total_size: 16_390,
            data: Bytes::from_static(b"\x00\xffxyz"),
        };
        assert_eq!(
            &data.encode()[..],
            b"d8:msg_typei1e5:piecei1e10:total_sizei16390ee\x00\xffxyz"
        );
        for m in [req, rej, data] {
            assert_eq!(MetadataMessage::decode(m.encode()), Ok(Some(m.clone())));
        }
    }

    #[test]
    fn decoded_data_shares_the_buffer() {
        let payload = MetadataMessage::Data {
            piece: 0,
            total_size: 5000,
            data: Bytes::from(vec![9u8; 5000]),
        }
        .encode();
        let base = payload.as_ptr() as usize;
        let Ok(Some(MetadataMessage::Data { data, .. })) = MetadataMessage::decode(payload.clone())
        else {
            panic!("not data");
        };
        assert_eq!(data.len(), 5000);
        assert_eq!(data.as_ptr() as usize, base + payload.len() - 5000);
    }

    #[test]
    fn decode_is_tolerant_but_checks_fields() {
        // libtorrent-style, with an extra key, unsorted is fine.
        let m =
            MetadataMessage::decode(Bytes::from_static(b"d5:piecei2e8:msg_typei2e4:xtrali1eee"));
        assert_eq!(m, Ok(Some(MetadataMessage::Reject { piece: 2 })));
        // Unknown msg_type: ignored.
        let m = MetadataMessage::decode(Bytes::from_static(b"d8:msg_typei7e5:piecei0ee"));
        assert_eq!(m, Ok(None));
        let bad: &[(&[u8], MessageError)] = &[
            (b"d5:piecei0ee", MessageError::BadField("msg_type")),
            (
                b"d8:msg_type1:05:piecei0ee",
                MessageError::BadField("msg_type"),
            ),
            (b"d8:msg_typei0ee", MessageError::BadField("piece")),
            (
                b"d8:msg_typei0e5:piecei-1ee",
                MessageError::BadField("piece"),
            ),
            (
                b"d8:msg_typei0e5:piecei4294967296ee",
                MessageError::BadField("piece"),
            ),
            (
                b"d8:msg_typei1e5:piecei0ee",
                MessageError::BadField("total_size"),
            ),
            (b"li0ee", MessageError::NotADictionary),
        ];
        for (payload, want) in bad {
            assert_eq!(
                MetadataMessage::decode(Bytes::from_static(payload)).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
        for broken in [&b""[..], b"d8:msg_typei0e", b"x", b"d8:msg_typei0e5:piece"] {
            assert!(matches!(
                MetadataMessage::decode(Bytes::from_static(broken)),
                Err(MessageError::Bencode(_))
            ));
        }
        // A huge dictionary is refused before serde sees it.
        let mut big = b"d1:x2000:".to_vec();
        big.resize(big.len() + 2000, b'a');
        big.extend_from_slice(b"8:msg_typei0e5:piecei0ee");
        assert!(matches!(
            MetadataMessage::decode(Bytes::from(big)),
            Err(MessageError::Bencode(
                bencode::BencodeError::TooLarge { .. }
            ))
        ));
    }

    #[test]
    fn serve_and_decode_round_trip() {
        let (info, _) = info_of(40_000);
        let mut rebuilt = Vec::new();
        for piece in 0..3 {
            let msg = serve(&info, piece);
            let Ok(Some(MetadataMessage::Data {
                piece: p,
                total_size,
                data,
            })) = MetadataMessage::decode(msg.encode())
            else {
                panic!("piece {piece}");
            };
            assert_eq!((p, total_size), (piece, 40_000));
            assert_eq!(data.len() as u32, piece_len(40_000, piece));
            rebuilt.extend_from_slice(&data);
        }
        assert_eq!(rebuilt, info);
        assert_eq!(piece_len(40_000, 2), 40_000 - 2 * PIECE_SIZE);
        assert_eq!(serve(&info, 3), MetadataMessage::Reject { piece: 3 });
        assert_eq!(
            serve(&info, u32::MAX),
            MetadataMessage::Reject { piece: u32::MAX }
        );
        assert_eq!(serve(&[], 0), MetadataMessage::Reject { piece: 0 });
        // Exactly one piece.
        let (one, _) = info_of(PIECE_SIZE as usize);
        assert_eq!(piece_count(PIECE_SIZE), 1);
        assert_eq!(piece_of(&one, 0).len(), PIECE_SIZE as usize);
        assert_eq!(serve(&one, 1), MetadataMessage::Reject { piece: 1 });
    }

    /// Messages captured from python3-libtorrent 2.0.8 seeding on loopback
    /// (`engine/testdata/capture_libtorrent.py`): an 18,096-byte info dictionary in two pieces,
    /// and its reply to a request for piece 7.
    #[test]
    fn captured_libtorrent_messages() {
        let info = Bytes::from_static(include_bytes!("../testdata/libtorrent-info.bin"));
        let first = Bytes::from_static(include_bytes!("../testdata/libtorrent-data-first.bin"));
        let last = Bytes::from_static(include_bytes!("../testdata/libtorrent-data-last.bin"));
        let reject = Bytes::from_static(include_bytes!("../testdata/libtorrent-reject.bin"));
        let hash = InfoHash(crate::hash::sha1(&info));
        assert_eq!(hash.to_hex(), "bde9335b7358af6066db05a375ff5745295e4b20");
        // Our data messages are byte for byte libtorrent's.
        assert_eq!(serve(&info, 0).encode(), first);
        assert_eq!(serve(&info, 1).encode(), last);
        // libtorrent adds total_size to a reject; we read it all the same.
        assert_eq!(
            MetadataMessage::decode(reject),
            Ok(Some(MetadataMessage::Reject { piece: 7 }))
        );
        // Assemble from the captured messages, last piece first.
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, 18_096).unwrap();
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.next_request(1, t), Some(1));
        let mut done = None;
        for msg in [last, first] {
            let Ok(Some(MetadataMessage::Data {
                piece,
                total_size,
                data,
            })) = MetadataMessage::decode(msg)
            else {
                panic!("not a data message");
            };
            assert_eq!(total_size, 18_096);
            if let Progress::Complete(bytes) = f.on_data(1, piece, data, t).unwrap() {
                done = Some(bytes);
            }
        }
        assert_eq!(done, Some(info));
    }

    #[test]
    fn serve_budget_bounds_repeated_requests() {
        let t0 = Instant::now();
        let mut b = ServeBudget::new();
        // 3 pieces: 8 answers a minute (the floor), then none until the window ends.
        let answered = (0..1000).filter(|_| b.allow(t0, 3)).count();
        assert_eq!(answered, 8);
        assert!(!b.allow(t0 + Duration::from_secs(59), 3));
        assert!(b.allow(t0 + SERVE_WINDOW, 3));
        let mut big = ServeBudget::new();
        assert_eq!((0..1000).filter(|_| big.allow(t0, 100)).count(), 200);
    }

    #[test]
    fn out_of_order_from_several_peers() {
        let (info, hash) = info_of(5 * PIECE_SIZE as usize + 100);
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        for k in 1..=3 {
            f.add_peer(k, info.len() as u32).unwrap();
        }
        // Each peer gets at most two live requests, and no piece is asked twice.
        let mut asked = Vec::new();
        for k in 1..=3 {
            while let Some(p) = f.next_request(k, t) {
                asked.push((k, p));
            }
        }
        assert_eq!(asked.len(), 6);
        for k in 1..=3 {
            assert_eq!(asked.iter().filter(|(kk, _)| *kk == k).count(), 2);
        }
        let mut pieces: Vec<u32> = asked.iter().map(|(_, p)| *p).collect();
        pieces.sort_unstable();
        assert_eq!(pieces, [0, 1, 2, 3, 4, 5]);
        // Answer in reverse order.
        let mut result = None;
        for (k, p) in asked.iter().rev() {
            match f.on_data(*k, *p, piece_of(&info, *p), t).unwrap() {
                Progress::Pending => assert_eq!(f.progress().1, 6),
                Progress::Complete(bytes) => result = Some(bytes),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(result, Some(info));
        assert!(f.is_complete());
        assert_eq!(f.next_request(1, t), None);
    }

    #[test]
    fn size_sanity() {
        let (_, hash) = info_of(10);
        let mut f = MetadataFetch::new(hash);
        assert_eq!(f.add_peer(1, 0), Err(FetchError::EmptyMetadata));
        let err = f.add_peer(1, MAX_METADATA_SIZE + 1).unwrap_err();
        assert_eq!(
            err,
            FetchError::TooLarge {
                size: MAX_METADATA_SIZE + 1,
                max: MAX_METADATA_SIZE
            }
        );
        assert!(err.to_string().contains(&MAX_METADATA_SIZE.to_string()));
        assert_eq!(f.size(), None);
        assert_eq!(f.next_request(1, Instant::now()), None);
        f.add_peer(1, MAX_METADATA_SIZE).unwrap();
        assert_eq!(f.progress(), (0, 1016));
        assert!(MAX_METADATA_SIZE as usize + 64 * 1024 < MAX_TORRENT_SIZE);
    }

    #[test]
    fn garbage_from_a_peer_is_an_error() {
        let (info, hash) = info_of(PIECE_SIZE as usize + 10);
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, info.len() as u32).unwrap();
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.next_request(1, t), Some(0));
        // Piece 1 was never asked of anyone; piece 0 was not asked of peer 2; peer 9 is unknown.
        assert_eq!(
            f.on_data(1, 1, piece_of(&info, 1), t),
            Err(FetchError::Unrequested { piece: 1 })
        );
        assert_eq!(
            f.on_data(2, 0, piece_of(&info, 0), t),
            Err(FetchError::Unrequested { piece: 0 })
        );
        assert_eq!(
            f.on_data(9, 0, piece_of(&info, 0), t),
            Err(FetchError::Unrequested { piece: 0 })
        );
        // Wrong length, short and long.
        assert_eq!(
            f.on_data(1, 0, Bytes::from(vec![0; 100]), t),
            Err(FetchError::WrongLength {
                piece: 0,
                expected: PIECE_SIZE,
                got: 100
            })
        );
        assert!(matches!(
            f.on_data(1, 0, Bytes::from(vec![0; PIECE_SIZE as usize + 1]), t),
            Err(FetchError::WrongLength { .. })
        ));
        // The caller drops peer 1: its piece goes to peer 2 at once.
        f.remove_peer(1);
        assert_eq!(f.next_request(2, t), Some(0));
        assert_eq!(f.next_request(2, t), Some(1));
        assert_eq!(
            f.on_data(2, 0, piece_of(&info, 0), t),
            Ok(Progress::Pending)
        );
        assert_eq!(
            f.on_data(2, 1, piece_of(&info, 1), t),
            Ok(Progress::Complete(info))
        );
    }

    #[test]
    fn wrong_hash_discards_and_starts_over() {
        let (info, hash) = info_of(2 * PIECE_SIZE as usize);
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, info.len() as u32).unwrap();
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.next_request(2, t), Some(1));
        assert_eq!(
            f.on_data(1, 0, piece_of(&info, 0), t),
            Ok(Progress::Pending)
        );
        let mut bad = piece_of(&info, 1).to_vec();
        bad[0] ^= 1;
        assert_eq!(
            f.on_data(2, 1, Bytes::from(bad), t),
            Ok(Progress::HashMismatch {
                contributors: vec![1, 2]
            })
        );
        // Everything discarded; a new round asks for both pieces again.
        assert_eq!(f.progress(), (0, 2));
        assert!(!f.is_complete());
        f.remove_peer(2);
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.next_request(1, t), Some(1));
        assert_eq!(
            f.on_data(1, 1, piece_of(&info, 1), t),
            Ok(Progress::Pending)
        );
        assert_eq!(
            f.on_data(1, 0, piece_of(&info, 0), t),
            Ok(Progress::Complete(info))
        );
    }

    #[test]
    fn disagreeing_sizes_first_claim_then_the_next() {
        let (info, hash) = info_of(20_000);
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        // A liar speaks first with a wrong size; an honest peer follows.
        f.add_peer(1, 100).unwrap();
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.size(), Some(100));
        assert_eq!(
            f.next_request(2, t),
            None,
            "a peer with another size is not asked"
        );
        assert_eq!(f.next_request(1, t), Some(0));
        let r = f.on_data(1, 0, Bytes::from(vec![1u8; 100]), t);
        assert_eq!(
            r,
            Ok(Progress::HashMismatch {
                contributors: vec![1]
            })
        );
        // The next claimed size is tried; the liar is not asked for it.
        assert_eq!(f.size(), Some(20_000));
        assert_eq!(f.next_request(1, t), None);
        assert_eq!(f.next_request(2, t), Some(0));
        assert_eq!(f.next_request(2, t), Some(1));
        f.on_data(2, 0, piece_of(&info, 0), t).unwrap();
        assert_eq!(
            f.on_data(2, 1, piece_of(&info, 1), t),
            Ok(Progress::Complete(info))
        );
    }

    #[test]
    fn size_follows_the_peers_present() {
        let (_, hash) = info_of(10);
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, 100).unwrap();
        f.add_peer(2, 200).unwrap();
        assert_eq!(f.size(), Some(100));
        // Nobody left claims 100: switch.
        f.remove_peer(1);
        assert_eq!(f.size(), Some(200));
        f.remove_peer(2);
        assert_eq!(f.size(), None);
        assert_eq!(f.progress(), (0, 0));
        // Pieces already in do not pin a size nobody connected can finish.
        let (info, hash) = info_of(2 * PIECE_SIZE as usize);
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, info.len() as u32).unwrap();
        f.add_peer(2, 777).unwrap();
        assert_eq!(f.next_request(1, t), Some(0));
        f.on_data(1, 0, piece_of(&info, 0), t).unwrap();
        assert_eq!(f.progress(), (1, 2));
        f.remove_peer(1);
        assert_eq!(f.size(), Some(777));
        assert_eq!(f.progress(), (0, 1));
        assert_eq!(f.next_request(2, t), Some(0));
    }

    #[test]
    fn answers_from_before_a_restart_are_ignored() {
        let (info, hash) = info_of(20_000);
        let t0 = Instant::now();
        let late = t0 + REQUEST_TIMEOUT;
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, 100).unwrap();
        f.add_peer(3, 100).unwrap();
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.next_request(1, t0), Some(0));
        assert_eq!(f.next_request(3, late), Some(0));
        assert!(matches!(
            f.on_data(3, 0, Bytes::from(vec![0u8; 100]), late),
            Ok(Progress::HashMismatch { .. })
        ));
        assert_eq!(f.size(), Some(20_000));
        // Peer 1 answers its old request: ignored once, then garbage.
        assert_eq!(
            f.on_data(1, 0, Bytes::from(vec![0u8; 100]), late),
            Ok(Progress::Pending)
        );
        assert_eq!(
            f.on_data(1, 0, Bytes::from(vec![0u8; 100]), late),
            Err(FetchError::Unrequested { piece: 0 })
        );
        assert_eq!(f.progress(), (0, 2));
    }

    #[test]
    fn timeout_re_request_spreads_to_another_peer() {
        let (info, hash) = info_of(PIECE_SIZE as usize);
        let t0 = Instant::now();
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, info.len() as u32).unwrap();
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.next_request(1, t0), Some(0));
        // Before the timeout nobody else is asked.
        let almost = t0 + REQUEST_TIMEOUT - Duration::from_millis(1);
        assert_eq!(f.next_request(2, almost), None);
        // After it, peer 2 is asked, and peer 1 (which timed out) is not asked again.
        let late = t0 + REQUEST_TIMEOUT;
        assert_eq!(f.next_request(1, late), None);
        assert_eq!(f.next_request(2, late), Some(0));
        assert_eq!(f.next_request(2, late), None);
        // Peer 1's late answer still counts: it was asked.
        assert_eq!(
            f.on_data(1, 0, piece_of(&info, 0), late),
            Ok(Progress::Complete(info.clone()))
        );
        // Peer 2's answer to its duplicate request comes after completion: ignored, not garbage.
        assert_eq!(
            f.on_data(2, 0, piece_of(&info, 0), late),
            Ok(Progress::Pending)
        );
        assert!(f.is_complete());
        // Only peer left: its own timed-out piece is asked of it again.
        let mut g = MetadataFetch::new(hash);
        g.add_peer(5, info.len() as u32).unwrap();
        assert_eq!(g.next_request(5, t0), Some(0));
        assert_eq!(g.next_request(5, t0), None);
        assert_eq!(g.next_request(5, late), Some(0));
    }

    #[test]
    fn late_duplicate_is_harmless() {
        let (info, hash) = info_of(2 * PIECE_SIZE as usize);
        let t0 = Instant::now();
        let late = t0 + REQUEST_TIMEOUT;
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, info.len() as u32).unwrap();
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.next_request(1, t0), Some(0));
        assert_eq!(f.next_request(2, t0), Some(1));
        assert_eq!(f.next_request(2, late), Some(0));
        assert_eq!(
            f.on_data(2, 0, piece_of(&info, 0), late),
            Ok(Progress::Pending)
        );
        assert_eq!(
            f.on_data(1, 0, piece_of(&info, 0), late),
            Ok(Progress::Pending)
        );
        assert_eq!(f.progress(), (1, 2));
        // Answered once: a second copy is unrequested garbage.
        assert_eq!(
            f.on_data(1, 0, piece_of(&info, 0), late),
            Err(FetchError::Unrequested { piece: 0 })
        );
    }

    #[test]
    fn rejects_move_the_piece_elsewhere() {
        let (info, hash) = info_of(PIECE_SIZE as usize * 2);
        let t = Instant::now();
        let mut f = MetadataFetch::new(hash);
        f.add_peer(1, info.len() as u32).unwrap();
        assert_eq!(f.next_request(1, t), Some(0));
        assert_eq!(f.next_request(1, t), Some(1));
        f.on_reject(1, 0);
        f.on_reject(1, 99);
        // Not asked of peer 1 again; a new peer gets it.
        assert_eq!(f.next_request(1, t), None);
        f.add_peer(2, info.len() as u32).unwrap();
        assert_eq!(f.next_request(2, t), Some(0));
        // A rejected piece answered anyway is unrequested.
        assert_eq!(
            f.on_data(1, 0, piece_of(&info, 0), t),
            Err(FetchError::Unrequested { piece: 0 })
        );
    }

    /// Random peers, sizes, answers, rejects, garbage and timeouts: the fetch never panics, never
    /// gives a peer more than two live requests, and whenever it completes, the bytes are right.
    #[test]
    fn random_swarm_never_completes_wrong() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut completed = 0;
        for _ in 0..300 {
            let (info, hash) = info_of(rng.gen_range(1..5 * PIECE_SIZE as usize));
            let mut f = MetadataFetch::new(hash);
            let mut now = Instant::now();
            let mut outstanding: Vec<(u64, u32)> = Vec::new();
            for k in 0..4u64 {
                let size = if rng.gen_bool(0.2) {
                    rng.gen_range(1..100_000)
                } else {
                    info.len() as u32
                };
                f.add_peer(k, size).unwrap();
            }
            for _ in 0..200 {
                now += Duration::from_secs(rng.gen_range(0..8));
                let k = rng.gen_range(0..4u64);
                let mut live = 0;
                while let Some(p) = f.next_request(k, now) {
                    outstanding.push((k, p));
                    live += 1;
                    assert!(live <= MAX_OUTSTANDING_PER_PEER);
                }
                outstanding.shuffle(&mut rng);
                let Some((k, p)) = outstanding.pop() else {
                    continue;
                };
                let r = match rng.gen_range(0..10) {
                    0 => {
                        f.on_reject(k, p);
                        continue;
                    }
                    1 => f.on_data(k, p, Bytes::from(vec![0; rng.gen_range(0..20_000)]), now),
                    _ => {
                        let d = match serve(&info, p) {
                            MetadataMessage::Data { data, .. } => data,
                            _ => Bytes::new(),
                        };
                        f.on_data(k, p, d, now)
                    }
                };
                if let Ok(Progress::Complete(bytes)) = r {
                    assert_eq!(bytes, info);
                    completed += 1;
                    break;
                }
            }
        }
        assert!(completed > 100, "only {completed} fetches completed");
    }
}
