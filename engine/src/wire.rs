//! The BEP 3 peer wire protocol, sans-IO: handshake and message encoding/decoding over buffers.
//! (Stub: API fixed, implementation pending.)

use bytes::{Bytes, BytesMut};

use crate::types::{InfoHash, PeerId};

/// BEP 3: 1 + 19 + 8 + 20 + 20 bytes.
pub const HANDSHAKE_LEN: usize = 68;

/// The opening exchange of every connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Reserved bits (extension flags).
    pub reserved: [u8; 8],
    /// Torrent the peer wants.
    pub info_hash: InfoHash,
    /// The sender's id.
    pub peer_id: PeerId,
}

impl Handshake {
    /// Our handshake (no extension bits yet).
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        Handshake { reserved: [0; 8], info_hash, peer_id }
    }
    /// Wire bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        unimplemented!("Handshake::encode")
    }
    /// Parse wire bytes; fails unless the protocol string is `BitTorrent protocol`.
    pub fn decode(buf: &[u8; HANDSHAKE_LEN]) -> Result<Self, WireError> {
        let _ = buf;
        unimplemented!("Handshake::decode")
    }
}

/// One BEP 3 message (after the handshake).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Zero-length message.
    KeepAlive,
    /// id 0.
    Choke,
    /// id 1.
    Unchoke,
    /// id 2.
    Interested,
    /// id 3.
    NotInterested,
    /// id 4.
    Have(u32),
    /// id 5: raw bytes, validated against the piece count by the caller.
    Bitfield(Bytes),
    /// id 6.
    Request {
        /// Piece.
        index: u32,
        /// Offset.
        begin: u32,
        /// Length.
        length: u32,
    },
    /// id 7: `data` shares the receive buffer (no copy).
    Piece {
        /// Piece.
        index: u32,
        /// Offset.
        begin: u32,
        /// Block bytes.
        data: Bytes,
    },
    /// id 8.
    Cancel {
        /// Piece.
        index: u32,
        /// Offset.
        begin: u32,
        /// Length.
        length: u32,
    },
    /// id 9 (DHT port).
    Port(u16),
    /// Any other id: kept so extensions (BEP 6, BEP 10) can be added without a new path.
    Unknown {
        /// Message id.
        id: u8,
        /// Payload.
        payload: Bytes,
    },
}

/// A violation of the wire protocol by the remote peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Placeholder until the codec lands.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl Message {
    /// Append the framed message (length prefix included) to `dst`. For `Piece`, prefer
    /// [`encode_piece_header`] and write `data` separately to avoid a copy.
    pub fn encode(&self, dst: &mut BytesMut) {
        let _ = dst;
        unimplemented!("Message::encode")
    }
}

/// Append the 13-byte frame header of a `piece` message carrying `len` bytes of data.
pub fn encode_piece_header(index: u32, begin: u32, len: u32, dst: &mut BytesMut) {
    let _ = (index, begin, len, dst);
    unimplemented!("encode_piece_header")
}

/// Take one complete message off the front of `src`. `Ok(None)` means "need more bytes".
/// Frames longer than `max_len` are rejected before any allocation.
pub fn decode(src: &mut BytesMut, max_len: usize) -> Result<Option<Message>, WireError> {
    let _ = (src, max_len);
    unimplemented!("wire::decode")
}
