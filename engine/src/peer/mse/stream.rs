//! MSE on a real stream: [`negotiate`] runs an [`MseHandshake`] over it, and [`MseStream`]
//! wraps it afterwards so the layers above see plain bytes. Reads are decrypted in place in the
//! caller's buffer (block data is never copied here); writes are encrypted into one bounded
//! buffer and count as written only once they are in it.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use rc4::StreamCipher;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{Ciphers, Established, MseError, MseHandshake, Progress};
use crate::transport::BoxStream;

/// Bytes read from the stream per handshake read: more than a whole exchange stage, so one read
/// usually finishes one.
const HANDSHAKE_READ: usize = 2048;
/// Encrypted bytes waiting for the stream at most: one batch of the peer driver's writer
/// (`driver::WRITE_BATCH`), so a batch is encrypted and handed to the socket in one go.
pub const WRITE_BUFFER: usize = 256 * 1024;

/// Run `handshake` over `stream`, `prefix` being bytes already read from it (the first bytes an
/// incoming connection was told apart by). Not bounded in time: the caller bounds it.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    mut handshake: MseHandshake,
    prefix: &[u8],
) -> Result<Established, NegotiateError> {
    let mut progress = if prefix.is_empty() {
        Progress::NeedMore
    } else {
        handshake.handle_input(prefix)?
    };
    let mut buf = vec![0u8; HANDSHAKE_READ];
    loop {
        let out = handshake.take_transmit();
        if !out.is_empty() {
            stream.write_all(&out).await?;
            stream.flush().await?;
        }
        if let Progress::Done(done) = progress {
            return Ok(*done);
        }
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
        progress = handshake.handle_input(&buf[..n])?;
    }
}

/// Why [`negotiate`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    /// The stream failed or ended.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer broke the protocol or we refused it.
    #[error("{0}")]
    Mse(#[from] MseError),
}

/// A stream after an MSE handshake: RC4 both ways, or plaintext with the bytes received during
/// the handshake handed out first.
pub struct MseStream<S> {
    inner: S,
    /// Payload received during the handshake (already clear), handed out before any read.
    initial: Vec<u8>,
    initial_pos: usize,
    ciphers: Option<Ciphers>,
    /// Encrypted bytes not yet taken by the stream: `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
}

impl MseStream<BoxStream> {
    /// The stream to use after `done`: `stream` itself when nothing is left to do (plaintext,
    /// nothing read ahead), else wrapped.
    pub fn wrap(stream: BoxStream, done: Established) -> BoxStream {
        if done.ciphers.is_none() && done.initial.is_empty() {
            return stream;
        }
        Box::new(MseStream::new(stream, done))
    }
}

impl<S> MseStream<S> {
    /// Wrap `inner`, positioned where `done` left it.
    pub fn new(inner: S, done: Established) -> Self {
        MseStream {
            inner,
            initial: done.initial,
            initial_pos: 0,
            ciphers: done.ciphers,
            out: Vec::new(),
            out_pos: 0,
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Encrypt as much of `slices` as fits in the write buffer; the count taken.
    fn take_in(&mut self, slices: &[IoSlice<'_>]) -> usize {
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 0 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        let start = self.out.len();
        let mut room = WRITE_BUFFER.saturating_sub(start);
        let mut taken = 0;
        for s in slices {
            if room == 0 {
                break;
            }
            let n = s.len().min(room);
            self.out.extend_from_slice(&s[..n]);
            room -= n;
            taken += n;
        }
        if let Some(c) = &mut self.ciphers {
            c.encrypt.apply_keystream(&mut self.out[start..]);
        }
        taken
    }
}

impl<S: AsyncWrite + Unpin> MseStream<S> {
    /// Write the buffer out; `Ready(Ok)` once it is empty.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.out.clear();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    fn poll_write_slices(
        &mut self,
        cx: &mut Context<'_>,
        slices: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if slices.iter().all(|s| s.is_empty()) {
            return Poll::Ready(Ok(0));
        }
        if self.pending() >= WRITE_BUFFER {
            ready!(self.poll_drain(cx))?;
        }
        let taken = self.take_in(slices);
        // Hand what we can to the stream now; the rest goes on the next write or flush.
        if let Poll::Ready(Err(e)) = self.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for MseStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.initial_pos < this.initial.len() {
            let n = buf.remaining().min(this.initial.len() - this.initial_pos);
            buf.put_slice(&this.initial[this.initial_pos..this.initial_pos + n]);
            this.initial_pos += n;
            if this.initial_pos == this.initial.len() {
                this.initial = Vec::new();
                this.initial_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(c) = &mut this.ciphers {
            // In place, in the caller's buffer: no copy of block data.
            c.decrypt.apply_keystream(&mut buf.filled_mut()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for MseStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ciphers.is_none() && this.pending() == 0 {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.poll_write_slices(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.ciphers.is_none() && this.pending() == 0 {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        this.poll_write_slices(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{skey_hash, CryptoMethods, Method, Secrets};
    use super::*;
    use crate::types::InfoHash;

    const TORRENT: InfoHash = InfoHash([7; 20]);

    /// Both sides negotiated over an in-memory pipe, then wrapped around a pipe of `capacity`
    /// bytes. (The handshake needs room for one side's key and pad, as any socket has.)
    async fn pair(
        provide: CryptoMethods,
        ia: &[u8],
        capacity: usize,
    ) -> (
        MseStream<tokio::io::DuplexStream>,
        MseStream<tokio::io::DuplexStream>,
    ) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut rng = rand::thread_rng();
        let init = MseHandshake::initiator(TORRENT, provide, ia, Secrets::random(&mut rng));
        let resp = MseHandshake::responder(
            CryptoMethods::BOTH,
            Box::new(|h| (*h == skey_hash(&TORRENT)).then_some(TORRENT)),
            Secrets::random(&mut rng),
        );
        let (da, db) = tokio::join!(negotiate(&mut a, init, &[]), negotiate(&mut b, resp, &[]));
        let (da, db) = (da.unwrap(), db.unwrap());
        assert_eq!(da.method, db.method);
        let (a, b) = tokio::io::duplex(capacity);
        (MseStream::new(a, da), MseStream::new(b, db))
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Write `slices` with vectored writes until all is taken, then flush.
    async fn write_vectored_all<W: AsyncWrite + Unpin>(w: &mut W, parts: &[Vec<u8>]) {
        let mut offsets = vec![0usize; parts.len()];
        loop {
            let slices: Vec<IoSlice<'_>> = parts
                .iter()
                .zip(&offsets)
                .filter(|(p, o)| **o < p.len())
                .map(|(p, o)| IoSlice::new(&p[*o..]))
                .collect();
            if slices.is_empty() {
                break;
            }
            let mut n = w.write_vectored(&slices).await.unwrap();
            assert!(n > 0);
            for (p, o) in parts.iter().zip(offsets.iter_mut()) {
                let take = n.min(p.len() - *o);
                *o += take;
                n -= take;
            }
        }
        w.flush().await.unwrap();
    }

    #[tokio::test]
    async fn rc4_bytes_cross_both_ways_with_vectored_writes_and_split_reads() {
        let (mut a, mut b) = pair(CryptoMethods::RC4, b"initial", 1 << 20).await;
        let mut first = [0u8; 7];
        b.read_exact(&mut first).await.unwrap();
        assert_eq!(&first, b"initial", "the initial payload comes first");
        let parts = vec![data(13), data(16 * 1024), Vec::new(), data(5)];
        write_vectored_all(&mut a, &parts).await;
        let want: Vec<u8> = parts.concat();
        let mut got = Vec::new();
        let mut buf = [0u8; 1000];
        while got.len() < want.len() {
            let n = b.read(&mut buf).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, want);
        b.write_all(b"and back").await.unwrap();
        b.flush().await.unwrap();
        let mut back = [0u8; 8];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"and back");
    }

    #[tokio::test]
    async fn more_than_the_write_buffer_through_a_narrow_pipe() {
        // 64-byte pipe: every write meets a full stream; the buffer must hold and drain.
        let (mut a, mut b) = pair(CryptoMethods::RC4, &[], 64).await;
        let parts: Vec<Vec<u8>> = (0..5).map(|i| data(100_000 + i)).collect();
        let want = parts.concat();
        let writer = async {
            write_vectored_all(&mut a, &parts).await;
            a.shutdown().await.unwrap();
        };
        let reader = async {
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert_eq!(got.len(), want.len());
        assert!(got == want);
    }

    #[tokio::test]
    async fn plaintext_passes_through_after_the_initial_payload() {
        let (mut a, b) = pair(CryptoMethods::PLAINTEXT, b"ia", 1 << 16).await;
        assert!(a.ciphers.is_none() && b.ciphers.is_none());
        a.write_all(b"clear").await.unwrap();
        a.flush().await.unwrap();
        // Read the raw pipe under the wrapper: the bytes are as written.
        let MseStream {
            mut inner, initial, ..
        } = b;
        assert_eq!(initial, b"ia");
        let mut raw = [0u8; 5];
        inner.read_exact(&mut raw).await.unwrap();
        assert_eq!(&raw, b"clear");
    }

    #[tokio::test]
    async fn rc4_bytes_on_the_wire_are_not_the_payload() {
        let (mut a, b) = pair(CryptoMethods::BOTH, &[], 1 << 16).await;
        let MseStream { mut inner, .. } = b;
        let payload = data(4096);
        a.write_all(&payload).await.unwrap();
        a.flush().await.unwrap();
        let mut raw = vec![0u8; payload.len()];
        inner.read_exact(&mut raw).await.unwrap();
        assert_ne!(raw, payload);
        let _ = Method::Rc4;
    }
}
