//! How fast MSE/PE's RC4 runs here: 64 MiB encrypted by the cipher alone, then written through
//! an [`MseStream`] (vectored 16 KiB blocks, as the peer driver writes) and read back through
//! one (decrypted in place), against plaintext through the same path (which passes straight
//! through to a sink and from a repeat: its figure only shows the wrapper adds nothing).
//!
//! `cargo run --release -p zigtorrent-engine --example mse_bench`

use std::io::IoSlice;
use std::time::Instant;

use rc4::StreamCipher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zigtorrent_engine::peer::mse::{
    skey_hash, CryptoMethods, MseHandshake, MseStream, Progress, Secrets,
};
use zigtorrent_engine::InfoHash;

const TOTAL: usize = 64 << 20;
const BLOCK: usize = 16 << 10;

fn established(
    methods: CryptoMethods,
) -> (MseStream<tokio::io::Sink>, MseStream<tokio::io::Repeat>) {
    let ih = InfoHash([1; 20]);
    let mut rng = rand::thread_rng();
    let mut a = MseHandshake::initiator(ih, methods, &[], Secrets::random(&mut rng));
    let mut b = MseHandshake::responder(
        methods,
        Box::new(move |h| (*h == skey_hash(&ih)).then_some(ih)),
        Secrets::random(&mut rng),
    );
    let (mut da, mut db) = (None, None);
    while da.is_none() || db.is_none() {
        if let Progress::Done(d) = b.handle_input(&a.take_transmit()).expect("handshake") {
            db = Some(*d);
        }
        if let Progress::Done(d) = a.handle_input(&b.take_transmit()).expect("handshake") {
            da = Some(*d);
        }
    }
    (
        MseStream::new(tokio::io::sink(), da.expect("done")),
        MseStream::new(tokio::io::repeat(0x5A), db.expect("done")),
    )
}

fn mbps(secs: f64) -> f64 {
    TOTAL as f64 / (1 << 20) as f64 / secs
}

async fn through_stream(methods: CryptoMethods, label: &str) {
    let (mut w, mut r) = established(methods);
    let block = vec![0xA5u8; BLOCK];
    let start = Instant::now();
    let mut sent = 0;
    while sent < TOTAL {
        let slices: Vec<IoSlice<'_>> = (0..16).map(|_| IoSlice::new(&block)).collect();
        sent += w.write_vectored(&slices).await.expect("sink");
    }
    w.flush().await.expect("sink");
    let write = start.elapsed().as_secs_f64();
    let mut buf = bytes::BytesMut::with_capacity(256 << 10);
    let start = Instant::now();
    let mut got = 0;
    while got < TOTAL {
        buf.clear();
        got += r.read_buf(&mut buf).await.expect("repeat");
    }
    let read = start.elapsed().as_secs_f64();
    println!(
        "{label:>9}: write {:7.1} MB/s, read {:7.1} MB/s",
        mbps(write),
        mbps(read)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Touched before timing, so page faults are not counted as cipher time.
    let mut data = vec![1u8; TOTAL];
    let mut rc4 = <rc4::Rc4 as rc4::KeyInit>::new_from_slice(&[7u8; 20]).expect("20-byte key");
    let start = Instant::now();
    for chunk in data.chunks_mut(BLOCK) {
        rc4.apply_keystream(chunk);
    }
    println!(
        "rc4 alone: {:7.1} MB/s ({} MiB)",
        mbps(start.elapsed().as_secs_f64()),
        TOTAL >> 20
    );
    std::hint::black_box(&data);
    through_stream(CryptoMethods::RC4, "rc4").await;
    through_stream(CryptoMethods::PLAINTEXT, "plaintext").await;
}
