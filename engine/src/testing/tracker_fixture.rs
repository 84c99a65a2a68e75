//! In-process HTTP and UDP trackers for swarm tests.
//!
//! Each keeps a real swarm per info-hash (a peer is the request's source IP plus its `port`;
//! `stopped` removes it), answers with compact peers other than the requester, and records every
//! announce for assertions. Loopback only. Dropping a fixture stops its tasks.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

use crate::tracker::Event;
use crate::types::{InfoHash, PeerId};

/// Interval the fixtures tell clients by default (clients clamp it up to their own floor).
pub const DEFAULT_FIXTURE_INTERVAL: Duration = Duration::from_secs(2);

/// One announce as a fixture received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedAnnounce {
    /// Torrent.
    pub info_hash: InfoHash,
    /// Announcing peer's id.
    pub peer_id: PeerId,
    /// Event sent.
    pub event: Event,
    /// `port` parameter.
    pub port: u16,
    /// `left` parameter.
    pub left: u64,
    /// Where the request came from.
    pub source: SocketAddr,
}

/// What the two fixtures share: swarms and the announce log.
#[derive(Debug, Default)]
struct Swarms {
    /// info-hash → peer address → bytes left.
    peers: HashMap<InfoHash, HashMap<SocketAddr, u64>>,
    log: Vec<RecordedAnnounce>,
}

/// A fixture's reply to one announce.
struct Reply {
    peers: Vec<SocketAddr>,
    complete: u32,
    incomplete: u32,
}

#[derive(Clone, Debug, Default)]
struct Shared(Arc<Mutex<Swarms>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Swarms> {
        // Test helper: a poisoned lock means a test already panicked; keep the data.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, a: RecordedAnnounce) -> Reply {
        let mut s = self.lock();
        let me = SocketAddr::new(a.source.ip(), a.port);
        let swarm = s.peers.entry(a.info_hash).or_default();
        if a.event == Event::Stopped {
            swarm.remove(&me);
        } else {
            swarm.insert(me, a.left);
        }
        let peers = swarm.keys().filter(|&&p| p != me).copied().collect();
        let complete = swarm.values().filter(|&&left| left == 0).count() as u32;
        let incomplete = swarm.len() as u32 - complete;
        s.log.push(a);
        Reply {
            peers,
            complete,
            incomplete,
        }
    }

    fn peers(&self, info_hash: &InfoHash) -> Vec<SocketAddr> {
        self.lock()
            .peers
            .get(info_hash)
            .map(|s| s.keys().copied().collect())
            .unwrap_or_default()
    }
}

fn compact(peers: &[SocketAddr]) -> (Vec<u8>, Vec<u8>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for p in peers {
        match p.ip() {
            IpAddr::V4(ip) => {
                v4.extend_from_slice(&ip.octets());
                v4.extend_from_slice(&p.port().to_be_bytes());
            }
            IpAddr::V6(ip) => {
                v6.extend_from_slice(&ip.octets());
                v6.extend_from_slice(&p.port().to_be_bytes());
            }
        }
    }
    (v4, v6)
}

/// A BEP 3 HTTP tracker on `127.0.0.1`, answering compact replies.
#[derive(Debug)]
pub struct HttpTracker {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl HttpTracker {
    /// Start on a free loopback port, telling clients [`DEFAULT_FIXTURE_INTERVAL`].
    pub async fn start() -> HttpTracker {
        Self::start_with_interval(DEFAULT_FIXTURE_INTERVAL).await
    }

    /// Start on a free loopback port, telling clients `interval`.
    pub async fn start_with_interval(interval: Duration) -> HttpTracker {
        // Test helper: without a loopback port the test cannot run at all.
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback TCP");
        let addr = listener.local_addr().expect("bound socket has an address");
        let shared = Shared::default();
        let task = tokio::spawn(run_http(listener, shared.clone(), interval));
        HttpTracker { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT/announce`.
    pub fn announce_url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }

    /// Every announce received so far, oldest first.
    pub fn announces(&self) -> Vec<RecordedAnnounce> {
        self.shared.lock().log.clone()
    }

    /// Peers currently in the swarm of `info_hash`.
    pub fn peers(&self, info_hash: &InfoHash) -> Vec<SocketAddr> {
        self.shared.peers(info_hash)
    }
}

impl Drop for HttpTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_http(listener: TcpListener, shared: Shared, interval: Duration) {
    // Connection tasks live in the set, so aborting this task ends them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, source)) = accepted else { continue };
                connections.spawn(serve_http(stream, source, shared.clone(), interval));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_http(mut stream: TcpStream, source: SocketAddr, shared: Shared, interval: Duration) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            return;
        }
    }
    let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let target = line.split(' ').nth(1).unwrap_or_default();
    let body = match target.split_once('?') {
        Some(("/announce", query)) => match parse_query(query, source) {
            Ok(a) => {
                let reply = shared.handle(a);
                http_reply_body(&reply, interval)
            }
            Err(reason) => failure_body(reason),
        },
        _ => failure_body("not an announce"),
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

fn failure_body(reason: &str) -> Vec<u8> {
    format!("d14:failure reason{}:{}e", reason.len(), reason).into_bytes()
}

fn http_reply_body(reply: &Reply, interval: Duration) -> Vec<u8> {
    let (v4, v6) = compact(&reply.peers);
    // Keys in bencode's sorted order.
    let mut body = format!(
        "d8:completei{}e10:incompletei{}e8:intervali{}e5:peers{}:",
        reply.complete,
        reply.incomplete,
        interval.as_secs(),
        v4.len()
    )
    .into_bytes();
    body.extend_from_slice(&v4);
    body.extend_from_slice(format!("6:peers6{}:", v6.len()).as_bytes());
    body.extend_from_slice(&v6);
    body.push(b'e');
    body
}

fn parse_query(query: &str, source: SocketAddr) -> Result<RecordedAnnounce, &'static str> {
    let mut params: HashMap<&str, Vec<u8>> = HashMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        params.insert(k, percent_decode(v).ok_or("bad percent-encoding")?);
    }
    let bytes20 = |k: &str| -> Result<[u8; 20], &'static str> {
        params
            .get(k)
            .and_then(|v| <[u8; 20]>::try_from(v.as_slice()).ok())
            .ok_or("bad info_hash or peer_id")
    };
    let number = |k: &str| -> Result<u64, &'static str> {
        params
            .get(k)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
            .ok_or("missing or bad number")
    };
    let event = match params.get("event").map(Vec::as_slice) {
        None | Some(b"") | Some(b"empty") => Event::None,
        Some(b"started") => Event::Started,
        Some(b"completed") => Event::Completed,
        Some(b"stopped") => Event::Stopped,
        Some(_) => return Err("bad event"),
    };
    Ok(RecordedAnnounce {
        info_hash: InfoHash(bytes20("info_hash")?),
        peer_id: PeerId(bytes20("peer_id")?),
        event,
        port: u16::try_from(number("port")?).map_err(|_| "bad port")?,
        left: number("left")?,
        source,
    })
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// A BEP 15 UDP tracker on `127.0.0.1`.
#[derive(Debug)]
pub struct UdpTracker {
    addr: SocketAddr,
    shared: Shared,
    task: JoinHandle<()>,
}

impl UdpTracker {
    /// Start on a free loopback port, telling clients [`DEFAULT_FIXTURE_INTERVAL`].
    pub async fn start() -> UdpTracker {
        Self::start_with_interval(DEFAULT_FIXTURE_INTERVAL).await
    }

    /// Start on a free loopback port, telling clients `interval`.
    pub async fn start_with_interval(interval: Duration) -> UdpTracker {
        // Test helper: without a loopback port the test cannot run at all.
        let socket = UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind loopback UDP");
        let addr = socket.local_addr().expect("bound socket has an address");
        let shared = Shared::default();
        let task = tokio::spawn(run_udp(socket, shared.clone(), interval));
        UdpTracker { addr, shared, task }
    }

    /// `udp://127.0.0.1:PORT/announce`.
    pub fn announce_url(&self) -> String {
        format!("udp://{}/announce", self.addr)
    }

    /// Every announce received so far, oldest first.
    pub fn announces(&self) -> Vec<RecordedAnnounce> {
        self.shared.lock().log.clone()
    }

    /// Peers currently in the swarm of `info_hash`.
    pub fn peers(&self, info_hash: &InfoHash) -> Vec<SocketAddr> {
        self.shared.peers(info_hash)
    }
}

impl Drop for UdpTracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run_udp(socket: UdpSocket, shared: Shared, interval: Duration) {
    let mut issued: Vec<u64> = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let p = &buf[..len];
        if len < 16 {
            continue;
        }
        let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
        let u64_at = |i: usize| (u64::from(u32_at(i)) << 32) | u64::from(u32_at(i + 4));
        let (action, tid) = (u32_at(8), u32_at(12));
        let mut reply = Vec::new();
        match action {
            0 if u64_at(0) == 0x0417_2710_1980 => {
                let id: u64 = rand::random();
                // Ids are never expired here; keep the list bounded anyway.
                if issued.len() > 1024 {
                    issued.remove(0);
                }
                issued.push(id);
                reply.extend_from_slice(&0u32.to_be_bytes());
                reply.extend_from_slice(&tid.to_be_bytes());
                reply.extend_from_slice(&id.to_be_bytes());
            }
            1 if len >= 98 && issued.contains(&u64_at(0)) => {
                let mut hash = [0u8; 20];
                hash.copy_from_slice(&p[16..36]);
                let mut peer_id = [0u8; 20];
                peer_id.copy_from_slice(&p[36..56]);
                let event = match u32_at(80) {
                    1 => Event::Completed,
                    2 => Event::Started,
                    3 => Event::Stopped,
                    _ => Event::None,
                };
                let a = RecordedAnnounce {
                    info_hash: InfoHash(hash),
                    peer_id: PeerId(peer_id),
                    event,
                    port: u16::from_be_bytes([p[96], p[97]]),
                    left: u64_at(64),
                    source: from,
                };
                let r = shared.handle(a);
                // BEP 15: the peer list's family is the family of the tracker's address.
                let (v4, _) = compact(&r.peers);
                for v in [1, tid, interval.as_secs() as u32, r.incomplete, r.complete] {
                    reply.extend_from_slice(&v.to_be_bytes());
                }
                reply.extend_from_slice(&v4);
            }
            _ => {
                reply.extend_from_slice(&3u32.to_be_bytes());
                reply.extend_from_slice(&tid.to_be_bytes());
                reply.extend_from_slice(b"bad request or connection id");
            }
        }
        let _ = socket.send_to(&reply, from).await;
    }
}
