//! What real clients do that BEP 3 alone does not cover, against a scripted seeder:
//! - BEP 10 extended handshake: we offer the extension protocol, tell peers how many requests we
//!   queue (`reqq`), and never keep more requests outstanding than a peer's own `reqq`;
//! - a bitfield after the first message (aria2 sends one instead of haves when it is shorter).

use std::sync::Arc;
use std::time::Duration;
use zigtorrent_engine::extension::ExtendedHandshake;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use zigtorrent_engine::wire::{self, Handshake, Message};
use zigtorrent_engine::{Bitfield, PeerId};
use zigtorrent_storage_fs::FsBackend;
use zigtorrent_tests::*;

/// What the scripted seeder saw from us.
#[derive(Debug, Default)]
struct Seen {
    offered_extensions: bool,
    our_reqq: Option<u32>,
    max_outstanding: usize,
    requests: usize,
}

/// How the scripted seeder behaves.
struct Script {
    /// `reqq` in its extended handshake.
    reqq: u32,
    /// Start with a bitfield of only the first piece and send the full one later, after the
    /// first request, as aria2 does with a bitfield in place of haves.
    late_bitfield: bool,
}

/// Runs a download from a scripted seeder that answers requests only after holding them a
/// while, so the leecher's pipeline is as full as it allows. Returns what the seeder saw.
async fn download_from(script: Script) -> Seen {
    let dir = tempfile::tempdir().unwrap();
    let seed_dir = dir.path().join("seed");
    let source = write_payload(&seed_dir, "payload", 5);
    let meta = make_torrent(&source, vec![], PAYLOAD_PIECE_LENGTH);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pieces = meta.info.layout.piece_count() as usize;
    let info_hash = meta.info_hash;
    let layout = meta.info.layout.clone();
    let root = seed_dir.clone();
    let files: Vec<_> = meta.info.layout.files.clone();

    let seeder = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut hs = [0u8; wire::HANDSHAKE_LEN];
        s.read_exact(&mut hs).await.unwrap();
        let theirs = Handshake::decode(&hs).unwrap();
        let mut seen = Seen {
            offered_extensions: theirs.supports_extensions(),
            ..Seen::default()
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(
            &Handshake::new(info_hash, PeerId(*b"-XX0001-scriptedpeer")).encode(),
        );
        // Extended handshake before the bitfield, as some clients do.
        let mut payload = BytesMut::from(&b"\0d1:md11:ut_metadatai3ee4:reqqi"[..]);
        payload.extend_from_slice(script.reqq.to_string().as_bytes());
        payload.extend_from_slice(b"ee");
        Message::Unknown {
            id: wire::EXTENDED,
            payload: payload.freeze(),
        }
        .encode(&mut out);
        let mut first = Bitfield::new(pieces);
        first.set(0);
        let full = Bitfield::full(pieces);
        let bitfield = |bf: &Bitfield| Message::Bitfield(Bytes::copy_from_slice(bf.as_bytes()));
        let mut late = script.late_bitfield.then(|| bitfield(&full));
        bitfield(if late.is_some() { &first } else { &full }).encode(&mut out);
        Message::Unchoke.encode(&mut out);
        s.write_all(&out).await.unwrap();

        // The payload, to answer requests with real data.
        let mut data = Vec::new();
        for f in &files {
            data.extend(std::fs::read(root.join(&f.path)).unwrap());
        }
        let mut buf = BytesMut::new();
        let mut outstanding = Vec::new();
        loop {
            // Read whatever arrives within 50 ms; answer the oldest request after a quiet spell.
            let read = tokio::time::timeout(Duration::from_millis(50), s.read_buf(&mut buf)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return seen;
            }
            while let Ok(Some(m)) = wire::decode(&mut buf, 1 << 20) {
                match m {
                    Message::Unknown {
                        id: wire::EXTENDED,
                        payload,
                    } => {
                        seen.our_reqq = ExtendedHandshake::parse_payload(&payload)
                            .unwrap()
                            .unwrap()
                            .reqq;
                    }
                    Message::Request {
                        index,
                        begin,
                        length,
                    } => {
                        outstanding.push((index, begin, length));
                        seen.requests += 1;
                        seen.max_outstanding = seen.max_outstanding.max(outstanding.len());
                    }
                    Message::Cancel {
                        index,
                        begin,
                        length,
                    } => {
                        outstanding.retain(|r| *r != (index, begin, length));
                    }
                    _ => {}
                }
            }
            if seen.requests > 0 {
                if let Some(m) = late.take() {
                    let mut out = BytesMut::new();
                    m.encode(&mut out);
                    s.write_all(&out).await.unwrap();
                }
            }
            // Answer only once the leecher has gone quiet for 50 ms, so every request it was
            // willing to send is counted first.
            let quiet = read.is_err();
            if quiet && !outstanding.is_empty() {
                let (index, begin, length) = outstanding.remove(0);
                let at = layout.piece_range(index).start as usize + begin as usize;
                let mut out = BytesMut::new();
                Message::Piece {
                    index,
                    begin,
                    data: Bytes::copy_from_slice(&data[at..at + length as usize]),
                }
                .encode(&mut out);
                if s.write_all(&out).await.is_err() {
                    return seen;
                }
            }
        }
    });

    let leech_dir = dir.path().join("leech");
    // The scripted seeder reads a plaintext handshake from the one connection it accepts.
    let leecher = start_session_with(
        &leech_dir,
        Arc::new(FsBackend::new()),
        vec![addr],
        zigtorrent_engine::EncryptionPolicy::Disable,
    )
    .await;
    let handle = leecher.add(meta.clone()).unwrap();
    wait_seeding(&handle, Duration::from_secs(120)).await;
    leecher.shutdown(Duration::from_secs(4)).await;
    let seen = seeder.await.unwrap();
    assert_same_files(&source, &leech_dir.join("payload"));
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_respects_the_peers_reqq_and_ours_is_announced() {
    const LIMIT: u32 = 3;
    let seen = download_from(Script {
        reqq: LIMIT,
        late_bitfield: false,
    })
    .await;
    assert!(
        seen.offered_extensions,
        "our handshake lacks the BEP 10 bit"
    );
    assert_eq!(seen.our_reqq, Some(1024), "our extended handshake's reqq");
    assert!(seen.requests > 0);
    assert!(
        seen.max_outstanding <= LIMIT as usize,
        "{} requests outstanding, the peer's reqq is {LIMIT}",
        seen.max_outstanding
    );
    // And the limit was reached, so the check above measured something.
    assert_eq!(seen.max_outstanding, LIMIT as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_bitfield_adds_pieces_like_haves() {
    // Only one piece at first: the download completes only if the later bitfield is taken.
    let seen = download_from(Script {
        reqq: 250,
        late_bitfield: true,
    })
    .await;
    assert!(seen.requests > 1);
}
