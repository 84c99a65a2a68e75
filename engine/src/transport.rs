//! The `Transport` contract: how the engine gets byte streams to and from peers.
//!
//! A transport only moves bytes; it knows nothing of BitTorrent. The engine runs the handshake
//! and wire protocol over whatever [`PeerStream`] a transport yields, so TCP, uTP and anything
//! a plugin adds behave the same to the rest of the engine.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A bidirectional byte stream to one peer.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for T {}

/// An owned, type-erased peer stream.
pub type BoxStream = Box<dyn PeerStream>;

/// Errors every transport reports with the same meaning.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The connection attempt did not finish in time.
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    /// The OS refused or failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The transport cannot do this (e.g. listen on an address family it lacks).
    #[error("not supported by this transport: {0}")]
    NotSupported(&'static str),
}

/// Options every transport factory receives.
#[derive(Clone, Debug)]
pub struct TransportOptions {
    /// How long an outgoing connection may take.
    pub connect_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Accepts incoming streams on one bound address.
#[async_trait]
pub trait Listener: Send {
    /// The address actually bound (port 0 resolved).
    fn local_addr(&self) -> SocketAddr;
    /// Wait for the next incoming stream.
    async fn accept(&mut self) -> Result<(BoxStream, SocketAddr), TransportError>;

    /// Like [`Listener::accept`], also naming the transport that carried the stream when it is
    /// not the listener's own (a listener combining several transports names the inner one).
    async fn accept_labeled(
        &mut self,
    ) -> Result<(BoxStream, SocketAddr, Option<String>), TransportError> {
        let (stream, addr) = self.accept().await?;
        Ok((stream, addr, None))
    }
}

/// A way to reach peers.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The command-line selector, e.g. `tcp`.
    fn name(&self) -> &str;
    /// Open a stream to `addr`, bounded by the configured connect timeout.
    async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError>;
    /// Bind a listener on `addr`.
    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError>;

    /// Like [`Transport::connect`], also naming the transport that carried the stream (a
    /// transport combining others names the inner one, so users see `utp` or `tcp`).
    async fn connect_labeled(
        &self,
        addr: SocketAddr,
    ) -> Result<(BoxStream, String), TransportError> {
        let stream = self.connect(addr).await?;
        Ok((stream, self.name().to_string()))
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Arc<T> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError> {
        (**self).connect(addr).await
    }
    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        (**self).listen(addr).await
    }
    async fn connect_labeled(
        &self,
        addr: SocketAddr,
    ) -> Result<(BoxStream, String), TransportError> {
        (**self).connect_labeled(addr).await
    }
}
