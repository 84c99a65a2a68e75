//! `TransportPair`: two transports behind one name, as `--transport both` (uTP preferred, TCP
//! as fallback).
//!
//! - **Listening** binds both on the same port number (`fallback` first, since its port is the
//!   one announced, then `preferred` on that port) and merges their incoming streams. With port
//!   0 it retries a few times in case the number the first picked is taken for the second.
//! - **Connecting** starts `preferred` at once and `fallback` after a short head start (or at
//!   once if `preferred` fails first), and keeps the first stream that opens, the way libtorrent
//!   and Transmission try uTP then TCP. The loser is dropped.
//! - **Remembering**: an address where `fallback` won is dialled the other way round for a
//!   while ([`REMEMBER_FOR`]): `fallback` first, `preferred` after the head start. A TCP-only
//!   peer costs the head start once, not on every reconnect, and a uTP peer whose answer was
//!   merely late goes back to uTP later. The memory is bounded ([`REMEMBERED`] addresses).
//!
//! It knows nothing of uTP or TCP themselves: any two transports pair.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::transport::{BoxStream, Listener, Transport, TransportError};

/// How long `preferred` runs alone before `fallback` is tried too. A uTP SYN to a peer with no
/// uTP gets no answer at all, so this is what a TCP-only peer costs us on the first connect.
/// 250 ms is Happy Eyeballs' connection attempt delay (RFC 8305): longer than most round trips,
/// so a uTP peer is seldom dialled twice, and short enough that a TCP-only peer hardly waits
/// (libtorrent instead waits for its uTP connect to time out, seconds). A far uTP peer may get a
/// TCP attempt too; uTP still usually wins, having started first, and the loser is dropped.
pub const DEFAULT_HEAD_START: Duration = Duration::from_millis(250);

/// Addresses remembered as "fallback first"; when full, the memory starts over.
pub const REMEMBERED: usize = 4096;

/// How long an address stays "fallback first" after the fallback won there.
pub const REMEMBER_FOR: Duration = Duration::from_secs(30 * 60);

/// Attempts at finding one port number free for both transports when asked for port 0.
const ANY_PORT_ATTEMPTS: usize = 8;

/// Incoming streams buffered between the two accept tasks and the session.
const ACCEPT_QUEUE: usize = 16;

/// Two transports under one name; see the module docs.
pub struct TransportPair {
    name: String,
    preferred: Arc<dyn Transport>,
    fallback: Arc<dyn Transport>,
    head_start: Duration,
    /// Addresses where `fallback` won the last race, and when.
    fallback_first: Mutex<HashMap<SocketAddr, Instant>>,
}

impl TransportPair {
    /// `preferred` is dialled first; `fallback` after `head_start`.
    pub fn new(
        name: impl Into<String>,
        preferred: Arc<dyn Transport>,
        fallback: Arc<dyn Transport>,
        head_start: Duration,
    ) -> Self {
        TransportPair {
            name: name.into(),
            preferred,
            fallback,
            head_start,
            fallback_first: Mutex::default(),
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Instant>> {
        self.fallback_first
            .lock()
            .expect("lock poisoned only by a panic")
    }

    /// Dials `first` at once and `second` after the head start (at once if `first` fails);
    /// the first stream to open wins. Returns the stream, its label, and whether `first` won.
    async fn race(
        &self,
        addr: SocketAddr,
        first: &dyn Transport,
        second: &dyn Transport,
    ) -> Result<(BoxStream, String, bool), TransportError> {
        let go_now = Notify::new();
        let first_attempt = first.connect_labeled(addr);
        let second_attempt = async {
            tokio::select! {
                _ = tokio::time::sleep(self.head_start) => {}
                _ = go_now.notified() => {}
            }
            second.connect_labeled(addr).await
        };
        tokio::pin!(first_attempt, second_attempt);
        let mut first_failed = false;
        let mut second_error = None;
        loop {
            tokio::select! {
                r = &mut first_attempt, if !first_failed => match r {
                    Ok((s, label)) => return Ok((s, label, true)),
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, transport = first.name(), "connect failed, trying the other");
                        first_failed = true;
                        // Stores a permit if the second is not waiting yet.
                        go_now.notify_one();
                    }
                },
                r = &mut second_attempt, if second_error.is_none() => match r {
                    Ok((s, label)) => return Ok((s, label, false)),
                    Err(e) => second_error = Some(e),
                },
            }
            if first_failed {
                if let Some(e) = second_error.take() {
                    return Err(e);
                }
            }
        }
    }

    async fn listen_on(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        let fallback = self.fallback.listen(addr).await?;
        let local = fallback.local_addr();
        // Same port number; the fallback listener is dropped (closed) if this fails.
        let preferred = self.preferred.listen(local).await?;
        Ok(Box::new(PairListener::new(
            local,
            (preferred, self.preferred.name().to_string()),
            (fallback, self.fallback.name().to_string()),
        )))
    }
}

#[async_trait]
impl Transport for TransportPair {
    fn name(&self) -> &str {
        &self.name
    }

    async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError> {
        Ok(self.connect_labeled(addr).await?.0)
    }

    async fn connect_labeled(
        &self,
        addr: SocketAddr,
    ) -> Result<(BoxStream, String), TransportError> {
        let swapped = self
            .remembered()
            .get(&addr)
            .is_some_and(|at| at.elapsed() < REMEMBER_FOR);
        let (first, second) = if swapped {
            (&*self.fallback, &*self.preferred)
        } else {
            (&*self.preferred, &*self.fallback)
        };
        let (stream, label, first_won) = self.race(addr, first, second).await?;
        let fallback_won = swapped == first_won;
        let mut remembered = self.remembered();
        if fallback_won {
            if remembered.len() >= REMEMBERED && !remembered.contains_key(&addr) {
                remembered.clear();
            }
            remembered.insert(addr, Instant::now());
        } else {
            remembered.remove(&addr);
        }
        Ok((stream, label))
    }

    async fn listen(&self, addr: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
        if addr.port() != 0 {
            return self.listen_on(addr).await;
        }
        let mut last = None;
        for _ in 0..ANY_PORT_ATTEMPTS {
            match self.listen_on(addr).await {
                Ok(l) => return Ok(l),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(TransportError::NotSupported(
            "no port free for both transports",
        )))
    }
}

/// A stream accepted by one of the pair, with the name of the transport that carried it.
type Accepted = (BoxStream, SocketAddr, Option<String>);

/// Accepts from both listeners through one queue. Each inner listener is driven by its own
/// task, so no accept is ever cancelled half-way; the tasks end when this is dropped.
struct PairListener {
    local: SocketAddr,
    rx: mpsc::Receiver<Result<Accepted, TransportError>>,
    tasks: [JoinHandle<()>; 2],
}

impl PairListener {
    fn new(
        local: SocketAddr,
        a: (Box<dyn Listener>, String),
        b: (Box<dyn Listener>, String),
    ) -> Self {
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let tasks = [
            tokio::spawn(forward(a.0, a.1, tx.clone())),
            tokio::spawn(forward(b.0, b.1, tx)),
        ];
        PairListener { local, rx, tasks }
    }
}

async fn forward(
    mut listener: Box<dyn Listener>,
    name: String,
    tx: mpsc::Sender<Result<Accepted, TransportError>>,
) {
    loop {
        let r = listener
            .accept_labeled()
            .await
            .map(|(s, a, label)| (s, a, Some(label.unwrap_or_else(|| name.clone()))));
        let failed = r.is_err();
        if tx.send(r).await.is_err() {
            return;
        }
        if failed {
            // A failing accept (e.g. out of file descriptors) must not spin.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for PairListener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl Listener for PairListener {
    fn local_addr(&self) -> SocketAddr {
        self.local
    }

    async fn accept(&mut self) -> Result<(BoxStream, SocketAddr), TransportError> {
        let (stream, addr, _) = self.accept_labeled().await?;
        Ok((stream, addr))
    }

    async fn accept_labeled(&mut self) -> Result<Accepted, TransportError> {
        match self.rx.recv().await {
            Some(r) => r,
            // Both tasks ended, which they do only when aborted.
            None => Err(TransportError::NotSupported("listener closed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An in-memory transport: `connect` either fails after `delay_ms`, or succeeds after
    /// `delay_ms` with a stream whose other end says `name`. Both can change between connects.
    struct Fake {
        name: &'static str,
        delay_ms: AtomicU64,
        works: AtomicBool,
        connects: AtomicUsize,
    }

    impl Fake {
        fn new(name: &'static str, delay_ms: u64, works: bool) -> Arc<Self> {
            Arc::new(Fake {
                name,
                delay_ms: AtomicU64::new(delay_ms),
                works: AtomicBool::new(works),
                connects: AtomicUsize::new(0),
            })
        }

        fn set(&self, delay_ms: u64, works: bool) {
            self.delay_ms.store(delay_ms, Ordering::SeqCst);
            self.works.store(works, Ordering::SeqCst);
        }
    }

    #[async_trait]
    impl Transport for Fake {
        fn name(&self) -> &str {
            self.name
        }
        async fn connect(&self, addr: SocketAddr) -> Result<BoxStream, TransportError> {
            self.connects.fetch_add(1, Ordering::SeqCst);
            let delay = Duration::from_millis(self.delay_ms.load(Ordering::SeqCst));
            tokio::time::sleep(delay).await;
            if !self.works.load(Ordering::SeqCst) {
                return Err(TransportError::Timeout(addr));
            }
            let (a, mut b) = tokio::io::duplex(64);
            b.write_all(self.name.as_bytes()).await.unwrap();
            tokio::spawn(async move {
                let _ = b.read(&mut [0u8; 1]).await;
            });
            Ok(Box::new(a))
        }
        async fn listen(&self, _: SocketAddr) -> Result<Box<dyn Listener>, TransportError> {
            Err(TransportError::NotSupported("fake"))
        }
    }

    /// Which inner transport carried the stream, checked two ways: the label the pair reports
    /// (what users see per peer) must match what the stream itself says.
    async fn who(pair: &TransportPair) -> Result<String, TransportError> {
        let (mut s, label) = pair.connect_labeled("127.0.0.1:1".parse().unwrap()).await?;
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).await.unwrap();
        let said = String::from_utf8_lossy(&buf).into_owned();
        assert_eq!(
            label, said,
            "label names the transport that carried the stream"
        );
        Ok(said)
    }

    #[tokio::test(start_paused = true)]
    async fn preferred_wins_when_it_answers() {
        let (p, f) = (Fake::new("utp", 10, true), Fake::new("tcp", 1, true));
        let pair = TransportPair::new("both", p, f.clone(), DEFAULT_HEAD_START);
        assert_eq!(who(&pair).await.unwrap(), "utp");
        assert_eq!(f.connects.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn silent_preferred_falls_back_after_head_start() {
        let (p, f) = (Fake::new("utp", 60_000, true), Fake::new("tcp", 1, true));
        let pair = TransportPair::new("both", p, f, DEFAULT_HEAD_START);
        let start = tokio::time::Instant::now();
        assert_eq!(who(&pair).await.unwrap(), "tcp");
        let took = start.elapsed();
        assert!(took >= DEFAULT_HEAD_START && took < DEFAULT_HEAD_START * 2);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_preferred_falls_back_at_once() {
        let (p, f) = (Fake::new("utp", 5, false), Fake::new("tcp", 1, true));
        let pair = TransportPair::new("both", p, f, DEFAULT_HEAD_START);
        let start = tokio::time::Instant::now();
        assert_eq!(who(&pair).await.unwrap(), "tcp");
        assert!(start.elapsed() < Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn both_failing_is_an_error() {
        let (p, f) = (Fake::new("utp", 5, false), Fake::new("tcp", 5, false));
        let pair = TransportPair::new("both", p, f, DEFAULT_HEAD_START);
        assert!(who(&pair).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fallback_only_peer_costs_the_head_start_once() {
        let (p, f) = (Fake::new("utp", 60_000, true), Fake::new("tcp", 1, true));
        let pair = TransportPair::new("both", p.clone(), f.clone(), DEFAULT_HEAD_START);
        assert_eq!(who(&pair).await.unwrap(), "tcp");
        // Remembered: the next connects go to the fallback first and do not wait.
        for _ in 0..3 {
            let start = tokio::time::Instant::now();
            assert_eq!(who(&pair).await.unwrap(), "tcp");
            assert!(start.elapsed() < Duration::from_millis(100));
        }
        assert_eq!(p.connects.load(Ordering::SeqCst), 1, "uTP not redialled");
        // The peer drops TCP and answers uTP: the fallback fails, the preferred is tried at
        // once, wins, and the address is forgotten (preferred first again).
        f.set(1, false);
        p.set(5, true);
        assert_eq!(who(&pair).await.unwrap(), "utp");
        let before = f.connects.load(Ordering::SeqCst);
        assert_eq!(who(&pair).await.unwrap(), "utp");
        assert_eq!(
            f.connects.load(Ordering::SeqCst),
            before,
            "preferred first again"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_expires() {
        let (p, f) = (Fake::new("utp", 60_000, true), Fake::new("tcp", 1, true));
        let pair = TransportPair::new("both", p.clone(), f, DEFAULT_HEAD_START);
        assert_eq!(who(&pair).await.unwrap(), "tcp");
        // uTP was only slow: later it answers at once, and after the memory expires it is
        // dialled first again and wins.
        p.set(5, true);
        tokio::time::advance(REMEMBER_FOR + Duration::from_secs(1)).await;
        assert_eq!(who(&pair).await.unwrap(), "utp");
    }

    #[tokio::test(start_paused = true)]
    async fn the_memory_is_bounded() {
        let (p, f) = (Fake::new("utp", 60_000, true), Fake::new("tcp", 1, true));
        let pair = TransportPair::new("both", p, f, Duration::from_millis(1));
        for port in 1..=(REMEMBERED as u16 + 10) {
            pair.connect_labeled(SocketAddr::from(([127, 0, 0, 1], port)))
                .await
                .unwrap();
            assert!(pair.remembered().len() <= REMEMBERED);
        }
    }
}
