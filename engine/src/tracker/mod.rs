//! Trackers: HTTP/HTTPS (BEP 3, BEP 23 compact, BEP 7 `peers6`), UDP (BEP 15), tiers (BEP 12).
//!
//! Owns: the HTTP client (built once per [`TrackerClient`]), the per-tracker state trackers ask
//! us to keep (BEP 3 `tracker id`, BEP 15 connection ids), and the BEP 12 tier order.
//! Never trusts a reply: bodies are size-capped while streaming, peer lists are capped, intervals
//! are clamped, and a malformed reply is an error for that tracker only.
//!
//! Submodules: `http` (URL building, reply parsing), `udp` (BEP 15 exchange), `tiers` (BEP 12
//! order and per-tracker status for the UI).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::types::{InfoHash, PeerId};

pub(crate) mod http;
mod tiers;
pub(crate) mod udp;

pub use tiers::{TrackerResult, TrackerStatus};

/// The `event` of an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Regular re-announce.
    None,
    /// First announce.
    Started,
    /// Download finished.
    Completed,
    /// Shutting down.
    Stopped,
}

impl Event {
    /// BEP 3 spelling of the HTTP `event` parameter (`None` is omitted from the URL).
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

/// Everything an announce says about us.
#[derive(Clone, Debug)]
pub struct AnnounceRequest {
    /// Torrent.
    pub info_hash: InfoHash,
    /// Our id.
    pub peer_id: PeerId,
    /// Our listening port.
    pub port: u16,
    /// Bytes uploaded this session.
    pub uploaded: u64,
    /// Bytes downloaded this session.
    pub downloaded: u64,
    /// Bytes still missing.
    pub left: u64,
    /// Event.
    pub event: Event,
    /// Peers wanted (`None`: tracker default).
    pub num_want: Option<u32>,
    /// Random key identifying us across IP changes.
    pub key: u32,
}

/// A successful announce.
#[derive(Clone, Debug, Default)]
pub struct AnnounceResponse {
    /// When to announce next.
    pub interval: Duration,
    /// Announce no sooner than this.
    pub min_interval: Option<Duration>,
    /// Peers (IPv4 and IPv6), capped.
    pub peers: Vec<SocketAddr>,
    /// `warning message`.
    pub warning: Option<String>,
    /// Seeders, if the tracker said.
    pub complete: Option<u32>,
    /// Leechers, if the tracker said.
    pub incomplete: Option<u32>,
}

/// Why an announce failed.
#[derive(Debug, thiserror::Error)]
pub enum TrackerError {
    /// The tracker answered with `failure reason` (HTTP) or an error action (UDP).
    #[error("tracker refused: {0}")]
    Failure(String),
    /// The URL's scheme is not `http`, `https` or `udp`.
    #[error("unsupported tracker URL scheme in {0:?}")]
    UnsupportedScheme(String),
    /// The URL could not be understood.
    #[error("invalid tracker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The tracker's host name did not resolve to any address.
    #[error("could not resolve tracker host {0:?}")]
    Resolve(String),
    /// The HTTP exchange failed (connect, TLS, timeout, broken body).
    #[error("HTTP tracker request failed: {0}")]
    Http(String),
    /// The HTTP tracker answered with a non-success status and no `failure reason`.
    #[error("HTTP tracker answered with status {0}")]
    HttpStatus(u16),
    /// The reply was larger than we accept.
    #[error("tracker reply larger than {limit} bytes")]
    TooLarge {
        /// The cap that was exceeded.
        limit: usize,
    },
    /// The reply was not what the protocol allows.
    #[error("malformed tracker reply: {0}")]
    Malformed(String),
    /// No reply within the allowed time (UDP after all retransmissions).
    #[error("tracker did not answer in time")]
    Timeout,
    /// A local socket error (UDP).
    #[error("tracker socket error: {0}")]
    Io(#[from] std::io::Error),
    /// [`TrackerTiers::announce`] was called with no trackers at all.
    #[error("no trackers")]
    NoTrackers,
}

/// Timeouts and retry policy of a [`TrackerClient`].
#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// TCP (and TLS) connect timeout for HTTP(S) trackers.
    pub http_connect_timeout: Duration,
    /// Timeout for a whole HTTP(S) announce, body included.
    pub http_timeout: Duration,
    /// BEP 15: the first UDP retransmission timeout; attempt `n` waits `base · 2^n`.
    pub udp_base_timeout: Duration,
    /// Largest `n` in `base · 2^n` (BEP 15 allows 8); after attempt `n` = this, the announce
    /// fails with [`TrackerError::Timeout`].
    pub udp_max_retries: u32,
    /// Floor applied to the tracker's `interval` (default [`MIN_INTERVAL`]); tests lower it to
    /// use fast-announcing fixtures.
    pub min_announce_interval: Duration,
}

impl Default for TrackerOptions {
    /// 10 s connect, 20 s per HTTP request; UDP 15 s · 2^n with n ≤ 2 (a dead tracker fails in
    /// 15 + 30 + 60 s = 1.75 min rather than BEP 15's full hour).
    fn default() -> Self {
        TrackerOptions {
            http_connect_timeout: Duration::from_secs(10),
            http_timeout: Duration::from_secs(20),
            udp_base_timeout: Duration::from_secs(15),
            udp_max_retries: 2,
            min_announce_interval: MIN_INTERVAL,
        }
    }
}

/// State trackers ask us to keep between announces, shared by clones of one client.
#[derive(Debug, Default)]
struct ClientState {
    /// BEP 3 `tracker id`, echoed back as `trackerid`; per tracker URL and torrent.
    tracker_ids: HashMap<(String, InfoHash), Vec<u8>>,
    /// BEP 15 connection ids, per tracker address, with when they were obtained.
    connection_ids: HashMap<SocketAddr, (u64, tokio::time::Instant)>,
    /// Tracker URLs failing now, with the error last logged as a warning for each: the same
    /// failure from the next torrent (a dead tracker shared by 10,000 torrents) is only debug.
    failing: HashMap<String, String>,
}

/// At most this many failing trackers are remembered for the log (URLs come from torrent
/// files); past it the memory starts over, and a failure may be warned about twice.
const FAILING_REMEMBERED: usize = 4096;

/// Announces to HTTP(S) and UDP trackers. One per session; cheap to share.
#[derive(Clone, Debug)]
pub struct TrackerClient {
    /// `Err` holds why the HTTP client could not be built (reported on HTTP announces only).
    http: Result<reqwest::Client, String>,
    options: TrackerOptions,
    state: Arc<Mutex<ClientState>>,
}

impl TrackerClient {
    /// A client with default timeouts.
    pub fn new() -> Self {
        Self::with_options(TrackerOptions::default())
    }

    /// A client with the given timeouts and retry policy.
    pub fn with_options(options: TrackerOptions) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(options.http_connect_timeout)
            .timeout(options.http_timeout)
            .user_agent(concat!("ZigTorrent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| e.to_string());
        TrackerClient {
            http,
            options,
            state: Arc::default(),
        }
    }

    /// The options this client was built with.
    pub fn options(&self) -> &TrackerOptions {
        &self.options
    }

    /// Announce to one tracker URL (`http`, `https` or `udp`).
    pub async fn announce(
        &self,
        url: &str,
        request: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        let result = match scheme_of(url).as_deref() {
            Some("http") | Some("https") => self.announce_http(url, request).await,
            Some("udp") => udp::announce(self, url, request).await,
            _ => Err(TrackerError::UnsupportedScheme(url.to_string())),
        };
        self.log_outcome(url, &result);
        let mut response = result?;
        response.interval = response.interval.max(self.options.min_announce_interval);
        Ok(response)
    }

    /// One warning per tracker and kind of failure, however many torrents meet it, and a note
    /// when it answers again. Each torrent's status still shows its own tracker error.
    /// Returns whether this outcome was warned about.
    fn log_outcome(&self, url: &str, result: &Result<AnnounceResponse, TrackerError>) -> bool {
        let mut state = self.lock_state();
        match result {
            Ok(_) => {
                if state.failing.remove(url).is_some() {
                    tracing::info!(%url, "tracker answers again");
                }
                false
            }
            Err(e) => {
                let error = e.to_string();
                if state.failing.get(url) == Some(&error) {
                    tracing::debug!(%url, %error, "announce failed");
                    return false;
                }
                if state.failing.len() >= FAILING_REMEMBERED {
                    state.failing.clear();
                }
                tracing::warn!(
                    %url,
                    %error,
                    "announce failed (the same failure of this tracker is logged again only at \
                     debug level, until it answers)"
                );
                state.failing.insert(url.to_string(), error);
                true
            }
        }
    }

    async fn announce_http(
        &self,
        url: &str,
        request: &AnnounceRequest,
    ) -> Result<AnnounceResponse, TrackerError> {
        let client = self
            .http
            .as_ref()
            .map_err(|e| TrackerError::Http(e.clone()))?;
        let key = (url.to_string(), request.info_hash);
        let tracker_id = self.lock_state().tracker_ids.get(&key).cloned();
        let reply = http::announce(client, url, request, tracker_id.as_deref()).await?;
        if let Some(id) = reply.tracker_id {
            self.lock_state().tracker_ids.insert(key, id);
        }
        Ok(reply.response)
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, ClientState> {
        // The lock is never held across an await or a panic point, so poisoning only follows a
        // panic elsewhere; the maps stay consistent either way, so keep using them.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Default for TrackerClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Lower-cased scheme of `url`, if it has one.
fn scheme_of(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once("://")?;
    Some(scheme.to_ascii_lowercase())
}

/// BEP 12 tiers: try trackers in order, tiers shuffled once, a responding tracker moves to the
/// front of its tier.
#[derive(Clone, Debug)]
pub struct TrackerTiers {
    inner: tiers::Tiers,
}

impl TrackerTiers {
    /// Tiers as in the torrent (each tier shuffled here).
    pub fn new(tiers: Vec<Vec<String>>) -> Self {
        TrackerTiers {
            inner: tiers::Tiers::new(tiers, &mut rand::thread_rng()),
        }
    }
    /// Whether there is any tracker at all.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
    /// Announce per BEP 12; returns the URL that answered and its response, or the last error.
    pub async fn announce(
        &mut self,
        client: &TrackerClient,
        request: &AnnounceRequest,
    ) -> Result<(String, AnnounceResponse), TrackerError> {
        self.inner
            .announce(|url| async move { client.announce(&url, request).await })
            .await
    }
    /// Every tracker in current try order (tier by tier) with its last result, for a UI.
    pub fn status(&self) -> Vec<TrackerStatus> {
        self.inner.status()
    }
}

/// BEP 3 / BEP 15 replies may say anything; by default we announce no more often than this.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
/// And no less often than this, so a tracker cannot make us vanish from its swarm.
pub const MAX_INTERVAL: Duration = Duration::from_secs(2 * 60 * 60);
/// Interval used when the tracker gives none.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Most peers taken from one reply; the rest are dropped.
pub const MAX_PEERS: usize = 1000;

/// A tracker-supplied interval in seconds, capped at [`MAX_INTERVAL`]; the client then applies
/// its floor ([`TrackerOptions::min_announce_interval`]).
fn clamp_interval(secs: Option<i64>) -> Duration {
    match secs {
        Some(s) if s > 0 => Duration::from_secs(s.unsigned_abs()).min(MAX_INTERVAL),
        _ => DEFAULT_INTERVAL,
    }
}

/// Push `addr` unless it is unusable (port 0, unspecified IP), a duplicate, or over the cap.
fn push_peer(peers: &mut Vec<SocketAddr>, addr: SocketAddr) {
    if peers.len() >= MAX_PEERS || addr.port() == 0 || addr.ip().is_unspecified() {
        return;
    }
    if !peers.contains(&addr) {
        peers.push(addr);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failing_tracker_is_warned_about_once_per_failure_not_per_torrent() {
        use super::*;
        let client = TrackerClient::new();
        let down = || Err(TrackerError::Failure("down".into()));
        let (a, b) = ("http://a/announce", "http://b/announce");
        assert!(client.log_outcome(a, &down()));
        // The same failure from the next torrents: quiet.
        for _ in 0..100 {
            assert!(!client.log_outcome(a, &down()));
        }
        // Another tracker, or another kind of failure, is news.
        assert!(client.log_outcome(b, &down()));
        assert!(client.log_outcome(a, &Err(TrackerError::Failure("gone".into()))));
        // Once it answered, a new failure is warned about again.
        assert!(!client.log_outcome(a, &Ok(AnnounceResponse::default())));
        assert!(client.log_outcome(a, &down()));
    }

    use super::*;

    #[test]
    fn interval_is_clamped() {
        assert_eq!(clamp_interval(None), DEFAULT_INTERVAL);
        assert_eq!(clamp_interval(Some(-5)), DEFAULT_INTERVAL);
        assert_eq!(clamp_interval(Some(0)), DEFAULT_INTERVAL);
        assert_eq!(clamp_interval(Some(1)), Duration::from_secs(1));
        assert_eq!(clamp_interval(Some(1800)), Duration::from_secs(1800));
        assert_eq!(clamp_interval(Some(i64::MAX)), MAX_INTERVAL);
    }

    #[tokio::test]
    async fn unsupported_scheme_is_an_error() {
        let client = TrackerClient::new();
        let req = crate::tracker::http::tests::sample_request();
        for url in ["wss://x/announce", "no scheme", "", "ftp://a"] {
            let err = client.announce(url, &req).await.unwrap_err();
            assert!(
                matches!(err, TrackerError::UnsupportedScheme(_)),
                "{url}: {err}"
            );
        }
    }

    #[cfg(feature = "testing")]
    mod fixtures {
        use super::*;
        use crate::testing::tracker_fixture::{HttpTracker, UdpTracker};

        fn request(port: u16, event: Event, left: u64) -> AnnounceRequest {
            AnnounceRequest {
                info_hash: InfoHash([7; 20]),
                peer_id: PeerId::generate(),
                port,
                uploaded: 0,
                downloaded: 0,
                left,
                event,
                num_want: None,
                key: rand::random(),
            }
        }

        /// Two clients announce, each sees the other; `stopped` takes one out.
        async fn round_trip(url: &str) {
            let fast = TrackerClient::with_options(TrackerOptions {
                min_announce_interval: Duration::from_secs(1),
                ..TrackerOptions::default()
            });
            let slow = TrackerClient::new();
            let a = fast
                .announce(url, &request(1111, Event::Started, 100))
                .await
                .unwrap();
            assert!(a.peers.is_empty(), "{:?}", a.peers);
            assert_eq!(a.interval, Duration::from_secs(2));
            let b = slow
                .announce(url, &request(2222, Event::Started, 0))
                .await
                .unwrap();
            assert_eq!(b.peers, vec!["127.0.0.1:1111".parse().unwrap()]);
            assert_eq!(b.interval, MIN_INTERVAL, "the default floor applies");
            assert_eq!((b.complete, b.incomplete), (Some(1), Some(1)));
            let a = fast
                .announce(url, &request(1111, Event::None, 50))
                .await
                .unwrap();
            assert_eq!(a.peers, vec!["127.0.0.1:2222".parse().unwrap()]);
            slow.announce(url, &request(2222, Event::Stopped, 0))
                .await
                .unwrap();
            let a = fast
                .announce(url, &request(1111, Event::Completed, 0))
                .await
                .unwrap();
            assert!(a.peers.is_empty(), "{:?}", a.peers);
            assert_eq!((a.complete, a.incomplete), (Some(1), Some(0)));
        }

        fn check_log(log: &[crate::testing::tracker_fixture::RecordedAnnounce]) {
            let seen: Vec<_> = log.iter().map(|a| (a.port, a.event, a.left)).collect();
            assert_eq!(
                seen,
                [
                    (1111, Event::Started, 100),
                    (2222, Event::Started, 0),
                    (1111, Event::None, 50),
                    (2222, Event::Stopped, 0),
                    (1111, Event::Completed, 0),
                ]
            );
            assert!(log.iter().all(|a| a.info_hash == InfoHash([7; 20])));
        }

        #[tokio::test]
        async fn http_fixture_round_trip() {
            let tracker = HttpTracker::start().await;
            assert!(tracker.announce_url().starts_with("http://127.0.0.1:"));
            round_trip(&tracker.announce_url()).await;
            check_log(&tracker.announces());
            assert_eq!(
                tracker.peers(&InfoHash([7; 20])),
                vec!["127.0.0.1:1111".parse().unwrap()]
            );
        }

        #[tokio::test]
        async fn udp_fixture_round_trip() {
            let tracker = UdpTracker::start().await;
            assert!(tracker.announce_url().starts_with("udp://127.0.0.1:"));
            round_trip(&tracker.announce_url()).await;
            check_log(&tracker.announces());
        }

        #[tokio::test]
        async fn tiers_fall_through_dead_trackers_to_a_fixture() {
            let tracker = HttpTracker::start().await;
            let dead = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let dead_url = format!("udp://{}/announce", dead.local_addr().unwrap());
            let client = TrackerClient::with_options(TrackerOptions {
                udp_base_timeout: Duration::from_millis(50),
                udp_max_retries: 0,
                ..TrackerOptions::default()
            });
            let mut tiers = TrackerTiers::new(vec![
                vec!["gopher://nope".into(), dead_url.clone()],
                vec![tracker.announce_url()],
            ]);
            assert!(!tiers.is_empty());
            let (url, _) = tiers
                .announce(&client, &request(1, Event::Started, 1))
                .await
                .unwrap();
            assert_eq!(url, tracker.announce_url());
            let status = tiers.status();
            assert_eq!(status.len(), 3);
            assert!(status.iter().all(|s| s.last_announce.is_some()));
            assert_eq!(status[2].last_result, TrackerResult::Ok { peers: 0 });
            assert!(matches!(&status[0].last_result, TrackerResult::Error(_)));
            assert!(TrackerTiers::new(vec![]).is_empty());
        }
    }
}
