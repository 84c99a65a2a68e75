//! Local Service Discovery (BEP 14): finding peers of the same torrents on the local network by
//! IPv4 multicast.
//!
//! It owns one UDP socket joined to the LSD group, the announce rate limit and the intake limits.
//! It never decides which torrents may be announced (private torrents, BEP 27, never are: the
//! caller's business) and never dials: it yields `(info-hash, address)` pairs.
//!
//! The message codec ([`parse_announce`], [`format_announce`]) and the two limiters
//! ([`AnnounceLimiter`], [`IntakeLimiter`]) are pure (time comes in as an argument); only
//! [`Lsd`] touches a socket. IPv6 (`[ff15::efc0:988f]:6771`) is not done yet.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::types::InfoHash;

/// BEP 14: the IPv4 multicast group and port.
pub const LSD_GROUP_V4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 192, 152, 143), 6771);

/// BEP 14: announce a torrent at most once a minute.
pub const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(60);

/// Largest datagram read: an Ethernet MTU (1500) less the IPv4 and UDP headers (28). A message
/// needs a few hundred bytes; anything longer is not LSD.
pub const MAX_MESSAGE_BYTES: usize = 1472;

/// Info-hashes taken from one message (more are ignored). Each `Infohash:` line is 52 bytes, so
/// an honest sender fits about 25 in a datagram; libtorrent sends one per message.
pub const MAX_INFOHASHES_PER_MESSAGE: usize = 16;

/// Messages accepted per second from the whole LAN (a burst of this many, then this many a
/// second); a LAN with hundreds of LSD clients each announcing every few minutes stays far below.
pub const MAX_MESSAGES_PER_SECOND: u32 = 20;

/// Longest cookie kept; ours is 16 hex digits.
const MAX_COOKIE_BYTES: usize = 64;

/// Peers buffered for the session; when it reads too slowly, newer ones are dropped (another
/// announce comes within minutes).
const PEER_CHANNEL: usize = 256;

/// One parsed `BT-SEARCH` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// The sender's BitTorrent port (TCP/uTP), from `Port:`.
    pub port: u16,
    /// Distinct info-hashes, at most [`MAX_INFOHASHES_PER_MESSAGE`], in message order.
    pub info_hashes: Vec<InfoHash>,
    /// The sender's `cookie:`, used to recognise our own messages looping back.
    pub cookie: Option<String>,
}

/// Why a datagram is not an LSD announce.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LsdParseError {
    /// Longer than [`MAX_MESSAGE_BYTES`].
    #[error("LSD message of {0} bytes is too long")]
    TooLong(usize),
    /// The first line is not `BT-SEARCH * HTTP/1.1`.
    #[error("not a BT-SEARCH message")]
    NotSearch,
    /// No `Port:` header, or one that is not a port in 1..=65535.
    #[error("missing or bad Port header")]
    BadPort,
    /// No `Infohash:` header with 40 hex digits.
    #[error("no valid Infohash header")]
    NoInfohash,
}

/// Parses one datagram. Header names are case-insensitive; lines may end in CRLF or LF; an
/// `Infohash:` that is not 40 hex digits is skipped; hashes past [`MAX_INFOHASHES_PER_MESSAGE`]
/// are ignored.
pub fn parse_announce(data: &[u8]) -> Result<Announce, LsdParseError> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(LsdParseError::TooLong(data.len()));
    }
    let mut lines = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    if lines.next() != Some(b"BT-SEARCH * HTTP/1.1".as_slice()) {
        return Err(LsdParseError::NotSearch);
    }
    let mut port = None;
    let mut info_hashes: Vec<InfoHash> = Vec::new();
    let mut cookie = None;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"port") {
            port = parse_port(value);
            if port.is_none() {
                return Err(LsdParseError::BadPort);
            }
        } else if name.eq_ignore_ascii_case(b"infohash") {
            if info_hashes.len() >= MAX_INFOHASHES_PER_MESSAGE {
                continue;
            }
            if let Some(h) = parse_hash(value) {
                if !info_hashes.contains(&h) {
                    info_hashes.push(h);
                }
            }
        } else if name.eq_ignore_ascii_case(b"cookie") && value.len() <= MAX_COOKIE_BYTES {
            cookie = std::str::from_utf8(value).ok().map(str::to_string);
        }
    }
    let port = port.ok_or(LsdParseError::BadPort)?;
    if info_hashes.is_empty() {
        return Err(LsdParseError::NoInfohash);
    }
    Ok(Announce {
        port,
        info_hashes,
        cookie,
    })
}

fn parse_port(value: &[u8]) -> Option<u16> {
    if value.is_empty() || value.len() > 5 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Five ASCII digits parse as u32 without overflow.
    let n: u32 = std::str::from_utf8(value).ok()?.parse().ok()?;
    u16::try_from(n).ok().filter(|&p| p != 0)
}

fn parse_hash(value: &[u8]) -> Option<InfoHash> {
    if value.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    hex::decode_to_slice(value, &mut out).ok()?;
    Some(InfoHash(out))
}

/// One `BT-SEARCH` message announcing `hashes` (callers keep to [`MAX_INFOHASHES_PER_MESSAGE`])
/// on `port`, with our `cookie`.
pub fn format_announce(port: u16, hashes: &[InfoHash], cookie: &str) -> Vec<u8> {
    let mut s = format!("BT-SEARCH * HTTP/1.1\r\nHost: {LSD_GROUP_V4}\r\nPort: {port}\r\n");
    for h in hashes {
        s.push_str(&format!("Infohash: {}\r\n", h.to_hex()));
    }
    s.push_str(&format!("cookie: {cookie}\r\n\r\n\r\n"));
    s.into_bytes()
}

/// Keeps each torrent to one announce per [`MIN_ANNOUNCE_INTERVAL`]. Remembers only torrents
/// announced within the last interval, so it holds at most as many as were announced then.
#[derive(Debug, Default)]
pub struct AnnounceLimiter {
    last: HashMap<InfoHash, Instant>,
}

impl AnnounceLimiter {
    /// The hashes of `wanted` that may be announced at `now` (each once), recorded as announced.
    pub fn due(&mut self, wanted: &[InfoHash], now: Instant) -> Vec<InfoHash> {
        self.last
            .retain(|_, &mut at| now.saturating_duration_since(at) < MIN_ANNOUNCE_INTERVAL);
        let mut out = Vec::new();
        for h in wanted {
            if !self.last.contains_key(h) {
                self.last.insert(*h, now);
                out.push(*h);
            }
        }
        out
    }
}

/// A token bucket over incoming messages: [`MAX_MESSAGES_PER_SECOND`] a second, bursts of as many.
#[derive(Debug)]
pub struct IntakeLimiter {
    tokens: f64,
    at: Option<Instant>,
}

impl Default for IntakeLimiter {
    fn default() -> Self {
        IntakeLimiter {
            tokens: f64::from(MAX_MESSAGES_PER_SECOND),
            at: None,
        }
    }
}

impl IntakeLimiter {
    /// Whether a message arriving at `now` may be handled.
    pub fn allow(&mut self, now: Instant) -> bool {
        let rate = f64::from(MAX_MESSAGES_PER_SECOND);
        if let Some(at) = self.at {
            let refill = now.saturating_duration_since(at).as_secs_f64() * rate;
            self.tokens = (self.tokens + refill).min(rate);
        }
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A peer heard on the LAN: the torrent and where its BitTorrent port is.
pub type LsdPeer = (InfoHash, SocketAddr);

/// Why LSD could not start.
#[derive(Debug, thiserror::Error)]
pub enum LsdError {
    /// Creating, binding or joining the multicast group failed (no multicast route, port rules).
    #[error("LSD cannot use {LSD_GROUP_V4}: {0}")]
    Socket(#[from] std::io::Error),
}

/// The running service. Dropping it stops the receive task and closes the socket.
#[derive(Debug)]
pub struct Lsd {
    socket: Arc<UdpSocket>,
    listen_port: u16,
    cookie: String,
    limiter: Mutex<AnnounceLimiter>,
    task: JoinHandle<()>,
}

impl Lsd {
    /// Joins the LSD group and starts listening. `listen_port` is the BitTorrent port announced.
    /// Fails when the machine cannot join the group (say, no multicast route): the session then
    /// runs without LSD.
    pub async fn start(listen_port: u16) -> Result<(Lsd, mpsc::Receiver<LsdPeer>), LsdError> {
        let socket = Arc::new(UdpSocket::from_std(bind_group()?)?);
        let cookie = format!("{:016x}", rand::random::<u64>());
        let (tx, rx) = mpsc::channel(PEER_CHANNEL);
        let task = tokio::spawn(receive(Arc::clone(&socket), cookie.clone(), tx));
        Ok((
            Lsd {
                socket,
                listen_port,
                cookie,
                limiter: Mutex::new(AnnounceLimiter::default()),
                task,
            },
            rx,
        ))
    }

    /// Announces those of `hashes` not announced in the last minute. Send errors are logged,
    /// not returned: LSD is best effort.
    pub async fn announce(&self, hashes: &[InfoHash]) {
        let due = self
            .limiter
            .lock()
            // The limiter is a plain map; a panic elsewhere leaves it usable.
            .unwrap_or_else(|p| p.into_inner())
            .due(hashes, Instant::now());
        for chunk in due.chunks(MAX_INFOHASHES_PER_MESSAGE) {
            let msg = format_announce(self.listen_port, chunk, &self.cookie);
            if let Err(e) = self.socket.send_to(&msg, LSD_GROUP_V4).await {
                tracing::debug!("LSD announce failed: {e}");
            }
        }
    }

    /// Stops listening and waits for the receive task to end.
    pub async fn shutdown(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Lsd {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind_group() -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Other LSD clients on this machine bind the same port.
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, LSD_GROUP_V4.port())).into())?;
    s.join_multicast_v4(LSD_GROUP_V4.ip(), &Ipv4Addr::UNSPECIFIED)?;
    // Clients on this same machine should hear us too; our own copies are dropped by cookie.
    s.set_multicast_loop_v4(true)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

async fn receive(socket: Arc<UdpSocket>, cookie: String, tx: mpsc::Sender<LsdPeer>) {
    // One byte more than the limit, so an over-long datagram is seen as such, not truncated.
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES + 1];
    let mut intake = IntakeLimiter::default();
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("LSD receive error: {e}");
                continue;
            }
        };
        if !intake.allow(Instant::now()) {
            continue;
        }
        let Ok(ann) = parse_announce(&buf[..n]) else {
            continue;
        };
        if ann.cookie.as_deref() == Some(cookie.as_str()) {
            continue;
        }
        let peer = SocketAddr::new(from.ip(), ann.port);
        for h in ann.info_hashes {
            if tx.try_send((h, peer)).is_err() {
                if tx.is_closed() {
                    return;
                }
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(b: u8) -> InfoHash {
        InfoHash([b; 20])
    }

    #[test]
    fn formatted_announce_parses_back() {
        let msg = format_announce(6881, &[h(1), h(0xab)], "c00k1e");
        let ann = parse_announce(&msg).expect("our own format parses");
        assert_eq!(
            ann,
            Announce {
                port: 6881,
                info_hashes: vec![h(1), h(0xab)],
                cookie: Some("c00k1e".into()),
            }
        );
    }

    #[test]
    fn libtorrent_style_message_with_lf_and_odd_case() {
        let msg = b"BT-SEARCH * HTTP/1.1\nhost: 239.192.152.143:6771\nPORT:  51413 \n\
            INFOHASH: ABABABABABABABABABABABABABABABABABABABAB\nx-junk\n\n";
        let ann = parse_announce(msg).expect("parses");
        assert_eq!(ann.port, 51413);
        assert_eq!(ann.info_hashes, vec![h(0xab)]);
        assert_eq!(ann.cookie, None);
    }

    #[test]
    fn refusals() {
        let ok_hash = "Infohash: 0101010101010101010101010101010101010101\r\n";
        let with = |head: &str, rest: &str| format!("{head}\r\n{rest}").into_bytes();
        assert_eq!(
            parse_announce(&with(
                "M-SEARCH * HTTP/1.1",
                &format!("Port: 1\r\n{ok_hash}")
            )),
            Err(LsdParseError::NotSearch)
        );
        for port in ["0", "65536", "-1", "12a", "", "000001"] {
            let msg = with(
                "BT-SEARCH * HTTP/1.1",
                &format!("Port: {port}\r\n{ok_hash}"),
            );
            assert_eq!(parse_announce(&msg), Err(LsdParseError::BadPort), "{port}");
        }
        assert_eq!(
            parse_announce(&with("BT-SEARCH * HTTP/1.1", ok_hash)),
            Err(LsdParseError::BadPort)
        );
        for bad in ["0101", "zz01010101010101010101010101010101010101", ""] {
            let msg = with(
                "BT-SEARCH * HTTP/1.1",
                &format!("Port: 1\r\nInfohash: {bad}\r\n"),
            );
            assert_eq!(
                parse_announce(&msg),
                Err(LsdParseError::NoInfohash),
                "{bad}"
            );
        }
        let long = vec![b'a'; MAX_MESSAGE_BYTES + 1];
        assert_eq!(
            parse_announce(&long),
            Err(LsdParseError::TooLong(MAX_MESSAGE_BYTES + 1))
        );
        assert_eq!(parse_announce(b""), Err(LsdParseError::NotSearch));
    }

    #[test]
    fn hashes_are_deduplicated_and_capped() {
        let mut hashes: Vec<InfoHash> = (0..MAX_INFOHASHES_PER_MESSAGE as u8 + 5).map(h).collect();
        hashes.insert(1, h(0));
        let msg = format_announce(1, &hashes, "x");
        assert!(msg.len() <= MAX_MESSAGE_BYTES);
        let ann = parse_announce(&msg).expect("parses");
        let want: Vec<InfoHash> = (0..MAX_INFOHASHES_PER_MESSAGE as u8).map(h).collect();
        assert_eq!(ann.info_hashes, want);
    }

    #[test]
    fn each_torrent_is_announced_at_most_once_a_minute() {
        let t0 = Instant::now();
        let mut lim = AnnounceLimiter::default();
        assert_eq!(lim.due(&[h(1), h(2), h(1)], t0), vec![h(1), h(2)]);
        assert_eq!(
            lim.due(&[h(1), h(3)], t0 + Duration::from_secs(30)),
            vec![h(3)]
        );
        let later = t0 + MIN_ANNOUNCE_INTERVAL;
        assert_eq!(lim.due(&[h(1), h(2), h(3)], later), vec![h(1), h(2)]);
        // Only torrents announced within the last minute are remembered.
        assert_eq!(lim.last.len(), 3);
        lim.due(&[], later + MIN_ANNOUNCE_INTERVAL);
        assert!(lim.last.is_empty());
    }

    #[test]
    fn intake_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut lim = IntakeLimiter::default();
        let burst = (0..100).filter(|_| lim.allow(t0)).count();
        assert_eq!(burst, MAX_MESSAGES_PER_SECOND as usize);
        let half = t0 + Duration::from_millis(500);
        let more = (0..100).filter(|_| lim.allow(half)).count();
        assert_eq!(more, MAX_MESSAGES_PER_SECOND as usize / 2);
        let much_later = t0 + Duration::from_secs(3600);
        let capped = (0..100).filter(|_| lim.allow(much_later)).count();
        assert_eq!(capped, MAX_MESSAGES_PER_SECOND as usize);
    }

    #[test]
    fn odd_inputs_are_refused_or_parse_within_limits() {
        for input in [
            &b""[..],
            b"BT-SEARCH * HTTP/1.1\r\n",
            b"BT-SEARCH * HTTP/1.1\r\nPort:\r\nInfohash:\r\n:::\r\n",
            b"BT-SEARCH * HTTP/1.1\r\nPort: 7\r\nPort: 8\r\nInfohash: 0707070707070707070707070707070707070707\r\ncookie: \xff\xfe\r\n",
            &[0xff; 2000],
        ] {
            if let Ok(ann) = parse_announce(input) {
                assert_eq!(ann.port, 8, "the last Port header wins");
                assert_eq!(ann.info_hashes, vec![h(7)]);
                assert_eq!(ann.cookie, None, "a cookie that is not UTF-8 is dropped");
            }
        }
    }
}
