//! BEP 15 UDP tracker protocol: connect, then announce with the connection id, retransmitting
//! after `base · 2^n`.
//!
//! One socket per announce, so replies to one announce can never be confused with another's;
//! replies from any other address, with another transaction id or too short are ignored.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::{
    clamp_interval, push_peer, AnnounceRequest, AnnounceResponse, Event, TrackerClient,
    TrackerError, MAX_PEERS,
};

/// BEP 15: the magic `protocol_id` of a connect request.
pub(crate) const PROTOCOL_ID: u64 = 0x0417_2710_1980;
/// BEP 15 actions.
pub(crate) const ACTION_CONNECT: u32 = 0;
pub(crate) const ACTION_ANNOUNCE: u32 = 1;
pub(crate) const ACTION_ERROR: u32 = 3;
/// BEP 15: a client may use a connection id for one minute after receiving it.
pub(crate) const CONNECTION_ID_LIFETIME: Duration = Duration::from_secs(60);
/// Large enough for any UDP datagram.
const RECV_BUFFER: usize = 65_536;

/// Announce to a `udp://host:port[/path]` tracker.
pub(crate) async fn announce(
    client: &TrackerClient,
    url: &str,
    request: &AnnounceRequest,
) -> Result<AnnounceResponse, TrackerError> {
    let (host, port) = parse_udp_url(url)?;
    let target = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|_| TrackerError::Resolve(host.clone()))?
        .next()
        .ok_or_else(|| TrackerError::Resolve(host.clone()))?;
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await?;
    let mut exchange = Exchange {
        client,
        socket,
        target,
        attempt: 0,
        buf: vec![0; RECV_BUFFER],
    };
    let result = exchange.run(request).await;
    if let Err(TrackerError::Failure(_)) = &result {
        // The refusal may be about our connection id; get a fresh one next time.
        client.lock_state().connection_ids.remove(&target);
    }
    result
}

/// `udp://host:port/anything` → (host, port). IPv6 hosts are bracketed.
pub(crate) fn parse_udp_url(url: &str) -> Result<(String, u16), TrackerError> {
    let invalid = |reason| TrackerError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("udp") => rest,
        _ => return Err(TrackerError::UnsupportedScheme(url.to_string())),
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| invalid("unclosed '['"))?;
        (
            host,
            after
                .strip_prefix(':')
                .ok_or_else(|| invalid("missing port"))?,
        )
    } else {
        authority
            .rsplit_once(':')
            .ok_or_else(|| invalid("missing port"))?
    };
    if host.is_empty() {
        return Err(invalid("missing host"));
    }
    let port: u16 = port.parse().map_err(|_| invalid("bad port"))?;
    if port == 0 {
        return Err(invalid("port 0"));
    }
    Ok((host.to_string(), port))
}

/// One connect + announce exchange, sharing the BEP 15 retransmission counter `n`.
struct Exchange<'a> {
    client: &'a TrackerClient,
    socket: UdpSocket,
    target: SocketAddr,
    attempt: u32,
    buf: Vec<u8>,
}

impl Exchange<'_> {
    async fn run(&mut self, request: &AnnounceRequest) -> Result<AnnounceResponse, TrackerError> {
        loop {
            let connection_id = match self.cached_connection_id() {
                Some(id) => id,
                None => {
                    let tid: u32 = rand::random();
                    let Some(len) = self
                        .send_and_wait(&connect_packet(tid), tid, ACTION_CONNECT)
                        .await?
                    else {
                        continue;
                    };
                    let id = parse_connect_reply(&self.buf[..len])?;
                    self.client
                        .lock_state()
                        .connection_ids
                        .insert(self.target, (id, Instant::now()));
                    id
                }
            };
            let tid: u32 = rand::random();
            let packet = announce_packet(connection_id, tid, request);
            if let Some(len) = self.send_and_wait(&packet, tid, ACTION_ANNOUNCE).await? {
                return parse_announce_reply(&self.buf[..len], self.target.is_ipv6());
            }
            // Timed out: the connection id may have expired meanwhile; the loop re-checks it.
        }
    }

    fn cached_connection_id(&self) -> Option<u64> {
        let mut state = self.client.lock_state();
        match state.connection_ids.get(&self.target) {
            Some(&(id, at)) if at.elapsed() < CONNECTION_ID_LIFETIME => Some(id),
            Some(_) => {
                state.connection_ids.remove(&self.target);
                None
            }
            None => None,
        }
    }

    /// Send `packet`, wait `base · 2^n` for a matching reply, left in `buf[..len]`.
    /// `Ok(None)`: timed out, `n` was bumped, try again. Fails with `Timeout` once `n` exceeds the cap.
    async fn send_and_wait(
        &mut self,
        packet: &[u8],
        tid: u32,
        action: u32,
    ) -> Result<Option<usize>, TrackerError> {
        let options = self.client.options();
        if self.attempt > options.udp_max_retries {
            return Err(TrackerError::Timeout);
        }
        let wait = options
            .udp_base_timeout
            .saturating_mul(1 << self.attempt.min(8));
        self.socket.send_to(packet, self.target).await?;
        let deadline = Instant::now() + wait;
        loop {
            let received =
                tokio::time::timeout_at(deadline, self.socket.recv_from(&mut self.buf)).await;
            let (len, from) = match received {
                Err(_elapsed) => {
                    self.attempt += 1;
                    return Ok(None);
                }
                Ok(Err(e)) if is_transient(&e) => continue,
                Ok(result) => result?,
            };
            if from != self.target {
                continue;
            }
            match classify_reply(&self.buf[..len], tid, action) {
                Reply::Ignore => continue,
                Reply::Refused(message) => return Err(TrackerError::Failure(message)),
                Reply::Matches => return Ok(Some(len)),
            }
        }
    }
}

/// What one datagram from the tracker's address means to an exchange waiting for `action`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// Too short, another transaction, or another action: keep waiting.
    Ignore,
    /// BEP 15 error action for our transaction, with the tracker's message (lossy, capped).
    Refused(String),
    /// The reply we wait for; its body is for the action's parser.
    Matches,
}

/// Longest error message kept from a UDP tracker (characters).
const MAX_ERROR_CHARS: usize = 1024;

/// BEP 15: every reply starts with `action` and `transaction_id` (4 bytes each).
pub(crate) fn classify_reply(datagram: &[u8], tid: u32, action: u32) -> Reply {
    if datagram.len() < 8 || be_u32(&datagram[4..8]) != tid {
        return Reply::Ignore;
    }
    match be_u32(&datagram[0..4]) {
        ACTION_ERROR => Reply::Refused(
            String::from_utf8_lossy(&datagram[8..])
                .chars()
                .take(MAX_ERROR_CHARS)
                .collect(),
        ),
        got if got == action => Reply::Matches,
        _ => Reply::Ignore,
    }
}

/// ICMP port unreachable from an earlier send shows up as a receive error on some systems; the
/// tracker may still answer a retransmission, so keep waiting out the timeout.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
    )
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

pub(crate) fn connect_packet(tid: u32) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0..8].copy_from_slice(&PROTOCOL_ID.to_be_bytes());
    p[8..12].copy_from_slice(&ACTION_CONNECT.to_be_bytes());
    p[12..16].copy_from_slice(&tid.to_be_bytes());
    p
}

pub(crate) fn parse_connect_reply(reply: &[u8]) -> Result<u64, TrackerError> {
    let id = reply
        .get(8..16)
        .ok_or_else(|| TrackerError::Malformed("short UDP connect reply".into()))?;
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(id);
    Ok(u64::from_be_bytes(bytes))
}

/// BEP 15 event codes.
fn event_code(event: Event) -> u32 {
    match event {
        Event::None => 0,
        Event::Completed => 1,
        Event::Started => 2,
        Event::Stopped => 3,
    }
}

/// BEP 15 announce request: 98 bytes.
pub(crate) fn announce_packet(connection_id: u64, tid: u32, r: &AnnounceRequest) -> Vec<u8> {
    let mut p = Vec::with_capacity(98);
    p.extend_from_slice(&connection_id.to_be_bytes());
    p.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    p.extend_from_slice(&tid.to_be_bytes());
    p.extend_from_slice(&r.info_hash.0);
    p.extend_from_slice(&r.peer_id.0);
    p.extend_from_slice(&r.downloaded.to_be_bytes());
    p.extend_from_slice(&r.left.to_be_bytes());
    p.extend_from_slice(&r.uploaded.to_be_bytes());
    p.extend_from_slice(&event_code(r.event).to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // IP: 0 = the packet's source address
    p.extend_from_slice(&r.key.to_be_bytes());
    // -1 asks for the tracker's default; clamp ours into the signed field.
    let num_want = r
        .num_want
        .map_or(-1, |n| i32::try_from(n).unwrap_or(i32::MAX));
    p.extend_from_slice(&num_want.to_be_bytes());
    p.extend_from_slice(&r.port.to_be_bytes());
    p
}

/// BEP 15 announce reply: 20-byte header, then 6-byte (IPv4 tracker) or 18-byte (IPv6 tracker)
/// peers.
pub(crate) fn parse_announce_reply(
    reply: &[u8],
    ipv6: bool,
) -> Result<AnnounceResponse, TrackerError> {
    if reply.len() < 20 {
        return Err(TrackerError::Malformed("short UDP announce reply".into()));
    }
    let interval = be_u32(&reply[8..12]);
    let leechers = be_u32(&reply[12..16]);
    let seeders = be_u32(&reply[16..20]);
    let entry = if ipv6 { 18 } else { 6 };
    let body = &reply[20..];
    if !body.chunks_exact(entry).remainder().is_empty() {
        return Err(TrackerError::Malformed(format!(
            "UDP peer list length {} is not a multiple of {entry}",
            body.len()
        )));
    }
    let mut peers = Vec::new();
    for e in body.chunks_exact(entry).take(MAX_PEERS) {
        let ip = if ipv6 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&e[..16]);
            IpAddr::V6(Ipv6Addr::from(a))
        } else {
            IpAddr::V4(Ipv4Addr::new(e[0], e[1], e[2], e[3]))
        };
        let port = u16::from_be_bytes([e[entry - 2], e[entry - 1]]);
        push_peer(&mut peers, SocketAddr::new(ip, port));
    }
    Ok(AnnounceResponse {
        interval: clamp_interval(Some(i64::from(interval))),
        min_interval: None,
        peers,
        warning: None,
        complete: Some(seeders),
        incomplete: Some(leechers),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::tracker::http::tests::sample_request;
    use crate::tracker::TrackerOptions;

    fn fast_client(max_retries: u32) -> TrackerClient {
        TrackerClient::with_options(TrackerOptions {
            udp_base_timeout: Duration::from_millis(100),
            udp_max_retries: max_retries,
            ..TrackerOptions::default()
        })
    }

    #[test]
    fn url_parsing() {
        assert_eq!(
            parse_udp_url("udp://tracker.example:1337/announce").unwrap(),
            ("tracker.example".into(), 1337)
        );
        assert_eq!(
            parse_udp_url("UDP://1.2.3.4:80").unwrap(),
            ("1.2.3.4".into(), 80)
        );
        assert_eq!(
            parse_udp_url("udp://[::1]:6969/announce?x").unwrap(),
            ("::1".into(), 6969)
        );
        for bad in [
            "udp://host/announce",
            "udp://:80/",
            "udp://[::1/",
            "udp://h:0",
            "udp://h:99999",
            "udp://[::1]/",
        ] {
            assert!(
                matches!(parse_udp_url(bad), Err(TrackerError::InvalidUrl { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn replies_are_classified_by_transaction_and_action() {
        let reply = |action: u32, tid: u32, body: &[u8]| {
            [&action.to_be_bytes()[..], &tid.to_be_bytes(), body].concat()
        };
        let connect = reply(ACTION_CONNECT, 7, &[0; 8]);
        assert_eq!(classify_reply(&connect, 7, ACTION_CONNECT), Reply::Matches);
        assert_eq!(classify_reply(&connect, 8, ACTION_CONNECT), Reply::Ignore);
        assert_eq!(classify_reply(&connect, 7, ACTION_ANNOUNCE), Reply::Ignore);
        assert_eq!(
            classify_reply(&connect[..7], 7, ACTION_CONNECT),
            Reply::Ignore
        );
        let error = reply(ACTION_ERROR, 7, b"go away \xff");
        assert_eq!(
            classify_reply(&error, 7, ACTION_ANNOUNCE),
            Reply::Refused("go away \u{fffd}".into())
        );
        assert_eq!(classify_reply(&error, 6, ACTION_ANNOUNCE), Reply::Ignore);
        let long = reply(ACTION_ERROR, 7, &[b'x'; 5000]);
        assert!(matches!(
            classify_reply(&long, 7, ACTION_CONNECT),
            Reply::Refused(m) if m.len() == MAX_ERROR_CHARS
        ));
    }

    #[test]
    fn packet_layout() {
        let p = connect_packet(0x01020304);
        assert_eq!(
            p,
            [0, 0, 4, 0x17, 0x27, 0x10, 0x19, 0x80, 0, 0, 0, 0, 1, 2, 3, 4]
        );
        let r = sample_request();
        let p = announce_packet(7, 9, &r);
        assert_eq!(p.len(), 98);
        assert_eq!(&p[0..8], &7u64.to_be_bytes());
        assert_eq!(&p[16..36], &r.info_hash.0);
        assert_eq!(&p[56..64], &2u64.to_be_bytes()); // downloaded
        assert_eq!(&p[64..72], &3u64.to_be_bytes()); // left
        assert_eq!(&p[72..80], &1u64.to_be_bytes()); // uploaded
        assert_eq!(&p[80..84], &2u32.to_be_bytes()); // started
        assert_eq!(&p[88..92], &0xDEADBEEFu32.to_be_bytes());
        assert_eq!(&p[92..96], &50i32.to_be_bytes());
        assert_eq!(&p[96..98], &6881u16.to_be_bytes());
    }

    #[test]
    fn announce_reply_parsing() {
        let mut reply = Vec::new();
        for v in [ACTION_ANNOUNCE, 5, 1800, 3, 4] {
            reply.extend_from_slice(&v.to_be_bytes());
        }
        reply.extend_from_slice(&[127, 0, 0, 1, 0x1A, 0xE1]);
        let r = parse_announce_reply(&reply, false).unwrap();
        assert_eq!(r.peers, vec!["127.0.0.1:6881".parse().unwrap()]);
        assert_eq!((r.complete, r.incomplete), (Some(4), Some(3)));
        assert_eq!(r.interval, Duration::from_secs(1800));
        assert!(matches!(
            parse_announce_reply(&reply, true),
            Err(TrackerError::Malformed(_))
        ));
        assert!(matches!(
            parse_announce_reply(&reply[..19], false),
            Err(TrackerError::Malformed(_))
        ));
        let mut v6 = reply[..20].to_vec();
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&6882u16.to_be_bytes());
        assert_eq!(
            parse_announce_reply(&v6, true).unwrap().peers,
            vec!["[::1]:6882".parse().unwrap()]
        );
    }

    /// What the scripted server does with the next packet.
    #[derive(Clone, Copy)]
    enum Script {
        /// Answer correctly.
        Answer,
        /// Say nothing.
        Drop,
        /// Answer with an error packet.
        Error,
        /// First send junk: wrong transaction id, wrong action, from another socket; then answer.
        NoiseThenAnswer,
    }

    struct FakeServer {
        url: String,
        connects: Arc<AtomicUsize>,
        announces: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// A BEP 15 server following `script` packet by packet (then answering everything).
    async fn fake_server(bind: &str, script: Vec<Script>) -> FakeServer {
        let socket = UdpSocket::bind(bind).await.unwrap();
        let addr = socket.local_addr().unwrap();
        let other = UdpSocket::bind(SocketAddr::new(addr.ip(), 0))
            .await
            .unwrap();
        let connects = Arc::new(AtomicUsize::new(0));
        let announces = Arc::new(AtomicUsize::new(0));
        let (c, a) = (connects.clone(), announces.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let mut script = script.into_iter();
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let pkt = &buf[..len];
                let action = be_u32(&pkt[8..12]);
                let tid = be_u32(&pkt[12..16]);
                if action == ACTION_CONNECT {
                    c.fetch_add(1, Ordering::SeqCst);
                } else {
                    a.fetch_add(1, Ordering::SeqCst);
                }
                let mut reply = Vec::new();
                match script.next().unwrap_or(Script::Answer) {
                    Script::Drop => continue,
                    Script::Error => {
                        reply.extend_from_slice(&ACTION_ERROR.to_be_bytes());
                        reply.extend_from_slice(&tid.to_be_bytes());
                        reply.extend_from_slice(b"go away");
                        socket.send_to(&reply, from).await.unwrap();
                        continue;
                    }
                    Script::NoiseThenAnswer => {
                        let mut junk = Vec::new();
                        junk.extend_from_slice(&action.to_be_bytes());
                        junk.extend_from_slice(&tid.wrapping_add(1).to_be_bytes());
                        junk.extend_from_slice(&[0; 12]);
                        socket.send_to(&junk, from).await.unwrap();
                        junk[0..4].copy_from_slice(&99u32.to_be_bytes());
                        junk[4..8].copy_from_slice(&tid.to_be_bytes());
                        socket.send_to(&junk, from).await.unwrap();
                        let mut err = ACTION_ERROR.to_be_bytes().to_vec();
                        err.extend_from_slice(&tid.to_be_bytes());
                        other.send_to(&err, from).await.unwrap();
                        socket.send_to(&[0, 0, 0], from).await.unwrap();
                    }
                    Script::Answer => {}
                }
                reply.extend_from_slice(&action.to_be_bytes());
                reply.extend_from_slice(&tid.to_be_bytes());
                if action == ACTION_CONNECT {
                    reply.extend_from_slice(&0x1122_3344_5566_7788u64.to_be_bytes());
                } else {
                    assert_eq!(&pkt[0..8], &0x1122_3344_5566_7788u64.to_be_bytes());
                    for v in [900u32, 2, 1] {
                        reply.extend_from_slice(&v.to_be_bytes());
                    }
                    let peer: SocketAddr = if addr.is_ipv6() {
                        "[::1]:7000"
                    } else {
                        "127.0.0.9:7000"
                    }
                    .parse()
                    .unwrap();
                    match peer.ip() {
                        IpAddr::V4(ip) => reply.extend_from_slice(&ip.octets()),
                        IpAddr::V6(ip) => reply.extend_from_slice(&ip.octets()),
                    }
                    reply.extend_from_slice(&peer.port().to_be_bytes());
                }
                socket.send_to(&reply, from).await.unwrap();
            }
        });
        let url = match addr {
            SocketAddr::V4(a) => format!("udp://{a}/announce"),
            SocketAddr::V6(a) => format!("udp://[{}]:{}/announce", a.ip(), a.port()),
        };
        FakeServer {
            url,
            connects,
            announces,
            task,
        }
    }

    #[tokio::test]
    async fn connect_and_announce_reusing_connection_id() {
        let server = fake_server("127.0.0.1:0", vec![]).await;
        let client = fast_client(2);
        let r = client
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(r.peers, vec!["127.0.0.9:7000".parse().unwrap()]);
        assert_eq!(
            (r.complete, r.incomplete, r.interval),
            (Some(1), Some(2), Duration::from_secs(900))
        );
        client
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        // A clone shares the cache.
        client
            .clone()
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(server.connects.load(Ordering::SeqCst), 1);
        assert_eq!(server.announces.load(Ordering::SeqCst), 3);

        // Once older than a minute, the id is not used again.
        for (_, at) in client.lock_state().connection_ids.values_mut() {
            *at = Instant::now()
                .checked_sub(CONNECTION_ID_LIFETIME + Duration::from_secs(1))
                .unwrap();
        }
        client
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(server.connects.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn ipv6_tracker_gets_18_byte_peers() {
        let Ok(probe) = UdpSocket::bind("[::1]:0").await else {
            eprintln!("no IPv6 loopback here; skipping");
            return;
        };
        drop(probe);
        let server = fake_server("[::1]:0", vec![]).await;
        let r = fast_client(1)
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(r.peers, vec!["[::1]:7000".parse().unwrap()]);
    }

    #[tokio::test]
    async fn error_action_is_a_failure_and_drops_the_connection_id() {
        let server = fake_server("127.0.0.1:0", vec![Script::Answer, Script::Error]).await;
        let client = fast_client(1);
        let err = client
            .announce(&server.url, &sample_request())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure(m) if m == "go away"),
            "{err}"
        );
        client
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(server.connects.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn noise_is_ignored() {
        let server = fake_server(
            "127.0.0.1:0",
            vec![Script::NoiseThenAnswer, Script::NoiseThenAnswer],
        )
        .await;
        let r = fast_client(0)
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(r.peers.len(), 1);
    }

    #[tokio::test]
    async fn retransmits_then_succeeds() {
        // Connect lost once, announce lost once: attempts n = 0 and 1 time out, n = 2 answers.
        let server = fake_server(
            "127.0.0.1:0",
            vec![Script::Drop, Script::Answer, Script::Drop],
        )
        .await;
        let started = Instant::now();
        let r = fast_client(2)
            .announce(&server.url, &sample_request())
            .await
            .unwrap();
        assert_eq!(r.peers.len(), 1);
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "waited 100 + 200 ms"
        );
        assert_eq!(server.connects.load(Ordering::SeqCst), 2);
        assert_eq!(server.announces.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn dead_tracker_times_out_after_the_retry_cap() {
        let server = fake_server("127.0.0.1:0", vec![Script::Drop; 10]).await;
        let started = Instant::now();
        let err = fast_client(2)
            .announce(&server.url, &sample_request())
            .await
            .unwrap_err();
        assert!(matches!(err, TrackerError::Timeout), "{err}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(700) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        assert_eq!(server.connects.load(Ordering::SeqCst), 3);
    }
}
