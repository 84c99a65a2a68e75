//! Magnet URIs (BEP 9): parsing a `magnet:?xt=urn:btih:…` link into what a torrent needs to
//! start without its metadata, and writing one back.
//!
//! Owns only the text format: no lookups, no sockets. A magnet link comes from a user's file or
//! command line but was usually pasted from the web, so it is treated as untrusted: the whole
//! URI, the tracker and peer lists and the name are capped, the name is stripped of control
//! characters (it is printed in a terminal), and anything unusable in an optional field (a
//! tracker with another scheme, a malformed `x.pe`) is skipped rather than failing the link.
//! Only a missing or malformed info-hash is an error.
//!
//! Decisions BEP 9 leaves open:
//! - several `xt`: the `urn:btih:` one counts; `urn:btmh:` (v2, BEP 52) ones are ignored, and a
//!   link with nothing but v2 hashes is refused as unsupported; two *different* btih hashes are
//!   refused, since we could not tell which torrent was meant;
//! - `dn` given twice: the first usable (non-empty) one wins; `tr` and `x.pe` may repeat and also come as `tr.1`,
//!   `x.pe.2`, …; duplicates are dropped;
//! - `+` means a space in `dn` only (browsers write it there); in URLs it stays a `+`;
//! - a `%` not followed by two hex digits is kept literally, as browsers do.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use crate::types::InfoHash;

/// Longest magnet URI accepted. Real ones are a few hundred bytes; 64 KiB holds a hundred long
/// tracker URLs and still keeps a hostile `.magnet` file from costing anything.
pub const MAX_URI_LEN: usize = 64 * 1024;

/// Most trackers kept from one link; later ones are ignored (a link listing more is spam).
pub const MAX_TRACKERS: usize = 100;

/// Most `x.pe` peers kept (addresses and host names together); later ones are ignored.
pub const MAX_PEERS: usize = 200;

/// Longest `dn` kept, in bytes of UTF-8; a longer one is cut at a character boundary.
pub const MAX_NAME_LEN: usize = 1024;

/// Longest host name in an `x.pe` entry (RFC 1035: 253 characters in text form).
const MAX_HOST_LEN: usize = 253;

/// Everything a magnet link says about a torrent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Magnet {
    /// The v1 info-hash (`xt=urn:btih:`).
    pub info_hash: InfoHash,
    /// Display name (`dn`), percent-decoded, without control characters; `None` if absent or
    /// empty.
    pub name: Option<String>,
    /// Tracker URLs (`tr`), http, https or udp only, in the order given, without duplicates.
    pub trackers: Vec<String>,
    /// Peers given as IP literals (`x.pe=1.2.3.4:6881`, `x.pe=[::1]:6881`).
    pub peers: Vec<SocketAddr>,
    /// Peers given by host name (`x.pe=host.example:6881`); the caller resolves them.
    pub peer_names: Vec<(String, u16)>,
}

/// Why a magnet link was refused. Messages are written for the user who pasted the link.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum MagnetError {
    /// The text does not start with `magnet:?`.
    #[error("not a magnet link (it must start with `magnet:?`)")]
    NotMagnet,
    /// The URI is longer than [`MAX_URI_LEN`].
    #[error("magnet link of {len} bytes is longer than the {max} byte limit")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit, [`MAX_URI_LEN`].
        max: usize,
    },
    /// There is no `xt=urn:btih:` parameter.
    #[error("no `xt=urn:btih:` info-hash in the magnet link")]
    NoInfoHash,
    /// Only BitTorrent v2 hashes (`urn:btmh:`) are given.
    #[error("the magnet link has only a BitTorrent v2 info-hash (`urn:btmh:`); v2 torrents are not supported")]
    OnlyV2,
    /// The btih value is neither 40 hex nor 32 base32 characters.
    #[error("info-hash must be 40 hex or 32 base32 characters (got {len} characters)")]
    BadInfoHash {
        /// Length of the value given, in characters.
        len: usize,
    },
    /// Two different btih hashes.
    #[error("the magnet link names two different info-hashes")]
    ConflictingInfoHashes,
}

impl Magnet {
    /// Parse one magnet URI. Surrounding whitespace (a `.magnet` file's trailing newline) is
    /// ignored. See the module doc for what is skipped and what is an error.
    pub fn parse(text: &str) -> Result<Magnet, MagnetError> {
        let uri = text.trim();
        if uri.len() > MAX_URI_LEN {
            return Err(MagnetError::TooLong {
                len: uri.len(),
                max: MAX_URI_LEN,
            });
        }
        let query = uri
            .get(..8)
            .filter(|p| p.eq_ignore_ascii_case("magnet:?"))
            .map(|_| &uri[8..])
            .ok_or(MagnetError::NotMagnet)?;

        let mut info_hash: Option<InfoHash> = None;
        let mut saw_v2 = false;
        let mut name = None;
        let mut trackers: Vec<String> = Vec::new();
        let mut peers: Vec<SocketAddr> = Vec::new();
        let mut peer_names: Vec<(String, u16)> = Vec::new();

        for param in query.split('&') {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            // Keys are lower case in BEP 9; some generators write them in upper case.
            let key = key.to_ascii_lowercase();
            match base_key(&key) {
                "xt" => {
                    let Ok(value) = String::from_utf8(percent_decode(value, false)) else {
                        continue;
                    };
                    if let Some(hash) = strip_prefix_ignore_case(&value, "urn:btih:") {
                        let hash = parse_info_hash(hash)?;
                        match info_hash {
                            Some(known) if known != hash => {
                                return Err(MagnetError::ConflictingInfoHashes)
                            }
                            _ => info_hash = Some(hash),
                        }
                    } else if strip_prefix_ignore_case(&value, "urn:btmh:").is_some() {
                        saw_v2 = true;
                    }
                }
                "dn" if name.is_none() => name = clean_name(&percent_decode(value, true)),
                "tr" if trackers.len() < MAX_TRACKERS => {
                    if let Some(url) = tracker_url(value) {
                        if !trackers.contains(&url) {
                            trackers.push(url);
                        }
                    }
                }
                "x.pe" if peers.len() + peer_names.len() < MAX_PEERS => match peer_entry(value) {
                    Some(PeerEntry::Addr(a)) if !peers.contains(&a) => peers.push(a),
                    Some(PeerEntry::Name(h, p)) if !peer_names.contains(&(h.clone(), p)) => {
                        peer_names.push((h, p))
                    }
                    _ => {}
                },
                _ => {}
            }
        }
        let info_hash = match info_hash {
            Some(h) => h,
            None if saw_v2 => return Err(MagnetError::OnlyV2),
            None => return Err(MagnetError::NoInfoHash),
        };
        Ok(Magnet {
            info_hash,
            name,
            trackers,
            peers,
            peer_names,
        })
    }

    /// A magnet URI saying the same: [`Magnet::parse`] of it gives back an equal `Magnet`, as
    /// long as it stays within [`MAX_URI_LEN`] (escaping can lengthen a link near the limit).
    /// The hash is written in hex; every other value is percent-encoded where needed.
    pub fn to_uri(&self) -> String {
        let mut uri = format!("magnet:?xt=urn:btih:{}", self.info_hash.to_hex());
        if let Some(name) = &self.name {
            uri.push_str("&dn=");
            percent_encode(name, &mut uri);
        }
        for tr in &self.trackers {
            uri.push_str("&tr=");
            percent_encode(tr, &mut uri);
        }
        for peer in &self.peers {
            uri.push_str("&x.pe=");
            percent_encode(&peer.to_string(), &mut uri);
        }
        for (host, port) in &self.peer_names {
            uri.push_str("&x.pe=");
            percent_encode(&format!("{host}:{port}"), &mut uri);
        }
        uri
    }

    /// What to call the torrent before its metadata arrives: `dn`, or else the hash in hex.
    pub fn display_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| self.info_hash.to_hex())
    }
}

impl FromStr for Magnet {
    type Err = MagnetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Magnet::parse(s)
    }
}

impl fmt::Display for Magnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_uri())
    }
}

/// `tr.1` → `tr`, `x.pe.2` → `x.pe`, `xt.1` → `xt`: BEP 9's numbered forms of repeated keys.
fn base_key(key: &str) -> &str {
    match key.rsplit_once('.') {
        Some((base, n))
            if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && base != "x" =>
        {
            base
        }
        _ => key,
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// 40 hex digits or 32 base32 characters (RFC 4648 alphabet), either case.
fn parse_info_hash(text: &str) -> Result<InfoHash, MagnetError> {
    let bad = MagnetError::BadInfoHash {
        len: text.chars().count(),
    };
    let mut hash = [0u8; 20];
    match text.len() {
        40 => hex::decode_to_slice(text, &mut hash).map_err(|_| bad)?,
        32 => hash = base32_decode(text.as_bytes()).ok_or(bad)?,
        _ => return Err(bad),
    }
    Ok(InfoHash(hash))
}

/// RFC 4648 base32 without padding, 32 characters = 160 bits exactly.
fn base32_decode(text: &[u8]) -> Option<[u8; 20]> {
    let mut out = [0u8; 20];
    let mut acc: u64 = 0;
    let mut bits = 0u32;
    let mut n = 0usize;
    for &c in text {
        let v = match c.to_ascii_uppercase() {
            c @ b'A'..=b'Z' => c - b'A',
            c @ b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        acc = (acc << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            *out.get_mut(n)? = (acc >> bits) as u8;
            n += 1;
            acc &= (1 << bits) - 1;
        }
    }
    (n == 20).then_some(out)
}

/// Percent-decode to bytes; `plus_is_space` for `dn`. A `%` without two hex digits after it is
/// kept as it is.
fn percent_decode(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hi = b.get(i + 1).and_then(|c| (*c as char).to_digit(16));
                let lo = b.get(i + 2).and_then(|c| (*c as char).to_digit(16));
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push((hi * 16 + lo) as u8);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' if plus_is_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// Unreserved characters (RFC 3986) and the delimiters a query value may hold as they are
/// (`:/?@!$'()*,;`, so URLs stay readable) stay; every other byte is written `%XX`, including
/// `&`, `=`, `+`, `#`, `%`, spaces and non-ASCII.
fn percent_encode(s: &str, out: &mut String) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b':'
                    | b'/'
                    | b'?'
                    | b'@'
                    | b'!'
                    | b'$'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b','
                    | b';'
            )
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The display name: lossy UTF-8, control characters removed (it is printed in a terminal),
/// surrounding whitespace trimmed, cut to [`MAX_NAME_LEN`] bytes.
fn clean_name(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut name = String::new();
    for c in text.trim().chars().filter(|c| !c.is_control()) {
        if name.len() + c.len_utf8() > MAX_NAME_LEN {
            break;
        }
        name.push(c);
    }
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A tracker URL we can announce to: http, https or udp, a host, no spaces or control
/// characters. The scheme is kept as written.
fn tracker_url(raw: &str) -> Option<String> {
    let url = String::from_utf8(percent_decode(raw, false)).ok()?;
    let url = url.trim();
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let (scheme, rest) = url.split_once("://")?;
    if !["http", "https", "udp"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme))
    {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    (!host.is_empty()).then(|| url.to_string())
}

enum PeerEntry {
    Addr(SocketAddr),
    Name(String, u16),
}

/// `1.2.3.4:6881`, `[::1]:6881` or `host.example:6881`; port 0 and anything else is `None`.
fn peer_entry(raw: &str) -> Option<PeerEntry> {
    let text = String::from_utf8(percent_decode(raw, false)).ok()?;
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return (addr.port() != 0 && !addr.ip().is_unspecified()).then_some(PeerEntry::Addr(addr));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    let host_ok = !host.is_empty()
        && host.len() <= MAX_HOST_LEN
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !host.starts_with(['-', '.']);
    // Dotted digits only would be an IPv4 literal that failed to parse (`1.2.3.999`).
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    (host_ok && !numeric).then(|| PeerEntry::Name(host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    const HEX: &str = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";

    fn hash() -> InfoHash {
        let mut h = [0u8; 20];
        hex::decode_to_slice(HEX, &mut h).unwrap();
        InfoHash(h)
    }

    fn parse(s: &str) -> Magnet {
        Magnet::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn hex_hash_in_either_case() {
        let m = parse(&format!("magnet:?xt=urn:btih:{HEX}"));
        assert_eq!(m.info_hash, hash());
        assert_eq!(m.name, None);
        assert!(m.trackers.is_empty() && m.peers.is_empty() && m.peer_names.is_empty());
        let upper = parse(&format!("MAGNET:?XT=URN:BTIH:{}", HEX.to_uppercase()));
        assert_eq!(upper.info_hash, hash());
        let mixed = parse(&format!("Magnet:?xt=Urn:BtIh:{}", HEX.to_uppercase()));
        assert_eq!(mixed.info_hash, hash());
        assert_eq!(mixed.display_name(), HEX);
    }

    #[test]
    fn base32_hash() {
        // The base32 form of HEX (RFC 4648), checked with Python's base64.b32encode.
        let b32 = "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK";
        assert_eq!(
            parse(&format!("magnet:?xt=urn:btih:{b32}")).info_hash,
            hash()
        );
        let lower = b32.to_lowercase();
        assert_eq!(
            parse(&format!("magnet:?xt=urn:btih:{lower}")).info_hash,
            hash()
        );
        for bad in [
            "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE1",
            "YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKE=",
        ] {
            assert_eq!(
                Magnet::parse(&format!("magnet:?xt=urn:btih:{bad}")),
                Err(MagnetError::BadInfoHash { len: 32 })
            );
        }
    }

    #[test]
    fn name_trackers_and_peers() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=Big+Buck%20Bunny%21&tr=udp%3A%2F%2Ftracker.example%3A1337%2Fannounce\
             &tr=http://t.example/announce?x=1%2B2&tr.1=https%3A%2F%2Fs.example%2Fa&x.pe=10.0.0.1:6881\
             &x.pe=%5B2001%3Adb8%3A%3A1%5D%3A51413&x.pe=Peer.Example:7000&x.pe.2=[::1]:6881"
        );
        let m = parse(&uri);
        assert_eq!(m.name.as_deref(), Some("Big Buck Bunny!"));
        assert_eq!(m.display_name(), "Big Buck Bunny!");
        assert_eq!(
            m.trackers,
            [
                "udp://tracker.example:1337/announce",
                "http://t.example/announce?x=1+2",
                "https://s.example/a",
            ]
        );
        assert_eq!(
            m.peers,
            [
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6881),
                SocketAddr::new("2001:db8::1".parse().unwrap(), 51413),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 6881),
            ]
        );
        assert_eq!(m.peer_names, [("peer.example".to_string(), 7000)]);
    }

    #[test]
    fn round_trips_through_to_uri() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&dn=caf%C3%A9 %26 b%C3%A4r%2Bplus&tr=udp://a.example:80\
             &tr=https://b.example/x?y=%26&x.pe=[fe80::1]:1&x.pe=1.2.3.4:5&x.pe=h.example:9"
        );
        let m = parse(&uri);
        assert_eq!(m.name.as_deref(), Some("café & bär+plus"));
        assert_eq!(m.trackers[1], "https://b.example/x?y=&");
        let again = parse(&m.to_uri());
        assert_eq!(again, m);
        assert_eq!(m.to_string(), m.to_uri());
        assert_eq!("x".parse::<Magnet>(), Err(MagnetError::NotMagnet));
        assert_eq!(uri.parse::<Magnet>(), Ok(m));
        // The bare minimum round-trips too.
        let bare = parse(&format!("magnet:?xt=urn:btih:{HEX}"));
        assert_eq!(bare.to_uri(), format!("magnet:?xt=urn:btih:{HEX}"));
    }

    #[test]
    fn several_xt_take_the_btih_one() {
        let hybrid = format!(
            "magnet:?xt=urn:btmh:1220{}&xt=urn:btih:{HEX}&dn=x",
            "ab".repeat(32)
        );
        assert_eq!(parse(&hybrid).info_hash, hash());
        let numbered = format!("magnet:?xt.1=urn:sha1:XYZ&xt.2=urn:btih:{HEX}");
        assert_eq!(parse(&numbered).info_hash, hash());
        // The same hash twice (hex and base32) is fine; two different ones are not.
        let twice =
            format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK");
        assert_eq!(parse(&twice).info_hash, hash());
        let other = "0".repeat(40);
        assert_eq!(
            Magnet::parse(&format!("magnet:?xt=urn:btih:{HEX}&xt=urn:btih:{other}")),
            Err(MagnetError::ConflictingInfoHashes)
        );
        let v2 = format!("magnet:?xt=urn:btmh:1220{}&dn=new", "ab".repeat(32));
        let err = Magnet::parse(&v2).unwrap_err();
        assert_eq!(err, MagnetError::OnlyV2);
        assert!(err.to_string().contains("v2"), "{err}");
    }

    #[test]
    fn bad_input_of_every_kind() {
        let cases: &[(&str, MagnetError)] = &[
            ("", MagnetError::NotMagnet),
            ("magnet:", MagnetError::NotMagnet),
            ("http://example.com/?xt=urn:btih:x", MagnetError::NotMagnet),
            ("magnet?xt=urn:btih:", MagnetError::NotMagnet),
            ("magnet:?", MagnetError::NoInfoHash),
            ("magnet:?dn=x&tr=udp://t:1", MagnetError::NoInfoHash),
            ("magnet:?xt=urn:sha1:abc", MagnetError::NoInfoHash),
            ("magnet:?xt", MagnetError::NoInfoHash),
            ("magnet:?xt=urn:btih:", MagnetError::BadInfoHash { len: 0 }),
            (
                "magnet:?xt=urn:btih:abc",
                MagnetError::BadInfoHash { len: 3 },
            ),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88",
                MagnetError::BadInfoHash { len: 39 },
            ),
            (
                "magnet:?xt=urn:btih:g12fe1c06bba254a9dc9f519b335aa7c1367a88a",
                MagnetError::BadInfoHash { len: 40 },
            ),
            (
                "magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a88aa",
                MagnetError::BadInfoHash { len: 41 },
            ),
            (
                "magnet:?xt=urn:btih:é2fe1c06bba254a9dc9f519b335aa7c1367a88a",
                MagnetError::BadInfoHash { len: 39 },
            ),
        ];
        for (uri, want) in cases {
            assert_eq!(Magnet::parse(uri).as_ref(), Err(want), "{uri:?}");
        }
        let msg = MagnetError::NoInfoHash.to_string();
        assert!(msg.contains("xt=urn:btih:"), "{msg}");
        let msg = MagnetError::BadInfoHash { len: 3 }.to_string();
        assert!(msg.contains("40 hex or 32 base32"), "{msg}");
    }

    #[test]
    fn optional_fields_that_are_unusable_are_skipped() {
        let uri = format!(
            "magnet:?xt=urn:btih:{HEX}&tr=wss://t.example&tr=ftp://x&tr=udp://&tr=http://a%20b/&tr=%FF\
             &tr=notaurl&tr=udp://ok.example:6969&tr=udp://ok.example:6969\
             &x.pe=1.2.3.4&x.pe=1.2.3.4:0&x.pe=1.2.3.4:70000&x.pe=::1:6881&x.pe=[::1]:x\
             &x.pe=bad_host:1&x.pe=-x:1&x.pe=1.2.3.999:5&x.pe=0.0.0.0:5&x.pe=%FF:1&x.pe=:1\
             &x.pe=5.6.7.8:9&x.pe=5.6.7.8:9&dn=&dn=second&junk&=&&"
        );
        let m = parse(&uri);
        assert_eq!(m.trackers, ["udp://ok.example:6969"]);
        assert_eq!(m.peers, ["5.6.7.8:9".parse().unwrap()]);
        assert!(m.peer_names.is_empty(), "{:?}", m.peer_names);
        // An empty `dn` does not hide a later one.
        assert_eq!(m.name.as_deref(), Some("second"));
    }

    #[test]
    fn names_are_made_safe_for_a_terminal() {
        let m = parse(&format!(
            "magnet:?xt=urn:btih:{HEX}&dn=%1B%5B2J%1B%5D0%3Bevil%07name%0A%C3%28+"
        ));
        assert_eq!(m.name.as_deref(), Some("[2J]0;evilname\u{fffd}("));
        assert!(!m.name.unwrap().chars().any(char::is_control));
        // Over the cap: cut at a character boundary.
        let long = "%C3%A9".repeat(MAX_NAME_LEN);
        let m = parse(&format!("magnet:?xt=urn:btih:{HEX}&dn={long}"));
        let name = m.name.unwrap();
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(name.chars().all(|c| c == 'é'));
        // Only control characters: no name at all.
        let m = parse(&format!("magnet:?xt=urn:btih:{HEX}&dn=%00%01%7F"));
        assert_eq!(m.name, None);
        assert_eq!(m.display_name(), HEX);
    }

    #[test]
    fn percent_escapes() {
        assert_eq!(percent_decode("a%20b%2fc%2F", false), b"a b/c/");
        assert_eq!(percent_decode("%", false), b"%");
        assert_eq!(percent_decode("%4", false), b"%4");
        assert_eq!(percent_decode("%zz%41", false), b"%zzA");
        assert_eq!(percent_decode("a+b", false), b"a+b");
        assert_eq!(percent_decode("a+b", true), b"a b");
        assert_eq!(percent_decode("%2B", true), b"+");
        let mut s = String::new();
        percent_encode("a b/é~", &mut s);
        assert_eq!(s, "a%20b/%C3%A9~");
        let mut s = String::new();
        percent_encode("udp://t.example:1/a?b=c&d+e#f%", &mut s);
        assert_eq!(s, "udp://t.example:1/a?b%3Dc%26d%2Be%23f%25");
        // The hash itself may be percent-encoded.
        let m = parse(&format!("magnet:?xt=urn%3Abtih%3A{HEX}"));
        assert_eq!(m.info_hash, hash());
    }

    #[test]
    fn whitespace_and_a_trailing_newline_are_ignored() {
        let m = parse(&format!("  magnet:?xt=urn:btih:{HEX}&dn=x\r\n"));
        assert_eq!(m.name.as_deref(), Some("x"));
        assert_eq!(m.info_hash, hash());
    }

    #[test]
    fn limits() {
        // The whole URI.
        let pad = "a".repeat(MAX_URI_LEN);
        let uri = format!("magnet:?xt=urn:btih:{HEX}&x={pad}");
        assert_eq!(
            Magnet::parse(&uri),
            Err(MagnetError::TooLong {
                len: uri.len(),
                max: MAX_URI_LEN
            })
        );
        let fits = format!("magnet:?xt=urn:btih:{HEX}&x=");
        let fits = format!("{fits}{}", "a".repeat(MAX_URI_LEN - fits.len()));
        assert_eq!(parse(&fits).info_hash, hash());
        // Trackers and peers.
        let mut uri = format!("magnet:?xt=urn:btih:{HEX}");
        for i in 0..150 {
            uri.push_str(&format!("&tr=udp://t{i}.example:1"));
        }
        for i in 0..150 {
            uri.push_str(&format!("&x.pe=10.0.{}.{}:1", i / 256, i % 256));
            uri.push_str(&format!("&x.pe=h{i}.example:1"));
        }
        let m = parse(&uri);
        assert_eq!(m.trackers.len(), MAX_TRACKERS);
        assert_eq!(m.trackers[99], "udp://t99.example:1");
        assert_eq!(m.peers.len() + m.peer_names.len(), MAX_PEERS);
        assert_eq!(m.peers.len(), 100);
    }

    #[test]
    fn numbered_keys() {
        assert_eq!(base_key("tr.1"), "tr");
        assert_eq!(base_key("tr.12"), "tr");
        assert_eq!(base_key("x.pe"), "x.pe");
        assert_eq!(base_key("x.pe.3"), "x.pe");
        assert_eq!(base_key("tr."), "tr.");
        assert_eq!(base_key("tr.a"), "tr.a");
        assert_eq!(base_key("x.1"), "x.1");
    }
}
