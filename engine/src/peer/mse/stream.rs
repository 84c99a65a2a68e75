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
            return Ok(done);
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
