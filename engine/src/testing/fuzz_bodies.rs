//! The bodies of the fuzz targets, one plain function per decoder of untrusted bytes.
//!
//! Both the cargo-fuzz targets in `fuzz/` (nightly, libFuzzer) and the stable replay test
//! (`tests/tests/fuzz_replay.rs`, which runs every file under `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/`) call these same functions, so whatever the fuzzer learned keeps
//! being checked by `cargo test` without nightly. Each body feeds the bytes to the decoder and
//! then checks a cheap invariant where one exists; a violated invariant panics, which is what
//! libFuzzer and the replay test both report. Errors from the decoder are expected results,
//! never failures. Targets are listed in [`TARGETS`]; the directory names follow them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::Component;

use bytes::{Bytes, BytesMut};

use crate::bencode::{self, Limits};
use crate::extension::{ExtendedHandshake, MAX_CLIENT_LEN};
use crate::magnet::{self, Magnet};
use crate::metadata::MetadataMessage;
use crate::metainfo::{
    sanitize, Metainfo, MAX_FILES, MAX_PATH_BYTES, MAX_PATH_DEPTH, MAX_TORRENT_SIZE,
};
use crate::pex::{PexMessage, MAX_PER_MESSAGE};
use crate::tracker::{http, udp, MAX_INTERVAL, MAX_PEERS};
use crate::wire::{self, Handshake, Message, HANDSHAKE_LEN};

/// The body of a fuzz target: panics when the decoder panics or an invariant breaks.
pub type Body = fn(&[u8]);

/// Every fuzz target: its name (the `fuzz/fuzz_targets/<name>.rs` file and the corpus folder)
/// and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("bencode_scan", bencode_scan),
    ("metainfo", metainfo),
    ("wire_frames", wire_frames),
    ("handshake", handshake),
    ("tracker_http", tracker_http),
    ("tracker_udp", tracker_udp),
    ("magnet", magnet),
    ("ut_metadata", ut_metadata),
    ("ut_pex", ut_pex),
    ("bep10_handshake", bep10_handshake),
    ("lsd_announce", lsd_announce),
    ("krpc", krpc),
];

/// [`bencode::scan`] with the limits `.torrent` files get: a success means one well-formed
/// value whose reported `info` span lies inside the input and is itself one value. And
/// [`bencode::scan_prefix`]: the value it finds at the front scans alone to the same result,
/// and it agrees with `scan` on an input that is exactly one value.
pub fn bencode_scan(data: &[u8]) {
    let limits = Limits::with_max_size(MAX_TORRENT_SIZE);
    let whole = bencode::scan(data, limits);
    match bencode::scan_prefix(data, limits) {
        Ok((prefix, end)) => {
            assert!(end >= 1 && end <= data.len());
            assert_eq!(bencode::scan(&data[..end], limits), Ok(prefix.clone()));
            if let Ok(w) = &whole {
                assert_eq!((w, end), (&prefix, data.len()));
            }
        }
        Err(e) => assert!(whole.is_err(), "scan_prefix refused a whole value: {e}"),
    }
    let Ok(scanned) = whole else {
        return;
    };
    // Every value takes at least one byte.
    assert!(scanned.items >= 1 && scanned.items <= data.len());
    if let Some(span) = scanned.info_span {
        assert!(span.start < span.end && span.end <= data.len(), "{span:?}");
        let inner = bencode::scan(&data[span], Limits::with_max_size(MAX_TORRENT_SIZE));
        assert!(inner.is_ok(), "the info span is not one value: {inner:?}");
    }
    // serde_bencode may see checked bytes only; it must not panic on them.
    let _ = serde_bencode::from_bytes::<serde_bencode::value::Value>(data);
}

/// [`Metainfo::from_bytes`]: a parsed torrent's paths are relative, non-empty, free of `..`
/// and `.`, within the caps, pairwise distinct and never a folder of one another; its geometry
/// adds up and its info-hash is over the raw `info` bytes.
pub fn metainfo(data: &[u8]) {
    let Ok(m) = Metainfo::from_bytes(data) else {
        return;
    };
    let info = &m.info;
    let files = info.files();
    assert!(!files.is_empty() && files.len() <= MAX_FILES);
    sanitize::check_component(&info.name).expect("name passed the sanitiser");
    let mut paths = HashSet::with_capacity(files.len());
    let mut folders = HashSet::new();
    let mut total = 0u64;
    for f in files {
        assert!(f.path.is_relative(), "{:?}", f.path);
        let text = f.path.to_str().expect("paths are built from strings");
        assert!(!text.is_empty() && text.len() <= MAX_PATH_BYTES, "{text:?}");
        let components: Vec<_> = f.path.components().collect();
        assert!(components.len() <= MAX_PATH_DEPTH, "{text:?}");
        assert_eq!(
            components.first(),
            Some(&Component::Normal(OsStr::new(&info.name))),
            "{text:?} is not under the torrent's name"
        );
        for c in &components {
            let Component::Normal(c) = c else {
                panic!("{text:?} has a {c:?} component");
            };
            let c = c.to_str().expect("components are strings");
            sanitize::check_component(c).expect("component passed the sanitiser");
        }
        // The joined string has exactly the components given (no hidden separators).
        assert_eq!(text.split('/').count(), components.len(), "{text:?}");
        assert!(paths.insert(f.path.clone()), "two files at {text:?}");
        assert_eq!(f.offset, total);
        total += f.length;
    }
    for f in files {
        for dir in f.path.ancestors().skip(1) {
            if !dir.as_os_str().is_empty() {
                folders.insert(dir.to_path_buf());
            }
        }
    }
    for p in &paths {
        assert!(!folders.contains(p), "{p:?} is a file and a folder");
    }
    assert_eq!(total, info.total_length());
    assert_eq!(
        info.pieces.len() as u64,
        total.div_ceil(u64::from(info.piece_length()))
    );
    let span = bencode::scan(data, Limits::with_max_size(MAX_TORRENT_SIZE))
        .expect("parsed input scans")
        .info_span
        .expect("a parsed torrent has info");
    assert_eq!(m.info_hash.0, crate::hash::sha1(&data[span]));
}

/// [`wire::decode`] on a stream cut in two at a point chosen by the first byte, with a frame
/// cap chosen by the second: the messages are the same as from the whole stream at once, each
/// re-encodes to exactly the bytes it came from, an error or "need more" leaves the buffer's
/// contents untouched, and the same error is reached either way.
pub fn wire_frames(data: &[u8]) {
    let [split, cap, stream @ ..] = data else {
        return;
    };
    // Caps from tiny to above a 16 KiB block frame.
    let max_len = usize::from(*cap) * 80;
    let whole = decode_all(&mut BytesMut::from(stream), max_len);

    let split = usize::from(*split).min(stream.len());
    let mut buf = BytesMut::from(&stream[..split]);
    let mut first = decode_all(&mut buf, max_len);
    if first.error.is_none() {
        buf.extend_from_slice(&stream[split..]);
        let second = decode_all(&mut buf, max_len);
        first.messages.extend(second.messages);
        first.error = second.error;
        first.rest = second.rest;
    } else {
        // Decoding stopped at a bad frame inside the first part; the rest was never offered.
        first.rest.extend_from_slice(&stream[split..]);
    }
    assert_eq!(first.messages, whole.messages, "split at {split}");
    assert_eq!(first.error, whole.error, "split at {split}");
    assert_eq!(first.rest, whole.rest, "split at {split}");
}

/// What [`decode_all`] saw.
struct Decoded {
    messages: Vec<Message>,
    error: Option<wire::WireError>,
    /// Bytes left in the buffer at the end.
    rest: Vec<u8>,
}

/// Decode messages until "need more" or an error, checking each step's effect on `buf`.
fn decode_all(buf: &mut BytesMut, max_len: usize) -> Decoded {
    let mut messages = Vec::new();
    loop {
        let before = buf.clone();
        match wire::decode(buf, max_len) {
            Ok(Some(m)) => {
                let consumed = before.len() - buf.len();
                assert!(consumed >= wire::LENGTH_PREFIX);
                assert_eq!(
                    &before[consumed..],
                    &buf[..],
                    "decode took bytes off the end"
                );
                let mut again = BytesMut::new();
                m.encode(&mut again);
                assert_eq!(
                    &again[..],
                    &before[..consumed],
                    "{m:?} re-encodes differently"
                );
                assert_eq!(
                    wire::decode(&mut again, max_len),
                    Ok(Some(m.clone())),
                    "re-encoded message decodes differently"
                );
                messages.push(m);
            }
            Ok(None) => {
                assert_eq!(&before[..], &buf[..], "\"need more\" changed the buffer");
                return Decoded {
                    messages,
                    error: None,
                    rest: buf.to_vec(),
                };
            }
            Err(e) => {
                assert_eq!(&before[..], &buf[..], "{e} changed the buffer");
                return Decoded {
                    messages,
                    error: Some(e),
                    rest: buf.to_vec(),
                };
            }
        }
    }
}

/// [`Handshake::decode`] on the first 68 bytes: a success re-encodes to exactly those bytes,
/// and only `\x13BitTorrent protocol` succeeds.
pub fn handshake(data: &[u8]) {
    let Some(bytes) = data.first_chunk::<HANDSHAKE_LEN>() else {
        return;
    };
    match Handshake::decode(bytes) {
        Ok(h) => {
            assert_eq!(&h.encode(), bytes);
            assert_eq!(Handshake::decode(&h.encode()), Ok(h));
        }
        Err(_) => assert!(bytes[0] != 19 || &bytes[1..20] != wire::PROTOCOL),
    }
}

/// The HTTP tracker reply parser (BEP 3, 23, 7): peers are capped, distinct and usable, the
/// interval within bounds; compact peers re-encoded parse back to the same list.
pub fn tracker_http(data: &[u8]) {
    let Ok(reply) = http::parse_reply(data) else {
        return;
    };
    let r = &reply.response;
    check_peers(&r.peers);
    assert!(r.interval <= MAX_INTERVAL);
    assert!(r.min_interval.is_none_or(|m| m <= MAX_INTERVAL));
    assert!(reply
        .tracker_id
        .as_ref()
        .is_none_or(|id| !id.is_empty() && id.len() <= 256));

    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for p in &r.peers {
        match p {
            std::net::SocketAddr::V4(a) => {
                v4.extend_from_slice(&a.ip().octets());
                v4.extend_from_slice(&a.port().to_be_bytes());
            }
            std::net::SocketAddr::V6(a) => {
                v6.extend_from_slice(&a.ip().octets());
                v6.extend_from_slice(&a.port().to_be_bytes());
            }
        }
    }
    let mut again = Vec::new();
    http::parse_compact_v4(&v4, &mut again).expect("whole entries");
    http::parse_compact_v6(&v6, &mut again).expect("whole entries");
    let mut want = r.peers.clone();
    want.sort_by_key(|a| a.is_ipv6());
    assert_eq!(again, want);
}

/// A UDP tracker datagram (BEP 15) as both exchanges would take it: classified against the
/// transaction and action given by the first five bytes, then parsed as a connect or announce
/// reply (IPv4 or IPv6 by the fifth byte's low bit). Peers are capped, distinct and usable.
pub fn tracker_udp(data: &[u8]) {
    let [t0, t1, t2, t3, flags, datagram @ ..] = data else {
        return;
    };
    let tid = u32::from_be_bytes([*t0, *t1, *t2, *t3]);
    let action = if flags & 2 == 0 {
        udp::ACTION_CONNECT
    } else {
        udp::ACTION_ANNOUNCE
    };
    match udp::classify_reply(datagram, tid, action) {
        udp::Reply::Ignore => {}
        udp::Reply::Refused(m) => assert!(m.chars().count() <= 1024),
        udp::Reply::Matches => {
            assert!(datagram.len() >= 8);
            if action == udp::ACTION_CONNECT {
                let _ = udp::parse_connect_reply(datagram);
            } else if let Ok(r) = udp::parse_announce_reply(datagram, flags & 1 == 1) {
                check_peers(&r.peers);
                assert!(r.interval <= MAX_INTERVAL);
            }
        }
    }
    // The parsers alone, on any bytes (the exchange only calls them after a match).
    let _ = udp::parse_connect_reply(datagram);
    for ipv6 in [false, true] {
        if let Ok(r) = udp::parse_announce_reply(datagram, ipv6) {
            check_peers(&r.peers);
        }
    }
}

fn check_peers(peers: &[std::net::SocketAddr]) {
    assert!(peers.len() <= MAX_PEERS);
    let distinct: HashSet<_> = peers.iter().collect();
    assert_eq!(distinct.len(), peers.len(), "duplicate peers");
    assert!(peers
        .iter()
        .all(|p| p.port() != 0 && !p.ip().is_unspecified()));
}

/// [`Magnet::parse`] on the input as text (invalid UTF-8 replaced): a parsed link keeps within
/// the caps, its name is printable, its trackers are http/https/udp, its peers usable; and
/// [`Magnet::to_uri`] parses back to the same link whenever it fits the URI cap.
pub fn magnet(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(m) = Magnet::parse(&text) else {
        return;
    };
    assert!(m.trackers.len() <= magnet::MAX_TRACKERS);
    assert!(m.peers.len() + m.peer_names.len() <= magnet::MAX_PEERS);
    if let Some(name) = &m.name {
        assert!(!name.is_empty() && name.len() <= magnet::MAX_NAME_LEN);
        assert!(!name.chars().any(char::is_control), "{name:?}");
    }
    for tr in &m.trackers {
        let lower = tr.to_ascii_lowercase();
        assert!(
            ["http://", "https://", "udp://"]
                .iter()
                .any(|s| lower.starts_with(s)),
            "{tr:?}"
        );
        assert!(!tr.chars().any(|c| c.is_control() || c.is_whitespace()));
    }
    assert!(m
        .peers
        .iter()
        .all(|p| p.port() != 0 && !p.ip().is_unspecified()));
    assert!(m.peer_names.iter().all(|(h, p)| !h.is_empty() && *p != 0));
    let uri = m.to_uri();
    if uri.len() <= magnet::MAX_URI_LEN {
        assert_eq!(Magnet::parse(&uri), Ok(m), "{uri}");
    }
}

/// [`MetadataMessage::decode`] (BEP 9): a decoded message re-encodes to bytes that decode to
/// the same message, and a data message's bytes are exactly what followed the dictionary.
pub fn ut_metadata(data: &[u8]) {
    let payload = Bytes::copy_from_slice(data);
    let Ok(Some(m)) = MetadataMessage::decode(payload) else {
        return;
    };
    if let MetadataMessage::Data { data: piece, .. } = &m {
        assert!(data.ends_with(piece));
    }
    assert_eq!(MetadataMessage::decode(m.encode()), Ok(Some(m)));
}

/// [`PexMessage::decode`] (BEP 11): at most 50 added and 50 dropped per address family, no
/// port 0, no unspecified address, no repeats; encoding what was kept decodes to the same.
pub fn ut_pex(data: &[u8]) {
    let Ok(m) = PexMessage::decode(data) else {
        return;
    };
    for v6 in [false, true] {
        let added = m.added.iter().filter(|(a, _)| a.is_ipv6() == v6).count();
        let dropped = m.dropped.iter().filter(|a| a.is_ipv6() == v6).count();
        assert!(added <= MAX_PER_MESSAGE && dropped <= MAX_PER_MESSAGE);
    }
    let added: Vec<_> = m.added.iter().map(|(a, _)| *a).collect();
    check_usable_distinct(&added);
    check_usable_distinct(&m.dropped);
    assert_eq!(PexMessage::decode(&m.encode()), Ok(m));
}

/// [`ExtendedHandshake::parse_payload`] (BEP 10, both directions): only id 0 is a handshake;
/// every field is within its range, the client name printable and short; encoding what was
/// read parses back to the same.
pub fn bep10_handshake(data: &[u8]) {
    let result = ExtendedHandshake::parse_payload(data);
    if data.first().is_some_and(|&id| id != 0) {
        assert_eq!(result, Ok(None));
    }
    let Ok(Some(h)) = result else {
        return;
    };
    assert!(h.ids.ut_metadata != Some(0) && h.ids.ut_pex != Some(0));
    assert!(h.reqq.is_none_or(|r| (1..=65_535).contains(&r)));
    assert!(h.port != Some(0));
    if let Some(v) = &h.client {
        assert!(!v.is_empty() && v.chars().count() <= MAX_CLIENT_LEN);
        assert!(!v.chars().any(char::is_control), "{v:?}");
    }
    assert_eq!(ExtendedHandshake::parse(&h.encode()), Ok(h));
}

fn check_usable_distinct(peers: &[std::net::SocketAddr]) {
    let distinct: HashSet<_> = peers.iter().collect();
    assert_eq!(distinct.len(), peers.len(), "duplicate peers");
    assert!(peers
        .iter()
        .all(|p| p.port() != 0 && !p.ip().is_unspecified()));
}

/// An LSD datagram (BEP 14): an accepted message has a usable port and 1..=16 distinct hashes, and formatting it again
/// parses back to the same announce.
pub fn lsd_announce(data: &[u8]) {
    use crate::lsd::{format_announce, parse_announce, MAX_INFOHASHES_PER_MESSAGE};
    let Ok(ann) = parse_announce(data) else {
        return;
    };
    assert_ne!(ann.port, 0);
    assert!(!ann.info_hashes.is_empty() && ann.info_hashes.len() <= MAX_INFOHASHES_PER_MESSAGE);
    let distinct: HashSet<_> = ann.info_hashes.iter().collect();
    assert_eq!(distinct.len(), ann.info_hashes.len(), "duplicate hashes");
    let cookie = ann.cookie.clone().unwrap_or_default();
    let again = parse_announce(&format_announce(ann.port, &ann.info_hashes, &cookie))
        .expect("a formatted announce parses");
    assert_eq!(again.port, ann.port);
    assert_eq!(again.info_hashes, ann.info_hashes);
}

/// [`crate::dht::krpc::decode`] (BEP 5 datagrams), then the same bytes into a DHT node: a
/// message keeps a 1..=16-byte transaction id and lists within their caps; a query or response
/// encodes and decodes back to the same message (values cut to what we send); the node never
/// panics and answers with at most one well-formed datagram.
pub fn krpc(data: &[u8]) {
    use crate::dht::krpc::{self, Body, MAX_NODES, MAX_TID_LEN, MAX_VALUES, MAX_VALUES_SENT};
    use crate::dht::node::{Node, NodeConfig};

    if let Ok(m) = krpc::decode(data) {
        assert!(!m.tid.is_empty() && m.tid.len() <= MAX_TID_LEN);
        match &m.body {
            Body::Query {
                id,
                query,
                read_only,
                want: _,
            } => {
                // We never send `want` (BEP 32): each family is queried on its own socket.
                let again = krpc::encode_query(&m.tid, id, query, *read_only);
                let mut without_want = m.clone();
                if let Body::Query { want, .. } = &mut without_want.body {
                    *want = None;
                }
                assert_eq!(krpc::decode(&again), Ok(without_want));
            }
            Body::Response(r) => {
                assert!(r.nodes.len() <= 2 * MAX_NODES && r.values.len() <= MAX_VALUES);
                assert!(r
                    .values
                    .iter()
                    .all(|v| v.port() != 0 && !v.ip().is_unspecified()));
                if let Some(id) = r.id {
                    let again = krpc::encode_response(&m.tid, &id, r);
                    let mut cut = r.clone();
                    cut.values.truncate(MAX_VALUES_SENT);
                    assert_eq!(
                        krpc::decode(&again).map(|m| m.body),
                        Ok(Body::Response(cut))
                    );
                }
            }
            Body::Error { .. } => {}
        }
    }
    let now = std::time::Instant::now();
    let mut node = Node::new(
        NodeConfig {
            max_peers_per_search: 10,
            ipv6: true,
        },
        now,
        1,
    );
    let from = std::net::SocketAddr::from(([10, 0, 0, 1], 6881));
    node.handle_datagram(from, data, now);
    let mut answers = 0;
    while let Some((to, bytes)) = node.poll_transmit() {
        assert!(bytes.len() <= krpc::MAX_DATAGRAM);
        let reply = krpc::decode(&bytes).expect("the node sends well-formed KRPC");
        if to == from && !matches!(reply.body, Body::Query { .. }) {
            answers += 1;
        }
    }
    assert!(answers <= 1);
}
