//! `UtpTransport`: BitTorrent peers over uTP (BEP 29), on one UDP socket per transport.
//!
//! The uTP state machine, congestion control and packet parsing come from
//! [`librqbit_utp`] (tokio 1; see `docs/UTP.md` for why). This crate adds what the engine's
//! [`Transport`] contract needs around it:
//!
//! - **one socket for both directions.** [`Transport::listen`] binds the UDP socket (on the same
//!   port number the session uses for TCP when combined with it); outgoing connections leave from
//!   that socket, so a peer that dials back reaches us at the address we announce. A transport
//!   that never listened binds an ephemeral socket on first connect.
//! - **bounded resources.** At most [`UtpOptions::max_half_open`] outgoing connects are in
//!   flight; further `connect` calls wait for a slot (bounded by the connect timeout). The
//!   library caps live connections per socket ([`UtpOptions::max_connections`]), unanswered
//!   incoming SYNs (32, then it answers `ST_RESET`), and each connection's receive and send
//!   buffers ([`UtpOptions::rx_buffer`], [`UtpOptions::tx_buffer_max`]).
//! - **hostile datagrams.** The library drops any datagram that does not parse as a uTP header
//!   of a known type and version, and any packet that matches no connection and is not a SYN;
//!   a bad datagram never reaches another connection. `tests/tests/utp.rs` sprays garbage at a
//!   listening port while a download runs.
//! - **clean teardown.** Dropping the transport cancels the socket's tasks, which closes the UDP
//!   socket and every stream on it.
//! - **paced sends** (`paced_udp.rs`, `pacer.rs`). The library would send a whole congestion
//!   window back to back, which overruns a receiver's UDP buffer on fast links (loopback);
//!   the socket under it admits data datagrams per connection through a token bucket whose
//!   rate follows the library's retransmissions, so bursts stay small, and caps datagrams in
//!   flight (it reads the peer's ACKs on the way in), so a receiver that pauses is waited
//!   for instead of overrun. [`UtpOptions::pacing`] tunes or disables it.
//! - **TCP-like flush** (`stream.rs`). `flush` returns once the library holds the bytes
//!   instead of waiting for the peer's ACK of every one, which made each batch of blocks the
//!   engine writes wait for a round trip and the peer's delayed-ACK timer.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use librqbit_utp::{SocketOpts, UtpSocket, UtpSocketUdp};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use zigtorrent_engine::transport::{
    BoxStream, Listener, Transport, TransportError, TransportOptions,
};

mod paced_udp;
mod pacer;
mod stream;

use paced_udp::PacedUdp;
pub use pacer::{PacerConfig, WindowConfig};
pub use stream::UtpPeerStream;

/// The library's default environment (clock, random numbers). Its trait is not exported, so
/// the type is taken from the library's own `UtpSocketUdp` alias.
trait EnvOf {
    type Env;
}
impl<T, E> EnvOf for UtpSocket<T, E> {
    type Env = E;
}
type DefaultEnv = <UtpSocketUdp as EnvOf>::Env;

/// A uTP socket over our paced UDP socket.
type Socket = UtpSocket<PacedUdp, DefaultEnv>;

/// The selector `--transport utp`.
pub const NAME: &str = "utp";

/// Limits and buffer sizes of one [`UtpTransport`].
#[derive(Clone, Debug)]
pub struct UtpOptions {
    /// How long an outgoing connect may take, including waiting for a half-open slot.
    pub connect_timeout: Duration,
    /// Outgoing connects in flight at once (SYN sent, no answer yet).
    pub max_half_open: usize,
    /// Live connections on the socket, both directions; past it SYNs are refused.
    pub max_connections: usize,
    /// Per-connection receive buffer, which is also the window advertised to the peer. Worst
    /// case memory is about `max_connections * (rx_buffer + tx_buffer_max)`.
    pub rx_buffer: usize,
    /// Per-connection send buffer ceiling (it starts at 32 KiB and grows on demand).
    pub tx_buffer_max: usize,
    /// How data datagrams are paced per connection (see `pacer.rs`); `None` sends them as the
    /// library produces them, in bursts of a whole congestion window.
    pub pacing: Option<PacerConfig>,
}

impl UtpOptions {
    /// Defaults, with the connect timeout taken from the engine's options.
    pub fn new(options: &TransportOptions) -> Self {
        UtpOptions {
            connect_timeout: options.connect_timeout,
            ..Self::default()
        }
    }
}

impl Default for UtpOptions {
    fn default() -> Self {
        UtpOptions {
            connect_timeout: TransportOptions::default().connect_timeout,
            // libtorrent's default `half_open_limit` was 8–100 depending on the OS; 32 keeps a
            // startup burst moving without flooding the network with SYNs.
            max_half_open: 32,
            // The session's own peer cap is lower; this is a backstop for the socket.
            max_connections: 256,
            // 2 MiB lets one connection fill a loopback link at ~1 ms RTT; the window is what
            // bounds a sender, so this is the throughput knob.
            rx_buffer: 2 * 1024 * 1024,
            tx_buffer_max: 2 * 1024 * 1024,
            pacing: Some(PacerConfig::default()),
        }
    }
}

/// Peers over uTP.
pub struct UtpTransport {
    options: UtpOptions,
    half_open: Arc<Semaphore>,
    sockets: Mutex<Sockets>,
    /// Cancelled on drop: stops every socket task this transport started.
    cancel: CancellationToken,
}

/// The sockets a transport owns: the listening one, and ephemeral ones for connects made
/// before (or without) listening, one per address family.
#[derive(Default)]
struct Sockets {
    listening: Option<Arc<Socket>>,
    ephemeral_v4: Option<Arc<Socket>>,
    ephemeral_v6: Option<Arc<Socket>>,
}

impl std::fmt::Debug for UtpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UtpTransport")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl UtpTransport {
    /// A transport with default limits and the engine's connect timeout.
    pub fn new(options: &TransportOptions) -> Self {
        Self::with_options(UtpOptions::new(options))
    }

    /// A transport with explicit limits.
    pub fn with_options(options: UtpOptions) -> Self {
        UtpTransport {
            half_open: Arc::new(Semaphore::new(options.max_half_open.max(1))),
            options,
            sockets: Mutex::default(),
            cancel: CancellationToken::new(),
        }
    }

    fn socket_opts(&self) -> SocketOpts {
        SocketOpts {
            vsock_rx_bufsize_bytes: NonZeroUsize::new(self.options.rx_buffer),
            vsock_tx_bufsize_bytes_max: NonZeroUsize::new(self.options.tx_buffer_max),
            max_live_vsocks: NonZeroUsize::new(self.options.max_connections),
            // The engine batches its own writes (vectored block sends); Nagle only adds delay
            // to small request messages.
            disable_nagle: true,
            // Not needed for BitTorrent: the wire protocol says when it is done.
            dont_wait_for_lastack: true,
            // Each socket gets a child token so the transport can stop them all at once.
            cancellation_token: self.cancel.child_token(),
            ..SocketOpts::default()
        }
    }

    /// The UDP receive buffer to ask for: every connection's window plus a quarter for
    /// headers and ACKs (the library's own rule); the kernel caps it at `net.core.rmem_max`.
    fn udp_rcvbuf(&self) -> usize {
        self.options
            .max_connections
            .saturating_mul(self.options.rx_buffer / 8 * 10)
    }

    async fn bind(&self, addr: SocketAddr) -> Result<Arc<Socket>, TransportError> {
        let udp =
            PacedUdp::bind(addr, self.udp_rcvbuf(), self.options.pacing.clone()).map_err(|e| {
                TransportError::Io(std::io::Error::other(format!("uTP bind {addr}: {e}")))
            })?;
        Socket::new_with_opts(udp, DefaultEnv::default(), self.socket_opts()).map_err(|e| {
            TransportError::Io(std::io::Error::other(format!("uTP socket {addr}: {e}")))
        })
    }

    /// The socket outgoing connects to `remote` leave from.
    async fn socket_for(&self, remote: SocketAddr) -> Result<Arc<Socket>, TransportError> {
        {
            let s = self.sockets.lock().expect("lock poisoned only by a panic");
            if let Some(l) = &s.listening {
                // A dual-stack listener serves both families; a v4-only one only v4.
                let bound = l.bind_addr();
                if bound.is_ipv6() || remote.is_ipv4() {
                    return Ok(l.clone());
                }
            }
            let cached = if remote.is_ipv4() {
                &s.ephemeral_v4
            } else {
                &s.ephemeral_v6
            };
            if let Some(e) = cached {
                return Ok(e.clone());
            }
        }
        let any: SocketAddr = if remote.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = self.bind(any).await?;
        let mut s = self.sockets.lock().expect("lock poisoned only by a panic");
        let slot = if remote.is_ipv4() {
            &mut s.ephemeral_v4
        } else {
            &mut s.ephemeral_v6
        };
        // Two racing first connects: keep the first socket, drop ours (its token is cancelled
        // with the transport; the socket itself closes when its last Arc goes).
        Ok(slot.get_or_insert(socket).clone())
    }
}

impl Drop for UtpTransport {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn io_error(e: librqbit_utp::Error) -> TransportError {
    TransportError::Io(std::io::Error::other(e.to_string()))
}

#[async_trait]
impl Transport for UtpTransport {
    fn name(&self) -> &str {
        NAME
    }

    async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError> {
        let attempt = async {
            let _slot = self
                .half_open
                .acquire()
                .await
                .map_err(|_| TransportError::NotSupported("transport closed"))?;
            let socket = self.socket_for(addr).await?;
            let stream = socket.connect(addr).await.map_err(io_error)?;
            Ok::<BoxStream, TransportError>(Box::new(UtpPeerStream(stream)))
        };
        tokio::time::timeout(self.options.connect_timeout, attempt)
            .await
            .map_err(|_| TransportError::Timeout(addr))?
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        let socket = self.bind(addr).await?;
        let local = socket.bind_addr();
        self.sockets
            .lock()
            .expect("lock poisoned only by a panic")
            .listening = Some(socket.clone());
        Ok(Box::new(UtpPeerListener { socket, local }))
    }
}

struct UtpPeerListener {
    socket: Arc<Socket>,
    local: SocketAddr,
}

#[async_trait]
impl Listener for UtpPeerListener {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn accept(&mut self) -> Result<(BoxStream, SocketAddr), TransportError> {
        let stream = self.socket.accept().await.map_err(io_error)?;
        let remote = stream.remote_addr();
        Ok((Box::new(UtpPeerStream(stream)), remote))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fast() -> UtpOptions {
        UtpOptions {
            connect_timeout: Duration::from_secs(2),
            ..UtpOptions::default()
        }
    }

    #[tokio::test]
    async fn connect_and_accept_carry_bytes() {
        let t = UtpTransport::with_options(fast());
        let mut l = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr();
        assert_ne!(addr.port(), 0);
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 300_000];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.flush().await.unwrap();
            // Keep the stream until the client has read everything.
            let _ = s.read(&mut [0u8; 1]).await;
        });
        let client = UtpTransport::with_options(fast());
        let mut c = client.connect(addr).await.unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
        c.write_all(&data).await.unwrap();
        c.flush().await.unwrap();
        let mut back = vec![0u8; data.len()];
        c.read_exact(&mut back).await.unwrap();
        assert!(back == data);
        drop(c);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn outgoing_leaves_from_the_listening_port() {
        let a = UtpTransport::with_options(fast());
        let la = a.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b = UtpTransport::with_options(fast());
        let mut lb = b.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let target = lb.local_addr();
        let accept = tokio::spawn(async move { lb.accept().await.unwrap().1 });
        let _c = a.connect(target).await.unwrap();
        assert_eq!(accept.await.unwrap(), la.local_addr());
    }

    #[tokio::test]
    async fn connect_to_silent_port_times_out() {
        let t = UtpTransport::with_options(UtpOptions {
            connect_timeout: Duration::from_millis(500),
            ..UtpOptions::default()
        });
        // A bound UDP socket that never answers.
        let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = std::time::Instant::now();
        let r = t.connect(silent.local_addr().unwrap()).await;
        assert!(r.is_err());
        assert!(start.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn garbage_datagrams_leave_a_connection_working() {
        let t = UtpTransport::with_options(fast());
        let mut l = t.listen("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr();
        let spray = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for len in [0usize, 1, 19, 20, 21, 100, 1500] {
            for fill in [0u8, 0x01, 0x11, 0x21, 0x41, 0xff] {
                let _ = spray.send_to(&vec![fill; len], addr).await;
            }
        }
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.flush().await.unwrap();
            let _ = s.read(&mut [0u8; 1]).await;
        });
        let client = UtpTransport::with_options(fast());
        let mut c = client.connect(addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        drop(c);
        server.await.unwrap();
    }
}
