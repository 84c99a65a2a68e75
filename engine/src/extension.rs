//! The BEP 10 extension protocol's handshake and id registry, sans-IO.
//!
//! Owns the extended handshake (message 20, extension id 0) in both directions: [`ExtendedHandshake::encode`]
//! writes ours and [`ExtendedHandshake::parse`] reads a peer's, and the small registry that maps
//! extension names to ids. BEP 10 lets each side pick the ids *it receives on*: we announce ours
//! in `m` (the constants in [`Extension::local_id`]) and must send each message with the id the
//! *peer* announced ([`ExtensionIds`], kept per peer). An incoming extension message therefore
//! carries one of our ids ([`Extension::from_local_id`]).
//!
//! A peer's handshake is untrusted: it goes through the bounded bencode scanner, and parsing is
//! tolerant as BEP 10 asks (unknown keys and wrong-typed optional keys are ignored, an id of 0
//! means "disabled"); only a payload that is not a dictionary is refused. The client name `v` is
//! sanitised for display. Nothing here reads a clock or a socket.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bytes::{BufMut, Bytes, BytesMut};
use serde_bencode::value::Value;

use crate::bencode::{self, Limits};
use crate::wire::{Message, EXTENDED};

/// Longest client name (`v`) kept, in characters; longer ones are cut.
pub const MAX_CLIENT_LEN: usize = 64;

/// Largest `reqq` taken from a peer; larger claims are clamped (our pipeline is shorter anyway).
const MAX_REQQ: u32 = 65_535;

/// Largest handshake dictionary read. libtorrent's is about 200 bytes; 16 KiB is the block size
/// every peer's frame cap admits anyway, and leaves room for clients that list many extensions.
pub const MAX_HANDSHAKE_LEN: usize = 16 * 1024;

/// Most bencode values in a handshake: each costs a tree node when decoded.
const MAX_ITEMS: usize = 512;

/// BEP 10: the extension id of the handshake itself.
pub const HANDSHAKE_ID: u8 = 0;

/// The extensions we speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Extension {
    /// BEP 9 metadata exchange.
    Metadata,
    /// BEP 11 peer exchange.
    Pex,
}

impl Extension {
    /// Every extension we speak.
    pub const ALL: [Extension; 2] = [Extension::Metadata, Extension::Pex];

    /// The name in the handshake's `m` dictionary (BEP 9, BEP 11).
    pub const fn name(self) -> &'static str {
        match self {
            Extension::Metadata => "ut_metadata",
            Extension::Pex => "ut_pex",
        }
    }

    /// The id *we* receive this extension's messages on. Our choice (BEP 10 leaves it to each
    /// side); these match libtorrent's habit of small fixed ids, and never 0 (the handshake).
    pub const fn local_id(self) -> u8 {
        match self {
            Extension::Metadata => 1,
            Extension::Pex => 2,
        }
    }

    /// Which of our extensions an incoming extension message is for, by its id byte.
    /// `None` for the handshake (0) and for ids we never announced.
    pub fn from_local_id(id: u8) -> Option<Extension> {
        Extension::ALL.into_iter().find(|e| e.local_id() == id)
    }
}

/// Ids for our extensions as one side announced them in `m`: `None` = not supported or
/// disabled (id 0). For a peer, these are the ids to *send* its messages with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtensionIds {
    /// `ut_metadata`.
    pub ut_metadata: Option<u8>,
    /// `ut_pex`.
    pub ut_pex: Option<u8>,
}

impl ExtensionIds {
    /// Our own ids for every extension we speak (what we announce in `m`).
    pub fn ours() -> Self {
        ExtensionIds {
            ut_metadata: Some(Extension::Metadata.local_id()),
            ut_pex: Some(Extension::Pex.local_id()),
        }
    }

    /// The id announced for `ext`, if it is enabled.
    pub fn get(&self, ext: Extension) -> Option<u8> {
        match ext {
            Extension::Metadata => self.ut_metadata,
            Extension::Pex => self.ut_pex,
        }
    }

    fn set(&mut self, ext: Extension, id: Option<u8>) {
        match ext {
            Extension::Metadata => self.ut_metadata = id,
            Extension::Pex => self.ut_pex = id,
        }
    }
}

/// The BEP 10 extended handshake: what we use of it, in both directions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtendedHandshake {
    /// `m`: extension ids (ours when we send, the peer's when we parse theirs).
    pub ids: ExtensionIds,
    /// `metadata_size` (BEP 9): the size of the info dictionary, if the sender has it.
    /// Parsed as given (saturated to `u32::MAX`); the metadata fetcher checks it against its cap.
    pub metadata_size: Option<u32>,
    /// `reqq`: requests the sender queues, clamped to 1..=65535.
    pub reqq: Option<u32>,
    /// `p`: the sender's listen port (1..=65535).
    pub port: Option<u16>,
    /// `v`: the client name, control characters removed, at most [`MAX_CLIENT_LEN`] characters.
    pub client: Option<String>,
    /// `yourip`: the address the sender sees us at.
    pub yourip: Option<IpAddr>,
}

/// A peer's extended handshake we cannot read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExtensionError {
    /// The payload of an extension message is empty (no extension id byte).
    #[error("empty extension message")]
    Empty,
    /// The handshake is longer than [`MAX_HANDSHAKE_LEN`].
    #[error("extended handshake of {len} bytes exceeds the {max} byte limit")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The handshake is not well-formed bencode within the limits.
    #[error("bad extended handshake: {0}")]
    Bencode(#[from] bencode::BencodeError),
    /// The handshake holds more bencode values than we decode.
    #[error("extended handshake has {items} values, more than {max}")]
    TooManyItems {
        /// Values found.
        items: usize,
        /// The limit.
        max: usize,
    },
    /// Well-formed bencode, but not a dictionary.
    #[error("bad extended handshake: not a dictionary")]
    NotADictionary,
}

impl ExtendedHandshake {
    /// The bencoded dictionary (without the extension id byte). Keys are written in sorted
    /// order; absent fields are left out. `ids` lists only enabled extensions.
    pub fn encode(&self) -> Bytes {
        let mut m = std::collections::HashMap::new();
        for ext in Extension::ALL {
            if let Some(id) = self.ids.get(ext) {
                m.insert(ext.name().as_bytes().to_vec(), Value::Int(i64::from(id)));
            }
        }
        let mut d = std::collections::HashMap::new();
        d.insert(b"m".to_vec(), Value::Dict(m));
        if let Some(n) = self.metadata_size {
            d.insert(b"metadata_size".to_vec(), Value::Int(i64::from(n)));
        }
        if let Some(n) = self.reqq {
            d.insert(b"reqq".to_vec(), Value::Int(i64::from(n)));
        }
        if let Some(p) = self.port {
            d.insert(b"p".to_vec(), Value::Int(i64::from(p)));
        }
        if let Some(v) = &self.client {
            d.insert(b"v".to_vec(), Value::Bytes(v.as_bytes().to_vec()));
        }
        if let Some(ip) = self.yourip {
            let raw = match ip {
                IpAddr::V4(v4) => v4.octets().to_vec(),
                IpAddr::V6(v6) => v6.octets().to_vec(),
            };
            d.insert(b"yourip".to_vec(), Value::Bytes(raw));
        }
        // serde_bencode writes dictionary keys sorted, as BEP 3 asks; a `Value` of byte strings,
        // integers and dictionaries always serialises.
        let dict = serde_bencode::to_bytes(&Value::Dict(d)).expect("a bencode Value serialises");
        Bytes::from(dict)
    }

    /// The whole BEP 10 message: id 20, extension id 0, then [`ExtendedHandshake::encode`].
    pub fn to_message(&self) -> Message {
        message(HANDSHAKE_ID, &self.encode())
    }

    /// Our handshake: every extension we speak under our ids, `metadata_size` once we have the
    /// metadata, how many requests we queue, our listen port and name.
    pub fn ours(metadata_size: Option<u32>, reqq: u32, port: Option<u16>, client: &str) -> Self {
        ExtendedHandshake {
            ids: ExtensionIds::ours(),
            metadata_size,
            reqq: Some(reqq),
            port,
            client: Some(client.to_string()),
            yourip: None,
        }
    }

    /// Read a peer's handshake dictionary (the payload after the extension id byte 0).
    /// Unknown keys and optional keys of the wrong type are ignored; a non-dictionary, broken
    /// or oversized bencode is an error that ends the connection.
    pub fn parse(dict: &[u8]) -> Result<Self, ExtensionError> {
        if dict.len() > MAX_HANDSHAKE_LEN {
            return Err(ExtensionError::TooLong {
                len: dict.len(),
                max: MAX_HANDSHAKE_LEN,
            });
        }
        let limits = Limits {
            max_depth: 8,
            max_size: MAX_HANDSHAKE_LEN,
        };
        let scanned = bencode::scan(dict, limits)?;
        if scanned.items > MAX_ITEMS {
            return Err(ExtensionError::TooManyItems {
                items: scanned.items,
                max: MAX_ITEMS,
            });
        }
        let value: Value = serde_bencode::from_bytes(dict)
            .map_err(|e| bencode::BencodeError::Shape(e.to_string()))?;
        let Value::Dict(fields) = value else {
            return Err(ExtensionError::NotADictionary);
        };
        let int = |key: &[u8]| match fields.get(key) {
            Some(Value::Int(n)) => Some(*n),
            _ => None,
        };
        let mut ids = ExtensionIds::default();
        if let Some(Value::Dict(m)) = fields.get(&b"m"[..]) {
            for ext in Extension::ALL {
                if let Some(Value::Int(id)) = m.get(ext.name().as_bytes()) {
                    // BEP 10: 0 disables; ids are one byte, anything else is unusable.
                    ids.set(ext, u8::try_from(*id).ok().filter(|&id| id != 0));
                }
            }
        }
        let client = match fields.get(&b"v"[..]) {
            Some(Value::Bytes(v)) => clean_client(v),
            _ => None,
        };
        let yourip = match fields.get(&b"yourip"[..]) {
            Some(Value::Bytes(b)) => ip_from_bytes(b),
            _ => None,
        };
        Ok(ExtendedHandshake {
            ids,
            metadata_size: int(b"metadata_size")
                .filter(|&n| n >= 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            reqq: int(b"reqq")
                .filter(|&n| n > 0)
                .map(|n| n.min(i64::from(MAX_REQQ)) as u32),
            port: int(b"p")
                .and_then(|p| u16::try_from(p).ok())
                .filter(|&p| p != 0),
            client,
            yourip,
        })
    }

    /// Read the payload of an [`EXTENDED`] message if it is a handshake: `Ok(None)` for any
    /// other extension id (the caller dispatches those with [`Extension::from_local_id`]).
    pub fn parse_payload(payload: &[u8]) -> Result<Option<Self>, ExtensionError> {
        let Some((&ext_id, dict)) = payload.split_first() else {
            return Err(ExtensionError::Empty);
        };
        if ext_id != HANDSHAKE_ID {
            return Ok(None);
        }
        Self::parse(dict).map(Some)
    }
}

/// An extension message for the wire: id 20, then `id` (the *peer's* id for the extension, from
/// its [`ExtensionIds`]; 0 for the handshake), then `payload`.
pub fn message(id: u8, payload: &[u8]) -> Message {
    let mut p = BytesMut::with_capacity(1 + payload.len());
    p.put_u8(id);
    p.put_slice(payload);
    Message::Unknown {
        id: EXTENDED,
        payload: p.freeze(),
    }
}

/// Lossy UTF-8, no control characters, at most [`MAX_CLIENT_LEN`] characters; `None` if
/// nothing is left.
fn clean_client(raw: &[u8]) -> Option<String> {
    // A name longer than this many bytes is cut anyway; do not decode a 16 KiB one.
    let raw = &raw[..raw.len().min(MAX_CLIENT_LEN * 4)];
    let text: String = String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_CLIENT_LEN)
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// BEP 10 `yourip`: 4 bytes (IPv4) or 16 (IPv6), in network order.
fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    if let Ok(v4) = <[u8; 4]>::try_from(b) {
        Some(IpAddr::V4(Ipv4Addr::from(v4)))
    } else if let Ok(v6) = <[u8; 16]>::try_from(b) {
        Some(IpAddr::V6(Ipv6Addr::from(v6)))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_handshake_bytes() {
        let ours = ExtendedHandshake::ours(Some(31_235), 500, Some(6881), "ZigTorrent 0.1.0");
        assert_eq!(
            &ours.encode()[..],
            &b"d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v16:ZigTorrent 0.1.0e"[..]
        );
        // Without metadata, port or any extension: only what is known.
        let bare = ExtendedHandshake {
            reqq: Some(250),
            ..Default::default()
        };
        assert_eq!(&bare.encode()[..], b"d1:mde4:reqqi250ee");
        // Through the wire codec like any message, and back.
        let msg = ours.to_message();
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        let Ok(Some(Message::Unknown { id, payload })) = crate::wire::decode(&mut buf, 1 << 14)
        else {
            panic!("not an extension message");
        };
        assert_eq!(id, EXTENDED);
        assert_eq!(
            ExtendedHandshake::parse_payload(&payload),
            Ok(Some(ours.clone()))
        );
    }

    #[test]
    fn libtorrent_and_qbittorrent_handshakes() {
        let qbt = b"d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e4:reqqi500e1:v13:qBittorrent/46:yourip4:\x7f\x00\x00\x01e";
        // `v13:qBittorrent/4` then `6:yourip`: the name is 13 bytes.
        let h = ExtendedHandshake::parse(qbt).unwrap();
        assert_eq!(
            h,
            ExtendedHandshake {
                ids: ExtensionIds {
                    ut_metadata: Some(2),
                    ut_pex: Some(1)
                },
                metadata_size: Some(31_235),
                reqq: Some(500),
                port: Some(6881),
                client: Some("qBittorrent/4".into()),
                yourip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            }
        );
        // libtorrent 2.0 (python3-libtorrent): more extensions, other keys, IPv6 yourip.
        let mut lt = b"d12:complete_agoi-1e1:md11:lt_donthavei7e10:share_modei8e11:upload_onlyi3e12:ut_holepunchi4e11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei1052e1:pi51413e4:reqqi500e11:upload_onlyi0e1:v17:libtorrent/2.0.106:yourip16:".to_vec();
        lt.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        lt.push(b'e');
        let h = ExtendedHandshake::parse(&lt).unwrap();
        assert_eq!(h.ids.get(Extension::Metadata), Some(2));
        assert_eq!(h.ids.get(Extension::Pex), Some(1));
        assert_eq!(h.metadata_size, Some(1052));
        assert_eq!(h.port, Some(51413));
        assert_eq!(h.client.as_deref(), Some("libtorrent/2.0.10"));
        assert_eq!(h.yourip, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        // Transmission before it has the metadata: no metadata_size, pex disabled with 0.
        let tr = b"d1:ei1e1:md11:ut_metadatai3e6:ut_pexi0ee1:pi51413e4:reqqi512e1:v18:Transmission 4.0.5e";
        let h = ExtendedHandshake::parse(tr).unwrap();
        assert_eq!(h.ids.ut_metadata, Some(3));
        assert_eq!(h.ids.ut_pex, None);
        assert_eq!(h.metadata_size, None);
    }

    /// Captured from python3-libtorrent 2.0.8 seeding on loopback
    /// (`engine/testdata/capture_libtorrent.py`).
    #[test]
    fn captured_libtorrent_handshake() {
        let dict = include_bytes!("../testdata/libtorrent-handshake.bin");
        let h = ExtendedHandshake::parse(dict).unwrap();
        assert_eq!(
            h,
            ExtendedHandshake {
                ids: ExtensionIds {
                    ut_metadata: Some(2),
                    ut_pex: Some(1)
                },
                metadata_size: Some(18_096),
                reqq: Some(2000),
                port: None,
                client: Some("libtorrent/2.0.8.0".into()),
                yourip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            }
        );
        // The capture script sent exactly our handshake (as a magnet leecher without the
        // metadata would) and our requests, and libtorrent answered them.
        let ours = ExtendedHandshake::ours(None, 500, None, "capture");
        assert_eq!(
            &ours.encode()[..],
            b"d1:md11:ut_metadatai1e6:ut_pexi2ee4:reqqi500e1:v7:capturee"
        );
    }

    #[test]
    fn wrong_types_and_values_are_ignored() {
        let odd = b"d1:ml6:ut_pexe13:metadata_size3:abc1:pi0e4:reqq2:xx1:vi5e6:yourip3:abce";
        assert_eq!(
            ExtendedHandshake::parse(odd),
            Ok(ExtendedHandshake::default())
        );
        let ranges = b"d1:md11:ut_metadatai256e6:ut_pexi-1ee13:metadata_sizei99999999999e1:pi65536e4:reqqi99999999ee";
        let h = ExtendedHandshake::parse(ranges).unwrap();
        assert_eq!(h.ids, ExtensionIds::default());
        assert_eq!(h.metadata_size, Some(u32::MAX));
        assert_eq!(h.port, None);
        assert_eq!(h.reqq, Some(65_535));
        let neg = b"d13:metadata_sizei-1e1:pi-1e4:reqqi0ee";
        assert_eq!(
            ExtendedHandshake::parse(neg),
            Ok(ExtendedHandshake::default())
        );
        assert_eq!(
            ExtendedHandshake::parse(b"d13:metadata_sizei0ee")
                .unwrap()
                .metadata_size,
            Some(0)
        );
        // Non-UTF-8 keys anywhere.
        let keys = b"d2:\xff\xfei1e1:md2:\xc3\x28i9e6:ut_pexi5eee";
        assert_eq!(ExtendedHandshake::parse(keys).unwrap().ids.ut_pex, Some(5));
    }

    #[test]
    fn client_names_are_made_safe() {
        let h = ExtendedHandshake::parse(b"d1:v16:\x1b[31mred\x07\xff\nname!e").unwrap();
        assert_eq!(h.client.as_deref(), Some("[31mred\u{fffd}name!"));
        let long = format!("d1:v200:{}e", "é".repeat(100));
        let h = ExtendedHandshake::parse(long.as_bytes()).unwrap();
        assert_eq!(h.client.unwrap().chars().count(), MAX_CLIENT_LEN);
        let blank = ExtendedHandshake::parse(b"d1:v3:\x01\x02 e").unwrap();
        assert_eq!(blank.client, None);
    }

    #[test]
    fn malformed_handshakes_are_errors() {
        for bad in [&b""[..], b"li1ee", b"i5e", b"4:reqq", b"d1:m", b"d1:md"] {
            assert!(ExtendedHandshake::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            ExtendedHandshake::parse(b"le"),
            Err(ExtensionError::NotADictionary)
        );
        let deep = [&b"d1:x"[..], &[b'l'; 20], &[b'e'; 20], b"e"].concat();
        assert!(matches!(
            ExtendedHandshake::parse(&deep),
            Err(ExtensionError::Bencode(
                bencode::BencodeError::TooDeep { .. }
            ))
        ));
        let mut big = b"d1:x".to_vec();
        big.extend_from_slice(format!("{}:", MAX_HANDSHAKE_LEN).as_bytes());
        big.resize(big.len() + MAX_HANDSHAKE_LEN, b'a');
        big.push(b'e');
        assert!(matches!(
            ExtendedHandshake::parse(&big),
            Err(ExtensionError::TooLong { .. })
        ));
        let many = format!("d1:xl{}ee", "i1e".repeat(600));
        assert!(matches!(
            ExtendedHandshake::parse(many.as_bytes()),
            Err(ExtensionError::TooManyItems { .. })
        ));
        assert_eq!(
            ExtendedHandshake::parse_payload(b""),
            Err(ExtensionError::Empty)
        );
        assert_eq!(ExtendedHandshake::parse_payload(b"\x02d1:ai1ee"), Ok(None));
    }

    #[test]
    fn registry() {
        assert_eq!(Extension::from_local_id(0), None);
        assert_eq!(Extension::from_local_id(1), Some(Extension::Metadata));
        assert_eq!(Extension::from_local_id(2), Some(Extension::Pex));
        assert_eq!(Extension::from_local_id(3), None);
        for ext in Extension::ALL {
            assert_ne!(ext.local_id(), HANDSHAKE_ID);
            assert_eq!(ExtensionIds::ours().get(ext), Some(ext.local_id()));
        }
        // Messages to a peer carry its id.
        let Message::Unknown { id, payload } = message(7, b"d8:msg_typei0e5:piecei0ee") else {
            panic!("an extension message");
        };
        assert_eq!(id, EXTENDED);
        assert_eq!(&payload[..], b"\x07d8:msg_typei0e5:piecei0ee");
        // What a peer announced is what we send with, not our own ids.
        let theirs = ExtendedHandshake::parse(b"d1:md11:ut_metadatai7eee").unwrap();
        assert_eq!(theirs.ids.get(Extension::Metadata), Some(7));
        assert_eq!(theirs.ids.get(Extension::Pex), None);
    }

    #[test]
    fn parse_of_encode_is_identity() {
        let all = ExtendedHandshake {
            ids: ExtensionIds {
                ut_metadata: Some(200),
                ut_pex: None,
            },
            metadata_size: Some(0),
            reqq: Some(1),
            port: Some(65_535),
            client: Some("x y".into()),
            yourip: Some(IpAddr::V6("2001:db8::7".parse().unwrap())),
        };
        assert_eq!(ExtendedHandshake::parse(&all.encode()), Ok(all));
    }
}
