//! Soak under hostile load (issue 9): a session with 200 torrents, 100 idle hostile
//! connections (half of them handshaken and then silent, half never sending a byte) and one
//! peer flooding choke/unchoke. An honest seeder added afterwards still completes every torrent,
//! and the flooder is disconnected.
//!
//! Peak memory and CPU are measured outside the test (see the issue note): run this binary under
//! `/usr/bin/time -v`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zigtorrent_engine::wire::{Handshake, Message};
use zigtorrent_engine::{Bitfield, MemoryBackend, PeerId};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

const TORRENTS: usize = 200;
const IDLE_HOSTILE: usize = 100;
const FILE_LEN: usize = 64 * 1024;
const PIECE_LENGTH: u32 = 16 * 1024;

fn hostile_id(n: usize) -> PeerId {
    let mut id = *b"-XX0001-hostile00000";
    id[16..20].copy_from_slice(&(n as u32).to_be_bytes());
    PeerId(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_torrents_finish_under_idle_and_flooding_peers() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut metas = Vec::new();
    for i in 0..TORRENTS {
        let path = seed_dir.join(format!("t{i:03}.bin"));
        let mut data = vec![0u8; FILE_LEN];
        rng.fill_bytes(&mut data);
        std::fs::write(&path, &data).unwrap();
        metas.push(make_torrent(&path, vec![], PIECE_LENGTH));
    }

    // The session under attack, with every torrent and nobody to download from yet.
    let leech_dir = dir.path().join("leech");
    let leecher = start_session(&leech_dir, Arc::new(MemoryBackend::new()), vec![]).await;
    let target: SocketAddr = format!("127.0.0.1:{}", leecher.listen_port())
        .parse()
        .unwrap();
    let handles: Vec<_> = metas
        .iter()
        .map(|m| leecher.add(m.clone()).unwrap())
        .collect();

    // 100 idle hostile connections: the first half handshake for a torrent and go silent
    // (keeping their sockets), the second half never send a byte.
    let mut hostile = Vec::new();
    for (n, meta) in metas.iter().enumerate().take(IDLE_HOSTILE) {
        let mut s = TcpStream::connect(target).await.unwrap();
        if n < IDLE_HOSTILE / 2 {
            s.write_all(&Handshake::new(meta.info_hash, hostile_id(n)).encode())
                .await
                .unwrap();
        }
        hostile.push(s);
    }

    // One peer that floods choke/unchoke at torrent 0, as a seed.
    let mut flooder = TcpStream::connect(target).await.unwrap();
    let mut out = bytes::BytesMut::new();
    out.extend_from_slice(&Handshake::new(metas[0].info_hash, hostile_id(9999)).encode());
    let pieces = metas[0].info.layout.piece_count() as usize;
    Message::Bitfield(bytes::Bytes::copy_from_slice(
        Bitfield::full(pieces).as_bytes(),
    ))
    .encode(&mut out);
    for _ in 0..20_000 {
        Message::Unchoke.encode(&mut out);
        Message::Choke.encode(&mut out);
    }
    let flood = tokio::spawn(async move {
        // Written while the session reads; it may cut us off mid-way.
        let _ = flooder.write_all(&out).await;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match flooder.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });

    // Now the honest seeder appears: every torrent must complete from it.
    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    let seed_addr: SocketAddr = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();
    for m in &metas {
        seeder.add(m.clone()).unwrap();
    }
    for h in &handles {
        h.add_peers(vec![seed_addr]).await;
    }
    let deadline = Duration::from_secs(120);
    let started = tokio::time::Instant::now();
    for h in &handles {
        let left = deadline.saturating_sub(started.elapsed());
        wait_seeding(h, left).await;
    }
    tokio::time::timeout(Duration::from_secs(10), flood)
        .await
        .expect("the choke-flooding peer was never disconnected")
        .unwrap();

    drop(hostile);
    leecher.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;
}
