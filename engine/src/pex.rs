//! BEP 11 peer exchange (`ut_pex`), sans-IO: the message codec with bounded intake, and
//! [`PexState`], which decides what to tell one peer and when.
//!
//! Owns only the message format and the per-peer "what have we told them" set. It never reads a
//! clock (time comes in as `now`) or a socket, and it does not decide whom to dial: decoded
//! addresses go to the torrent's address book, which applies its own caps and bans.
//!
//! Untrusted input: a message is capped in size before decoding, goes through the bounded
//! bencode scanner, and at most [`MAX_PER_MESSAGE`] added and [`MAX_PER_MESSAGE`] dropped
//! addresses per family are kept (the rest are ignored, not an error); port 0 and unspecified
//! addresses are skipped. A compact list whose length is not a multiple of 6 (IPv4) or 18 (IPv6)
//! is an error. What we send follows BEP 11: at most one message a minute per peer, and only the
//! changes since the last one, at most 50 added and 50 dropped (libtorrent's limit).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_bencode::value::Value;

use crate::bencode::{self, Limits};

/// Most added (and, separately, dropped) peers in one message: libtorrent sends at most 50 of
/// each and drops the rest; we keep as many per address family from a peer.
pub const MAX_PER_MESSAGE: usize = 50;

/// BEP 11: "peer exchange messages should be sent no more than once a minute".
pub const PEX_INTERVAL: Duration = Duration::from_secs(60);

/// Largest PEX message read. 50 + 50 IPv6 entries with flags are under 2 KiB; 64 KiB admits
/// clients that send hundreds (we keep 50 of them) without decoding megabytes.
pub const MAX_MESSAGE_LEN: usize = 64 * 1024;

/// Most bencode values in a message: the six keys and their values, and slack for extra keys.
const MAX_ITEMS: usize = 64;

/// BEP 11 per-peer flags (`added.f`, `added6.f`), one byte per added peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PexFlags(pub u8);

impl PexFlags {
    /// 0x01: prefers encryption.
    pub const ENCRYPTION: PexFlags = PexFlags(0x01);
    /// 0x02: is a seed (or upload-only).
    pub const SEED: PexFlags = PexFlags(0x02);
    /// 0x04: supports uTP.
    pub const UTP: PexFlags = PexFlags(0x04);
    /// 0x08: supports the holepunch extension (BEP 55).
    pub const HOLEPUNCH: PexFlags = PexFlags(0x08);
    /// 0x10: reachable (we connected to it, so it accepts incoming connections).
    pub const REACHABLE: PexFlags = PexFlags(0x10);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: PexFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for PexFlags {
    type Output = PexFlags;

    fn bitor(self, rhs: PexFlags) -> PexFlags {
        PexFlags(self.0 | rhs.0)
    }
}

/// One `ut_pex` message: peers the sender connected to and dropped since its last message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PexMessage {
    /// New peers with their flags (IPv4 and IPv6 together).
    pub added: Vec<(SocketAddr, PexFlags)>,
    /// Peers the sender is no longer connected to.
    pub dropped: Vec<SocketAddr>,
}

/// A `ut_pex` message we cannot read: the peer is dropped.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PexError {
    /// Longer than [`MAX_MESSAGE_LEN`].
    #[error("ut_pex message of {len} bytes exceeds the {max} byte limit")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not well-formed bencode within the limits.
    #[error("bad ut_pex message: {0}")]
    Bencode(#[from] bencode::BencodeError),
    /// More bencode values than a PEX message has.
    #[error("ut_pex message has {items} values, more than {max}")]
    TooManyItems {
        /// Values found.
        items: usize,
        /// The limit.
        max: usize,
    },
    /// Well-formed, but not a dictionary.
    #[error("bad ut_pex message: not a dictionary")]
    NotADictionary,
    /// A compact list's length is not a multiple of its entry size.
    #[error("bad ut_pex message: `{key}` is {len} bytes, not a multiple of {entry}")]
    BadLength {
        /// The key (`added`, `dropped6`, …).
        key: &'static str,
        /// Its length.
        len: usize,
        /// 6 for IPv4, 18 for IPv6.
        entry: usize,
    },
}

impl PexMessage {
    /// The bencoded dictionary (the payload after the extension id byte), with all six keys as
    /// libtorrent writes them. The caller keeps each list within [`MAX_PER_MESSAGE`].
    pub fn encode(&self) -> Bytes {
        let mut added = [Vec::new(), Vec::new()];
        let mut flags = [Vec::new(), Vec::new()];
        let mut dropped = [Vec::new(), Vec::new()];
        for (addr, f) in &self.added {
            let family = usize::from(addr.is_ipv6());
            put_compact(&mut added[family], addr);
            flags[family].push(f.0);
        }
        for addr in &self.dropped {
            put_compact(&mut dropped[usize::from(addr.is_ipv6())], addr);
        }
        let [a4, a6] = added;
        let [f4, f6] = flags;
        let [d4, d6] = dropped;
        let mut d = std::collections::HashMap::new();
        for (key, value) in [
            ("added", a4),
            ("added.f", f4),
            ("added6", a6),
            ("added6.f", f6),
            ("dropped", d4),
            ("dropped6", d6),
        ] {
            d.insert(key.as_bytes().to_vec(), Value::Bytes(value));
        }
        // serde_bencode sorts the keys; a dictionary of byte strings always serialises.
        Bytes::from(serde_bencode::to_bytes(&Value::Dict(d)).expect("a bencode Value serialises"))
    }

    /// Read a peer's message (the payload after the extension id byte). Keeps at most
    /// [`MAX_PER_MESSAGE`] added and dropped peers per family, skips port 0, unspecified
    /// addresses and repeats; missing flags are 0. Missing keys and keys of the wrong type are
    /// ignored (BEP 11 clients differ in what they send).
    pub fn decode(dict: &[u8]) -> Result<PexMessage, PexError> {
        if dict.len() > MAX_MESSAGE_LEN {
            return Err(PexError::TooLong {
                len: dict.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let limits = Limits {
            max_depth: 4,
            max_size: MAX_MESSAGE_LEN,
        };
        let scanned = bencode::scan(dict, limits)?;
        if scanned.items > MAX_ITEMS {
            return Err(PexError::TooManyItems {
                items: scanned.items,
                max: MAX_ITEMS,
            });
        }
        let value: Value = serde_bencode::from_bytes(dict)
            .map_err(|e| bencode::BencodeError::Shape(e.to_string()))?;
        let Value::Dict(fields) = value else {
            return Err(PexError::NotADictionary);
        };
        let bytes = |key: &str| match fields.get(key.as_bytes()) {
            Some(Value::Bytes(b)) => &b[..],
            _ => &[],
        };
        let mut msg = PexMessage::default();
        for (key, flags_key, entry) in [("added", "added.f", 6), ("added6", "added6.f", 18)] {
            let flags = bytes(flags_key);
            for (i, addr) in compact(key, bytes(key), entry)? {
                let f = PexFlags(flags.get(i).copied().unwrap_or(0));
                if !msg.added.iter().any(|(a, _)| *a == addr) {
                    msg.added.push((addr, f));
                }
            }
        }
        for (key, entry) in [("dropped", 6), ("dropped6", 18)] {
            for (_, addr) in compact(key, bytes(key), entry)? {
                if !msg.dropped.contains(&addr) {
                    msg.dropped.push(addr);
                }
            }
        }
        Ok(msg)
    }
}

/// The usable addresses among the first [`MAX_PER_MESSAGE`] entries of a compact list
/// (6 bytes for IPv4, 18 for IPv6: address, then port, big-endian), each with its index in
/// the list (the index of its byte in `added.f`).
fn compact(
    key: &'static str,
    raw: &[u8],
    entry: usize,
) -> Result<Vec<(usize, SocketAddr)>, PexError> {
    if !raw.len().is_multiple_of(entry) {
        return Err(PexError::BadLength {
            key,
            len: raw.len(),
            entry,
        });
    }
    let mut out = Vec::new();
    for (i, e) in raw.chunks_exact(entry).take(MAX_PER_MESSAGE).enumerate() {
        let (ip, port) = e.split_at(entry - 2);
        let port = u16::from_be_bytes([port[0], port[1]]);
        let ip = match <[u8; 4]>::try_from(ip) {
            Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(ip) {
                Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
                Err(_) => continue,
            },
        };
        if port != 0 && !ip.is_unspecified() {
            out.push((i, SocketAddr::new(ip, port)));
        }
    }
    Ok(out)
}

fn put_compact(out: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(v4) => out.extend_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out.extend_from_slice(&v6.octets()),
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// What we told one peer through PEX, and when: decides our next message to it.
///
/// The first [`PexState::poll`] after the handshake sends the peers we are connected to; later
/// polls send what changed since, at most once per [`PEX_INTERVAL`] and at most
/// [`MAX_PER_MESSAGE`] added and dropped each (the rest waits for the next minute). A peer
/// whose flags change while it stays connected is not announced again.
/// Memory is bounded by the caller's connected set, which is what `told` mirrors.
#[derive(Clone, Debug, Default)]
pub struct PexState {
    /// Peers the other side has learned from us (and not seen dropped).
    told: BTreeMap<SocketAddr, PexFlags>,
    last_sent: Option<Instant>,
}

impl PexState {
    /// A peer that has just completed the extended handshake.
    pub fn new() -> Self {
        Self::default()
    }

    /// The message to send now, if one is due and anything changed. `current` is the set of
    /// peers we are connected to, with their flags, *without* the peer this state is for (and
    /// without peers that must not be shared, e.g. on a private torrent, where PEX is off).
    pub fn poll(&mut self, now: Instant, current: &[(SocketAddr, PexFlags)]) -> Option<PexMessage> {
        if let Some(last) = self.last_sent {
            if now.saturating_duration_since(last) < PEX_INTERVAL {
                return None;
            }
        }
        let mut added = Vec::new();
        for &(addr, flags) in current {
            if added.len() == MAX_PER_MESSAGE {
                break;
            }
            if !self.told.contains_key(&addr) && !added.iter().any(|(a, _)| *a == addr) {
                added.push((addr, flags));
            }
        }
        let connected: HashSet<SocketAddr> = current.iter().map(|(a, _)| *a).collect();
        let dropped: Vec<SocketAddr> = self
            .told
            .keys()
            .filter(|a| !connected.contains(*a))
            .take(MAX_PER_MESSAGE)
            .copied()
            .collect();
        if added.is_empty() && dropped.is_empty() {
            return None;
        }
        for a in &dropped {
            self.told.remove(a);
        }
        self.told.extend(added.iter().copied());
        self.last_sent = Some(now);
        Some(PexMessage { added, dropped })
    }
}

/// Intake side of BEP 11's once-a-minute rule: whether to read a peer's PEX message now.
/// A few seconds of slack are allowed for the sender's timer; messages arriving faster are
/// ignored (not an error), so a flooding peer costs one decode a minute.
#[derive(Clone, Debug, Default)]
pub struct PexIntake {
    last: Option<Instant>,
}

/// Shortest gap between two PEX messages we read from one peer: [`PEX_INTERVAL`] less slack
/// for timers (libtorrent's tick is a second; we allow ten).
pub const MIN_INTAKE_GAP: Duration = Duration::from_secs(50);

impl PexIntake {
    /// Whether a message arriving at `now` should be read; records it if so.
    pub fn accept(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            if now.saturating_duration_since(last) < MIN_INTAKE_GAP {
                return false;
            }
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, a, b)), port)
    }

    fn v6(n: u16, port: u16) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n)),
            port,
        )
    }

    #[test]
    fn exact_bytes_and_round_trip() {
        let msg = PexMessage {
            added: vec![
                (v4(0, 1, 6881), PexFlags::SEED | PexFlags::UTP),
                (v6(1, 51413), PexFlags::REACHABLE),
            ],
            dropped: vec![v4(0, 2, 0x1ae2)],
        };
        let bytes = msg.encode();
        let mut want = b"d5:added6:\x0a\x00\x00\x01\x1a\xe17:added.f1:\x066:added618:".to_vec();
        want.extend_from_slice(&v6_octets(1));
        want.extend_from_slice(
            b"\xc8\xd58:added6.f1:\x107:dropped6:\x0a\x00\x00\x02\x1a\xe28:dropped60:e",
        );
        assert_eq!(&bytes[..], &want[..]);
        assert_eq!(PexMessage::decode(&bytes), Ok(msg));
        // Empty message.
        let empty = PexMessage::default();
        assert_eq!(
            &empty.encode()[..],
            b"d5:added0:7:added.f0:6:added60:8:added6.f0:7:dropped0:8:dropped60:e"
        );
        assert_eq!(PexMessage::decode(&empty.encode()), Ok(empty));
    }

    fn v6_octets(n: u16) -> [u8; 16] {
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n).octets()
    }

    /// A message captured from python3-libtorrent 2.0.8 on loopback
    /// (`engine/testdata/capture_libtorrent_pex.py`): we read it, and write the same bytes.
    #[test]
    fn captured_libtorrent_message() {
        let raw = include_bytes!("../testdata/libtorrent-pex.bin");
        let m = PexMessage::decode(raw).unwrap();
        assert_eq!(
            m,
            PexMessage {
                added: vec![(SocketAddr::from(([127, 0, 0, 2], 40001)), PexFlags(0))],
                dropped: vec![],
            }
        );
        assert_eq!(&m.encode()[..], &raw[..]);
    }

    #[test]
    fn flags() {
        let f = PexFlags::ENCRYPTION | PexFlags::HOLEPUNCH;
        assert_eq!(f.0, 0x09);
        assert!(f.contains(PexFlags::ENCRYPTION));
        assert!(!f.contains(PexFlags::SEED));
        assert_eq!(
            [
                PexFlags::ENCRYPTION,
                PexFlags::SEED,
                PexFlags::UTP,
                PexFlags::HOLEPUNCH,
                PexFlags::REACHABLE
            ]
            .map(|f| f.0),
            [0x01, 0x02, 0x04, 0x08, 0x10]
        );
    }

    #[test]
    fn decode_is_tolerant_of_missing_and_odd_keys() {
        // Only `added`, no flags: flags are 0. Extra keys of any type are ignored.
        let m = PexMessage::decode(b"d5:added6:\x7f\x00\x00\x01\x1a\xe11:xli1ee1:yi5ee").unwrap();
        assert_eq!(
            m.added,
            [(SocketAddr::from(([127, 0, 0, 1], 6881)), PexFlags(0))]
        );
        assert!(m.dropped.is_empty());
        // Fewer flags than peers; a key of the wrong type.
        let m = PexMessage::decode(
            b"d5:added12:\x01\x01\x01\x01\x00\x01\x02\x02\x02\x02\x00\x027:added.f1:\x027:droppedi3ee",
        )
        .unwrap();
        assert_eq!(m.added[0].1, PexFlags::SEED);
        assert_eq!(m.added[1].1, PexFlags(0));
        assert_eq!(PexMessage::decode(b"de"), Ok(PexMessage::default()));
    }

    #[test]
    fn decode_errors() {
        assert_eq!(
            PexMessage::decode(b"d5:added5:abcdee"),
            Err(PexError::BadLength {
                key: "added",
                len: 5,
                entry: 6
            })
        );
        assert!(matches!(
            PexMessage::decode(b"d8:dropped66:abcdefe"),
            Err(PexError::BadLength {
                key: "dropped6",
                ..
            })
        ));
        assert_eq!(PexMessage::decode(b"le"), Err(PexError::NotADictionary));
        assert!(matches!(
            PexMessage::decode(b"d5:added"),
            Err(PexError::Bencode(_))
        ));
        let big = vec![b'x'; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            PexMessage::decode(&big),
            Err(PexError::TooLong { .. })
        ));
        let many = format!("d1:xl{}ee", "i1e".repeat(100));
        assert!(matches!(
            PexMessage::decode(many.as_bytes()),
            Err(PexError::TooManyItems { .. })
        ));
    }

    #[test]
    fn intake_is_capped_and_filtered() {
        // 200 IPv4 and 200 IPv6 added, 200 of each dropped: 50 of each kept.
        let many = |n: usize, v6: bool| -> Vec<SocketAddr> {
            (0..n)
                .map(|i| {
                    if v6 {
                        super::tests::v6(i as u16 + 1, 1000 + i as u16)
                    } else {
                        v4((i / 256) as u8, (i % 256) as u8, 1000 + i as u16)
                    }
                })
                .collect()
        };
        let big = PexMessage {
            added: many(200, false)
                .into_iter()
                .chain(many(200, true))
                .map(|a| (a, PexFlags::SEED))
                .collect(),
            dropped: many(200, false)
                .into_iter()
                .chain(many(200, true))
                .collect(),
        };
        let got = PexMessage::decode(&big.encode()).unwrap();
        assert_eq!(got.added.len(), 2 * MAX_PER_MESSAGE);
        assert_eq!(got.dropped.len(), 2 * MAX_PER_MESSAGE);
        assert_eq!(got.added.iter().filter(|(a, _)| a.is_ipv6()).count(), 50);
        assert_eq!(got.dropped.iter().filter(|a| a.is_ipv4()).count(), 50);
        assert_eq!(got.added[0], (v4(0, 0, 1000), PexFlags::SEED));
        // Port 0, unspecified addresses and repeats are skipped.
        let junk = PexMessage {
            added: vec![
                (v4(0, 1, 0), PexFlags(0)),
                (SocketAddr::from(([0, 0, 0, 0], 5)), PexFlags(0)),
                (v4(0, 3, 3), PexFlags(1)),
                (v4(0, 3, 3), PexFlags(2)),
                (SocketAddr::from((Ipv6Addr::UNSPECIFIED, 5)), PexFlags(0)),
            ],
            dropped: vec![v4(0, 4, 0), v6(4, 4), v6(4, 4)],
        };
        let got = PexMessage::decode(&junk.encode()).unwrap();
        assert_eq!(got.added, [(v4(0, 3, 3), PexFlags(1))]);
        assert_eq!(got.dropped, [v6(4, 4)]);
    }

    #[test]
    fn state_sends_first_then_diffs_once_a_minute() {
        let t0 = Instant::now();
        let mut s = PexState::new();
        let a = (v4(0, 1, 1), PexFlags::SEED);
        let b = (v4(0, 2, 2), PexFlags(0));
        let c = (v6(3, 3), PexFlags::UTP);
        // Nothing to say: no message, and the first real one is not delayed by it.
        assert_eq!(s.poll(t0, &[]), None);
        let first = s.poll(t0, &[a, b]).unwrap();
        assert_eq!(first.added, [a, b]);
        assert!(first.dropped.is_empty());
        // Within the minute: nothing, even though the set changed.
        assert_eq!(s.poll(t0 + Duration::from_secs(59), &[a, c]), None);
        // A minute later: only the changes.
        let t1 = t0 + PEX_INTERVAL;
        let second = s.poll(t1, &[a, c]).unwrap();
        assert_eq!(second.added, [c]);
        assert_eq!(second.dropped, [b.0]);
        // Unchanged: nothing, however long we wait.
        assert_eq!(s.poll(t1 + Duration::from_secs(600), &[a, c]), None);
        // A peer dropped and re-added between messages was never reported dropped: no change.
        assert_eq!(s.poll(t1 + Duration::from_secs(700), &[c, a]), None);
        let third = s.poll(t1 + Duration::from_secs(800), &[]).unwrap();
        assert!(third.added.is_empty());
        assert_eq!(third.dropped, [a.0, c.0]);
    }

    #[test]
    fn state_caps_each_message_and_carries_the_rest() {
        let t0 = Instant::now();
        let mut s = PexState::new();
        let all: Vec<(SocketAddr, PexFlags)> = (0..120u16)
            .map(|i| (v4((i / 256) as u8, (i % 256) as u8, 7000 + i), PexFlags(0)))
            .collect();
        let m1 = s.poll(t0, &all).unwrap();
        assert_eq!(m1.added.len(), MAX_PER_MESSAGE);
        assert_eq!(m1.added[..], all[..50]);
        let m2 = s.poll(t0 + PEX_INTERVAL, &all).unwrap();
        assert_eq!(m2.added[..], all[50..100]);
        let m3 = s.poll(t0 + 2 * PEX_INTERVAL, &all).unwrap();
        assert_eq!(m3.added[..], all[100..]);
        // All of them go away: dropped 50 at a time too.
        let m4 = s.poll(t0 + 3 * PEX_INTERVAL, &[]).unwrap();
        assert_eq!(m4.dropped.len(), MAX_PER_MESSAGE);
        assert!(m4.added.is_empty());
        // Round trip of a capped message stays within the caps.
        assert_eq!(PexMessage::decode(&m4.encode()), Ok(m4));
    }

    #[test]
    fn intake_reads_one_message_a_minute() {
        let t0 = Instant::now();
        let mut i = PexIntake::default();
        assert!(i.accept(t0));
        assert!(!i.accept(t0 + Duration::from_secs(1)));
        assert!(!i.accept(t0 + MIN_INTAKE_GAP - Duration::from_millis(1)));
        assert!(i.accept(t0 + MIN_INTAKE_GAP));
        assert!(!i.accept(t0 + MIN_INTAKE_GAP + Duration::from_secs(10)));
    }
}
