//! HTTP(S) announce: URL building (BEP 3), bounded body reading, reply parsing (BEP 3, BEP 23
//! compact `peers`, BEP 7 `peers6`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde_bencode::value::Value;

use super::{
    clamp_interval, push_peer, AnnounceRequest, AnnounceResponse, TrackerError, MAX_PEERS,
};

/// Largest reply body we read; real replies with 1000 peers are a few KiB.
pub(crate) const MAX_REPLY_SIZE: usize = 2 * 1024 * 1024;
/// Longest `failure reason` / `warning message` kept (characters); the rest is cut.
const MAX_MESSAGE_CHARS: usize = 1024;
/// Longest `tracker id` we store and echo back.
const MAX_TRACKER_ID: usize = 256;

/// A parsed HTTP reply: the response plus state the client keeps.
#[derive(Debug)]
pub(crate) struct HttpReply {
    pub(crate) response: AnnounceResponse,
    pub(crate) tracker_id: Option<Vec<u8>>,
}

/// One HTTP(S) announce with an already built client.
pub(crate) async fn announce(
    client: &reqwest::Client,
    url: &str,
    request: &AnnounceRequest,
    tracker_id: Option<&[u8]>,
) -> Result<HttpReply, TrackerError> {
    let full = announce_url(url, request, tracker_id);
    let parsed = reqwest::Url::parse(&full).map_err(|_| TrackerError::InvalidUrl {
        url: url.to_string(),
        reason: "not a valid URL",
    })?;
    let send = || client.get(parsed.clone()).send();
    let mut response = match send().await {
        Ok(r) => r,
        // A kept-alive connection the tracker closed just as we reused it ("connection closed
        // before message completed"; opentracker does this under load): that connection is
        // dropped, and one retry goes out on a fresh one rather than waiting out the backoff.
        // Timeouts and refused connections are not retried: that would only double the wait.
        Err(e) if e.is_request() && !e.is_timeout() && !e.is_connect() => {
            send().await.map_err(http_error)?
        }
        Err(e) => return Err(http_error(e)),
    };
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|len| len > MAX_REPLY_SIZE as u64)
    {
        return Err(TrackerError::TooLarge {
            limit: MAX_REPLY_SIZE,
        });
    }
    // Content-Length is only a hint: the cap is enforced on what actually arrives.
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(http_error)? {
        if body.len() + chunk.len() > MAX_REPLY_SIZE {
            return Err(TrackerError::TooLarge {
                limit: MAX_REPLY_SIZE,
            });
        }
        body.extend_from_slice(&chunk);
    }
    match parse_reply(&body) {
        Ok(reply) if status.is_success() => Ok(reply),
        // A refusal is worth reporting whatever the status line said.
        Err(TrackerError::Failure(reason)) => Err(TrackerError::Failure(reason)),
        _ if !status.is_success() => Err(TrackerError::HttpStatus(status.as_u16())),
        other => other,
    }
}

fn http_error(e: reqwest::Error) -> TrackerError {
    // Without the source chain, reqwest's message is only "error sending request"; without
    // dropping the URL (the tracker status already names it, and its query is long) the reason
    // would not fit a line of the menu.
    let e = e.without_url();
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    TrackerError::Http(msg)
}

/// `url` with the BEP 3 announce parameters appended (after any query already there, as in
/// private trackers' passkey URLs).
pub(crate) fn announce_url(url: &str, r: &AnnounceRequest, tracker_id: Option<&[u8]>) -> String {
    // A fragment would swallow everything we append.
    let base = url.split_once('#').map_or(url, |(b, _)| b);
    let mut out = String::with_capacity(base.len() + 256);
    out.push_str(base);
    if !base.contains('?') {
        out.push('?');
    } else if !base.ends_with('?') && !base.ends_with('&') {
        out.push('&');
    }
    out.push_str("info_hash=");
    out.push_str(&percent_encode(&r.info_hash.0));
    out.push_str("&peer_id=");
    out.push_str(&percent_encode(&r.peer_id.0));
    out.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1",
        r.port, r.uploaded, r.downloaded, r.left
    ));
    if let Some(event) = r.event.as_str() {
        out.push_str("&event=");
        out.push_str(event);
    }
    if let Some(n) = r.num_want {
        out.push_str(&format!("&numwant={n}"));
    }
    out.push_str(&format!("&key={:08X}", r.key));
    if let Some(id) = tracker_id {
        out.push_str("&trackerid=");
        out.push_str(&percent_encode(id));
    }
    out
}

/// RFC 3986 percent-encoding of raw bytes: unreserved characters stay, the rest become `%XX`.
pub(crate) fn percent_encode(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

/// Size cap, then bencode decoding of an untrusted reply.
///
/// This is the only place tracker replies are decoded: through `crate::bencode::decode`, the
/// bounded scanner (depth, lengths, size) before serde_bencode ever sees the bytes.
fn decode_reply(bytes: &[u8]) -> Result<Value, TrackerError> {
    if bytes.len() > MAX_REPLY_SIZE {
        return Err(TrackerError::TooLarge {
            limit: MAX_REPLY_SIZE,
        });
    }
    let limits = crate::bencode::Limits {
        max_depth: crate::bencode::MAX_DEPTH,
        max_size: MAX_REPLY_SIZE,
    };
    crate::bencode::decode::<Value>(bytes, limits)
        .map_err(|e| TrackerError::Malformed(e.to_string()))
}

/// Parse a BEP 3 announce reply body.
pub(crate) fn parse_reply(body: &[u8]) -> Result<HttpReply, TrackerError> {
    let Value::Dict(dict) = decode_reply(body)? else {
        return Err(TrackerError::Malformed("reply is not a dictionary".into()));
    };
    let get = |key: &str| dict.get(key.as_bytes());
    let text = |key: &str| match get(key) {
        Some(Value::Bytes(b)) => Some(lossy_capped(b)),
        _ => None,
    };
    let int = |key: &str| match get(key) {
        Some(Value::Int(i)) => Some(*i),
        _ => None,
    };

    if let Some(reason) = text("failure reason") {
        return Err(TrackerError::Failure(reason));
    }

    let mut peers = Vec::new();
    match get("peers") {
        Some(Value::Bytes(compact)) => parse_compact_v4(compact, &mut peers)?,
        Some(Value::List(list)) => parse_peer_dicts(list, &mut peers),
        Some(_) => {
            return Err(TrackerError::Malformed(
                "`peers` is neither a string nor a list".into(),
            ))
        }
        None => {}
    }
    if let Some(Value::Bytes(compact)) = get("peers6") {
        parse_compact_v6(compact, &mut peers)?;
    }

    let tracker_id = match get("tracker id") {
        Some(Value::Bytes(id)) if !id.is_empty() && id.len() <= MAX_TRACKER_ID => Some(id.clone()),
        _ => None,
    };
    let count = |key: &str| int(key).and_then(|i| u32::try_from(i).ok());
    let response = AnnounceResponse {
        interval: clamp_interval(int("interval")),
        min_interval: int("min interval")
            .filter(|&s| s > 0)
            .map(|s| Duration::from_secs(s.unsigned_abs()).min(super::MAX_INTERVAL)),
        peers,
        warning: text("warning message"),
        complete: count("complete"),
        incomplete: count("incomplete"),
    };
    Ok(HttpReply {
        response,
        tracker_id,
    })
}

fn lossy_capped(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .collect()
}

/// BEP 23: 4-byte IPv4 address and 2-byte port, big-endian, per peer.
pub(crate) fn parse_compact_v4(
    bytes: &[u8],
    peers: &mut Vec<SocketAddr>,
) -> Result<(), TrackerError> {
    if !bytes.chunks_exact(6).remainder().is_empty() {
        return Err(TrackerError::Malformed(format!(
            "compact peers length {} is not a multiple of 6",
            bytes.len()
        )));
    }
    for entry in bytes.chunks_exact(6).take(MAX_PEERS) {
        let ip = Ipv4Addr::new(entry[0], entry[1], entry[2], entry[3]);
        let port = u16::from_be_bytes([entry[4], entry[5]]);
        push_peer(peers, SocketAddr::new(IpAddr::V4(ip), port));
    }
    Ok(())
}

/// BEP 7: 16-byte IPv6 address and 2-byte port per peer.
pub(crate) fn parse_compact_v6(
    bytes: &[u8],
    peers: &mut Vec<SocketAddr>,
) -> Result<(), TrackerError> {
    if !bytes.chunks_exact(18).remainder().is_empty() {
        return Err(TrackerError::Malformed(format!(
            "compact peers6 length {} is not a multiple of 18",
            bytes.len()
        )));
    }
    for entry in bytes.chunks_exact(18).take(MAX_PEERS) {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&entry[..16]);
        let port = u16::from_be_bytes([entry[16], entry[17]]);
        push_peer(peers, SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port));
    }
    Ok(())
}

/// BEP 3 original form: a list of `{ip, port, peer id}` dictionaries. Bad entries are skipped.
fn parse_peer_dicts(list: &[Value], peers: &mut Vec<SocketAddr>) {
    for entry in list {
        if peers.len() >= MAX_PEERS {
            break;
        }
        let Value::Dict(d) = entry else { continue };
        let ip = match d.get(b"ip".as_slice()) {
            Some(Value::Bytes(b)) => std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<IpAddr>().ok()),
            _ => None,
        };
        let port = match d.get(b"port".as_slice()) {
            Some(Value::Int(p)) => u16::try_from(*p).ok(),
            _ => None,
        };
        // Host names are allowed by BEP 3 but would need a lookup per peer; nobody sends them.
        if let (Some(ip), Some(port)) = (ip, port) {
            push_peer(peers, SocketAddr::new(ip, port));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::tracker::Event;
    use crate::types::{InfoHash, PeerId};

    pub(crate) fn sample_request() -> AnnounceRequest {
        AnnounceRequest {
            info_hash: InfoHash(*b"\x12\x34\x56\x78\x9a\xbc\xde\xf1\x23\x45\x67\x89\xab\xcd\xef\x12\x34\x56\x78\x9a"),
            peer_id: PeerId(*b"-ZT0100-abc.def_~g h"),
            port: 6881,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Started,
            num_want: Some(50),
            key: 0xDEADBEEF,
        }
    }

    #[test]
    fn percent_encoding_vectors() {
        assert_eq!(percent_encode(b"AZaz09-._~"), "AZaz09-._~");
        assert_eq!(
            percent_encode(b" !*'()/?&=+%"),
            "%20%21%2A%27%28%29%2F%3F%26%3D%2B%25"
        );
        assert_eq!(
            percent_encode(&[0x00, 0x0f, 0x7f, 0x80, 0xff]),
            "%00%0F%7F%80%FF"
        );
        // The BEP 3 example info_hash.
        let hash = hex::decode("123456789abcdef123456789abcdef123456789a").unwrap();
        assert_eq!(
            percent_encode(&hash),
            "%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A"
        );
    }

    #[test]
    fn url_building() {
        let r = sample_request();
        let url = announce_url("http://t.example/announce", &r, None);
        assert_eq!(
            url,
            "http://t.example/announce?info_hash=%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A\
             &peer_id=-ZT0100-abc.def_~g%20h&port=6881&uploaded=1&downloaded=2&left=3&compact=1\
             &event=started&numwant=50&key=DEADBEEF"
        );
        let mut r2 = r.clone();
        r2.event = Event::None;
        r2.num_want = None;
        let url = announce_url("https://t.example/a.php?passkey=abc", &r2, Some(b"id 1"));
        assert!(
            url.starts_with("https://t.example/a.php?passkey=abc&info_hash=%124Vx"),
            "{url}"
        );
        assert!(!url.contains("event="));
        assert!(!url.contains("numwant="));
        assert!(url.ends_with("&key=DEADBEEF&trackerid=id%201"), "{url}");
        for base in ["http://t/a?", "http://t/a?x=1&"] {
            let url = announce_url(base, &r, None);
            assert!(url.starts_with(&format!("{base}info_hash=")), "{url}");
        }
        let url = announce_url("http://t/a#frag", &r, None);
        assert!(url.starts_with("http://t/a?info_hash="), "{url}");
        for (event, word) in [(Event::Completed, "completed"), (Event::Stopped, "stopped")] {
            r2.event = event;
            assert!(announce_url("http://t/a", &r2, None).contains(&format!("&event={word}&")));
        }
    }

    #[test]
    fn parses_compact_reply() {
        let mut body =
            b"d8:completei5e10:incompletei7e8:intervali900e12:min intervali60e5:peers12:".to_vec();
        body.extend_from_slice(&[10, 0, 0, 1, 0x1A, 0xE1, 192, 168, 1, 2, 0, 80]);
        body.extend_from_slice(b"6:peers618:");
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x1A, 0xE2]);
        body.extend_from_slice(b"10:tracker id3:xyz15:warning message4:hmm!e");
        let reply = parse_reply(&body).unwrap();
        let r = reply.response;
        assert_eq!(r.interval, Duration::from_secs(900));
        assert_eq!(r.min_interval, Some(Duration::from_secs(60)));
        assert_eq!(r.complete, Some(5));
        assert_eq!(r.incomplete, Some(7));
        assert_eq!(r.warning.as_deref(), Some("hmm!"));
        assert_eq!(reply.tracker_id.as_deref(), Some(b"xyz".as_slice()));
        let want: Vec<SocketAddr> = vec![
            "10.0.0.1:6881".parse().unwrap(),
            "192.168.1.2:80".parse().unwrap(),
            "[::1]:6882".parse().unwrap(),
        ];
        assert_eq!(r.peers, want);
    }

    #[test]
    fn parses_dict_peers_skipping_bad_entries() {
        let body = b"d8:intervali5e5:peersl\
            d2:ip8:10.0.0.17:peer id20:aaaaaaaaaaaaaaaaaaaa4:porti6881ee\
            d2:ip11:example.org4:porti1ee\
            d2:ip3:::14:porti70000ee\
            d2:ip7:1.2.3.44:port1:5e\
            i42e\
            d2:ip3:::14:porti6882ee\
            ee";
        let r = parse_reply(body).unwrap().response;
        assert_eq!(
            r.peers,
            vec![
                "10.0.0.1:6881".parse().unwrap(),
                "[::1]:6882".parse().unwrap()
            ]
        );
        // The floor is the client's business (see the fixture round trip); missing counts stay
        // unknown.
        assert_eq!(r.interval, Duration::from_secs(5));
        assert_eq!(r.complete, None);
        let r = parse_reply(b"de").unwrap().response;
        assert_eq!(r.interval, crate::tracker::DEFAULT_INTERVAL);
        assert!(r.peers.is_empty());
    }

    #[test]
    fn failure_and_malformed_replies() {
        match parse_reply(b"d14:failure reason11:not allowed8:intervali5ee") {
            Err(TrackerError::Failure(m)) => assert_eq!(m, "not allowed"),
            other => panic!("{other:?}"),
        }
        for bad in [
            b"d5:peers5:abcdee".as_slice(),
            b"d6:peers66:abcdefe",
            b"d5:peersi3ee",
            b"li1ee",
            b"not bencode",
            b"",
        ] {
            let err = parse_reply(bad).unwrap_err();
            assert!(
                matches!(err, TrackerError::Malformed(_)),
                "{:?}: {err}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(matches!(
            decode_reply(&vec![b'0'; MAX_REPLY_SIZE + 1]),
            Err(TrackerError::TooLarge { .. })
        ));
    }

    #[test]
    fn peers_are_capped() {
        let mut compact = Vec::new();
        for i in 0..(MAX_PEERS as u32 + 50) {
            compact.extend_from_slice(&(0x0A00_0000 + i).to_be_bytes());
            compact.extend_from_slice(&6881u16.to_be_bytes());
        }
        let mut body = format!("d5:peers{}:", compact.len()).into_bytes();
        body.extend_from_slice(&compact);
        body.push(b'e');
        assert_eq!(parse_reply(&body).unwrap().response.peers.len(), MAX_PEERS);
    }

    /// A one-shot HTTP server answering every request with `reply` (status line included).
    async fn serve_raw(reply: Vec<u8>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let Ok((mut s, _)) = listener.accept().await else {
                    break;
                };
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    let m = s.read(&mut buf[n..]).await.unwrap();
                    if m == 0 {
                        break;
                    }
                    n += m;
                }
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                seen.push(head.lines().next().unwrap_or_default().to_string());
                let _ = s.write_all(&reply).await;
                let _ = s.shutdown().await;
            }
            seen
        });
        (format!("http://{addr}/announce?pk=1"), task)
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_reply_is_retried_once_on_a_fresh_one() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = b"d8:intervali1800e5:peers6:\x7f\x00\x00\x01\x1a\xe1e";
        let server = tokio::spawn(async move {
            let mut requests = 0;
            // The first connection is closed after the request, with no reply (a kept-alive
            // connection the tracker dropped); the second gets an answer; a third never comes.
            for i in 0..3 {
                let accepted =
                    tokio::time::timeout(Duration::from_secs(2), listener.accept()).await;
                let Ok(Ok((mut s, _))) = accepted else {
                    break;
                };
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                requests += 1;
                if i > 0 {
                    let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(body).await;
                }
                let _ = s.shutdown().await;
            }
            requests
        });
        let reply = crate::tracker::TrackerClient::new()
            .announce(&format!("http://{addr}/announce"), &sample_request())
            .await
            .expect("the retry is answered");
        assert_eq!(reply.peers.len(), 1);
        assert_eq!(server.await.unwrap(), 2, "exactly one retry");
    }

    #[tokio::test]
    async fn oversize_body_without_content_length_is_refused() {
        let mut reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nd5:peers".to_vec();
        reply.extend_from_slice(format!("{}:", MAX_REPLY_SIZE).as_bytes());
        reply.resize(reply.len() + MAX_REPLY_SIZE, 0);
        reply.push(b'e');
        let (url, _task) = serve_raw(reply).await;
        let err = crate::tracker::TrackerClient::new()
            .announce(&url, &sample_request())
            .await
            .unwrap_err();
        assert!(matches!(err, TrackerError::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn status_and_failure_and_tracker_id_over_http() {
        let body = b"d14:failure reason6:banned8:intervali5ee";
        let mut reply = format!(
            "HTTP/1.1 403 Forbidden\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        reply.extend_from_slice(body);
        let (url, _task) = serve_raw(reply).await;
        let client = crate::tracker::TrackerClient::new();
        let err = client.announce(&url, &sample_request()).await.unwrap_err();
        assert!(
            matches!(&err, TrackerError::Failure(m) if m == "banned"),
            "{err}"
        );

        let (url, _task) =
            serve_raw(b"HTTP/1.1 500 Oops\r\nContent-Length: 3\r\n\r\nabc".to_vec()).await;
        let err = client.announce(&url, &sample_request()).await.unwrap_err();
        assert!(matches!(err, TrackerError::HttpStatus(500)), "{err}");

        let body = b"d8:intervali60e5:peers0:10:tracker id2:T1e";
        let mut reply =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        reply.extend_from_slice(body);
        let (url, task) = serve_raw(reply).await;
        client.announce(&url, &sample_request()).await.unwrap();
        client.announce(&url, &sample_request()).await.unwrap();
        let seen = task.await.unwrap();
        assert!(
            seen[0].starts_with("GET /announce?pk=1&info_hash="),
            "{}",
            seen[0]
        );
        assert!(!seen[0].contains("trackerid"), "{}", seen[0]);
        assert!(seen[1].contains("&trackerid=T1 HTTP/1.1"), "{}", seen[1]);
    }
}
