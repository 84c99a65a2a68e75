//! Swarms in the simulator (`zigtorrent_engine::testing::sim`): sessions on in-memory links and
//! a paused clock. No sockets, no files, no real waiting.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use zigtorrent_engine::metainfo::{create_torrent, CreateOptions};
use zigtorrent_engine::storage::{StorageBackend, StorageSpec};
use zigtorrent_engine::testing::sim::{SimNet, SimPeer};
use zigtorrent_engine::{
    FilePriority, Magnet, Metainfo, TorrentHandle, TorrentOptions, TorrentState,
};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
}

/// A one-file torrent of `len` seeded pseudo-random bytes, and the bytes.
fn torrent(len: usize, piece_length: u32) -> (Metainfo, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(7).fill_bytes(&mut data);
    let path = dir.path().join("payload.bin");
    std::fs::write(&path, &data).unwrap();
    let options = CreateOptions {
        piece_length: Some(piece_length),
        ..Default::default()
    };
    let bytes = create_torrent(&path, &options).unwrap();
    (Metainfo::from_bytes(&bytes).unwrap(), data)
}

async fn until_seeding(h: &TorrentHandle) {
    let mut rx = h.subscribe();
    // Simulated time: a minute of swarm is far more than this transfer needs.
    tokio::time::timeout(Duration::from_secs(60), async {
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
    .unwrap_or_else(|_| panic!("not seeding after a simulated minute: {:?}", h.status()));
}

/// A simulated client at 10.0.0.`n` seeding `meta` (its bytes preloaded), once it seeds.
async fn seeder(net: &SimNet, n: u8, meta: &Metainfo, data: &[u8]) -> (SimPeer, TorrentHandle) {
    let s = SimPeer::start(net, ip(n), n, Vec::new()).await;
    s.preload(meta, data).await;
    let h = s.session.add(meta.clone()).unwrap();
    until_seeding(&h).await;
    (s, h)
}

/// Two seeders at 10.0.0.1 and .2, and a leecher at .9 that knows them both.
async fn two_seeders_and_a_leecher(
    net: &SimNet,
    meta: &Metainfo,
    data: &[u8],
) -> (Vec<(SimPeer, TorrentHandle)>, SimPeer) {
    let mut seeders = Vec::new();
    for n in 1..=2 {
        seeders.push(seeder(net, n, meta, data).await);
    }
    let known = seeders.iter().map(|(s, _)| s.addr).collect();
    (seeders, SimPeer::start(net, ip(9), 9, known).await)
}

/// Every byte the leecher's storage holds, files concatenated.
async fn stored(peer: &SimPeer, meta: &Metainfo) -> Vec<u8> {
    let layout = Arc::new(meta.info.layout.clone());
    let spec = StorageSpec {
        info_hash: meta.info_hash,
        layout: layout.clone(),
        download_dir: "/nonexistent".into(),
        state_dir: "/nonexistent".into(),
        skipped_files: Vec::new(),
    };
    let storage = peer.backend.open(spec).await.unwrap();
    let mut out = Vec::new();
    for piece in 0..layout.piece_count() {
        let len = layout.piece_len(piece);
        out.extend_from_slice(&storage.read(piece, 0, len).await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_leecher_gets_every_byte_from_two_seeders() {
    let net = SimNet::new();
    let (meta, data) = torrent(3 * 1024 * 1024 + 123, 64 * 1024);
    let (seeders, leecher) = two_seeders_and_a_leecher(&net, &meta, &data).await;
    let h = leecher.session.add(meta.clone()).unwrap();
    until_seeding(&h).await;
    assert!(
        stored(&leecher, &meta).await == data,
        "the leecher's bytes differ"
    );
    // Counters are published on each torrent's one-second tick: let two simulated seconds pass.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (s, sh) in &seeders {
        assert!(
            sh.status().uploaded > 0,
            "seeder {} sent nothing: both seeders should serve",
            s.addr
        );
    }
    // Nobody sent bad data (`wasted` also counts endgame duplicates, so it is not asserted).
    assert_eq!(h.status().peers_banned, 0);
}

#[tokio::test(start_paused = true)]
async fn a_magnet_leecher_gets_metadata_and_data_from_two_seeders() {
    let net = SimNet::new();
    let (meta, data) = torrent(2 * 1024 * 1024 + 5, 32 * 1024);
    let (seeders, leecher) = two_seeders_and_a_leecher(&net, &meta, &data).await;
    let magnet = Magnet::parse(&format!(
        "magnet:?xt=urn:btih:{}&dn=from+a+link",
        meta.info_hash.to_hex()
    ))
    .unwrap();
    let h = leecher.session.add(magnet).unwrap();
    assert_eq!(h.status().state, TorrentState::FetchingMetadata);
    assert_eq!(h.status().name, "from a link");
    until_seeding(&h).await;
    assert_eq!(
        h.status().name,
        meta.info.name,
        "the name comes from the metadata"
    );
    assert_eq!(h.status().total_bytes, data.len() as u64);
    assert!(
        stored(&leecher, &meta).await == data,
        "the leecher's bytes differ"
    );
    // The metadata was kept, byte for byte the torrent's `info`.
    let kept = std::fs::read(
        leecher
            .dir
            .path()
            .join("state/metadata")
            .join(format!("{}.torrent", meta.info_hash.to_hex())),
    )
    .unwrap();
    assert_eq!(
        Metainfo::from_bytes(&kept).unwrap().info_bytes,
        meta.info_bytes
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (s, sh) in &seeders {
        assert!(sh.status().uploaded > 0, "seeder {} sent nothing", s.addr);
    }
}

#[tokio::test(start_paused = true)]
async fn peer_exchange_introduces_a_peer_nobody_else_named() {
    let net = SimNet::new();
    let (meta, data) = torrent(4 * 1024 * 1024, 64 * 1024);
    // The seeder knows nobody; B knows only the seeder; C knows only B.
    let (seeder, _sh) = seeder(&net, 1, &meta, &data).await;
    // Slow leechers (simulated time), so B is still downloading from the seeder when C asks.
    let slow = |c: &mut zigtorrent_engine::SessionConfig| c.download_limit = 256 * 1024;
    let b = SimPeer::start_with(&net, ip(2), 2, vec![seeder.addr], slow).await;
    let bh = b.session.add(meta.clone()).unwrap();
    let c = SimPeer::start_with(&net, ip(3), 3, vec![b.addr], slow).await;
    let ch = c.session.add(meta.clone()).unwrap();
    let mut rx = ch.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            // Either side may have dialled (the seeder hears of C through PEX too).
            let met =
                (rx.borrow_and_update().peers.iter()).any(|p| p.addr.ip() == seeder.addr.ip());
            if met {
                return;
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "C never connected to the seeder: {:?} / B: {:?}",
            ch.status(),
            bh.status()
        )
    });
    until_seeding(&ch).await;
    assert!(stored(&c, &meta).await == data);
    drop(bh);
}

#[tokio::test(start_paused = true)]
async fn without_pex_the_introduction_never_happens() {
    let net = SimNet::new();
    let (meta, data) = torrent(4 * 1024 * 1024, 64 * 1024);
    let (seeder, _sh) = seeder(&net, 1, &meta, &data).await;
    let slow_no_pex = |c: &mut zigtorrent_engine::SessionConfig| {
        c.download_limit = 256 * 1024;
        c.pex = false;
    };
    let b = SimPeer::start_with(&net, ip(2), 2, vec![seeder.addr], slow_no_pex).await;
    let _bh = b.session.add(meta.clone()).unwrap();
    let c = SimPeer::start_with(&net, ip(3), 3, vec![b.addr], slow_no_pex).await;
    let ch = c.session.add(meta.clone()).unwrap();
    // Ten simulated seconds: plenty for the first PEX message (sent within a second or two).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = ch.status();
    assert!(
        s.peers.iter().all(|p| p.addr.ip() != seeder.addr.ip()),
        "{:?}",
        s.peers
    );
    assert_eq!(
        s.peers_known, 1,
        "C learnt an address without PEX: {:?}",
        s.peers
    );
}

/// How a [`metadata_liar`] misbehaves.
#[derive(Clone, Copy)]
enum Lie {
    /// Claims a metadata size far over any cap.
    Oversize,
    /// Answers every metadata request with junk of the right length.
    Junk,
    /// Sends a metadata piece nobody asked for, right after its handshake.
    Unsolicited,
    /// Claims a plausible but wrong size, rejects every request, and keeps the connection up.
    WrongSizeRejects,
    /// Claims a plausible but wrong size and never answers anything.
    WrongSizeMute,
}

/// A fake peer at `ip` on the simulated network that offers metadata (BEP 9) and lies about it.
async fn metadata_liar(
    net: &SimNet,
    ip: IpAddr,
    meta: &Metainfo,
    lie: Lie,
) -> std::net::SocketAddr {
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use zigtorrent_engine::extension::{ExtendedHandshake, ExtensionIds};
    use zigtorrent_engine::metadata::{piece_len, MetadataMessage};
    use zigtorrent_engine::wire::{self, Handshake, Message, EXTENDED};

    let mut listener = net
        .transport(ip)
        .listen(std::net::SocketAddr::new(ip, 6881))
        .await
        .unwrap();
    let addr = listener.local_addr();
    let info_hash = meta.info_hash;
    let real_size = meta.info_bytes.len() as u32;
    let size = match lie {
        Lie::Oversize => 200 << 20,
        Lie::WrongSizeRejects | Lie::WrongSizeMute => real_size + 1,
        _ => real_size,
    };
    // The ids are ours to choose (BEP 10); the leecher's are its fixed ones (ut_metadata 1).
    const OUR_METADATA_ID: u8 = 3;
    const THEIR_METADATA_ID: u8 = 1;
    let message = |payload: bytes::Bytes| {
        let mut p = BytesMut::new();
        p.extend_from_slice(&[THEIR_METADATA_ID]);
        p.extend_from_slice(&payload);
        let mut out = BytesMut::new();
        Message::Unknown {
            id: EXTENDED,
            payload: p.freeze(),
        }
        .encode(&mut out);
        out
    };
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let message = message;
            tokio::spawn(async move {
                let mut hs = [0u8; wire::HANDSHAKE_LEN];
                if s.read_exact(&mut hs).await.is_err() {
                    return;
                }
                let mut out = BytesMut::new();
                out.extend_from_slice(
                    &Handshake::new(info_hash, zigtorrent_engine::PeerId([0xee; 20])).encode(),
                );
                ExtendedHandshake {
                    ids: ExtensionIds {
                        ut_metadata: Some(OUR_METADATA_ID),
                        ut_pex: None,
                    },
                    metadata_size: Some(size),
                    ..Default::default()
                }
                .to_message()
                .encode(&mut out);
                if let Lie::Unsolicited = lie {
                    let junk = vec![0xab; piece_len(size, 0) as usize];
                    let data = MetadataMessage::Data {
                        piece: 0,
                        total_size: size,
                        data: junk.into(),
                    };
                    out.extend_from_slice(&message(data.encode()));
                }
                if s.write_all(&out).await.is_err() {
                    return;
                }
                let mut buf = BytesMut::new();
                loop {
                    match wire::decode(&mut buf, 1 << 20) {
                        Ok(Some(Message::Unknown {
                            id: EXTENDED,
                            mut payload,
                        })) => {
                            if payload.first() != Some(&OUR_METADATA_ID) {
                                continue;
                            }
                            payload.advance(1);
                            if let Ok(Some(MetadataMessage::Request { piece })) =
                                MetadataMessage::decode(payload)
                            {
                                match lie {
                                    Lie::WrongSizeMute => continue,
                                    Lie::WrongSizeRejects => {
                                        let reject = MetadataMessage::Reject { piece };
                                        if s.write_all(&message(reject.encode())).await.is_err() {
                                            return;
                                        }
                                        continue;
                                    }
                                    _ => {}
                                }
                                // Slower than the honest seeder, so both send parts of it.
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                let junk = vec![0x5a; piece_len(size, piece) as usize];
                                let data = MetadataMessage::Data {
                                    piece,
                                    total_size: size,
                                    data: junk.into(),
                                };
                                if s.write_all(&message(data.encode())).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            // Keep-alives every 30 s: it never looks idle.
                            let read = s.read_buf(&mut buf);
                            match tokio::time::timeout(Duration::from_secs(30), read).await {
                                Err(_) => {
                                    if s.write_all(&[0, 0, 0, 0]).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(Ok(0)) | Ok(Err(_)) => return,
                                Ok(Ok(_)) => {}
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(start_paused = true)]
async fn lying_peers_cannot_keep_a_magnet_from_its_metadata() {
    let net = SimNet::new();
    // 2,560 pieces: the info dictionary spans four metadata pieces, more than one peer is
    // asked for at once (two), so the liar and the honest seeder each send some of it.
    let (meta, data) = torrent(40 * 1024 * 1024, 16 * 1024);
    assert!(meta.info_bytes.len() > 3 * 16 * 1024);
    let (seeder, _sh) = seeder(&net, 1, &meta, &data).await;
    let mut peers = Vec::new();
    for (n, lie) in [(5, Lie::Oversize), (6, Lie::Junk), (7, Lie::Unsolicited)] {
        peers.push(metadata_liar(&net, ip(n), &meta, lie).await);
    }
    peers.push(seeder.addr);
    let leecher = SimPeer::start(&net, ip(9), 9, peers).await;
    let magnet =
        Magnet::parse(&format!("magnet:?xt=urn:btih:{}", meta.info_hash.to_hex())).unwrap();
    let h = leecher.session.add(magnet).unwrap();
    until_seeding(&h).await;
    assert!(stored(&leecher, &meta).await == data);
}

#[tokio::test(start_paused = true)]
async fn peers_that_claim_a_wrong_size_first_cannot_stall_the_fetch() {
    let net = SimNet::new();
    let (meta, data) = torrent(40 * 1024 * 1024, 16 * 1024);
    let (seeder, _sh) = seeder(&net, 1, &meta, &data).await;
    let liars = vec![
        metadata_liar(&net, ip(5), &meta, Lie::WrongSizeRejects).await,
        metadata_liar(&net, ip(6), &meta, Lie::WrongSizeMute).await,
    ];
    let leecher = SimPeer::start(&net, ip(9), 9, liars).await;
    let magnet =
        Magnet::parse(&format!("magnet:?xt=urn:btih:{}", meta.info_hash.to_hex())).unwrap();
    let h = leecher.session.add(magnet).unwrap();
    // The liars' size is the one being fetched when the honest seeder turns up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.status().state, TorrentState::FetchingMetadata);
    h.add_peers(vec![seeder.addr]).await;
    let mut rx = h.subscribe();
    tokio::time::timeout(Duration::from_secs(300), async {
        while rx.borrow_and_update().state == TorrentState::FetchingMetadata {
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .expect("still fetching metadata five simulated minutes after an honest seeder came");
    until_seeding(&h).await;
    assert!(stored(&leecher, &meta).await == data);
}

/// A torrent of the folder `files` (name, length) of seeded pseudo-random bytes; the bytes in
/// torrent order, and the index in the torrent of each file given.
fn folder_torrent(files: &[(&str, usize)], piece_length: u32) -> (Metainfo, Vec<u8>, Vec<usize>) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("album");
    std::fs::create_dir(&root).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (name, len) in files {
        let mut data = vec![0u8; *len];
        rng.fill_bytes(&mut data);
        std::fs::write(root.join(name), &data).unwrap();
    }
    let options = CreateOptions {
        piece_length: Some(piece_length),
        ..Default::default()
    };
    let meta = Metainfo::from_bytes(&create_torrent(&root, &options).unwrap()).unwrap();
    let mut data = Vec::new();
    for f in &meta.info.layout.files {
        data.extend(std::fs::read(dir.path().join(&f.path)).unwrap());
    }
    let index = files
        .iter()
        .map(|(name, _)| {
            (meta.info.layout.files.iter())
                .position(|f| f.path.ends_with(name))
                .unwrap()
        })
        .collect();
    (meta, data, index)
}

/// Priorities in torrent order from (file index, priority) pairs; the rest normal.
fn priorities(n: usize, set: &[(usize, FilePriority)]) -> Vec<FilePriority> {
    let mut p = vec![FilePriority::Normal; n];
    for &(i, prio) in set {
        p[i] = prio;
    }
    p
}

#[tokio::test(start_paused = true)]
async fn skipped_files_are_not_fetched_and_unskipping_finishes_them() {
    let net = SimNet::new();
    // 64 KiB pieces: `keep` ends inside a piece shared with `skip`, which ends inside one
    // shared with `later`.
    let (meta, data, idx) = folder_torrent(
        &[
            ("keep", 1024 * 1024 + 100),
            ("skip", 700 * 1024),
            ("later", 1024 * 1024),
        ],
        64 * 1024,
    );
    let (keep, skip, later) = (idx[0], idx[1], idx[2]);
    let (seeders, leecher) = two_seeders_and_a_leecher(&net, &meta, &data).await;
    let layout = &meta.info.layout;
    let n = layout.files.len();
    let options = TorrentOptions {
        file_priorities: priorities(
            n,
            &[(skip, FilePriority::Skip), (later, FilePriority::Skip)],
        ),
        sequential: false,
    };
    let h = leecher.session.add_with(meta.clone(), options).unwrap();
    let wanted: Vec<u32> = layout.pieces_for_file(keep).collect();
    let wanted_bytes: u64 = wanted.iter().map(|&p| layout.piece_len(p) as u64).sum();
    assert_eq!(h.status().wanted_bytes, wanted_bytes, "known from the add");
    until_seeding(&h).await;
    let s = h.status();
    assert_eq!(
        (s.wanted_bytes, s.wanted_have_bytes),
        (wanted_bytes, wanted_bytes)
    );
    assert!(s.have_bytes < s.total_bytes);
    // Exactly the wanted pieces (the last one shared with `skip`), nothing else.
    assert_eq!(
        s.pieces.iter_ones().map(|p| p as u32).collect::<Vec<_>>(),
        wanted
    );
    assert_eq!(s.files[keep].have_bytes, s.files[keep].length);
    assert_eq!(s.files[skip].priority, FilePriority::Skip);
    assert_eq!(s.files[keep].priority, FilePriority::Normal);
    // Received no more than the wanted pieces (endgame duplicates aside).
    assert!(
        s.downloaded <= wanted_bytes + 16 * 1024 * 4,
        "{}",
        s.downloaded
    );

    // Wrong lengths are refused; un-skipping `later` downloads it and seeds again.
    assert!(h
        .set_file_priorities(vec![FilePriority::Normal])
        .await
        .is_err());
    h.set_file_priorities(priorities(n, &[(skip, FilePriority::Skip)]))
        .await
        .unwrap();
    let mut rx = h.subscribe();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = rx.borrow_and_update().clone();
            if s.state == TorrentState::Seeding
                && s.files[later].have_bytes == s.files[later].length
            {
                return;
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("later never finished: {:?}", h.status()));
    // (Which files storage finalizes is the storage suite's and `storage-fs`'s to check.)
    let storage = open_leecher_storage(&leecher, &meta).await;
    let l = &layout.files[later];
    let start = l.offset as usize;
    let mut got = Vec::new();
    for p in layout.pieces_for_file(later) {
        got.extend_from_slice(&storage.read(p, 0, layout.piece_len(p)).await.unwrap());
    }
    let first = layout
        .piece_range(layout.pieces_for_file(later).start)
        .start as usize;
    assert!(got[start - first..][..l.length as usize] == data[start..start + l.length as usize]);
    drop(seeders);
}

/// The leecher's storage of `meta` (a second handle on the same memory backend).
async fn open_leecher_storage(
    peer: &SimPeer,
    meta: &Metainfo,
) -> std::sync::Arc<dyn zigtorrent_engine::Storage> {
    let spec = StorageSpec {
        info_hash: meta.info_hash,
        layout: Arc::new(meta.info.layout.clone()),
        download_dir: "/nonexistent".into(),
        state_dir: "/nonexistent".into(),
        skipped_files: Vec::new(),
    };
    peer.backend.open(spec).await.unwrap()
}

/// Pieces verified at every status snapshot until the torrent seeds.
async fn snapshots_until_seeding(h: &TorrentHandle) -> Vec<Vec<u32>> {
    let mut rx = h.subscribe();
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let s = rx.borrow_and_update().clone();
            seen.push(s.pieces.iter_ones().map(|p| p as u32).collect());
            if s.state == TorrentState::Seeding {
                return;
            }
            rx.changed().await.expect("torrent task alive");
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not seeding: {:?}", h.status()));
    seen
}

/// How far past the first missing wanted piece a snapshot reaches, at most, over a download:
/// small when pieces complete in order.
fn max_reach(snapshots: &[Vec<u32>], wanted: std::ops::Range<u32>) -> u32 {
    snapshots
        .iter()
        .map(|had| {
            let first_missing = wanted
                .clone()
                .find(|p| !had.contains(p))
                .unwrap_or(wanted.end);
            had.iter()
                .filter(|&&p| wanted.contains(&p))
                .map(|&p| p.saturating_sub(first_missing))
                .max()
                .unwrap_or(0)
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn sequential_download_completes_pieces_in_order() {
    let net = SimNet::new();
    // `intro` is skipped: the stream starts at the first piece of `movie` (shared with it).
    let (meta, data, idx) = folder_torrent(
        &[("intro", 300 * 1024), ("movie", 6 * 1024 * 1024)],
        64 * 1024,
    );
    let (intro, movie) = (idx[0], idx[1]);
    let layout = &meta.info.layout;
    let wanted = layout.pieces_for_file(movie);
    let (_seeder, _sh) = seeder(&net, 1, &meta, &data).await;
    // Slow enough (simulated time) for many snapshots along the way.
    let slow = |c: &mut zigtorrent_engine::SessionConfig| c.download_limit = 512 * 1024;
    let run = |sequential: bool, last: u8| {
        let net = &net;
        let meta = meta.clone();
        let seeder = _seeder.addr;
        async move {
            let peer = SimPeer::start_with(net, ip(last), last, vec![seeder], slow).await;
            let options = TorrentOptions {
                file_priorities: priorities(2, &[(intro, FilePriority::Skip)]),
                sequential,
            };
            let h = peer.session.add_with(meta, options).unwrap();
            assert_eq!(h.status().sequential, sequential, "shown from the start");
            let snaps = snapshots_until_seeding(&h).await;
            assert_eq!(h.status().sequential, sequential);
            (snaps, peer)
        }
    };
    let (in_order, peer) = run(true, 8).await;
    assert!(
        in_order.len() >= 8,
        "too few snapshots to judge: {}",
        in_order.len()
    );
    // The first wanted piece (shared with the skipped `intro`) comes among the first.
    let first_seen = in_order.iter().find(|s| !s.is_empty()).unwrap();
    assert!(first_seen.contains(&wanted.start), "{first_seen:?}");
    // A pipeline of 64 blocks spans 16 pieces of 64 KiB; allow a few more in flight.
    let reach = max_reach(&in_order, wanted.clone());
    assert!(
        reach <= 24,
        "sequential reached {reach} pieces past the first missing one"
    );
    assert!(
        stored_range(&peer, &meta, wanted.clone()).await
            == data[layout.piece_range(wanted.start).start as usize..]
    );
    // The same download rarest first scatters far ahead (the test can tell the difference).
    let (scattered, _peer) = run(false, 7).await;
    let reach = max_reach(&scattered, wanted.clone());
    assert!(
        reach > 24,
        "rarest first reached only {reach}: the check above proves nothing"
    );
}

/// The leecher's bytes of the pieces in `range`.
async fn stored_range(peer: &SimPeer, meta: &Metainfo, range: std::ops::Range<u32>) -> Vec<u8> {
    let storage = open_leecher_storage(peer, meta).await;
    let mut out = Vec::new();
    for p in range {
        out.extend_from_slice(
            &storage
                .read(p, 0, meta.info.layout.piece_len(p))
                .await
                .unwrap(),
        );
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_magnets_file_choice_applies_once_its_metadata_arrives() {
    let net = SimNet::new();
    let (meta, data, idx) = folder_torrent(&[("one", 600 * 1024), ("two", 900 * 1024)], 32 * 1024);
    let (one, two) = (idx[0], idx[1]);
    let (_seeders, leecher) = two_seeders_and_a_leecher(&net, &meta, &data).await;
    let magnet =
        Magnet::parse(&format!("magnet:?xt=urn:btih:{}", meta.info_hash.to_hex())).unwrap();
    let options = TorrentOptions {
        file_priorities: priorities(2, &[(two, FilePriority::Skip)]),
        sequential: true,
    };
    let h = leecher.session.add_with(magnet, options).unwrap();
    // Before the metadata, the file list is unknown: no choice can be checked.
    assert_eq!(
        h.set_file_priorities(vec![FilePriority::Normal; 2]).await,
        Err(zigtorrent_engine::SelectionError::MetadataUnknown)
    );
    until_seeding(&h).await;
    let s = h.status();
    let layout = &meta.info.layout;
    let wanted: Vec<u32> = layout.pieces_for_file(one).collect();
    assert_eq!(
        s.pieces.iter_ones().map(|p| p as u32).collect::<Vec<_>>(),
        wanted
    );
    assert_eq!(s.files[two].priority, FilePriority::Skip);
    assert!(s.sequential);
}
