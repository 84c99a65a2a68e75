//! `UtpPeerStream`: a `librqbit_utp::UtpStream` whose `flush` means what it means on TCP.
//!
//! The library's `poll_flush` returns only once the peer has acknowledged every byte written
//! (unacknowledged data stays in the stream's send buffer until then). The engine flushes
//! after every batch of blocks it writes, so each batch cost a full round trip plus the
//! peer's delayed-ACK timer: libutp (Transmission 3.00) acknowledges a lone trailing packet
//! only on that timer, and seeding to it ran in 256 KiB steps ~120 ms apart, 1.7-2 MB/s
//! (measured with a packet capture; `bench/utp_seed.py`). A TCP stream's flush is a no-op
//! once the kernel has the bytes; here the library has them: with Nagle off it sends them as
//! soon as the congestion and receive windows allow, and it keeps sending what it holds after
//! the stream is dropped, then closes with a FIN (as a TCP close does). So flush returns at
//! once; `shutdown` still waits for every byte to be acknowledged.

use std::pin::Pin;
use std::task::{Context, Poll};

use librqbit_utp::UtpStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A uTP stream handed to the engine as a `PeerStream`.
pub struct UtpPeerStream(pub(crate) UtpStream);

impl AsyncRead for UtpPeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for UtpPeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // See the module docs: written bytes are already the library's to deliver.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use zigtorrent_engine::transport::Transport;

    use crate::{UtpOptions, UtpTransport};

    fn opts() -> UtpOptions {
        UtpOptions {
            connect_timeout: Duration::from_secs(5),
            ..UtpOptions::default()
        }
    }

    #[tokio::test]
    async fn flush_does_not_wait_for_acks_and_dropped_data_still_arrives() {
        let server = UtpTransport::with_options(opts());
        let mut l = server.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr();
        let data: Vec<u8> = (0..400_000u32).map(|i| (i * 13 + 1) as u8).collect();
        let expect = data.clone();
        let reader = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got
        });
        let client = UtpTransport::with_options(opts());
        let mut c = client.connect(addr).await.unwrap();
        c.write_all(&data).await.unwrap();
        // Right after the write most of it is unsent, let alone acknowledged: the library's
        // own flush would be Pending here.
        let first = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(AsyncWrite::poll_flush(std::pin::Pin::new(&mut c), cx))
        })
        .await;
        assert!(matches!(first, std::task::Poll::Ready(Ok(()))));
        // Dropping the stream hands the rest to the library, which delivers it and closes.
        drop(c);
        let got = tokio::time::timeout(Duration::from_secs(20), reader)
            .await
            .expect("the reader saw the end of the stream")
            .unwrap();
        assert!(
            got == expect,
            "{} of {} bytes, or different",
            got.len(),
            expect.len()
        );
    }
}
