//! Opening a connection the way the encryption policy says, both ways, up to a handshaken
//! [`Connection`]: incoming streams are told apart by their first bytes (plaintext BitTorrent
//! or MSE) and answered per policy; dials try MSE or plaintext first, fall back to the other
//! way in `prefer`, and remember per address which way worked ([`Dialer`], one per session,
//! shared by every dial site). The MSE exchange itself is `mse/`.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::time::Instant;

use super::handshake::{check_remote, read_handshake, HandshakeError, HANDSHAKE_TIMEOUT};
use super::mse::{
    negotiate, CryptoMethods, Method, MseHandshake, MseStream, NegotiateError, Secrets, SkeyLookup,
    PLAINTEXT_PREFIX,
};
use super::Connection;
use crate::transport::{BoxStream, Transport, TransportError};
use crate::wire::{Handshake, HANDSHAKE_LEN};

/// Which connections may carry payload in the clear (MSE/PE).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EncryptionPolicy {
    /// Dial encrypted first (offering RC4 and plaintext), fall back to plaintext; accept both,
    /// choosing RC4 when a peer offers it.
    #[default]
    Prefer,
    /// Never exchange payload in the clear: RC4 only, both ways, no fallback.
    Require,
    /// Plaintext only: no MSE handshake either way.
    Disable,
}

impl EncryptionPolicy {
    /// The command-line and config name.
    pub fn name(self) -> &'static str {
        match self {
            EncryptionPolicy::Prefer => "prefer",
            EncryptionPolicy::Require => "require",
            EncryptionPolicy::Disable => "disable",
        }
    }

    /// The policy named `name` (`prefer`, `require`, `disable`).
    pub fn from_name(name: &str) -> Option<Self> {
        [Self::Prefer, Self::Require, Self::Disable]
            .into_iter()
            .find(|p| p.name() == name)
    }

    /// The methods an MSE exchange may settle on under this policy (`None`: no MSE at all).
    fn methods(self) -> Option<CryptoMethods> {
        match self {
            EncryptionPolicy::Prefer => Some(CryptoMethods::BOTH),
            EncryptionPolicy::Require => Some(CryptoMethods::RC4),
            EncryptionPolicy::Disable => None,
        }
    }
}

impl std::fmt::Display for EncryptionPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How a connection's payload travels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Encryption {
    /// In the clear (a plaintext handshake, or MSE that settled on plaintext).
    #[default]
    Plaintext,
    /// RC4 after an MSE handshake.
    Rc4,
}

impl Encryption {
    /// `plaintext` or `rc4`, as logs and the menu show it.
    pub fn name(self) -> &'static str {
        match self {
            Encryption::Plaintext => "plaintext",
            Encryption::Rc4 => "rc4",
        }
    }
}

impl std::fmt::Display for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Method> for Encryption {
    fn from(m: Method) -> Self {
        match m {
            Method::Plaintext => Encryption::Plaintext,
            Method::Rc4 => Encryption::Rc4,
        }
    }
}

impl From<NegotiateError> for HandshakeError {
    fn from(e: NegotiateError) -> Self {
        match e {
            NegotiateError::Io(e) => HandshakeError::Io(e),
            NegotiateError::Mse(e) => HandshakeError::Mse(e),
        }
    }
}

/// Addresses remembered at most, session-wide: each is a few dozen bytes, and an address
/// forgotten only costs one failed attempt the next time.
pub const MAX_REMEMBERED_ADDRESSES: usize = 4096;

/// Why a dial failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// No stream could be opened.
    #[error("{0}")]
    Connect(#[from] TransportError),
    /// The stream opened, the handshakes failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
}

impl DialError {
    /// A failure the other way of connecting might not have: the peer reset, closed or
    /// stalled before the BitTorrent handshake, or spoke garbage (a plaintext-only client
    /// reading our public key as a handshake). Not a refused connect, a wrong torrent or
    /// ourselves.
    fn worth_other_way(&self) -> bool {
        matches!(
            self,
            DialError::Handshake(
                HandshakeError::Io(_)
                    | HandshakeError::Timeout
                    | HandshakeError::Wire(_)
                    | HandshakeError::Mse(_)
            )
        )
    }
}

/// Dials peers for every torrent of a session under its encryption policy, remembering (in
/// `prefer`) the addresses where the second way worked so they get it first next time.
pub struct Dialer {
    policy: EncryptionPolicy,
    flipped: Mutex<Remembered>,
}

/// A bounded set; the oldest entry goes first.
#[derive(Default)]
struct Remembered {
    set: HashSet<SocketAddr>,
    order: VecDeque<SocketAddr>,
}

impl Remembered {
    fn insert(&mut self, addr: SocketAddr) {
        if !self.set.insert(addr) {
            return;
        }
        self.order.push_back(addr);
        while self.order.len() > MAX_REMEMBERED_ADDRESSES {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    fn remove(&mut self, addr: SocketAddr) {
        if self.set.remove(&addr) {
            self.order.retain(|a| *a != addr);
        }
    }
}

impl Dialer {
    /// A dialler for `policy`, remembering nothing yet.
    pub fn new(policy: EncryptionPolicy) -> Self {
        Dialer {
            policy,
            flipped: Mutex::new(Remembered::default()),
        }
    }

    /// The policy it dials and answers by.
    pub fn policy(&self) -> EncryptionPolicy {
        self.policy
    }

    /// Whether `addr` gets the second way first (it worked there last time).
    fn flipped(&self, addr: SocketAddr) -> bool {
        self.flipped
            .lock()
            .expect("lock poisoned only by a panic")
            .set
            .contains(&addr)
    }

    fn remember(&self, addr: SocketAddr, flipped: bool) {
        let mut r = self.flipped.lock().expect("lock poisoned only by a panic");
        if flipped {
            r.insert(addr);
        } else {
            r.remove(addr);
        }
    }

    /// Connect to `addr` and run both handshakes under the policy, `ours` being our
    /// BitTorrent handshake.
    pub async fn dial(
        &self,
        transport: &dyn Transport,
        addr: SocketAddr,
        ours: Handshake,
    ) -> Result<Connection, DialError> {
        match self.policy {
            EncryptionPolicy::Disable => dial_plain(transport, addr, ours).await,
            EncryptionPolicy::Require => dial_mse(transport, addr, ours, CryptoMethods::RC4).await,
            EncryptionPolicy::Prefer => {
                let flipped = self.flipped(addr);
                let first = if flipped {
                    dial_plain(transport, addr, ours).await
                } else {
                    dial_mse(transport, addr, ours, CryptoMethods::BOTH).await
                };
                match first {
                    Err(e) if e.worth_other_way() => {
                        tracing::debug!(%addr, error = %e, plaintext = flipped, "handshake failed; trying the other way");
                        let second = if flipped {
                            dial_mse(transport, addr, ours, CryptoMethods::BOTH).await
                        } else {
                            dial_plain(transport, addr, ours).await
                        };
                        if second.is_ok() {
                            self.remember(addr, !flipped);
                        }
                        second
                    }
                    other => other,
                }
            }
        }
    }

    /// Answer a stream that dialled us: tell plaintext from MSE by its first bytes (the first
    /// within `first_byte`), refuse what the policy refuses, and read the peer's BitTorrent
    /// handshake, all within [`HANDSHAKE_TIMEOUT`]. `lookup` names our torrent for an MSE
    /// `SKEY`. Returns the stream positioned after the peer's handshake.
    pub async fn accept(
        &self,
        mut stream: BoxStream,
        first_byte: Duration,
        lookup: SkeyLookup,
    ) -> Result<(BoxStream, Handshake, Encryption), HandshakeError> {
        let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
        let mut head = [0u8; HANDSHAKE_LEN];
        let n = tokio::time::timeout(
            first_byte.min(HANDSHAKE_TIMEOUT),
            stream.read(&mut head[..PLAINTEXT_PREFIX.len()]),
        )
        .await
        .map_err(|_| HandshakeError::Timeout)??;
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        tokio::time::timeout_at(
            deadline,
            stream.read_exact(&mut head[n..PLAINTEXT_PREFIX.len()]),
        )
        .await
        .map_err(|_| HandshakeError::Timeout)??;
        if head[..PLAINTEXT_PREFIX.len()] == PLAINTEXT_PREFIX[..] {
            if self.policy == EncryptionPolicy::Require {
                return Err(HandshakeError::PlaintextRefused);
            }
            tokio::time::timeout_at(
                deadline,
                stream.read_exact(&mut head[PLAINTEXT_PREFIX.len()..]),
            )
            .await
            .map_err(|_| HandshakeError::Timeout)??;
            return Ok((stream, Handshake::decode(&head)?, Encryption::Plaintext));
        }
        let Some(methods) = self.policy.methods() else {
            return Err(HandshakeError::EncryptedRefused);
        };
        let secrets = Secrets::random(&mut rand::thread_rng());
        let responder = MseHandshake::responder(methods, lookup, secrets);
        let done = tokio::time::timeout_at(
            deadline,
            negotiate(&mut stream, responder, &head[..PLAINTEXT_PREFIX.len()]),
        )
        .await
        .map_err(|_| HandshakeError::Timeout)??;
        let skey = done.info_hash;
        let encryption = Encryption::from(done.method);
        let mut stream = MseStream::wrap(stream, done);
        tokio::time::timeout_at(deadline, stream.read_exact(&mut head))
            .await
            .map_err(|_| HandshakeError::Timeout)??;
        let theirs = Handshake::decode(&head)?;
        // MSE spec: the handshake inside must be for the torrent the exchange named.
        if theirs.info_hash != skey {
            return Err(HandshakeError::WrongInfoHash);
        }
        Ok((stream, theirs, encryption))
    }
}

async fn dial_plain(
    transport: &dyn Transport,
    addr: SocketAddr,
    ours: Handshake,
) -> Result<Connection, DialError> {
    let (stream, via) = transport.connect_labeled(addr).await?;
    let (stream, remote) = super::handshake_outgoing(stream, ours).await?;
    Ok(Connection {
        stream,
        addr,
        remote,
        transport: via,
        encryption: Encryption::Plaintext,
    })
}

/// MSE offering `provide`, our BitTorrent handshake as its initial payload (saving a round
/// trip), then the peer's handshake read through the wrapped stream.
async fn dial_mse(
    transport: &dyn Transport,
    addr: SocketAddr,
    ours: Handshake,
    provide: CryptoMethods,
) -> Result<Connection, DialError> {
    let (stream, via) = transport.connect_labeled(addr).await?;
    let (stream, remote, encryption) = mse_outgoing(stream, ours, provide).await?;
    Ok(Connection {
        stream,
        addr,
        remote,
        transport: via,
        encryption,
    })
}

/// The initiator's side of MSE and the BitTorrent handshake inside it, on an open stream.
async fn mse_outgoing(
    mut stream: BoxStream,
    ours: Handshake,
    provide: CryptoMethods,
) -> Result<(BoxStream, Handshake, Encryption), HandshakeError> {
    let secrets = Secrets::random(&mut rand::thread_rng());
    let initiator = MseHandshake::initiator(ours.info_hash, provide, &ours.encode(), secrets);
    // One deadline for the exchange and the handshake inside it, as for incoming streams: a
    // peer that answers MSE late and then stalls must not hold the dial twice as long.
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    let done = tokio::time::timeout_at(deadline, negotiate(&mut stream, initiator, &[]))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    let encryption = Encryption::from(done.method);
    let mut stream = MseStream::wrap(stream, done);
    let remote = tokio::time::timeout_at(deadline, read_handshake(&mut stream))
        .await
        .map_err(|_| HandshakeError::Timeout)??;
    check_remote(&ours, &remote)?;
    Ok((stream, remote, encryption))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use async_trait::async_trait;
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::peer::mse::{skey_hash, MseError};
    use crate::transport::Listener;
    use crate::types::{InfoHash, PeerId};

    const TORRENT: InfoHash = InfoHash([9; 20]);

    fn ours() -> Handshake {
        Handshake::new(TORRENT, PeerId([1; 20]))
    }

    fn theirs() -> Handshake {
        Handshake::new(TORRENT, PeerId([2; 20]))
    }

    fn lookup() -> SkeyLookup {
        Box::new(|h| (*h == skey_hash(&TORRENT)).then_some(TORRENT))
    }

    /// Our MSE dial against our answer under `policy` over a pipe.
    async fn mse_against(
        provide: CryptoMethods,
        policy: EncryptionPolicy,
    ) -> (
        Result<(BoxStream, Handshake, Encryption), HandshakeError>,
        Result<(BoxStream, Handshake, Encryption), HandshakeError>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let dialer = Dialer::new(policy);
        let answer = async {
            let (mut stream, hs, enc) = dialer
                .accept(Box::new(b), Duration::from_secs(3), lookup())
                .await?;
            stream.write_all(&theirs().encode()).await?;
            Ok((stream, hs, enc))
        };
        tokio::join!(mse_outgoing(Box::new(a), ours(), provide), answer)
    }

    #[tokio::test]
    async fn an_encrypted_dial_meets_an_encrypted_answer() {
        let (out, inc) = mse_against(CryptoMethods::BOTH, EncryptionPolicy::Prefer).await;
        let (mut out, remote, enc) = out.unwrap();
        let (mut inc, hs, inc_enc) = inc.unwrap();
        assert_eq!((enc, inc_enc), (Encryption::Rc4, Encryption::Rc4));
        assert_eq!(remote.peer_id, theirs().peer_id);
        assert_eq!(
            hs.peer_id,
            ours().peer_id,
            "our handshake went as initial payload"
        );
        out.write_all(b"ping").await.unwrap();
        out.flush().await.unwrap();
        let mut got = [0u8; 4];
        inc.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    }

    #[tokio::test]
    async fn require_refuses_an_offer_of_plaintext_only() {
        let (out, inc) = mse_against(CryptoMethods::PLAINTEXT, EncryptionPolicy::Require).await;
        assert!(
            matches!(
                inc,
                Err(HandshakeError::Mse(MseError::NoCommonMethod { .. }))
            ),
            "{:?}",
            inc.err()
        );
        assert!(out.is_err());
    }

    #[tokio::test]
    async fn disable_refuses_mse_and_require_refuses_plaintext() {
        let (out, inc) = mse_against(CryptoMethods::BOTH, EncryptionPolicy::Disable).await;
        assert!(matches!(inc, Err(HandshakeError::EncryptedRefused)));
        assert!(out.is_err());

        for (policy, ok) in [
            (EncryptionPolicy::Require, false),
            (EncryptionPolicy::Prefer, true),
            (EncryptionPolicy::Disable, true),
        ] {
            let (mut a, b) = tokio::io::duplex(1024);
            a.write_all(&ours().encode()).await.unwrap();
            let r = Dialer::new(policy)
                .accept(Box::new(b), Duration::from_secs(3), lookup())
                .await;
            match r {
                Ok((_, hs, enc)) => {
                    assert!(ok, "{policy}");
                    assert_eq!((hs.peer_id, enc), (ours().peer_id, Encryption::Plaintext));
                }
                Err(e) => {
                    assert!(!ok, "{policy}: {e}");
                    assert!(matches!(e, HandshakeError::PlaintextRefused));
                }
            }
        }
    }

    #[tokio::test]
    async fn an_mse_peer_that_stalls_halfway_times_out() {
        tokio::time::pause();
        let (mut a, b) = tokio::io::duplex(4096);
        // Most of a public key, then nothing.
        a.write_all(&[0x42; 60]).await.unwrap();
        let start = Instant::now();
        let r = Dialer::new(EncryptionPolicy::Prefer)
            .accept(Box::new(b), Duration::from_secs(3), lookup())
            .await;
        assert!(matches!(r, Err(HandshakeError::Timeout)), "{:?}", r.err());
        let waited = start.elapsed();
        assert!(
            waited >= HANDSHAKE_TIMEOUT && waited < HANDSHAKE_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
        drop(a);
    }

    #[tokio::test]
    async fn the_handshake_inside_must_name_the_torrent_of_the_exchange() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let other = Handshake::new(InfoHash([3; 20]), PeerId([1; 20]));
        // SKEY says TORRENT, the handshake in the initial payload another torrent.
        let init = async {
            let mut a: BoxStream = Box::new(a);
            let secrets = Secrets::random(&mut rand::thread_rng());
            let hs = MseHandshake::initiator(TORRENT, CryptoMethods::RC4, &other.encode(), secrets);
            let _ = negotiate(&mut a, hs, &[]).await;
            a
        };
        let dialer = Dialer::new(EncryptionPolicy::Prefer);
        let (_a, r) = tokio::join!(
            init,
            dialer.accept(Box::new(b), Duration::from_secs(3), lookup())
        );
        assert!(
            matches!(r, Err(HandshakeError::WrongInfoHash)),
            "{:?}",
            r.err()
        );
    }

    /// A transport to a plaintext-only peer (it hangs up on anything but a BitTorrent
    /// handshake), counting dials.
    struct PlaintextOnlyPeer {
        dials: AtomicUsize,
    }

    #[async_trait]
    impl Transport for PlaintextOnlyPeer {
        fn name(&self) -> &str {
            "pipe"
        }
        async fn connect(&self, _addr: SocketAddr) -> Result<BoxStream, TransportError> {
            self.dials.fetch_add(1, Ordering::Relaxed);
            let (a, mut b) = tokio::io::duplex(1 << 16);
            tokio::spawn(async move {
                let mut buf = [0u8; HANDSHAKE_LEN];
                if b.read_exact(&mut buf).await.is_err() || Handshake::decode(&buf).is_err() {
                    return; // dropping the pipe is the reset a real client sends
                }
                let _ = b.write_all(&theirs().encode()).await;
                let mut rest = Vec::new();
                let _ = b.read_to_end(&mut rest).await;
            });
            Ok(Box::new(a))
        }
        async fn listen(&self, _addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
            Err(TransportError::NotSupported("listen"))
        }
    }

    #[tokio::test]
    async fn prefer_falls_back_to_plaintext_and_remembers_the_address() {
        let transport = Arc::new(PlaintextOnlyPeer {
            dials: AtomicUsize::new(0),
        });
        let addr: SocketAddr = "127.0.0.1:6881".parse().unwrap();
        let dialer = Dialer::new(EncryptionPolicy::Prefer);
        let conn = dialer.dial(&*transport, addr, ours()).await.unwrap();
        assert_eq!(conn.encryption, Encryption::Plaintext);
        assert_eq!(
            transport.dials.load(Ordering::Relaxed),
            2,
            "MSE, then plaintext"
        );
        assert!(dialer.flipped(addr));
        dialer.dial(&*transport, addr, ours()).await.unwrap();
        assert_eq!(
            transport.dials.load(Ordering::Relaxed),
            3,
            "plaintext first the next time"
        );
        // Require never falls back.
        let strict = Dialer::new(EncryptionPolicy::Require);
        assert!(strict.dial(&*transport, addr, ours()).await.is_err());
        assert_eq!(transport.dials.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn the_remembered_addresses_are_bounded() {
        let dialer = Dialer::new(EncryptionPolicy::Prefer);
        for port in 0..(MAX_REMEMBERED_ADDRESSES as u16 + 10) {
            dialer.remember(SocketAddr::from(([127, 0, 0, 1], port)), true);
        }
        let r = dialer.flipped.lock().unwrap();
        assert_eq!(r.set.len(), MAX_REMEMBERED_ADDRESSES);
        assert_eq!(r.order.len(), MAX_REMEMBERED_ADDRESSES);
        assert!(
            !r.set.contains(&SocketAddr::from(([127, 0, 0, 1], 0))),
            "oldest first"
        );
    }

    #[test]
    fn policy_names_round_trip() {
        for p in [
            EncryptionPolicy::Prefer,
            EncryptionPolicy::Require,
            EncryptionPolicy::Disable,
        ] {
            assert_eq!(EncryptionPolicy::from_name(p.name()), Some(p));
        }
        assert_eq!(EncryptionPolicy::from_name("forced"), None);
    }
}
