//! The BEP 3 peer wire protocol, sans-IO: handshake and message encoding/decoding over buffers.
//!
//! Owns only the byte format. It never reads sockets, keeps no per-connection state and never
//! interprets indices against a torrent: callers check piece indices, block ranges and bitfield
//! lengths. Everything decoded here is untrusted; every error ends that one connection only.
//!
//! Frames are `<u32 big-endian length><id><payload>`; a zero length is a keep-alive. The length is
//! checked against the caller's cap before a single byte is reserved for the frame, and `piece`
//! data is split off the receive buffer without copying.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::types::{InfoHash, PeerId};

/// BEP 3: 1 + 19 + 8 + 20 + 20 bytes.
pub const HANDSHAKE_LEN: usize = 68;

/// BEP 3: the protocol string that follows the length byte `19` in every handshake.
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Bytes of the length prefix in front of every message.
pub const LENGTH_PREFIX: usize = 4;

/// Bytes of a `piece` frame before its data: length prefix, id, index, begin.
pub const PIECE_HEADER_LEN: usize = LENGTH_PREFIX + 1 + 4 + 4;

/// BEP 3 message ids.
mod id {
    pub const CHOKE: u8 = 0;
    pub const UNCHOKE: u8 = 1;
    pub const INTERESTED: u8 = 2;
    pub const NOT_INTERESTED: u8 = 3;
    pub const HAVE: u8 = 4;
    pub const BITFIELD: u8 = 5;
    pub const REQUEST: u8 = 6;
    pub const PIECE: u8 = 7;
    pub const CANCEL: u8 = 8;
    pub const PORT: u8 = 9;
    // BEP 6 (fast extension).
    pub const SUGGEST: u8 = 0x0d;
    pub const HAVE_ALL: u8 = 0x0e;
    pub const HAVE_NONE: u8 = 0x0f;
    pub const REJECT_REQUEST: u8 = 0x10;
    pub const ALLOWED_FAST: u8 = 0x11;
}

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

/// BEP 10: byte and bit of the reserved field that say "I speak the extension protocol".
const EXTENSION_PROTOCOL: (usize, u8) = (5, 0x10);

/// BEP 6: byte and bit of the reserved field that say "I speak the fast extension" (the third
/// least significant bit of the last byte).
const FAST_EXTENSION: (usize, u8) = (7, 0x04);

/// BEP 10: message id of every extension message; its first payload byte is the extension's
/// own id, 0 being the extended handshake.
pub const EXTENDED: u8 = 20;

impl Handshake {
    /// Our handshake: the extension protocol (BEP 10) and fast extension (BEP 6) bits set,
    /// nothing else.
    pub fn new(info_hash: InfoHash, peer_id: PeerId) -> Self {
        let mut reserved = [0; 8];
        reserved[EXTENSION_PROTOCOL.0] |= EXTENSION_PROTOCOL.1;
        reserved[FAST_EXTENSION.0] |= FAST_EXTENSION.1;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    /// Whether the sender speaks the extension protocol (BEP 10).
    pub fn supports_extensions(&self) -> bool {
        self.reserved[EXTENSION_PROTOCOL.0] & EXTENSION_PROTOCOL.1 != 0
    }

    /// Whether the sender speaks the fast extension (BEP 6). It is in use on a connection only
    /// when both handshakes set it.
    pub fn supports_fast(&self) -> bool {
        self.reserved[FAST_EXTENSION.0] & FAST_EXTENSION.1 != 0
    }

    /// Wire bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id.0);
        out
    }

    /// Parse wire bytes; fails unless the protocol string is `BitTorrent protocol`.
    pub fn decode(buf: &[u8; HANDSHAKE_LEN]) -> Result<Self, WireError> {
        if buf[0] as usize != PROTOCOL.len() || &buf[1..20] != PROTOCOL {
            return Err(WireError::BadHandshake);
        }
        let mut reserved = [0u8; 8];
        reserved.copy_from_slice(&buf[20..28]);
        let mut info_hash = [0u8; 20];
        info_hash.copy_from_slice(&buf[28..48]);
        let mut peer_id = [0u8; 20];
        peer_id.copy_from_slice(&buf[48..68]);
        Ok(Handshake {
            reserved,
            info_hash: InfoHash(info_hash),
            peer_id: PeerId(peer_id),
        })
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
    /// id 0x0D (BEP 6): the sender suggests downloading this piece.
    Suggest(u32),
    /// id 0x0E (BEP 6): the sender has every piece (instead of a bitfield).
    HaveAll,
    /// id 0x0F (BEP 6): the sender has no piece (instead of a bitfield).
    HaveNone,
    /// id 0x10 (BEP 6): the sender will not serve this request.
    RejectRequest {
        /// Piece.
        index: u32,
        /// Offset.
        begin: u32,
        /// Length.
        length: u32,
    },
    /// id 0x11 (BEP 6): the sender serves this piece even while it chokes us.
    AllowedFast(u32),
    /// Any other id: kept so extensions (BEP 10) can be added without a new path.
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
    /// The handshake does not start with `\x13BitTorrent protocol`.
    #[error("not a BitTorrent handshake")]
    BadHandshake,
    /// A frame announced more bytes than this connection accepts.
    #[error("message of {len} bytes exceeds the {max} byte limit")]
    TooLong {
        /// Length announced by the prefix (id and payload).
        len: usize,
        /// The caller's limit.
        max: usize,
    },
    /// A known message id with a payload of the wrong size.
    #[error("message id {id} with a payload of {len} bytes")]
    BadPayloadLength {
        /// Message id.
        id: u8,
        /// Payload length (without the id byte).
        len: usize,
    },
}

/// Length fields of our own messages: payloads come from in-memory buffers, and a frame over
/// 4 GiB is a caller bug, not a peer's fault.
fn frame_len(payload: usize) -> u32 {
    u32::try_from(payload).expect("wire frame over 4 GiB: caller bug")
}

impl Message {
    /// Append the framed message (length prefix included) to `dst`. For `Piece`, prefer
    /// [`encode_piece_header`] and write `data` separately to avoid a copy.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Message::KeepAlive => dst.put_u32(0),
            Message::Choke => put_bare(dst, id::CHOKE),
            Message::Unchoke => put_bare(dst, id::UNCHOKE),
            Message::Interested => put_bare(dst, id::INTERESTED),
            Message::NotInterested => put_bare(dst, id::NOT_INTERESTED),
            Message::Have(index) => put_index(dst, id::HAVE, *index),
            Message::Suggest(index) => put_index(dst, id::SUGGEST, *index),
            Message::AllowedFast(index) => put_index(dst, id::ALLOWED_FAST, *index),
            Message::HaveAll => put_bare(dst, id::HAVE_ALL),
            Message::HaveNone => put_bare(dst, id::HAVE_NONE),
            Message::RejectRequest {
                index,
                begin,
                length,
            } => put_triple(dst, id::REJECT_REQUEST, *index, *begin, *length),
            Message::Bitfield(bits) => put_with_payload(dst, id::BITFIELD, bits),
            Message::Request {
                index,
                begin,
                length,
            } => put_triple(dst, id::REQUEST, *index, *begin, *length),
            Message::Piece { index, begin, data } => {
                dst.reserve(PIECE_HEADER_LEN + data.len());
                encode_piece_header(*index, *begin, frame_len(data.len()), dst);
                dst.put_slice(data);
            }
            Message::Cancel {
                index,
                begin,
                length,
            } => put_triple(dst, id::CANCEL, *index, *begin, *length),
            Message::Port(port) => {
                dst.reserve(LENGTH_PREFIX + 3);
                dst.put_u32(3);
                dst.put_u8(id::PORT);
                dst.put_u16(*port);
            }
            Message::Unknown { id, payload } => put_with_payload(dst, *id, payload),
        }
    }
}

fn put_bare(dst: &mut BytesMut, id: u8) {
    dst.reserve(LENGTH_PREFIX + 1);
    dst.put_u32(1);
    dst.put_u8(id);
}

fn put_index(dst: &mut BytesMut, id: u8, index: u32) {
    dst.reserve(LENGTH_PREFIX + 5);
    dst.put_u32(5);
    dst.put_u8(id);
    dst.put_u32(index);
}

fn put_triple(dst: &mut BytesMut, id: u8, a: u32, b: u32, c: u32) {
    dst.reserve(LENGTH_PREFIX + 13);
    dst.put_u32(13);
    dst.put_u8(id);
    dst.put_u32(a);
    dst.put_u32(b);
    dst.put_u32(c);
}

fn put_with_payload(dst: &mut BytesMut, id: u8, payload: &[u8]) {
    dst.reserve(LENGTH_PREFIX + 1 + payload.len());
    dst.put_u32(frame_len(payload.len() + 1));
    dst.put_u8(id);
    dst.put_slice(payload);
}

/// Append the 13-byte frame header of a `piece` message carrying `len` bytes of data.
pub fn encode_piece_header(index: u32, begin: u32, len: u32, dst: &mut BytesMut) {
    dst.reserve(PIECE_HEADER_LEN);
    // 9 = id + index + begin; a block near 4 GiB would wrap, and blocks are 16 KiB.
    dst.put_u32(
        len.checked_add(9)
            .expect("piece block near 4 GiB: caller bug"),
    );
    dst.put_u8(id::PIECE);
    dst.put_u32(index);
    dst.put_u32(begin);
}

/// Take one complete message off the front of `src`. `Ok(None)` means "need more bytes".
/// Frames longer than `max_len` are rejected before any allocation.
///
/// `max_len` bounds the length field, i.e. the id byte plus payload (a 16 KiB block arrives in
/// a frame of 16 393 bytes). On `Ok(None)` the buffer may have been grown to hold the rest of
/// the frame, never beyond `max_len` plus the prefix. On error the buffer's contents are left
/// as they were (every check runs before a byte is consumed); the connection must be dropped.
pub fn decode(src: &mut BytesMut, max_len: usize) -> Result<Option<Message>, WireError> {
    let Some(prefix) = src.get(..LENGTH_PREFIX) else {
        return Ok(None);
    };
    // The slice is exactly four bytes long.
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > max_len {
        return Err(WireError::TooLong { len, max: max_len });
    }
    let total = LENGTH_PREFIX + len;
    if src.len() < total {
        src.reserve(total - src.len());
        return Ok(None);
    }
    if len == 0 {
        src.advance(LENGTH_PREFIX);
        return Ok(Some(Message::KeepAlive));
    }
    let id = src[LENGTH_PREFIX];
    check_payload_len(id, len - 1)?;
    src.advance(LENGTH_PREFIX);
    let mut frame = src.split_to(len).freeze();
    frame.advance(1);
    Ok(Some(parse(id, frame)))
}

/// BEP 3 and BEP 6 payload sizes (after the id byte): exact for fixed messages, at least the
/// header for `piece`; any size for bitfields and ids we do not know.
fn check_payload_len(id: u8, len: usize) -> Result<(), WireError> {
    let ok = match id {
        id::CHOKE | id::UNCHOKE | id::INTERESTED | id::NOT_INTERESTED => len == 0,
        id::HAVE_ALL | id::HAVE_NONE => len == 0,
        id::HAVE | id::SUGGEST | id::ALLOWED_FAST => len == 4,
        id::REQUEST | id::CANCEL | id::REJECT_REQUEST => len == 12,
        id::PIECE => len >= 8,
        id::PORT => len == 2,
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        Err(WireError::BadPayloadLength { id, len })
    }
}

/// Interpret the payload of a message with id `id`, whose length [`check_payload_len`] passed
/// (so the fixed-size reads below cannot run short).
fn parse(id: u8, mut p: Bytes) -> Message {
    match id {
        id::CHOKE => Message::Choke,
        id::UNCHOKE => Message::Unchoke,
        id::INTERESTED => Message::Interested,
        id::NOT_INTERESTED => Message::NotInterested,
        id::HAVE => Message::Have(p.get_u32()),
        id::SUGGEST => Message::Suggest(p.get_u32()),
        id::ALLOWED_FAST => Message::AllowedFast(p.get_u32()),
        id::HAVE_ALL => Message::HaveAll,
        id::HAVE_NONE => Message::HaveNone,
        id::BITFIELD => Message::Bitfield(p),
        id::REQUEST | id::CANCEL | id::REJECT_REQUEST => {
            let (index, begin, length) = (p.get_u32(), p.get_u32(), p.get_u32());
            match id {
                id::REQUEST => Message::Request {
                    index,
                    begin,
                    length,
                },
                id::CANCEL => Message::Cancel {
                    index,
                    begin,
                    length,
                },
                _ => Message::RejectRequest {
                    index,
                    begin,
                    length,
                },
            }
        }
        id::PIECE => {
            let (index, begin) = (p.get_u32(), p.get_u32());
            Message::Piece {
                index,
                begin,
                data: p,
            }
        }
        id::PORT => Message::Port(p.get_u16()),
        _ => Message::Unknown { id, payload: p },
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const MAX: usize = 1 << 17;

    fn samples() -> Vec<Message> {
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have(0xdead_beef),
            Message::Bitfield(Bytes::from_static(&[0xff, 0x80])),
            Message::Bitfield(Bytes::new()),
            Message::Request {
                index: 1,
                begin: 16384,
                length: 16384,
            },
            Message::Piece {
                index: 7,
                begin: 32768,
                data: Bytes::from(vec![0xab; 16384]),
            },
            Message::Piece {
                index: 0,
                begin: 0,
                data: Bytes::new(),
            },
            Message::Cancel {
                index: 3,
                begin: 0,
                length: 100,
            },
            Message::Port(6881),
            Message::Suggest(12),
            Message::HaveAll,
            Message::HaveNone,
            Message::RejectRequest {
                index: 2,
                begin: 16384,
                length: 16384,
            },
            Message::AllowedFast(0x0102_0304),
            Message::Unknown {
                id: 20,
                payload: Bytes::from_static(b"d1:md6:ut_pexi1eee"),
            },
            Message::Unknown {
                id: 255,
                payload: Bytes::new(),
            },
        ]
    }

    fn encoded(m: &Message) -> BytesMut {
        let mut b = BytesMut::new();
        m.encode(&mut b);
        b
    }

    #[test]
    fn our_handshake_offers_the_extension_protocol_and_the_fast_extension() {
        let h = Handshake::new(InfoHash([7; 20]), PeerId([1; 20]));
        assert!(h.supports_extensions());
        assert!(h.supports_fast());
        let mut plain = h;
        plain.reserved = [0; 8];
        assert!(!plain.supports_extensions());
        assert!(!plain.supports_fast());
        // Each bit alone means only itself.
        let mut fast_only = plain;
        fast_only.reserved[7] = 0x04;
        assert!(fast_only.supports_fast() && !fast_only.supports_extensions());
        fast_only.reserved[7] = 0xfb;
        assert!(!fast_only.supports_fast());
    }

    #[test]
    fn handshake_round_trip_and_layout() {
        let h = Handshake::new(InfoHash([7; 20]), PeerId(*b"-ZT0100-abcdefghijkl"));
        let bytes = h.encode();
        assert_eq!(bytes[0], 19);
        assert_eq!(&bytes[1..20], b"BitTorrent protocol");
        assert_eq!(bytes[25], 0x10);
        assert_eq!(bytes[27], 0x04);
        assert_eq!(&bytes[20..28], &[0, 0, 0, 0, 0, 0x10, 0, 0x04]);
        assert_eq!(&bytes[28..48], &[7; 20]);
        assert_eq!(&bytes[48..], b"-ZT0100-abcdefghijkl");
        assert_eq!(Handshake::decode(&bytes), Ok(h));
    }

    #[test]
    fn handshake_rejects_other_protocols() {
        let good = Handshake::new(InfoHash([1; 20]), PeerId([2; 20])).encode();
        let mut bad = good;
        bad[0] = 18;
        assert_eq!(Handshake::decode(&bad), Err(WireError::BadHandshake));
        let mut bad = good;
        bad[1] = b'b';
        assert_eq!(Handshake::decode(&bad), Err(WireError::BadHandshake));
        // An HTTP request on the port is not a handshake either.
        let mut http = [0u8; HANDSHAKE_LEN];
        http[..16].copy_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(Handshake::decode(&http), Err(WireError::BadHandshake));
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            let mut b = encoded(&m);
            assert_eq!(decode(&mut b, MAX), Ok(Some(m.clone())), "{m:?}");
            assert!(b.is_empty(), "{m:?} left bytes");
        }
    }

    #[test]
    fn exact_encodings() {
        assert_eq!(&encoded(&Message::KeepAlive)[..], &[0, 0, 0, 0]);
        assert_eq!(&encoded(&Message::Interested)[..], &[0, 0, 0, 1, 2]);
        assert_eq!(
            &encoded(&Message::Have(258))[..],
            &[0, 0, 0, 5, 4, 0, 0, 1, 2]
        );
        assert_eq!(
            &encoded(&Message::Request {
                index: 1,
                begin: 2,
                length: 3
            })[..],
            &[0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
        );
        assert_eq!(
            &encoded(&Message::Port(0x1ae1))[..],
            &[0, 0, 0, 3, 9, 0x1a, 0xe1]
        );
        // BEP 6.
        assert_eq!(
            &encoded(&Message::Suggest(258))[..],
            &[0, 0, 0, 5, 0x0d, 0, 0, 1, 2]
        );
        assert_eq!(&encoded(&Message::HaveAll)[..], &[0, 0, 0, 1, 0x0e]);
        assert_eq!(&encoded(&Message::HaveNone)[..], &[0, 0, 0, 1, 0x0f]);
        assert_eq!(
            &encoded(&Message::RejectRequest {
                index: 1,
                begin: 2,
                length: 3
            })[..],
            &[0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
        );
        assert_eq!(
            &encoded(&Message::AllowedFast(7))[..],
            &[0, 0, 0, 5, 0x11, 0, 0, 0, 7]
        );
    }

    #[test]
    fn piece_header_matches_full_encoding() {
        let data = Bytes::from((0..=255u8).collect::<Vec<_>>());
        let full = encoded(&Message::Piece {
            index: 9,
            begin: 16384,
            data: data.clone(),
        });
        let mut split = BytesMut::new();
        encode_piece_header(9, 16384, data.len() as u32, &mut split);
        assert_eq!(split.len(), PIECE_HEADER_LEN);
        split.extend_from_slice(&data);
        assert_eq!(full, split);
    }

    #[test]
    fn piece_data_shares_the_receive_buffer() {
        let mut b = encoded(&Message::Piece {
            index: 1,
            begin: 0,
            data: Bytes::from(vec![5u8; 1000]),
        });
        let base = b.as_ptr() as usize;
        let Ok(Some(Message::Piece { data, .. })) = decode(&mut b, MAX) else {
            panic!("not a piece");
        };
        assert_eq!(data.as_ptr() as usize, base + PIECE_HEADER_LEN);
    }

    #[test]
    fn partial_input_at_every_split_point() {
        for m in samples() {
            let whole = encoded(&m);
            for cut in 0..whole.len() {
                let mut b = BytesMut::from(&whole[..cut]);
                assert_eq!(decode(&mut b, MAX), Ok(None), "{m:?} cut at {cut}");
                assert_eq!(
                    &b[..],
                    &whole[..cut],
                    "incomplete input must stay untouched"
                );
                b.extend_from_slice(&whole[cut..]);
                assert_eq!(
                    decode(&mut b, MAX),
                    Ok(Some(m.clone())),
                    "{m:?} cut at {cut}"
                );
                assert!(b.is_empty());
            }
        }
    }

    #[test]
    fn oversize_length_rejected_without_allocation() {
        let mut b = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 7][..]);
        let cap = b.capacity();
        assert_eq!(
            decode(&mut b, MAX),
            Err(WireError::TooLong {
                len: u32::MAX as usize,
                max: MAX
            })
        );
        assert_eq!(b.capacity(), cap);
        assert_eq!(&b[..], &[0xff, 0xff, 0xff, 0xff, 7]);
        // Exactly at the limit is fine (and waits for the rest); one over is not.
        let mut b = BytesMut::new();
        b.put_u32(MAX as u32);
        assert_eq!(decode(&mut b, MAX), Ok(None));
        assert!(b.capacity() <= MAX + LENGTH_PREFIX + 64);
        let mut b = BytesMut::new();
        b.put_u32(MAX as u32 + 1);
        assert!(matches!(
            decode(&mut b, MAX),
            Err(WireError::TooLong { .. })
        ));
    }

    #[test]
    fn bad_payload_lengths_rejected() {
        let cases: &[(u8, usize)] = &[
            (0, 1),
            (1, 4),
            (2, 1),
            (3, 2),
            (4, 3),
            (4, 5),
            (6, 11),
            (6, 13),
            (7, 0),
            (7, 7),
            (8, 12 + 4),
            (9, 1),
            (9, 3),
            (0x0d, 3),
            (0x0d, 5),
            (0x0e, 1),
            (0x0f, 4),
            (0x10, 11),
            (0x10, 13),
            (0x11, 0),
            (0x11, 8),
        ];
        for &(id, len) in cases {
            let mut b = BytesMut::new();
            b.put_u32(len as u32 + 1);
            b.put_u8(id);
            b.put_bytes(0, len);
            // A good message behind it must not be reached either.
            Message::Have(1).encode(&mut b);
            let before = b.clone();
            assert_eq!(
                decode(&mut b, MAX),
                Err(WireError::BadPayloadLength { id, len }),
                "id {id} len {len}"
            );
            assert_eq!(
                b, before,
                "id {id} len {len}: the buffer must stay untouched"
            );
        }
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut b = BytesMut::new();
        let msgs = samples();
        for m in &msgs {
            m.encode(&mut b);
        }
        // Plus the first half of one more.
        let tail = encoded(&Message::Have(1));
        b.extend_from_slice(&tail[..3]);
        for m in &msgs {
            assert_eq!(decode(&mut b, MAX).as_ref(), Ok(&Some(m.clone())));
        }
        assert_eq!(decode(&mut b, MAX), Ok(None));
        b.extend_from_slice(&tail[3..]);
        assert_eq!(decode(&mut b, MAX), Ok(Some(Message::Have(1))));
        assert_eq!(decode(&mut b, MAX), Ok(None));
    }

    /// Random bytes, and valid streams with random corruption, never panic the decoder, never
    /// consume bytes without producing a message, and never grow the buffer past the cap.
    #[test]
    fn decode_never_panics_on_random_input() {
        let mut rng = StdRng::seed_from_u64(0x5eed);
        let valid: Vec<BytesMut> = samples().iter().map(encoded).collect();
        // Messages, "need more" and errors: every outcome must actually be exercised.
        let mut seen = [0usize; 3];
        for round in 0..20_000 {
            let max = rng.gen_range(0..64usize);
            let mut input: Vec<u8> = if round % 2 == 0 {
                let n = rng.gen_range(0..80);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                let mut v = Vec::new();
                for _ in 0..rng.gen_range(1..4) {
                    let m = &valid[rng.gen_range(0..valid.len())];
                    v.extend_from_slice(&m[..m.len().min(40)]);
                }
                for _ in 0..rng.gen_range(0..3) {
                    let i = rng.gen_range(0..v.len());
                    v[i] = rng.gen();
                }
                v
            };
            // Small length fields so frames often complete.
            if round % 3 == 0 && input.len() >= 4 {
                input[..3].fill(0);
            }
            let mut b = BytesMut::from(&input[..]);
            loop {
                let before = b.len();
                match decode(&mut b, max) {
                    Ok(Some(_)) => {
                        seen[0] += 1;
                        assert!(b.len() < before);
                    }
                    Ok(None) => {
                        seen[1] += 1;
                        assert_eq!(b.len(), before);
                        // Growth is bounded by the frame cap (Vec may round up to double).
                        assert!(b.capacity() <= 2 * (max + LENGTH_PREFIX).max(before) + 64);
                        break;
                    }
                    Err(_) => {
                        seen[2] += 1;
                        assert_eq!(b.len(), before, "an error must not consume bytes");
                        break;
                    }
                }
            }
        }
        assert!(seen.iter().all(|&n| n > 1000), "outcomes {seen:?}");
    }
}
