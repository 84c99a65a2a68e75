//! The fast extension (BEP 6) in the simulator: a leecher against scripted peers that reject
//! requests or serve only their allowed-fast pieces while choking, on a paused clock.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use zigtorrent_engine::metainfo::{create_torrent, CreateOptions};
use zigtorrent_engine::testing::sim::{SimNet, SimPeer};
use zigtorrent_engine::wire::{self, Handshake, Message};
use zigtorrent_engine::{Metainfo, PeerId, TorrentHandle, TorrentState};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A one-file torrent of `len` seeded pseudo-random bytes, and the bytes.
fn torrent(len: usize, piece_length: u32) -> (Metainfo, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut data);
    let path = dir.path().join("payload.bin");
    std::fs::write(&path, &data).unwrap();
    let options = CreateOptions {
        piece_length: Some(piece_length),
        ..Default::default()
    };
    let bytes = create_torrent(&path, &options).unwrap();
    (Metainfo::from_bytes(&bytes).unwrap(), data)
}

async fn until_seeding(h: &TorrentHandle, within: Duration) {
    let mut rx = h.subscribe();
    tokio::time::timeout(within, async {
        loop {
            if let TorrentState::Error(e) = &rx.borrow_and_update().state {
                panic!("torrent failed: {e}");
            }
            if rx.borrow().state == TorrentState::Seeding {
                return;
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not seeding within {within:?}: {:?}", h.status()));
}

/// How a scripted peer behaves once the handshakes are done.
#[derive(Clone)]
enum Script {
    /// Have-all and unchoke (then one reject for a block that was never asked for); serve
    /// the even blocks of each piece, one per this much time, and reject the odd ones.
    RejectOdd(Duration),
    /// Have-all, grant these pieces allowed-fast and never unchoke: serve requests for them,
    /// reject the rest.
    ChokeButAllow(Vec<u32>),
    /// Have-all and unchoke, then serve every request, one block per this much time.
    Serve(Duration),
    /// Have-all and unchoke; on the first request choke and, for this long, neither serve nor
    /// reject anything (a fast peer breaking BEP 6); then unchoke and serve what comes after.
    ChokeSilently(Duration),
}

/// A block as (piece, begin).
type Block = (u32, u32);

/// What a scripted peer saw.
#[derive(Default)]
struct Seen {
    /// Rejects it sent for requests it received.
    rejected: AtomicUsize,
    /// Blocks it served.
    served: AtomicUsize,
    /// Blocks it was asked for, and when.
    asked: Mutex<Vec<(Block, Instant)>>,
    /// Blocks it rejected, and when.
    rejected_at: Mutex<Vec<(Block, Instant)>>,
    /// The leecher's first message after the handshakes.
    first: Mutex<Option<Message>>,
}

/// A peer at `ip`:6881 speaking the fast extension by `script`, with `data` to serve.
async fn scripted_peer(
    net: &SimNet,
    ip: IpAddr,
    meta: &Metainfo,
    data: Arc<Vec<u8>>,
    script: Script,
) -> (SocketAddr, Arc<Seen>) {
    let mut listener = net
        .transport(ip)
        .listen(SocketAddr::new(ip, 6881))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let seen = Arc::new(Seen::default());
    let info_hash = meta.info_hash;
    let piece_length = u64::from(meta.info.layout.piece_len(0));
    let out_seen = seen.clone();
    // One id per scripted peer: the leecher keeps one connection per peer id.
    let peer_id = PeerId(*b"-XX0001-scripted0000");
    let mut peer_id = peer_id;
    if let IpAddr::V4(v4) = ip {
        peer_id.0[19] = v4.octets()[3];
    }
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (seen, data, script) = (out_seen.clone(), data.clone(), script.clone());
            tokio::spawn(async move {
                let mut hs = [0u8; wire::HANDSHAKE_LEN];
                if s.read_exact(&mut hs).await.is_err() {
                    return;
                }
                assert!(
                    Handshake::decode(&hs).unwrap().supports_fast(),
                    "the leecher offers BEP 6"
                );
                let mut out = BytesMut::new();
                // Handshake::new offers BEP 6 (and BEP 10, which this script ignores).
                out.extend_from_slice(&Handshake::new(info_hash, peer_id).encode());
                Message::HaveAll.encode(&mut out);
                match &script {
                    Script::Serve(_) | Script::ChokeSilently(_) => {
                        Message::Unchoke.encode(&mut out)
                    }
                    Script::RejectOdd(_) => {
                        Message::Unchoke.encode(&mut out);
                        Message::RejectRequest {
                            index: 0,
                            begin: 0,
                            length: 16 * 1024,
                        }
                        .encode(&mut out);
                    }
                    Script::ChokeButAllow(pieces) => {
                        for &p in pieces {
                            Message::AllowedFast(p).encode(&mut out);
                        }
                    }
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
                // The reader notes when each request arrives; the writer answers them in
                // order, taking its time for each block it serves.
                let (mut rd, mut wr) = tokio::io::split(s);
                let (tx, mut requests) = tokio::sync::mpsc::unbounded_channel();
                let reader_seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = BytesMut::new();
                    loop {
                        let msg = match wire::decode(&mut buf, 1 << 20) {
                            Ok(Some(m)) => m,
                            Ok(None) => match rd.read_buf(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => continue,
                            },
                            Err(_) => return,
                        };
                        reader_seen.first.lock().unwrap().get_or_insert(msg.clone());
                        if let Message::Request {
                            index,
                            begin,
                            length,
                        } = msg
                        {
                            let now = Instant::now();
                            reader_seen
                                .asked
                                .lock()
                                .unwrap()
                                .push(((index, begin), now));
                            if tx.send((index, begin, length)).is_err() {
                                return;
                            }
                        }
                    }
                });
                let mut choked_once = false;
                while let Some((index, begin, length)) = requests.recv().await {
                    if let (Script::ChokeSilently(choke_for), false) = (&script, choked_once) {
                        choked_once = true;
                        let mut out = BytesMut::new();
                        Message::Choke.encode(&mut out);
                        if wr.write_all(&out).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(*choke_for).await;
                        // This request and everything asked meanwhile go unanswered.
                        while requests.try_recv().is_ok() {}
                        let mut out = BytesMut::new();
                        Message::Unchoke.encode(&mut out);
                        if wr.write_all(&out).await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let serve = match &script {
                        Script::RejectOdd(per_block) => {
                            let even = (begin / (16 * 1024)) % 2 == 0;
                            if even {
                                tokio::time::sleep(*per_block).await;
                            }
                            even
                        }
                        Script::ChokeButAllow(pieces) => pieces.contains(&index),
                        Script::Serve(per_block) => {
                            tokio::time::sleep(*per_block).await;
                            true
                        }
                        Script::ChokeSilently(_) => true,
                    };
                    let mut out = BytesMut::new();
                    if serve {
                        let at = (u64::from(index) * piece_length + u64::from(begin)) as usize;
                        Message::Piece {
                            index,
                            begin,
                            data: data[at..at + length as usize].to_vec().into(),
                        }
                        .encode(&mut out);
                        seen.served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        Message::RejectRequest {
                            index,
                            begin,
                            length,
                        }
                        .encode(&mut out);
                        seen.rejected.fetch_add(1, Ordering::Relaxed);
                        let now = Instant::now();
                        seen.rejected_at.lock().unwrap().push(((index, begin), now));
                    }
                    if wr.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A leecher knows an honest seeder (200 blocks/s) and a slow peer that rejects half the
/// blocks it is asked for. Each rejected block is asked of the seeder within a second of the
/// reject: far below the 20 s request timeout, and before the endgame (about 5 s in), either
/// of which would otherwise free it.
#[tokio::test(start_paused = true)]
async fn rejected_blocks_go_to_another_peer_at_once() {
    let net = SimNet::new();
    let (meta, data) = torrent(16 * 1024 * 1024, 64 * 1024);
    let data = Arc::new(data);
    let (rejecter, seen) = scripted_peer(
        &net,
        ip(5),
        &meta,
        data.clone(),
        Script::RejectOdd(Duration::from_millis(100)),
    )
    .await;
    let (seeder, served) = scripted_peer(
        &net,
        ip(1),
        &meta,
        data,
        Script::Serve(Duration::from_millis(5)),
    )
    .await;
    let leecher = SimPeer::start(&net, ip(9), 9, vec![rejecter, seeder]).await;
    let h = leecher.session.add(meta.clone()).unwrap();
    until_seeding(&h, Duration::from_secs(120)).await;
    let rejected = seen.rejected_at.lock().unwrap().clone();
    assert!(
        !rejected.is_empty(),
        "the leecher never asked the rejecting peer"
    );
    let asked = served.asked.lock().unwrap().clone();
    for (block, at) in &rejected {
        let again = asked
            .iter()
            .filter(|(b, t)| b == block && t >= at)
            .map(|(_, t)| *t - *at)
            .min();
        // Unless the seeder had been asked already (then it was never stuck).
        let before = asked.iter().any(|(b, t)| b == block && t < at);
        assert!(
            before || again.is_some_and(|d| d < Duration::from_secs(1)),
            "block {block:?} rejected at {at:?} asked of the seeder again after {again:?}"
        );
    }
    // The reject nobody asked for did not end the connection, and the rejecting peer stayed
    // connected (it still counts among the leecher's peers).
    assert_eq!(
        *seen.first.lock().unwrap(),
        Some(Message::HaveNone),
        "a leecher with nothing says have-none first"
    );
    let peers = h.status().peers;
    assert!(
        peers
            .iter()
            .any(|p| p.addr == rejecter && p.extensions.fast && p.extensions.extension_protocol),
        "{peers:?}"
    );
    assert_eq!(h.status().peers_banned, 0);
}

/// A peer that chokes the leecher but grants two pieces allowed-fast: the leecher gets exactly
/// those two pieces from it, and asks for nothing else.
#[tokio::test(start_paused = true)]
async fn a_choking_peer_serves_its_allowed_fast_pieces() {
    let net = SimNet::new();
    let (meta, data) = torrent(1024 * 1024, 64 * 1024);
    let granted = vec![3, 11];
    let (choker, seen) = scripted_peer(
        &net,
        ip(5),
        &meta,
        Arc::new(data),
        Script::ChokeButAllow(granted.clone()),
    )
    .await;
    let leecher = SimPeer::start(&net, ip(9), 9, vec![choker]).await;
    let h = leecher.session.add(meta.clone()).unwrap();
    let mut rx = h.subscribe();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let pieces = rx.borrow_and_update().pieces.clone();
            if granted.iter().all(|&p| pieces.get(p as usize)) {
                return;
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("granted pieces not fetched: {:?}", h.status()));
    // Longer than any retry or timeout would take to try other pieces.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let status = h.status();
    assert_eq!(
        status.pieces.iter_ones().collect::<Vec<_>>(),
        [3, 11],
        "only the granted pieces"
    );
    let asked: Vec<u32> = seen
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|((p, _), _)| *p)
        .collect();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|p| granted.contains(p)),
        "asked a choking peer for {asked:?}"
    );
    assert_eq!(seen.rejected.load(Ordering::Relaxed), 0);
    // 64 KiB pieces: four blocks each, each asked once.
    assert_eq!(seen.served.load(Ordering::Relaxed), 8);
    assert!(status.peers.iter().all(|p| p.peer_choking));
}

/// A fast peer that chokes the leecher and then neither serves nor rejects its requests (it
/// breaks BEP 6) for 25 s, then unchokes: the leecher's requests went back at the 20 s request
/// timeout, so after the unchoke it asks again and completes, well before the 30 s snub
/// timeout (counted from the unchoke) would have freed them.
#[tokio::test(start_paused = true)]
async fn requests_a_choking_fast_peer_never_answers_go_back_at_the_timeout() {
    let net = SimNet::new();
    let (meta, data) = torrent(1024 * 1024, 64 * 1024);
    let choke_for = Duration::from_secs(25);
    let (peer, seen) = scripted_peer(
        &net,
        ip(5),
        &meta,
        Arc::new(data),
        Script::ChokeSilently(choke_for),
    )
    .await;
    let leecher = SimPeer::start(&net, ip(9), 9, vec![peer]).await;
    let start = Instant::now();
    let h = leecher.session.add(meta.clone()).unwrap();
    until_seeding(&h, Duration::from_secs(45)).await;
    let took = start.elapsed();
    assert!(
        took >= choke_for,
        "served before the unchoke? {took:?}, {} served",
        seen.served.load(Ordering::Relaxed)
    );
    assert_eq!(
        seen.served.load(Ordering::Relaxed),
        64,
        "each block once, after the unchoke"
    );
}
