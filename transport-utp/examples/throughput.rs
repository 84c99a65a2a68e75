//! Loopback throughput of one `UtpTransport` connection: `cargo run --release --example
//! throughput -p zigtorrent-transport-utp [MiB]`.

use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zigtorrent_engine::transport::{Transport, TransportOptions};
use zigtorrent_transport_utp::UtpTransport;

#[tokio::main]
async fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let server = UtpTransport::new(&TransportOptions::default());
    let mut listener = server
        .listen("127.0.0.1:0".parse().expect("literal"))
        .await
        .expect("listen");
    let addr = listener.local_addr();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while total < mib << 20 {
            let n = s.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let client = UtpTransport::new(&TransportOptions::default());
    let mut c = client.connect(addr).await.expect("connect");
    let chunk = vec![7u8; 1 << 16];
    let start = Instant::now();
    for _ in 0..(mib << 4) {
        c.write_all(&chunk).await.expect("write");
    }
    c.flush().await.expect("flush");
    let total = reader.await.expect("reader");
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{} MiB in {secs:.2}s: {:.1} MB/s",
        total >> 20,
        total as f64 / secs / 1e6
    );
}
