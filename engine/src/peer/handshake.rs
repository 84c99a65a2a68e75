//! The BEP 3 handshake: 68 bytes each way before any message, bounded in time. Owns the
//! timeouts and the identity checks (right torrent, not ourselves). MSE/PE encryption
//! (`mse/`, chosen in `connect.rs`) goes below this, on the stream it is handed.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::transport::BoxStream;
use crate::wire::{self, Handshake, HANDSHAKE_LEN};

/// How long a peer may take to send its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an incoming connection may stay silent before its first byte. A real client sends
/// its handshake at once (it dialled us to talk); a socket that says nothing only holds a
/// half-open slot, so it gets a fraction of [`HANDSHAKE_TIMEOUT`].
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer took too long.
    #[error("handshake timed out")]
    Timeout,
    /// Not a BitTorrent handshake.
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    /// The peer asked for another torrent.
    #[error("peer wants another torrent")]
    WrongInfoHash,
    /// We connected to ourselves.
    #[error("connected to ourselves")]
    SelfConnection,
    /// The MSE/PE exchange failed or was refused.
    #[error("encrypted handshake: {0}")]
    Mse(#[from] super::mse::MseError),
    /// A plaintext handshake while encryption is required.
    #[error("plaintext handshake refused: encryption is required")]
    PlaintextRefused,
    /// An encrypted handshake while encryption is disabled.
    #[error("encrypted handshake refused: encryption is disabled")]
    EncryptedRefused,
}

/// Read the 68-byte handshake off `stream`.
pub async fn read_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Handshake, HandshakeError> {
    let mut buf = [0u8; HANDSHAKE_LEN];
    tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.read_exact(&mut buf))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    Ok(Handshake::decode(&buf)?)
}

/// Read the handshake of a peer that dialled us: its first byte within `first_byte`, the whole
/// handshake within [`HANDSHAKE_TIMEOUT`] of the start.
pub async fn read_handshake_incoming<S: AsyncRead + Unpin>(
    stream: &mut S,
    first_byte: Duration,
) -> Result<Handshake, HandshakeError> {
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let mut buf = [0u8; HANDSHAKE_LEN];
    let n = tokio::time::timeout(first_byte.min(HANDSHAKE_TIMEOUT), stream.read(&mut buf))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    if n == 0 {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    tokio::time::timeout_at(deadline, stream.read_exact(&mut buf[n..]))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    Ok(Handshake::decode(&buf)?)
}

/// Outgoing side: send ours, read theirs, check it.
pub async fn handshake_outgoing(
    mut stream: BoxStream,
    ours: Handshake,
) -> Result<(BoxStream, Handshake), HandshakeError> {
    stream.write_all(&ours.encode()).await?;
    let theirs = read_handshake(&mut stream).await?;
    check_remote(&ours, &theirs)?;
    Ok((stream, theirs))
}

/// Incoming side, after the session read their handshake and routed it here: answer with ours.
pub async fn handshake_incoming(
    mut stream: BoxStream,
    ours: Handshake,
    theirs: &Handshake,
) -> Result<BoxStream, HandshakeError> {
    check_remote(&ours, theirs)?;
    stream.write_all(&ours.encode()).await?;
    Ok(stream)
}

pub(super) fn check_remote(ours: &Handshake, theirs: &Handshake) -> Result<(), HandshakeError> {
    if theirs.info_hash != ours.info_hash {
        return Err(HandshakeError::WrongInfoHash);
    }
    if theirs.peer_id == ours.peer_id {
        return Err(HandshakeError::SelfConnection);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_incoming_connection_times_out_at_the_first_byte() {
        tokio::time::pause();
        let (mut ours, theirs) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let r = read_handshake_incoming(&mut ours, Duration::from_secs(3)).await;
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{r:?}");
        // The paused clock advances exactly to the timer (rounded up to its 1 ms tick).
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
            "{waited:?}"
        );
        drop(theirs);
    }

    #[tokio::test]
    async fn a_slow_handshake_is_bounded_as_a_whole() {
        tokio::time::pause();
        let (mut ours, mut theirs) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let (r, _) = tokio::join!(
            read_handshake_incoming(&mut ours, Duration::from_secs(3)),
            async {
                // One byte at once, then nothing: the first-byte rule is met, the whole is not.
                theirs.write_all(&[19]).await.unwrap();
            }
        );
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{r:?}");
        let waited = start.elapsed();
        assert!(
            waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
    }
}
