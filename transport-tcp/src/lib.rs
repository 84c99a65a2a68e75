//! `TcpTransport`: BitTorrent peers over plain TCP (tokio).
//!
//! Connects with a timeout, sets `TCP_NODELAY` (requests are small and latency-bound, and we
//! batch our own writes), and asks for large socket buffers so one connection can fill a
//! loopback or LAN link, but only where the kernel grants the whole size: setting a buffer
//! turns the kernel's own sizing (autotuning) off for that socket, and a request clamped to a
//! stock kernel's `net.core.rmem_max`/`wmem_max` (208 KiB) would leave the connection with
//! less than autotuning reaches (`tcp_rmem`'s 6 MiB), about 4 MB/s over a 100 ms round trip.

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
    /// Receive and send buffer sizes to set, `None` to leave them to the kernel.
    recv_buffer: Option<usize>,
    send_buffer: Option<usize>,
}

impl TcpTransport {
    /// A transport using `options.connect_timeout`.
    pub fn new(options: &TransportOptions) -> Self {
        TcpTransport {
            connect_timeout: options.connect_timeout,
            recv_buffer: buffer_to_set(kernel_max("/proc/sys/net/core/rmem_max")),
            send_buffer: buffer_to_set(kernel_max("/proc/sys/net/core/wmem_max")),
        }
    }

    fn tune(&self, stream: &TcpStream) {
        // Best effort: a failure here only costs speed, never correctness.
        let _ = stream.set_nodelay(true);
        let sock = SockRef::from(stream);
        if let Some(n) = self.recv_buffer {
            let _ = sock.set_recv_buffer_size(n);
        }
        if let Some(n) = self.send_buffer {
            let _ = sock.set_send_buffer_size(n);
        }
    }

    /// Buffer sizes go on before `connect`/`listen`, so the window scale is negotiated for them.
    fn size_before_connect(&self, socket: &TcpSocket) {
        if let Some(n) = self.recv_buffer {
            let _ = socket.set_recv_buffer_size(n as u32);
        }
        if let Some(n) = self.send_buffer {
            let _ = socket.set_send_buffer_size(n as u32);
        }
    }
}

/// The largest buffer the kernel grants a socket that asks (`net.core.rmem_max` or
/// `wmem_max`); `None` where that cannot be read (not Linux, no `/proc`).
fn kernel_max(path: &str) -> Option<usize> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// [`SOCKET_BUFFER`] when the kernel grants all of it, else `None`: the kernel's autotuning
/// then sizes the buffer, which does better than a clamped fixed size (see the module docs).
fn buffer_to_set(kernel_max: Option<usize>) -> Option<usize> {
    kernel_max
        .filter(|&max| max >= SOCKET_BUFFER)
        .map(|_| SOCKET_BUFFER)
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
        self.size_before_connect(&socket);
        let stream = tokio::time::timeout(self.connect_timeout, socket.connect(addr))
            .await
            .map_err(|_| TransportError::Timeout(addr))??;
        self.tune(&stream);
        Ok(Box::new(stream))
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        // Accepted sockets inherit the listener's receive buffer (and its window scale).
        if let Some(n) = self.recv_buffer {
            let _ = socket.set_recv_buffer_size(n as u32);
        }
        socket.bind(addr)?;
        let listener = socket.listen(BACKLOG)?;
        let local = listener.local_addr()?;
        Ok(Box::new(TcpPeerListener {
            listener,
            local,
            transport: self.clone(),
        }))
    }
}

struct TcpPeerListener {
    listener: TcpListener,
    local: SocketAddr,
    /// For the buffer sizes of accepted streams.
    transport: TcpTransport,
}

#[async_trait]
impl Listener for TcpPeerListener {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn accept(&mut self) -> Result<(BoxStream, SocketAddr), TransportError> {
        let (stream, addr) = self.listener.accept().await?;
        self.transport.tune(&stream);
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

    /// The full size where the kernel grants it; the kernel's own sizing where it would clamp
    /// the request (a stock kernel's 212,992 bytes) or its limit is unknown.
    #[test]
    fn buffers_are_set_only_when_granted_whole() {
        assert_eq!(buffer_to_set(Some(SOCKET_BUFFER)), Some(SOCKET_BUFFER));
        assert_eq!(buffer_to_set(Some(64 << 20)), Some(SOCKET_BUFFER));
        assert_eq!(buffer_to_set(Some(212_992)), None);
        assert_eq!(buffer_to_set(None), None);
    }

    /// With the kernel's limit at or above our size, a socket gets that size before it
    /// connects (the default here would be `tcp_rmem`'s 128 KiB).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_granted_size_is_set_before_connecting() {
        let t = TcpTransport::new(&TransportOptions::default());
        let Some(want) = t.recv_buffer else {
            // This kernel would clamp the size: the case the test above covers.
            assert!(kernel_max("/proc/sys/net/core/rmem_max").unwrap_or(0) < SOCKET_BUFFER);
            return;
        };
        let probe = TcpSocket::new_v4().unwrap();
        t.size_before_connect(&probe);
        assert!(probe.recv_buffer_size().unwrap() as usize >= want);
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
