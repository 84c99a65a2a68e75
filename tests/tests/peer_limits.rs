//! Peers can't starve a torrent: one host gets a few connections, a few half-open handshakes,
//! and a peer flipping its state in a flood is disconnected. Raw TCP peers on loopback against
//! a seeding session that counts 127.0.0.1 as one host.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zigtorrent_engine::session::{Session, SessionConfig};
use zigtorrent_engine::tracker::TrackerClient;
use zigtorrent_engine::wire::{self, Handshake, Message};
use zigtorrent_engine::{InfoHash, Metainfo, PeerId, TorrentHandle, TransportOptions};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;
use zigtorrent_transport_tcp::TcpTransport;

const PER_HOST: usize = 2;

/// A seeding session whose per-host limits apply to 127.0.0.1.
async fn strict_seeder(dir: &Path) -> (Session, TorrentHandle, Metainfo, SocketAddr) {
    seeder_with(dir, |c| {
        c.max_peers_per_host = PER_HOST;
        c.loopback_as_host = true;
    })
    .await
}

/// A seeding session on loopback with the configuration adjusted by `adjust`.
async fn seeder_with(
    dir: &Path,
    adjust: impl FnOnce(&mut SessionConfig),
) -> (Session, TorrentHandle, Metainfo, SocketAddr) {
    let seed_dir = dir.join("seed");
    let source = write_payload(&seed_dir, "payload", 5);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let mut config = SessionConfig::new(seed_dir.clone(), seed_dir.join(".zigtorrent"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    adjust(&mut config);
    let transport = Arc::new(TcpTransport::new(&TransportOptions::default()));
    let session = Session::start(
        config,
        transport,
        Arc::new(FsBackend::new()),
        TrackerClient::new(),
    )
    .await
    .unwrap();
    let handle = session.add(meta.clone()).unwrap();
    wait_seeding(&handle, Duration::from_secs(30)).await;
    let addr = format!("127.0.0.1:{}", session.listen_port())
        .parse()
        .unwrap();
    (session, handle, meta, addr)
}

fn peer_id(n: u8) -> PeerId {
    let mut id = *b"-XX0001-000000000000";
    id[19] = n;
    PeerId(id)
}

/// Dial, send our handshake; `Some(stream)` if the seeder answered with its own, `None` if it
/// closed the connection instead.
async fn handshake(addr: SocketAddr, info_hash: InfoHash, n: u8) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&Handshake::new(info_hash, peer_id(n)).encode())
        .await
        .unwrap();
    let mut reply = [0u8; wire::HANDSHAKE_LEN];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut reply)).await {
        Ok(Ok(_)) => Some(s),
        Ok(Err(_)) => None,
        Err(_) => panic!("seeder neither answered nor closed handshake {n}"),
    }
}

/// Read and discard until the seeder closes the connection (or `limit` passes: `false`).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_host_gets_only_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (session, handle, meta, addr) = strict_seeder(dir.path()).await;
    let mut kept = Vec::new();
    let mut refused = 0;
    for n in 0..(PER_HOST as u8 + 3) {
        match handshake(addr, meta.info_hash, n).await {
            Some(s) => kept.push(s),
            None => refused += 1,
        }
    }
    assert_eq!(kept.len(), PER_HOST, "per-host cap not applied");
    assert_eq!(refused, 3);
    assert!(handle.status().peers_connected <= PER_HOST);
    // A slot freed by one of them can be taken again.
    drop(kept.pop());
    let mut again = None;
    for attempt in 0..50u8 {
        if let Some(s) = handshake(addr, meta.info_hash, 100 + attempt).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        again.is_some(),
        "a freed per-host slot was never given back"
    );
    session.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_flooding_state_flips_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let (session, _handle, meta, addr) = strict_seeder(dir.path()).await;
    let mut s = handshake(addr, meta.info_hash, 1).await.expect("accepted");
    let mut flood = bytes::BytesMut::new();
    for _ in 0..5_000 {
        Message::Interested.encode(&mut flood);
        Message::NotInterested.encode(&mut flood);
    }
    // The seeder may close while we are still writing: that is the point.
    let _ = s.write_all(&flood).await;
    assert!(
        closed_within(&mut s, Duration::from_secs(20)).await,
        "a peer flipping 10,000 times was not disconnected"
    );
    // An honest peer is still served afterwards.
    let mut honest = handshake(addr, meta.info_hash, 2).await.expect("accepted");
    let mut out = bytes::BytesMut::new();
    Message::Interested.encode(&mut out);
    honest.write_all(&out).await.unwrap();
    let mut buf = bytes::BytesMut::new();
    let unchoked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match wire::decode(&mut buf, 1 << 20) {
                Ok(Some(Message::Unchoke)) => return true,
                Ok(Some(_)) => {}
                Ok(None) => {
                    if honest.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    })
    .await;
    assert_eq!(unchoked, Ok(true), "the honest peer was not unchoked");
    session.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_get_a_per_host_share_and_a_short_first_byte_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (session, _handle, _meta, addr) = strict_seeder(dir.path()).await;
    // The session's per-host share of half-open handshakes is 8 (64 / 8). Nine silent sockets
    // from one host: one of them (whichever the session saw last) is closed at once…
    let mut silent = Vec::new();
    for _ in 0..9 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    let open = |s: &TcpStream| {
        let mut probe = [0u8; 1];
        matches!(s.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    let mut polls = 0;
    while silent.iter().all(open) {
        polls += 1;
        assert!(
            polls < 40,
            "no socket refused: the per-host share was not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // …while the other eight are still within their first-byte time.
    silent.retain(open);
    assert_eq!(
        silent.len(),
        8,
        "more than the ninth socket was closed early"
    );
    // The first-byte timeout (3 s) ends them well before the whole-handshake bound (10 s).
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(8)).await,
            "a silent socket outlived the first-byte timeout"
        );
    }
    session.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_evicts_an_idle_peer_once_it_has_had_its_chance() {
    let dir = tempfile::tempdir().unwrap();
    // Five slots per torrent, four of them for incoming peers.
    let (session, handle, meta, addr) =
        seeder_with(dir.path(), |c| c.max_peers_per_torrent = 5).await;
    // Four peers that handshake and then want nothing and offer nothing.
    let mut idle = Vec::new();
    for n in 0..4 {
        idle.push(
            handshake(addr, meta.info_hash, n)
                .await
                .expect("a free slot"),
        );
    }
    // The incoming share is full and the idle peers are too new to judge: refused.
    assert!(
        handshake(addr, meta.info_hash, 10).await.is_none(),
        "a fifth incoming peer took a slot kept for dials"
    );
    // Once they have been idle past the eviction age (5 s), a newcomer replaces one.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let newcomer = handshake(addr, meta.info_hash, 11).await;
    assert!(
        newcomer.is_some(),
        "no idle peer was evicted for the newcomer"
    );
    let mut evicted = 0;
    for s in &mut idle {
        if closed_within(s, Duration::from_secs(2)).await {
            evicted += 1;
        }
    }
    assert_eq!(evicted, 1, "exactly one idle peer makes room");
    assert!(handle.status().peers_connected <= 4);
    session.shutdown(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_book_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let (session, handle, _meta, _addr) = seeder_with(dir.path(), |_| {}).await;
    // 5,000 addresses nobody listens on (loopback ports are refused at once).
    let flood: Vec<SocketAddr> = (0..5_000u32)
        .map(|i| SocketAddr::from(([127, 0, 1 + (i / 60_000) as u8, 1], 1 + (i % 60_000) as u16)))
        .collect();
    handle.add_peers(flood[..2_500].to_vec()).await;
    handle.add_peers(flood[2_500..].to_vec()).await;
    let mut rx = handle.subscribe();
    // The status is published within a second; wait for one that has seen the second batch.
    let known = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let known = rx.borrow_and_update().peers_known;
            if known > 0 {
                return known;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("status never showed known peers");
    assert!(known <= 1_000, "address book grew to {known}");
    assert!(known >= 900, "address book lost more than needed: {known}");
    session.shutdown(Duration::from_secs(4)).await;
}
