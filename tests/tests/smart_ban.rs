//! Smart ban on loopback: a liar that corrupts one block of every piece and sends the rest
//! correctly shares pieces with an honest seeder. The liar is banned, the honest seeder never
//! is (though it sent blocks of pieces that failed), and the download completes
//! byte-identical.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zigtorrent_engine::types::BLOCK_SIZE;
use zigtorrent_engine::wire::{self, Handshake, Message};
use zigtorrent_engine::{Bitfield, Metainfo, PeerId};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

/// Four blocks per piece, so pieces are often filled by both peers.
const PIECE_LENGTH: u32 = 4 * BLOCK_SIZE;
/// 32 pieces, 128 blocks: more than one peer's first pipeline (64), so both peers get
/// requests from the start and many pieces mix their blocks.
const PAYLOAD_LEN: usize = 32 * PIECE_LENGTH as usize;

/// The torrent's bytes in order, read from the seeder's copy.
fn torrent_bytes(meta: &Metainfo, root: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in &meta.info.layout.files {
        all.extend(std::fs::read(root.join(&f.path)).unwrap());
    }
    all
}

/// A peer with every piece that answers only requests for the first block of a piece, and
/// those with junk; it ignores the rest (they go to the honest seeder after a while). So every
/// piece it touches has blocks from both peers: the sole-sender rule can never catch it, only
/// smart ban can. Returns its address and a count of connections.
async fn liar(meta: &Metainfo, data: Arc<Vec<u8>>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    let info_hash = meta.info_hash;
    let pieces = meta.info.layout.piece_count() as usize;
    let piece_length = u64::from(meta.info.layout.piece_length);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let data = data.clone();
            tokio::spawn(async move {
                let mut hs = [0u8; wire::HANDSHAKE_LEN];
                if s.read_exact(&mut hs).await.is_err() {
                    return;
                }
                let mut out = bytes::BytesMut::new();
                out.extend_from_slice(
                    &Handshake::new(info_hash, PeerId(*b"-XX0001-liarliarliar")).encode(),
                );
                let bf = Bitfield::full(pieces);
                Message::Bitfield(bytes::Bytes::copy_from_slice(bf.as_bytes())).encode(&mut out);
                Message::Unchoke.encode(&mut out);
                if s.write_all(&out).await.is_err() {
                    return;
                }
                let mut buf = bytes::BytesMut::new();
                loop {
                    match wire::decode(&mut buf, 1 << 20) {
                        Ok(Some(Message::Request {
                            index,
                            begin,
                            length,
                        })) => {
                            let start = u64::from(index) * piece_length + u64::from(begin);
                            let Some(slice) = usize::try_from(start)
                                .ok()
                                .and_then(|st| data.get(st..st + length as usize))
                            else {
                                return;
                            };
                            if begin != 0 {
                                continue;
                            }
                            let block: Vec<u8> = slice.iter().map(|b| !b).collect();
                            let mut out = bytes::BytesMut::new();
                            Message::Piece {
                                index,
                                begin,
                                data: block.into(),
                            }
                            .encode(&mut out);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                        Ok(Some(_)) => {}
                        Ok(None) => match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        },
                        Err(_) => return,
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_liar_is_banned_and_the_download_completes() {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    std::fs::create_dir_all(&seed_dir).unwrap();
    let source = seed_dir.join("big.bin");
    let payload: Vec<u8> = (0..PAYLOAD_LEN).map(|_| rand::random()).collect();
    std::fs::write(&source, &payload).unwrap();
    let meta = make_torrent(&source, vec![], PIECE_LENGTH);
    let data = Arc::new(torrent_bytes(&meta, &seed_dir));
    let (bad, connections) = liar(&meta, data).await;

    let seeder = start_session(&seed_dir, Arc::new(FsBackend::new()), vec![]).await;
    let good: SocketAddr = format!("127.0.0.1:{}", seeder.listen_port())
        .parse()
        .unwrap();
    wait_seeding(&seeder.add(meta.clone()).unwrap(), Duration::from_secs(30)).await;

    let leech_dir = dir.path().join("leech");
    let leecher = start_session(&leech_dir, Arc::new(FsBackend::new()), vec![bad, good]).await;
    let handle = leecher.add(meta.clone()).unwrap();
    // Only the honest seeder has good first blocks: completing proves it was never banned.
    // (Striking every sender of a failed piece would ban both after a few pieces.)
    wait_seeding(&handle, Duration::from_secs(60)).await;
    let status = handle.status();
    leecher.shutdown(Duration::from_secs(4)).await;
    seeder.shutdown(Duration::from_secs(4)).await;
    assert!(
        std::fs::read(leech_dir.join("big.bin")).unwrap() == payload,
        "downloaded bytes differ"
    );
    assert!(status.wasted > 0, "the liar's pieces should have failed");
    assert_eq!(status.peers_banned, 1, "exactly the liar is banned");
    assert!(
        connections.load(Ordering::SeqCst) <= 2,
        "the banned liar was dialled again and again"
    );
}
