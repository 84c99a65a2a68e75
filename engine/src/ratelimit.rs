//! Session-wide rate limits: one token bucket for payload received and one for payload sent,
//! shared by every peer connection of the session.
//!
//! A connection first moves bytes, then pays for them with [`RateLimiter::acquire`], which sleeps
//! while the bucket is in debt. Paying afterwards keeps the read and write loops simple (no
//! partial reads) and still holds the long-run rate to the limit; the burst is bounded by
//! [`BURST_SECONDS`] of the rate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Tokens that may accumulate while idle, in seconds of the rate.
const BURST_SECONDS: f64 = 0.25;
/// Never sleep for less than this: shorter sleeps cost more wake-ups than they smooth.
const MIN_SLEEP: Duration = Duration::from_millis(5);

/// A token bucket in bytes; a rate of 0 means unlimited. Cheap when unlimited (one atomic load).
#[derive(Debug)]
pub struct RateLimiter {
    /// Bytes per second; 0: unlimited.
    rate: AtomicU64,
    /// Tokens (negative: debt) and when they were last refilled.
    bucket: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter at `bytes_per_second` (0: unlimited).
    pub fn new(bytes_per_second: u64) -> Self {
        RateLimiter {
            rate: AtomicU64::new(bytes_per_second),
            bucket: Mutex::new((0.0, Instant::now())),
        }
    }

    /// The current limit in bytes per second (0: unlimited).
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Change the limit; takes effect for the next bytes paid for.
    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::Relaxed);
    }

    /// Pay for `bytes` just moved: returns how long the caller should wait before moving more.
    fn charge(&self, bytes: usize, now: Instant) -> Duration {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let rate = rate as f64;
        let mut bucket = self.bucket.lock().expect("lock poisoned only by a panic");
        let (tokens, last) = &mut *bucket;
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * rate).min(rate * BURST_SECONDS);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }

    /// Pay for `bytes` just moved without sleeping: the instant before which the caller should
    /// move no more, or `None` to go on at once. For drivers that wait inside a `select!`
    /// beside other work (a connection keeps writing while its reads are held back).
    pub fn pay(&self, bytes: usize) -> Option<Instant> {
        let now = Instant::now();
        let wait = self.charge(bytes, now);
        (wait >= MIN_SLEEP).then(|| now + wait)
    }

    /// Pay for `bytes` just moved, sleeping while the bucket is in debt.
    pub async fn acquire(&self, bytes: usize) {
        let wait = self.charge(bytes, Instant::now());
        if wait >= MIN_SLEEP {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let l = RateLimiter::new(0);
        assert_eq!(l.charge(1 << 30, Instant::now()), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn long_run_rate_is_the_limit() {
        let l = RateLimiter::new(100_000);
        let start = Instant::now();
        // 1 MB in 16 KiB blocks at 100 kB/s: about 10 s.
        let mut sent = 0;
        while sent < 1_000_000 {
            l.acquire(16 * 1024).await;
            sent += 16 * 1024;
        }
        let took = start.elapsed().as_secs_f64();
        let expected = sent as f64 / 100_000.0;
        assert!(
            (took - expected).abs() < 0.5,
            "took {took:.2} s, expected about {expected:.2} s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn idle_credit_is_capped() {
        let l = RateLimiter::new(100_000);
        tokio::time::sleep(Duration::from_secs(60)).await;
        // After a minute idle only BURST_SECONDS of credit remain: 25 kB pass, the next 75 kB wait.
        assert_eq!(l.charge(25_000, Instant::now()), Duration::ZERO);
        let wait = l.charge(75_000, Instant::now());
        assert!((wait.as_secs_f64() - 0.75).abs() < 0.01, "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_can_change_at_run_time() {
        let l = RateLimiter::new(1000);
        assert!(l.charge(10_000, Instant::now()) > Duration::from_secs(5));
        l.set_rate(0);
        assert_eq!(l.charge(10_000, Instant::now()), Duration::ZERO);
        assert_eq!(l.rate(), 0);
    }
}
