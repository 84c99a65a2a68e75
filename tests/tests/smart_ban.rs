//! Smart ban on loopback: a liar that corrupts one block of every piece and sends the rest
//! correctly shares pieces with an honest seeder. The liar is banned, the honest seeder never
//! is (though it sent blocks of pieces that failed), and the download completes
//! byte-identical.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use zigtorrent_engine::types::BLOCK_SIZE;
use zigtorrent_engine::Metainfo;
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
    let piece_length = u64::from(meta.info.layout.piece_length);
    let answer: Answer = Arc::new(move |index, begin, length| {
        if begin != 0 {
            return None;
        }
        let start = usize::try_from(u64::from(index) * piece_length).ok()?;
        let block = data.get(start..start + length as usize)?;
        Some(block.iter().map(|b| !b).collect())
    });
    scripted_peer(
        meta,
        *b"-XX0001-liarliarliar",
        have_all_and_unchoke(meta),
        answer,
    )
    .await
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
