//! `PacedUdp`: the UDP socket under `librqbit_utp`, with uTP data datagrams paced per flow.
//!
//! The library sends through its [`librqbit_utp::Transport`] trait; this type implements it
//! over the same dual-stack UDP socket the library would bind itself (same options: dual
//! stack, don't-fragment so MTU probes see `EMSGSIZE`, a large receive buffer). Data datagrams
//! (the library's vectored send path; `ST_DATA` in the header) ask the [`Pacer`] first; a
//! refused one returns `Pending`, which the library treats exactly like a full socket buffer:
//! it stops sending on that connection and waits for its waker. A timer task per waiting flow
//! wakes it when the pacer said it may go. Control packets (ACK, SYN, FIN, RESET) and receives
//! pass straight through, so pacing our uploads never slows our downloads' ACKs. On the way
//! in, the `ack_nr` of each received packet is shown to the pacer (its in-flight cap), and a
//! flow held by that cap is woken by the ACK that opens it.
//!
//! Never does: parse more than the fixed 20-byte uTP header of a datagram (the library still
//! validates every one it receives), change or drop a received datagram, or hold its lock
//! across a system call.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use librqbit_dualstack_sockets::{BindOpts, PollSendToVectored, UdpSocket};
use tokio::time::Instant;

use crate::pacer::{FlowKey, Pacer, PacerConfig};

/// BEP 29: the fixed header is 20 bytes; the type is the high nibble of byte 0, the
/// connection id bytes 2-3 and the sequence number bytes 16-17, big-endian.
const UTP_HEADER: usize = 20;
/// BEP 29 `ST_DATA`.
const ST_DATA: u8 = 0;
/// BEP 29 `ST_FIN` and `ST_STATE` (an ACK): with `ST_DATA`, the types whose `ack_nr`
/// acknowledges our data (`ST_SYN` acknowledges nothing, `ST_RESET` ends the connection).
const ST_FIN: u8 = 1;
const ST_STATE: u8 = 2;
/// BEP 29 protocol version, the low nibble of byte 0.
const UTP_VERSION: u8 = 1;

/// What an incoming datagram acknowledges: the connection id it carries (our receive id),
/// its `ack_nr` and the window the peer advertises. `None` for anything that is not a uTP
/// packet carrying an acknowledgement (the library validates the rest; this only reads the
/// fixed header).
pub(crate) fn ack_header(datagram: &[u8]) -> Option<(u16, u16, u32)> {
    if datagram.len() < UTP_HEADER || datagram[0] & 0x0f != UTP_VERSION {
        return None;
    }
    if !matches!(datagram[0] >> 4, ST_DATA | ST_FIN | ST_STATE) {
        return None;
    }
    let conn_id = u16::from_be_bytes([datagram[2], datagram[3]]);
    let wnd = u32::from_be_bytes([datagram[12], datagram[13], datagram[14], datagram[15]]);
    let ack_nr = u16::from_be_bytes([datagram[18], datagram[19]]);
    Some((conn_id, ack_nr, wnd))
}

/// The flow, sequence number and type of one of our outgoing uTP datagrams, from its header.
/// `None` when it is not a data packet (or too short to be one).
pub(crate) fn data_header(header: &[u8], target: SocketAddr) -> Option<(FlowKey, u16)> {
    if header.len() < UTP_HEADER || header[0] >> 4 != ST_DATA {
        return None;
    }
    let conn_id = u16::from_be_bytes([header[2], header[3]]);
    let seq = u16::from_be_bytes([header[16], header[17]]);
    Some(((target, conn_id), seq))
}

/// Flows waiting for the pacer, and whether a wake-up timer is running for each.
#[derive(Default)]
struct Waiting {
    wakers: Vec<Waker>,
    timer_at: Option<Instant>,
}

struct State {
    /// `None`: pacing is off and every datagram goes at once.
    pacer: Option<Pacer>,
    waiting: HashMap<FlowKey, Waiting>,
}

/// The paced socket handed to `librqbit_utp::UtpSocket::new_with_opts`.
pub struct PacedUdp {
    inner: UdpSocket,
    state: Arc<Mutex<State>>,
}

impl PacedUdp {
    /// Bind like `UtpSocketUdp::new_udp_with_opts` does: dual stack when `addr` is IPv6,
    /// don't-fragment set, and the receive buffer raised toward `rcvbuf` (the kernel caps it
    /// at `net.core.rmem_max`).
    pub fn bind(
        addr: SocketAddr,
        rcvbuf: usize,
        pacing: Option<PacerConfig>,
    ) -> std::io::Result<Self> {
        let inner = UdpSocket::bind_udp(addr, BindOpts::default())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        {
            use dontfrag::UdpSocketExt;
            let s = inner.socket();
            let r = if addr.is_ipv4() {
                s.set_dontfrag_v4(true)
            } else {
                s.set_dontfrag_v6(true)
            };
            if let Err(e) = r {
                tracing::debug!("uTP socket: cannot set don't-fragment: {e}");
            }
            if let Err(e) = socket2::SockRef::from(s).set_recv_buffer_size(rcvbuf) {
                tracing::debug!("uTP socket: cannot set the receive buffer: {e}");
            }
        }
        Ok(Self::from_socket(inner, pacing))
    }

    fn from_socket(inner: UdpSocket, pacing: Option<PacerConfig>) -> Self {
        PacedUdp {
            inner,
            state: Arc::new(Mutex::new(State {
                pacer: pacing.map(Pacer::new),
                waiting: HashMap::new(),
            })),
        }
    }

    /// Ask the pacer about a data datagram; on a refusal, park `cx`'s waker until it may go.
    fn admit(&self, cx: &mut Context<'_>, key: FlowKey, seq: u16, len: usize) -> Poll<()> {
        let now = Instant::now();
        let mut st = self.state.lock().expect("lock poisoned only by a panic");
        let Some(pacer) = st.pacer.as_mut() else {
            return Poll::Ready(());
        };
        let at = match pacer.admit(now, key, seq, len) {
            Ok(()) => return Poll::Ready(()),
            // An ACK for the flow wakes it earlier (`on_datagram`).
            Err(r) => r.at(),
        };
        let w = st.waiting.entry(key).or_default();
        if !w.wakers.iter().any(|k| k.will_wake(cx.waker())) {
            w.wakers.push(cx.waker().clone());
        }
        // One timer per waiting flow, kept across the ACKs that wake it early (a flow held by
        // the in-flight cap is refused and woken by an ACK thousands of times a second); a
        // new one only for an earlier time (a rate refusal after a cap refusal), the later one
        // then fires as a no-op.
        if w.timer_at.is_none_or(|t| at < t) {
            w.timer_at = Some(at);
            let state = Arc::downgrade(&self.state);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        tokio::time::sleep_until(at).await;
                        wake_flow(&state, key, at);
                    });
                }
                // Not on a runtime (never the case inside the library's tasks): try again
                // at once rather than never.
                Err(_) => {
                    drop(st);
                    wake_flow(&Arc::downgrade(&self.state), key, at);
                }
            }
        }
        Poll::Pending
    }
}

impl PacedUdp {
    /// A datagram arrived: if it acknowledges one of our flows, tell the pacer and wake the
    /// flow's waiting sends (the in-flight cap may have opened).
    fn on_datagram(&self, datagram: &[u8], from: SocketAddr) {
        let Some((conn_id, ack_nr, wnd)) = ack_header(datagram) else {
            return;
        };
        let woken = {
            let mut st = self.state.lock().expect("lock poisoned only by a panic");
            let Some(pacer) = st.pacer.as_mut() else {
                return;
            };
            let Some(key) = pacer.on_ack(Instant::now(), from, conn_id, ack_nr, wnd) else {
                return;
            };
            // The wakers only: the flow's timer (if any) is still running and stays recorded.
            st.waiting
                .get_mut(&key)
                .map(|w| std::mem::take(&mut w.wakers))
        };
        for w in woken.into_iter().flatten() {
            w.wake();
        }
    }
}

/// The flow's timer for `at` fired: wake its sends, unless a timer for an earlier time
/// replaced this one (then that one does).
fn wake_flow(state: &std::sync::Weak<Mutex<State>>, key: FlowKey, at: Instant) {
    let Some(state) = state.upgrade() else { return };
    let wakers = {
        let mut st = state.lock().expect("lock poisoned only by a panic");
        if st.waiting.get(&key).is_none_or(|w| w.timer_at != Some(at)) {
            return;
        }
        st.waiting
            .remove(&key)
            .map(|w| w.wakers)
            .unwrap_or_default()
    };
    for w in wakers {
        w.wake();
    }
}

impl PollSendToVectored for PacedUdp {
    fn poll_send_to_vectored(
        &self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
        target: SocketAddr,
    ) -> Poll<std::io::Result<usize>> {
        if let Some((key, seq)) = bufs.first().and_then(|h| data_header(h, target)) {
            let len = bufs.iter().map(|b| b.len()).sum();
            std::task::ready!(self.admit(cx, key, seq, len));
        }
        self.inner.poll_send_to_vectored(cx, bufs, target)
    }
}

impl librqbit_utp::Transport for PacedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        let (n, from) = self.inner.recv_from(buf).await?;
        // `n <= buf.len()`: the socket wrote that many bytes into it.
        self.on_datagram(&buf[..n.min(buf.len())], from);
        Ok((n, from))
    }

    fn send_to<'a>(
        &'a self,
        buf: &'a [u8],
        target: SocketAddr,
    ) -> impl Future<Output = std::io::Result<usize>> + Send + Sync + 'a {
        self.inner.send_to(buf, target)
    }

    fn poll_send_to(
        &self,
        cx: &mut Context<'_>,
        buf: &[u8],
        target: SocketAddr,
    ) -> Poll<std::io::Result<usize>> {
        self.inner.poll_send_to(cx, buf, target)
    }

    fn bind_addr(&self) -> SocketAddr {
        self.inner.bind_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn header(kind: u8, conn_id: u16, seq: u16) -> [u8; UTP_HEADER] {
        let mut h = [0u8; UTP_HEADER];
        h[0] = (kind << 4) | 1; // version 1
        h[2..4].copy_from_slice(&conn_id.to_be_bytes());
        h[16..18].copy_from_slice(&seq.to_be_bytes());
        h
    }

    #[test]
    fn only_data_packets_are_paced() {
        let to: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        assert_eq!(
            data_header(&header(ST_DATA, 513, 40000), to),
            Some(((to, 513), 40000))
        );
        // ST_STATE (2, an ACK), ST_FIN (1), ST_SYN (4) pass unpaced.
        for kind in [1, 2, 3, 4] {
            assert_eq!(data_header(&header(kind, 513, 1), to), None, "type {kind}");
        }
        assert_eq!(data_header(&header(ST_DATA, 1, 1)[..19], to), None, "short");
    }

    #[test]
    fn acks_are_read_from_data_fin_and_state_packets() {
        let mut h = header(2, 77, 5);
        h[12..16].copy_from_slice(&65536u32.to_be_bytes());
        h[18..20].copy_from_slice(&4242u16.to_be_bytes());
        assert_eq!(ack_header(&h), Some((77, 4242, 65536)));
        for kind in [ST_DATA, ST_FIN] {
            assert!(ack_header(&header(kind, 1, 1)).is_some(), "type {kind}");
        }
        // ST_RESET (3), ST_SYN (4), unknown types, another version, too short: not ACKs.
        for kind in [3, 4, 9] {
            assert_eq!(ack_header(&header(kind, 1, 1)), None, "type {kind}");
        }
        let mut v2 = header(2, 1, 1);
        v2[0] = (2 << 4) | 2;
        assert_eq!(ack_header(&v2), None);
        assert_eq!(ack_header(&h[..19]), None);
    }

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);
    impl std::task::Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn an_ack_wakes_a_send_held_by_the_window() {
        use crate::pacer::WindowConfig;
        use librqbit_utp::Transport as _;

        let sock =
            UdpSocket::bind_udp("127.0.0.1:0".parse().unwrap(), BindOpts::default()).unwrap();
        let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = peer.local_addr().unwrap();
        let config = PacerConfig {
            max_burst: usize::MAX,
            burst_time: Duration::from_secs(1),
            window: Some(WindowConfig {
                floor: 2,
                // Only the ACK may release the send in this test, never the clock.
                ack_stale: Duration::from_secs(3600),
                ..WindowConfig::default()
            }),
            ..PacerConfig::default()
        };
        let paced = PacedUdp::from_socket(sock, Some(config));
        let ours = paced.bind_addr();
        // We send on connection id 9, so the peer's ACKs carry 8 (we connected).
        let ack = |ack_nr: u16| {
            let mut h = header(2, 8, 0);
            h[18..20].copy_from_slice(&ack_nr.to_be_bytes());
            peer.send_to(&h, ours).unwrap();
        };
        let payload = [0u8; 100];
        let flag = Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut send = |seq: u16| {
            let h = header(ST_DATA, 9, seq);
            let bufs = [IoSlice::new(&h), IoSlice::new(&payload)];
            paced.poll_send_to_vectored(&mut cx, &bufs, to)
        };
        assert!(send(0).is_ready());
        let mut buf = [0u8; 64];
        ack(0);
        paced.recv_from(&mut buf).await.unwrap();
        assert!(send(1).is_ready());
        assert!(send(2).is_ready());
        assert!(send(3).is_pending(), "two in flight: the floor");
        assert!(!flag.0.load(std::sync::atomic::Ordering::SeqCst));
        ack(2);
        let (n, from) = paced.recv_from(&mut buf).await.unwrap();
        assert_eq!(
            (n, from),
            (UTP_HEADER, to),
            "the ACK is still handed to the library"
        );
        assert!(
            flag.0.load(std::sync::atomic::Ordering::SeqCst),
            "the ACK woke it"
        );
        assert!(send(3).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_datagram_is_woken_when_it_may_go() {
        let sock =
            UdpSocket::bind_udp("127.0.0.1:0".parse().unwrap(), BindOpts::default()).unwrap();
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sink.local_addr().unwrap();
        let config = PacerConfig {
            start_rate: 1e6,
            max_rate: 1e6,
            ..PacerConfig::default()
        };
        let paced = PacedUdp::from_socket(sock, Some(config));
        let payload = [0u8; 1400];
        let start = Instant::now();
        // 1 MB/s and a 2 ms bucket: the first datagram drains it, the next ones wait.
        for seq in 0..5u16 {
            let h = header(ST_DATA, 9, seq);
            let bufs = [IoSlice::new(&h), IoSlice::new(&payload)];
            let n = std::future::poll_fn(|cx| paced.poll_send_to_vectored(cx, &bufs, to))
                .await
                .unwrap();
            assert_eq!(n, UTP_HEADER + payload.len());
        }
        // 5 x 1,420 bytes at 1 MB/s, less the 2,000-byte bucket it started with: 5.1 ms, and
        // tokio's timer rounds each wait up to its next 1 ms tick.
        let took = Instant::now() - start;
        assert!(took >= Duration::from_millis(4), "{took:?}");
        assert!(took <= Duration::from_millis(8), "{took:?}");
        // ACKs are never held back, even with the bucket empty.
        let ack = header(2, 9, 5);
        let n =
            std::future::poll_fn(|cx| librqbit_utp::Transport::poll_send_to(&paced, cx, &ack, to))
                .await
                .unwrap();
        assert_eq!(n, UTP_HEADER);
        assert_eq!(Instant::now(), start + took, "the ACK did not wait");
    }
}
