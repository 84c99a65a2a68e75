//! KRPC (BEP 5): the DHT's messages as bytes and back. Sans-IO: no socket, no clock.
//!
//! It owns the shape of the four queries (`ping`, `find_node`, `get_peers`, `announce_peer`),
//! their responses and errors, and the limits every received datagram is checked against before
//! anything is allocated for it. It never decides what a message means for the node.
//!
//! Decisions:
//! - Transaction ids are opaque byte strings of any length from 1 to [`MAX_TID_LEN`], echoed
//!   byte-exact: libtorrent sends 2 bytes, others 4 (the adapter we had parsed only 4-byte ids,
//!   so it never answered libtorrent).
//! - Input passes the bounded bencode scanner first (size, depth, item count), so a datagram can
//!   never make the decoder allocate more than a few times its own size.
//! - Lists from the wire are capped, not rejected: at most [`MAX_NODES`] contacts and
//!   [`MAX_VALUES`] peers are read from one response; the rest is ignored.
//! - IPv6 (BEP 32): `nodes6` (38-byte entries) and 18-byte `values` are read beside `nodes` and
//!   6-byte values; a query's `want` (`n4`, `n6`) is reported as is. We never send `want`: each
//!   family is queried on its own socket.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde_bencode::value::Value;

use crate::bencode::{self, Limits};

/// Largest datagram read or written. BEP 5 sets none; our largest message (a `get_peers`
/// response with [`MAX_VALUES_SENT`] peers and K nodes) is under 1 KiB, and libtorrent's
/// largest replies (100 values) stay under 1.5 KiB, the Ethernet MTU.
pub const MAX_DATAGRAM: usize = 2048;

/// Longest transaction id accepted. BEP 5 only says "short"; libtorrent uses 2 bytes, most
/// others 4. Longer ids would let a querier make our answers larger than its query.
pub const MAX_TID_LEN: usize = 16;

/// Longest write token accepted. BEP 5 leaves the form to the node; libtorrent's are 4 bytes,
/// ours 8 (`node::TOKEN_LEN`).
pub const MAX_TOKEN_LEN: usize = 64;

/// Contacts read from one `nodes` string. K = 8 is what BEP 5 responders send; a few send 16.
pub const MAX_NODES: usize = 16;

/// Peers read from one `values` list (libtorrent's `dht_max_peers_reply` default is 100).
pub const MAX_VALUES: usize = 128;

/// Peers we put into one `get_peers` response: 50 × 8 bytes keeps it well under the MTU.
pub const MAX_VALUES_SENT: usize = 50;

/// Nesting accepted: KRPC messages are two levels deep; extensions (BEP 44 `v`) may add a few.
const MAX_DEPTH: usize = 8;

/// Values in one datagram: a full `values` list and its surroundings fit with room to spare.
const MAX_ITEMS: usize = 512;

/// BEP 5: 20-byte node ids and info-hashes.
pub const ID_LEN: usize = 20;

/// Compact node info: 20-byte id, 4-byte IPv4, 2-byte port (BEP 5).
const COMPACT_NODE_LEN: usize = 26;

/// Compact IPv6 node info: 20-byte id, 16-byte IPv6, 2-byte port (BEP 32).
const COMPACT_NODE6_LEN: usize = 38;

/// Compact peer info: 4-byte IPv4, 2-byte port (BEP 5).
const COMPACT_PEER_LEN: usize = 6;

/// Compact IPv6 peer info: 16-byte IPv6, 2-byte port (BEP 32).
const COMPACT_PEER6_LEN: usize = 18;

/// A 160-bit DHT id (node id, info-hash or lookup target).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub [u8; ID_LEN]);

impl std::fmt::Debug for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", hex::encode(&self.0[..4]))
    }
}

impl Id {
    /// XOR distance to `other`; compares as a big-endian number.
    pub fn distance(&self, other: &Id) -> [u8; ID_LEN] {
        let mut d = [0u8; ID_LEN];
        for (i, b) in d.iter_mut().enumerate() {
            *b = self.0[i] ^ other.0[i];
        }
        d
    }

    /// Number of leading bits shared with `other` (160 when equal).
    pub fn common_prefix(&self, other: &Id) -> usize {
        for (i, (a, b)) in self.0.iter().zip(other.0.iter()).enumerate() {
            let x = a ^ b;
            if x != 0 {
                return i * 8 + x.leading_zeros() as usize;
            }
        }
        ID_LEN * 8
    }

    fn from_slice(b: &[u8]) -> Option<Id> {
        <[u8; ID_LEN]>::try_from(b).ok().map(Id)
    }
}

/// A node as BEP 5 "compact node info" carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Contact {
    /// Its node id.
    pub id: Id,
    /// Where it listens (IPv4 from `nodes`, IPv6 from `nodes6`).
    pub addr: SocketAddr,
}

/// BEP 32 `want`: which families of nodes the querier asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Want {
    /// `n4`: IPv4 nodes.
    pub v4: bool,
    /// `n6`: IPv6 nodes.
    pub v6: bool,
}

/// The four BEP 5 queries, and any other method (answered with error 204).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// `ping`.
    Ping,
    /// `find_node`: the K closest nodes to `target`.
    FindNode {
        /// The id looked for.
        target: Id,
    },
    /// `get_peers`: peers of `info_hash`, or the closest nodes, and a token.
    GetPeers {
        /// The torrent.
        info_hash: Id,
    },
    /// `announce_peer`: the querier downloads `info_hash` on `port` (or, with `implied_port`,
    /// on the UDP source port).
    AnnouncePeer {
        /// The torrent.
        info_hash: Id,
        /// The TCP port; ignored with `implied_port`.
        port: u16,
        /// BEP 5: use the query's source port instead of `port`.
        implied_port: bool,
        /// The token a `get_peers` response gave.
        token: Vec<u8>,
    },
    /// A method we do not implement (BEP 44 `get`, BEP 51 `sample_infohashes`, ...).
    Unknown(Vec<u8>),
}

/// A response's body (BEP 5 `r`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// The responder's id.
    pub id: Option<Id>,
    /// Closer nodes: IPv4 ones from `nodes`, IPv6 ones from `nodes6`, at most [`MAX_NODES`] of
    /// each.
    pub nodes: Vec<Contact>,
    /// Peers (`values`, 6-byte IPv4 or 18-byte IPv6 entries), at most [`MAX_VALUES`].
    pub values: Vec<SocketAddr>,
    /// The write token of a `get_peers` response.
    pub token: Option<Vec<u8>>,
}

/// What a message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A query from node `id`.
    Query {
        /// The querier's id.
        id: Id,
        /// The method and its arguments.
        query: Query,
        /// BEP 43: the querier is read-only (never put it in a routing table).
        read_only: bool,
        /// BEP 32: the node families asked for (`None`: the query's own family).
        want: Option<Want>,
    },
    /// A response; its `id` is checked by the caller (a response without one is useless but
    /// still ends the transaction).
    Response(Response),
    /// An error (`e`: code and message).
    Error {
        /// BEP 5 codes: 201 generic, 202 server, 203 protocol, 204 method unknown.
        code: i64,
        /// Human-readable text, lossy UTF-8.
        message: String,
    },
}

/// A KRPC message: a transaction id and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The transaction id, 1..=[`MAX_TID_LEN`] bytes, echoed as is.
    pub tid: Vec<u8>,
    /// The message itself.
    pub body: Body,
}

/// Why a datagram is not a KRPC message we can use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KrpcError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is over the limit")]
    TooLarge(usize),
    /// Not bencode, or over the scanner's limits.
    #[error(transparent)]
    Bencode(#[from] bencode::BencodeError),
    /// Bencode, but not a KRPC message; `tid` is kept when it could be read, so a query can be
    /// answered with an error.
    #[error("malformed KRPC message: {reason}")]
    Malformed {
        /// What was wrong.
        reason: &'static str,
        /// The transaction id, when the message had a usable one.
        tid: Option<Vec<u8>>,
        /// Whether the message said it was a query (`y` = `q`).
        query: bool,
    },
}

type Dict = HashMap<Vec<u8>, Value>;

fn get<'a>(d: &'a Dict, key: &str) -> Option<&'a Value> {
    d.get(key.as_bytes())
}

fn bytes<'a>(d: &'a Dict, key: &str) -> Option<&'a [u8]> {
    match get(d, key) {
        Some(Value::Bytes(b)) => Some(b),
        _ => None,
    }
}

fn int(d: &Dict, key: &str) -> Option<i64> {
    match get(d, key) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    }
}

fn dict<'a>(d: &'a Dict, key: &str) -> Option<&'a Dict> {
    match get(d, key) {
        Some(Value::Dict(x)) => Some(x),
        _ => None,
    }
}

/// Reads one datagram. Never panics; allocation is bounded by the scanner's limits.
pub fn decode(input: &[u8]) -> Result<Message, KrpcError> {
    if input.len() > MAX_DATAGRAM {
        return Err(KrpcError::TooLarge(input.len()));
    }
    let scanned = bencode::scan(
        input,
        Limits {
            max_depth: MAX_DEPTH,
            max_size: MAX_DATAGRAM,
        },
    )?;
    let bad = |reason, tid: Option<Vec<u8>>, query| KrpcError::Malformed { reason, tid, query };
    if scanned.items > MAX_ITEMS {
        return Err(bad("too many values", None, false));
    }
    let value: Value = serde_bencode::from_bytes(input)
        .map_err(|e| KrpcError::Bencode(bencode::BencodeError::Shape(e.to_string())))?;
    let Value::Dict(top) = value else {
        return Err(bad("not a dictionary", None, false));
    };
    let is_query = bytes(&top, "y") == Some(b"q");
    let tid = match bytes(&top, "t") {
        Some(t) if !t.is_empty() && t.len() <= MAX_TID_LEN => t.to_vec(),
        _ => return Err(bad("missing or oversized transaction id", None, is_query)),
    };
    let body = match bytes(&top, "y") {
        Some(b"q") => decode_query(&top).map_err(|r| bad(r, Some(tid.clone()), true))?,
        Some(b"r") => {
            let r = dict(&top, "r").ok_or_else(|| bad("response without r", None, false))?;
            Body::Response(decode_response(r).map_err(|r| bad(r, None, false))?)
        }
        Some(b"e") => {
            let (code, message) = match get(&top, "e") {
                Some(Value::List(l)) => match l.as_slice() {
                    [Value::Int(c), Value::Bytes(m), ..] => {
                        (*c, String::from_utf8_lossy(m).into_owned())
                    }
                    [Value::Int(c)] => (*c, String::new()),
                    _ => (0, String::new()),
                },
                _ => (0, String::new()),
            };
            Body::Error { code, message }
        }
        _ => return Err(bad("unknown message type", None, false)),
    };
    Ok(Message { tid, body })
}

fn decode_query(top: &Dict) -> Result<Body, &'static str> {
    let method = bytes(top, "q").ok_or("query without q")?;
    let args = dict(top, "a").ok_or("query without a")?;
    let id = bytes(args, "id")
        .and_then(Id::from_slice)
        .ok_or("query without a 20-byte id")?;
    let id_arg = |key| {
        bytes(args, key)
            .and_then(Id::from_slice)
            .ok_or("argument is not a 20-byte id")
    };
    let query = match method {
        b"ping" => Query::Ping,
        b"find_node" => Query::FindNode {
            target: id_arg("target")?,
        },
        b"get_peers" => Query::GetPeers {
            info_hash: id_arg("info_hash")?,
        },
        b"announce_peer" => {
            let implied_port = int(args, "implied_port").is_some_and(|v| v != 0);
            let port = match int(args, "port") {
                Some(p) => u16::try_from(p).map_err(|_| "port out of range")?,
                None if implied_port => 0,
                None => return Err("announce_peer without port"),
            };
            if port == 0 && !implied_port {
                return Err("announce_peer with port 0");
            }
            let token = bytes(args, "token").ok_or("announce_peer without token")?;
            if token.is_empty() || token.len() > MAX_TOKEN_LEN {
                return Err("bad token length");
            }
            Query::AnnouncePeer {
                info_hash: id_arg("info_hash")?,
                port,
                implied_port,
                token: token.to_vec(),
            }
        }
        other => Query::Unknown(other[..other.len().min(32)].to_vec()),
    };
    let read_only = int(top, "ro") == Some(1);
    let want = match get(args, "want") {
        Some(Value::List(l)) => {
            let has = |w: &[u8]| l.iter().any(|v| matches!(v, Value::Bytes(b) if b == w));
            Some(Want {
                v4: has(b"n4"),
                v6: has(b"n6"),
            })
        }
        _ => None,
    };
    Ok(Body::Query {
        id,
        query,
        read_only,
        want,
    })
}

fn decode_response(r: &Dict) -> Result<Response, &'static str> {
    let id = match bytes(r, "id") {
        Some(b) => Some(Id::from_slice(b).ok_or("response id is not 20 bytes")?),
        None => None,
    };
    let mut nodes = Vec::new();
    for (key, len, reason) in [
        ("nodes", COMPACT_NODE_LEN, "nodes not a multiple of 26"),
        ("nodes6", COMPACT_NODE6_LEN, "nodes6 not a multiple of 38"),
    ] {
        match bytes(r, key) {
            Some(n) if n.len() % len != 0 => return Err(reason),
            Some(n) => nodes.extend(n.chunks_exact(len).take(MAX_NODES).filter_map(|c| {
                let id = Id::from_slice(&c[..ID_LEN])?;
                Some(Contact {
                    id,
                    addr: compact_peer(&c[ID_LEN..])?,
                })
            })),
            None => {}
        }
    }
    let values = match get(r, "values") {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(|v| match v {
                Value::Bytes(b) => compact_peer(b),
                _ => None,
            })
            .take(MAX_VALUES)
            .collect(),
        _ => Vec::new(),
    };
    let token = match bytes(r, "token") {
        Some(t) if !t.is_empty() && t.len() <= MAX_TOKEN_LEN => Some(t.to_vec()),
        Some(_) => return Err("bad token length"),
        None => None,
    };
    Ok(Response {
        id,
        nodes,
        values,
        token,
    })
}

/// A compact peer: 6 bytes IPv4 or 18 bytes IPv6 (BEP 32), port last; `None` for another length,
/// port 0 or the unspecified address (nobody listens there).
fn compact_peer(b: &[u8]) -> Option<SocketAddr> {
    let (ip, port) = match b.len() {
        COMPACT_PEER_LEN => {
            let o: [u8; 4] = b[..4].try_into().ok()?;
            (IpAddr::V4(Ipv4Addr::from(o)), &b[4..])
        }
        COMPACT_PEER6_LEN => {
            let o: [u8; 16] = b[..16].try_into().ok()?;
            (IpAddr::V6(Ipv6Addr::from(o)), &b[16..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes([port[0], port[1]]);
    (port != 0 && !ip.is_unspecified()).then_some(SocketAddr::new(ip, port))
}

fn compact(addr: &SocketAddr) -> Vec<u8> {
    let mut v = match addr.ip() {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    v.extend_from_slice(&addr.port().to_be_bytes());
    v
}

fn b(s: &[u8]) -> Value {
    Value::Bytes(s.to_vec())
}

fn key(k: &str) -> Vec<u8> {
    k.as_bytes().to_vec()
}

fn finish(top: Dict) -> Vec<u8> {
    // A Value of byte strings, integers and dictionaries always serialises (serde_bencode
    // fails only on types bencode cannot express).
    serde_bencode::to_bytes(&Value::Dict(top)).expect("a bencode Value serialises")
}

/// Writes a query from node `id`. `read_only` sets BEP 43's `ro`.
pub fn encode_query(tid: &[u8], id: &Id, query: &Query, read_only: bool) -> Vec<u8> {
    let mut args = Dict::new();
    args.insert(key("id"), b(&id.0));
    let method: &[u8] = match query {
        Query::Ping => b"ping",
        Query::FindNode { target } => {
            args.insert(key("target"), b(&target.0));
            b"find_node"
        }
        Query::GetPeers { info_hash } => {
            args.insert(key("info_hash"), b(&info_hash.0));
            b"get_peers"
        }
        Query::AnnouncePeer {
            info_hash,
            port,
            implied_port,
            token,
        } => {
            args.insert(key("info_hash"), b(&info_hash.0));
            args.insert(key("port"), Value::Int(i64::from(*port)));
            if *implied_port {
                args.insert(key("implied_port"), Value::Int(1));
            }
            args.insert(key("token"), b(token));
            b"announce_peer"
        }
        Query::Unknown(m) => m,
    };
    let mut top = Dict::new();
    top.insert(key("t"), b(tid));
    top.insert(key("y"), b(b"q"));
    top.insert(key("q"), b(method));
    top.insert(key("a"), Value::Dict(args));
    if read_only {
        top.insert(key("ro"), Value::Int(1));
    }
    finish(top)
}

/// Writes a response from node `id`; lists longer than [`MAX_NODES`] / [`MAX_VALUES_SENT`] are
/// cut, so the datagram stays under [`MAX_DATAGRAM`].
pub fn encode_response(tid: &[u8], id: &Id, r: &Response) -> Vec<u8> {
    let mut body = Dict::new();
    body.insert(key("id"), b(&id.0));
    for (name, v6) in [("nodes", false), ("nodes6", true)] {
        let mut nodes = Vec::new();
        for c in r
            .nodes
            .iter()
            .filter(|c| c.addr.is_ipv6() == v6)
            .take(MAX_NODES)
        {
            nodes.extend_from_slice(&c.id.0);
            nodes.extend_from_slice(&compact(&c.addr));
        }
        if !nodes.is_empty() {
            body.insert(key(name), Value::Bytes(nodes));
        }
    }
    if !r.values.is_empty() {
        let values = r
            .values
            .iter()
            .take(MAX_VALUES_SENT)
            .map(|a| Value::Bytes(compact(a)))
            .collect();
        body.insert(key("values"), Value::List(values));
    }
    if let Some(t) = &r.token {
        body.insert(key("token"), b(t));
    }
    let mut top = Dict::new();
    top.insert(key("t"), b(tid));
    top.insert(key("y"), b(b"r"));
    top.insert(key("r"), Value::Dict(body));
    finish(top)
}

/// Writes an error (BEP 5 `e`).
pub fn encode_error(tid: &[u8], code: i64, message: &str) -> Vec<u8> {
    let mut top = Dict::new();
    top.insert(key("t"), b(tid));
    top.insert(key("y"), b(b"e"));
    top.insert(
        key("e"),
        Value::List(vec![Value::Int(code), b(message.as_bytes())]),
    );
    finish(top)
}

/// BEP 5 error codes.
pub mod code {
    /// Generic error.
    pub const GENERIC: i64 = 201;
    /// Protocol error: malformed packet, invalid arguments or bad token.
    pub const PROTOCOL: i64 = 203;
    /// Method unknown.
    pub const METHOD_UNKNOWN: i64 = 204;
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const ID: Id = Id([0x11; ID_LEN]);
    const HASH: Id = Id([0x22; ID_LEN]);

    fn queries() -> Vec<Query> {
        vec![
            Query::Ping,
            Query::FindNode { target: HASH },
            Query::GetPeers { info_hash: HASH },
            Query::AnnouncePeer {
                info_hash: HASH,
                port: 6881,
                implied_port: false,
                token: b"tok".to_vec(),
            },
            Query::AnnouncePeer {
                info_hash: HASH,
                port: 0,
                implied_port: true,
                token: vec![9; 20],
            },
            Query::Unknown(b"sample_infohashes".to_vec()),
        ]
    }

    #[test]
    fn every_query_round_trips_with_any_tid_length() {
        for tid in [&b"a"[..], b"aa", b"\x00\xff\x01\x02", &[7u8; MAX_TID_LEN]] {
            for q in queries() {
                for ro in [false, true] {
                    let bytes = encode_query(tid, &ID, &q, ro);
                    let m = decode(&bytes).expect("our own query decodes");
                    assert_eq!(m.tid, tid, "tid echoed byte-exact");
                    assert_eq!(
                        m.body,
                        Body::Query {
                            id: ID,
                            query: q.clone(),
                            read_only: ro,
                            want: None,
                        }
                    );
                }
            }
        }
    }

    #[test]
    fn a_libtorrent_query_with_a_two_byte_tid_decodes() {
        // As libtorrent 2.0 sends it: 2-byte tid, a client version `v`, keys sorted.
        let wire = b"d1:ad2:id20:\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x11\x119:info_hash20:\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22\x22e1:q9:get_peers1:t2:\x8a\x031:v4:LT\x02\x001:y1:qe";
        let m = decode(wire).expect("decodes");
        assert_eq!(m.tid, vec![0x8a, 0x03]);
        assert_eq!(
            m.body,
            Body::Query {
                id: ID,
                query: Query::GetPeers { info_hash: HASH },
                read_only: false,
                want: None,
            }
        );
    }

    #[test]
    fn ipv6_nodes_values_and_want_are_read() {
        let r = Response {
            id: Some(ID),
            nodes: vec![
                Contact {
                    id: HASH,
                    addr: "127.0.0.5:7000".parse().expect("literal"),
                },
                Contact {
                    id: ID,
                    addr: "[::1]:7001".parse().expect("literal"),
                },
            ],
            values: vec![
                "10.1.2.3:6881".parse().expect("literal"),
                "[2001:db8::1]:6882".parse().expect("literal"),
            ],
            token: None,
        };
        let bytes = encode_response(b"6", &ID, &r);
        assert!(bytes.windows(6).any(|w| w == b"nodes6"));
        assert_eq!(decode(&bytes).expect("decodes").body, Body::Response(r));

        let mut q = b"d1:ad2:id20:".to_vec();
        q.extend_from_slice(&ID.0);
        q.extend_from_slice(b"6:target20:");
        q.extend_from_slice(&HASH.0);
        q.extend_from_slice(b"4:wantl2:n42:n6ee1:q9:find_node1:t2:aa1:y1:qe");
        let Body::Query { want, .. } = decode(&q).expect("decodes").body else {
            panic!("a query")
        };
        assert_eq!(want, Some(Want { v4: true, v6: true }));
    }

    #[test]
    fn responses_and_errors_round_trip() {
        let r = Response {
            id: Some(ID),
            nodes: vec![Contact {
                id: HASH,
                addr: "127.0.0.5:7000".parse().expect("literal"),
            }],
            values: vec!["10.1.2.3:6881".parse().expect("literal")],
            token: Some(b"secret".to_vec()),
        };
        let m = decode(&encode_response(b"xy", &ID, &r)).expect("decodes");
        assert_eq!(m.tid, b"xy");
        assert_eq!(m.body, Body::Response(r));
        let e = decode(&encode_error(b"e1", code::PROTOCOL, "bad token")).expect("decodes");
        assert_eq!(
            e.body,
            Body::Error {
                code: 203,
                message: "bad token".into()
            }
        );
    }

    #[test]
    fn long_lists_are_cut_to_their_caps() {
        let r = Response {
            id: Some(ID),
            nodes: (0..40u32)
                .map(|i| Contact {
                    id: HASH,
                    addr: SocketAddr::from((Ipv4Addr::from(0x0a00_0001 + i), 1)),
                })
                .collect(),
            values: (0..300u32)
                .map(|i| SocketAddr::from((Ipv4Addr::from(0x0a00_0001 + i), 1)))
                .collect(),
            token: None,
        };
        let bytes = encode_response(b"t", &ID, &r);
        assert!(bytes.len() <= MAX_DATAGRAM, "{} bytes", bytes.len());
        let Body::Response(back) = decode(&bytes).expect("decodes").body else {
            panic!("a response")
        };
        assert_eq!(back.nodes.len(), MAX_NODES);
        assert_eq!(back.values.len(), MAX_VALUES_SENT);

        // Someone else's reply with more values than we read: the rest is ignored.
        let mut wire = b"d1:rd2:id20:".to_vec();
        wire.extend_from_slice(&ID.0);
        wire.extend_from_slice(b"6:valuesl");
        for i in 0..200u32 {
            wire.extend_from_slice(b"6:");
            wire.extend_from_slice(&(0x0a00_0001 + i).to_be_bytes());
            wire.extend_from_slice(&[0x1a, 0xe1]);
        }
        wire.extend_from_slice(b"18:");
        wire.extend_from_slice(&[1; 18]);
        wire.extend_from_slice(b"ee1:t1:a1:y1:re");
        let Body::Response(back) = decode(&wire).expect("decodes").body else {
            panic!("a response")
        };
        assert_eq!(back.values.len(), MAX_VALUES);
    }

    fn malformed(input: &[u8]) -> KrpcError {
        decode(input).expect_err("must be refused")
    }

    #[test]
    fn malformed_input_is_refused_without_panic() {
        let id = "2:id20:aaaaaaaaaaaaaaaaaaaa";
        let cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"le".to_vec(),
            b"i5e".to_vec(),
            b"d1:y1:qe".to_vec(),
            format!("d1:ad{id}e1:q4:ping1:t0:1:y1:qe").into_bytes(),
            format!("d1:ad{id}e1:q4:ping1:t17:aaaaaaaaaaaaaaaaa1:y1:qe").into_bytes(),
            b"d1:ad2:id19:aaaaaaaaaaaaaaaaaaae1:q4:ping1:t2:aa1:y1:qe".to_vec(),
            format!("d1:ad{id}e1:q9:find_node1:t2:aa1:y1:qe").into_bytes(),
            format!("d1:ad{id}9:info_hash20:bbbbbbbbbbbbbbbbbbbb4:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe").into_bytes(),
            format!("d1:ad{id}9:info_hash20:bbbbbbbbbbbbbbbbbbbb4:porti80ee1:q13:announce_peer1:t2:aa1:y1:qe").into_bytes(),
            format!("d1:ad{id}9:info_hash20:bbbbbbbbbbbbbbbbbbbb4:porti0e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe").into_bytes(),
            format!("d1:rd{id}5:nodes25:aaaaaaaaaaaaaaaaaaaaaaaaae1:t2:aa1:y1:re").into_bytes(),
            b"d1:rd2:id3:abce1:t2:aa1:y1:re".to_vec(),
            b"d1:t2:aa1:y1:xe".to_vec(),
            format!("d1:ad{id}e1:q4:ping1:t2:aa1:y1:qeTRAILING").into_bytes(),
            vec![b'l'; 100],
            vec![0xff; MAX_DATAGRAM + 1],
        ];
        for c in &cases {
            malformed(c);
        }
        // A bad query keeps its tid, so it can be answered with error 203.
        let e = malformed(format!("d1:ad{id}e1:q9:get_peers1:t2:zz1:y1:qe").as_bytes());
        assert!(matches!(
            e,
            KrpcError::Malformed { tid: Some(ref t), query: true, .. } if t == b"zz"
        ));
    }

    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0xd47);
        let seeds: Vec<Vec<u8>> = queries()
            .iter()
            .map(|q| encode_query(b"aa", &ID, q, false))
            .collect();
        for i in 0..20_000 {
            let mut bytes = if i % 2 == 0 {
                let n = rng.gen_range(0..300);
                (0..n).map(|_| rng.gen()).collect()
            } else {
                seeds[i % seeds.len()].clone()
            };
            for _ in 0..rng.gen_range(1..4) {
                if bytes.is_empty() {
                    break;
                }
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            let _ = decode(&bytes);
        }
    }
}
