//! Swarms in the simulator (`zigtorrent_engine::testing::sim`): sessions on in-memory links and
//! a paused clock. No sockets, no files, no real waiting.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use zigtorrent_engine::metainfo::{create_torrent, CreateOptions};
use zigtorrent_engine::storage::{StorageBackend, StorageSpec};
use zigtorrent_engine::testing::sim::{SimNet, SimPeer};
use zigtorrent_engine::{Metainfo, TorrentHandle, TorrentState};

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

/// Every byte the leecher's storage holds, files concatenated.
async fn stored(peer: &SimPeer, meta: &Metainfo) -> Vec<u8> {
    let layout = Arc::new(meta.info.layout.clone());
    let spec = StorageSpec {
        info_hash: meta.info_hash,
        layout: layout.clone(),
        download_dir: "/nonexistent".into(),
        state_dir: "/nonexistent".into(),
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
    let mut seeders = Vec::new();
    for n in 1..=2 {
        let s = SimPeer::start(&net, ip(n), n, Vec::new()).await;
        s.preload(&meta, &data).await;
        let h = s.session.add(meta.clone()).unwrap();
        until_seeding(&h).await;
        seeders.push((s, h));
    }
    let leecher = SimPeer::start(
        &net,
        ip(9),
        9,
        seeders.iter().map(|(s, _)| s.addr).collect(),
    )
    .await;
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
