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
