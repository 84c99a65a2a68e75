//! `TcpTransport`: BitTorrent peers over plain TCP (tokio).
//!
//! Connects with a timeout, sets `TCP_NODELAY` (requests are small and latency-bound, and we
//! batch our own writes), and asks for large socket buffers so one connection can fill a
//! loopback or LAN link.

use std::net::SocketAddr;
use std::time::Duration;

use async_trait::async_trait;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use zigtorrent_engine::transport::{
    BoxStream, Listener, Transport, TransportError, TransportOptions,
};

/// The selector `--transport tcp`.
pub const NAME: &str = "tcp";

/// Socket buffer size asked of the kernel (it may clamp it to `net.core.*mem_max`).
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Listen backlog: enough for a burst of incoming peers.
const BACKLOG: u32 = 1024;

/// Peers over TCP.
#[derive(Clone, Debug)]
pub struct TcpTransport {
    connect_timeout: Duration,
}

impl TcpTransport {
    /// A transport using `options.connect_timeout`.
    pub fn new(options: &TransportOptions) -> Self {
        TcpTransport {
            connect_timeout: options.connect_timeout,
        }
    }
}

fn tune(stream: &TcpStream) {
    // Best effort: a failure here only costs speed, never correctness.
    let _ = stream.set_nodelay(true);
    let sock = SockRef::from(stream);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
}

#[async_trait]
impl Transport for TcpTransport {
    fn name(&self) -> &str {
        NAME
    }

    async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // Buffers must be sized before connect for the window scale to be negotiated.
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER as u32);
        let _ = socket.set_send_buffer_size(SOCKET_BUFFER as u32);
        let stream = tokio::time::timeout(self.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| TransportError::Timeout(addr))??;
        tune(&stream);
        Ok(Box::new(stream))
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        let _ = socket.set_recv_buffer_size(SOCKET_BUFFER as u32);
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?;
        let local = listener.local_addr()?;
        Ok(Box::new(TcpPeerListener { listener, local }))
    }
}

struct TcpPeerListener {
    listener: TcpListener,
    local: SocketAddr,
}

#[async_trait]
impl Listener for TcpPeerListener {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn accept(&mut self) -> Result<(BoxStream, SocketAddr), TransportError> {
        let (stream, addr) = self.listener.accept().await?;
        tune(&stream);
        Ok((Box::new(stream), addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connect_and_accept_carry_bytes() {
        let t = TcpTransport::new(&TransportOptions::default());
        let mut l = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let mut c = t.connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn connect_to_closed_port_fails() {
        let t = TcpTransport::new(&TransportOptions::default());
        let l = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr();
        drop(l);
        assert!(t.connect(addr).await.is_err());
    }
}
