//! Trackers as one source of peer addresses: when to announce, with which event, and what a
//! reply or a failure changes. The [`Announcer`] decides and keeps the schedule; it never reads
//! the clock or spawns (the phase driving it passes `now` and runs the request), so the
//! metadata phase and the live phase share it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::tracker::{
    AnnounceRequest, AnnounceResponse, Event, TrackerClient, TrackerError, TrackerStatus,
    TrackerTiers,
};

/// Retry a failed announce after this long (doubling, capped at [`MAX_RETRY`]).
const ANNOUNCE_RETRY: Duration = Duration::from_secs(15);
/// Longest wait between retries of a failing tracker (before the spread below).
const MAX_RETRY: Duration = Duration::from_secs(300);
/// Each torrent waits up to this fraction longer than the base retry wait, by its own `key`:
/// torrents that started together on one dead tracker (10,000 at rest, say) must not all retry
/// in the same second, every time.
const RETRY_SPREAD: f64 = 0.5;
/// An early announce (few peers, nobody left to dial) never comes sooner than this after the
/// last one, whatever the tracker's `min interval` allows.
const EARLY_ANNOUNCE_GAP: Duration = Duration::from_secs(60);
/// How long `stopped` may take at shutdown.
pub(super) const STOPPED_TIMEOUT: Duration = Duration::from_millis(1500);

/// The outcome of one announce, as the spawned request hands it back.
pub(super) type AnnounceResult = Result<(String, AnnounceResponse), TrackerError>;

/// One torrent's trackers and their schedule.
pub(super) struct Announcer {
    /// `None` while a request runs (the tiers travel with it), or if there are no trackers.
    tiers: Option<TrackerTiers>,
    has_trackers: bool,
    next: Option<Instant>,
    failures: u32,
    min_interval: Duration,
    last: Option<Instant>,
    count: u32,
    /// A tracker answered since `started` was sent: only then is there anything for `stopped`
    /// to take back (a tracker that never heard from us, or is down, is not asked again at
    /// stop; with thousands of torrents on a dead tracker that was most of a stop's work).
    answered: bool,
    error: Option<String>,
    /// The last tracker list shown (kept while the tiers are away).
    shown: Vec<TrackerStatus>,
    /// BEP 3 `key`: identifies us to trackers across address changes.
    key: u32,
}

impl Announcer {
    /// Trackers of `tiers` (BEP 12), the first announce due at `now`.
    pub(super) fn new(tiers: Vec<Vec<String>>, now: Instant, key: u32) -> Self {
        let has_trackers = !tiers.is_empty();
        let tiers = has_trackers.then(|| TrackerTiers::new(tiers));
        Announcer {
            shown: tiers.as_ref().map(|t| t.status()).unwrap_or_default(),
            tiers,
            has_trackers,
            next: has_trackers.then_some(now),
            failures: 0,
            min_interval: Duration::ZERO,
            last: None,
            count: 0,
            answered: false,
            error: None,
            key,
        }
    }

    /// The `key` to put in requests.
    pub(super) fn key(&self) -> u32 {
        self.key
    }

    /// Whether a request is running.
    pub(super) fn in_flight(&self) -> bool {
        self.has_trackers && self.tiers.is_none()
    }

    /// The regular announce is due.
    pub(super) fn due(&self, now: Instant) -> bool {
        self.next.is_some_and(|t| now >= t)
    }

    /// An early announce is allowed (the tracker's `min interval` and our own gap have passed,
    /// and no request is running or failing).
    pub(super) fn early_allowed(&self, now: Instant) -> bool {
        self.next.is_some()
            && self
                .last
                .is_some_and(|t| now.duration_since(t) >= self.min_interval.max(EARLY_ANNOUNCE_GAP))
    }

    /// The event of the next regular announce: `started` first, then none.
    pub(super) fn regular_event(&self) -> Event {
        if self.count == 0 {
            Event::Started
        } else {
            Event::None
        }
    }

    /// Take the tiers for a request now; `None` if one is running or there are no trackers.
    pub(super) fn begin(&mut self, now: Instant) -> Option<TrackerTiers> {
        let tiers = self.tiers.take()?;
        self.last = Some(now);
        self.count += 1;
        self.next = None;
        Some(tiers)
    }

    /// A request came back: schedule the next one, and return the peers it gave.
    pub(super) fn finish(
        &mut self,
        tiers: TrackerTiers,
        event: Event,
        result: AnnounceResult,
        now: Instant,
    ) -> Vec<SocketAddr> {
        self.shown = tiers.status();
        self.tiers = Some(tiers);
        if event == Event::Stopped {
            // A `stopped` mid-run (queued, a goal reached) schedules nothing: `restart` does
            // when the torrent runs again.
            if let Err(e) = &result {
                tracing::debug!(error = %e, "stopped announce failed");
            }
            return Vec::new();
        }
        match result {
            Ok((url, resp)) => {
                tracing::info!(%url, peers = resp.peers.len(), ?event, "announce ok");
                if let Some(w) = &resp.warning {
                    tracing::warn!(%url, warning = %w, "tracker warning");
                }
                self.failures = 0;
                self.answered = true;
                self.error = None;
                self.min_interval = resp.min_interval.unwrap_or(Duration::ZERO);
                self.next = Some(now + resp.interval.max(self.min_interval));
                resp.peers
            }
            Err(e) => {
                // The tracker client warned (once per tracker and failure, not per torrent).
                tracing::debug!(error = %e, "no tracker of this torrent answered");
                self.error = Some(e.to_string());
                self.failures += 1;
                self.next = Some(now + retry_wait(self.failures, self.key));
                Vec::new()
            }
        }
    }

    /// The torrent stops transferring for a while (queued, a goal reached) and sends
    /// `stopped`: the tiers for that request if `started` was sent and none is running. No
    /// regular announce is due until [`Announcer::restart`].
    pub(super) fn stop_for_now(&mut self, now: Instant) -> Option<TrackerTiers> {
        let tiers = if self.count > 0 && self.answered {
            self.begin(now)
        } else {
            None
        };
        self.count = 0;
        self.answered = false;
        self.next = None;
        tiers
    }

    /// The torrent transfers again: announce `started` now.
    pub(super) fn restart(&mut self, now: Instant) {
        if self.has_trackers {
            self.count = 0;
            self.answered = false;
            self.next = Some(now);
        }
    }

    /// A request came back while stopping: the tiers return, and only whether a tracker
    /// answered counts (it decides whether `stopped` is owed).
    pub(super) fn restore(&mut self, tiers: TrackerTiers, event: Event, result: &AnnounceResult) {
        self.tiers = Some(tiers);
        if event != Event::Stopped && result.is_ok() {
            self.answered = true;
        }
    }

    /// The tiers for the final `stopped`, if `started` was sent and a tracker answered since.
    pub(super) fn take_for_stop(&mut self) -> Option<TrackerTiers> {
        if self.count == 0 || !self.answered {
            return None;
        }
        self.tiers.take()
    }

    /// The last tracker problem, if the last announce failed.
    pub(super) fn error(&self) -> Option<&String> {
        self.error.as_ref()
    }

    /// Every tracker with its last result.
    pub(super) fn status(&self) -> Vec<TrackerStatus> {
        match &self.tiers {
            Some(t) => t.status(),
            None => self.shown.clone(),
        }
    }

    /// When the next regular announce is due.
    pub(super) fn next(&self) -> Option<Instant> {
        self.next
    }

    /// When an early announce will be allowed (see [`Announcer::early_allowed`]).
    pub(super) fn early_at(&self) -> Option<Instant> {
        self.next?;
        Some(self.last? + self.min_interval.max(EARLY_ANNOUNCE_GAP))
    }
}

/// How long to wait after the `failures`-th failure in a row: 15 s doubled per failure, at
/// most [`MAX_RETRY`], plus this torrent's share of [`RETRY_SPREAD`] (fixed by `key`, so the
/// same torrent keeps its place in the spread).
fn retry_wait(failures: u32, key: u32) -> Duration {
    let base = (ANNOUNCE_RETRY * 2u32.saturating_pow(failures.min(5))).min(MAX_RETRY);
    let share = f64::from(key % 1024) / 1024.0;
    base + base.mul_f64(RETRY_SPREAD * share)
}

/// Run one announce off the torrent task; `done` gets the tiers back with the result.
pub(super) fn spawn_announce(
    client: TrackerClient,
    mut tiers: TrackerTiers,
    req: AnnounceRequest,
    done: impl FnOnce(TrackerTiers, Event, AnnounceResult) + Send + 'static,
) {
    tokio::spawn(async move {
        let event = req.event;
        let result = tiers.announce(&client, &req).await;
        done(tiers, event, result);
    });
}

/// Send `stopped`, bounded by [`STOPPED_TIMEOUT`].
pub(super) async fn announce_stopped(
    client: &TrackerClient,
    mut tiers: TrackerTiers,
    req: AnnounceRequest,
) {
    let _ = tokio::time::timeout(STOPPED_TIMEOUT, tiers.announce(client, &req)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(interval: u64, peers: Vec<SocketAddr>) -> AnnounceResult {
        Ok((
            "http://t/announce".into(),
            AnnounceResponse {
                interval: Duration::from_secs(interval),
                peers,
                ..Default::default()
            },
        ))
    }

    #[test]
    fn schedule_follows_the_tracker_and_backs_off_on_failure() {
        let t0 = Instant::now();
        let mut a = Announcer::new(vec![vec!["http://t/announce".into()]], t0, 7);
        assert!(a.due(t0));
        assert_eq!(a.regular_event(), Event::Started);
        let tiers = a.begin(t0).expect("tiers available");
        assert!(a.in_flight() && !a.due(t0) && a.begin(t0).is_none());
        let peer: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let got = a.finish(tiers, Event::Started, ok(1800, vec![peer]), t0);
        assert_eq!(got, vec![peer]);
        assert_eq!(a.regular_event(), Event::None);
        assert!(!a.due(t0 + Duration::from_secs(1799)));
        assert!(a.due(t0 + Duration::from_secs(1800)));
        assert!(!a.early_allowed(t0 + Duration::from_secs(59)));
        assert!(a.early_allowed(t0 + Duration::from_secs(60)));

        let tiers = a.begin(t0).unwrap();
        let err = Err(TrackerError::Failure("down".into()));
        assert!(a.finish(tiers, Event::None, err, t0).is_empty());
        assert_eq!(a.error().map(String::as_str), Some("tracker refused: down"));
        // First retry after 30 s (15 s doubled once) plus this torrent's spread, never more
        // than 5 minutes (plus spread) later.
        assert!(!a.due(t0 + Duration::from_secs(29)));
        assert!(a.due(t0 + retry_wait(1, 7)));
        assert!(retry_wait(1, 7) < Duration::from_secs(31));
        for _ in 0..10 {
            let tiers = a.begin(t0).unwrap();
            a.finish(
                tiers,
                Event::None,
                Err(TrackerError::Failure("x".into())),
                t0,
            );
        }
        assert!(a.due(t0 + retry_wait(11, 7)));
        assert_eq!(retry_wait(11, 7), retry_wait(5, 7));
    }

    #[test]
    fn torrents_failing_together_retry_spread_out() {
        // 1,000 torrents with random keys, all failing at t0: their retries must not share a
        // second, and each stays within its backoff step.
        let mut seconds = std::collections::BTreeSet::new();
        for _ in 0..1000 {
            let wait = retry_wait(1, rand::random());
            assert!(wait >= Duration::from_secs(30) && wait <= Duration::from_secs(45));
            seconds.insert(wait.as_secs());
        }
        assert!(seconds.len() >= 14, "retries bunch up: {seconds:?}");
        let last = retry_wait(9, 1023);
        assert!(last > MAX_RETRY && last <= MAX_RETRY.mul_f64(1.0 + RETRY_SPREAD));
    }

    #[test]
    fn stopped_goes_only_where_a_tracker_answered() {
        let t0 = Instant::now();
        let down = || Err(TrackerError::Failure("down".into()));
        let mut a = Announcer::new(vec![vec!["http://t/announce".into()]], t0, 7);
        let tiers = a.begin(t0).unwrap();
        a.finish(tiers, Event::Started, down(), t0);
        // `started` went out but nobody answered: nothing to take back, now or when queued.
        assert!(a.take_for_stop().is_none());
        assert!(a.stop_for_now(t0).is_none());
        a.restart(t0);
        let tiers = a.begin(t0).unwrap();
        a.finish(tiers, Event::Started, ok(1800, Vec::new()), t0);
        let tiers = a.begin(t0).unwrap();
        a.finish(tiers, Event::None, down(), t0);
        // Answered once this run: `stopped` is owed even if the latest announce failed.
        assert!(a.take_for_stop().is_some());

        // The first answer arrives while the torrent is stopping: `stopped` is owed too.
        let mut a = Announcer::new(vec![vec!["http://t/announce".into()]], t0, 7);
        let tiers = a.begin(t0).unwrap();
        a.restore(tiers, Event::Started, &ok(1800, Vec::new()));
        assert!(a.take_for_stop().is_some());
        let mut a = Announcer::new(vec![vec!["http://t/announce".into()]], t0, 7);
        let tiers = a.begin(t0).unwrap();
        a.restore(tiers, Event::Started, &down());
        assert!(a.take_for_stop().is_none());
    }

    #[test]
    fn without_trackers_nothing_is_ever_due() {
        let t0 = Instant::now();
        let mut a = Announcer::new(Vec::new(), t0, 1);
        assert!(!a.due(t0) && !a.in_flight());
        assert!(a.begin(t0).is_none() && a.take_for_stop().is_none());
    }
}
