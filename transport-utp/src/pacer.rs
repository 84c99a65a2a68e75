//! `Pacer`: when each uTP data datagram may leave, per destination (sans-IO: callers pass `now`).
//!
//! Why it exists: `librqbit_utp` sends everything its congestion window allows in one go. Its
//! window is CUBIC's, capped by the receiver's advertised window (up to megabytes), and on
//! loopback the round trip is far below a millisecond, so a window is one burst of hundreds of
//! datagrams. The receiver's kernel queues them in its UDP receive buffer, which by default
//! (`net.core.rmem_default`, 208 KiB) holds about 92 full-sized datagrams (each costs ~2.3 KiB
//! of buffer: payload plus socket-buffer overhead; measured on this kernel); the rest is dropped
//! before the peer ever sees it, and every drop costs a loss recovery. The window itself is
//! out of reach (the library has no hook), so the pacer sits below it, on the socket.
//!
//! What it owns: one token bucket per destination (peer address and connection id), which
//! lets a datagram go when the bucket holds its size, and otherwise says when it may go. The
//! bucket refills at a rate that follows loss as the peer experiences it:
//!
//! - **cut on loss**: a data packet sent again (a sequence number below the highest one
//!   already sent to that connection) means the library saw a loss; the rate drops to
//!   [`PacerConfig::cut`] of itself, at most once per [`PacerConfig::cut_holdoff`] (the
//!   retransmissions of one burst are one loss event).
//! - **grow while it is the limit**: only while the pacer is what holds the sender back
//!   (it refused a datagram within the last [`LIMITED_WINDOW`]), the rate grows: doubling
//!   every ~[`PacerConfig::start_tau`] until the first loss (like slow start), then by
//!   [`PacerConfig::additive`] bytes/s per second. A connection that is window- or
//!   application-limited never grows a rate it does not use.
//! - **bounded**: the rate stays within [`PacerConfig::min_rate`] ..
//!   [`PacerConfig::max_rate`]; the bucket holds at most one refill interval's worth (a few
//!   datagrams at low rates), never more than [`PacerConfig::max_burst`], which is kept well
//!   under what a default receive buffer holds.
//!
//! It never delays control packets (ACKs, SYN, FIN): only data is paced, by the caller.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How recently the pacer must have refused a datagram for the rate to grow.
pub const LIMITED_WINDOW: Duration = Duration::from_millis(10);

/// Entries idle this long are forgotten when the table is pruned.
const IDLE_FORGET: Duration = Duration::from_secs(30);

/// Tuning of a [`Pacer`].
#[derive(Clone, Debug, PartialEq)]
pub struct PacerConfig {
    /// Rate of a new connection, bytes/s.
    pub start_rate: f64,
    /// Floor, bytes/s: a cut never goes below it.
    pub min_rate: f64,
    /// Ceiling, bytes/s.
    pub max_rate: f64,
    /// Largest bucket, bytes: what may leave back to back after an idle moment.
    pub max_burst: usize,
    /// The bucket holds this much time's worth of the rate (bounded by `max_burst`). It must
    /// cover the timer's granularity (tokio's is 1 ms), or the rate cannot be reached.
    pub burst_time: Duration,
    /// Factor a loss applies to the rate.
    pub cut: f64,
    /// After a cut, further retransmissions within this time are the same loss event.
    pub cut_holdoff: Duration,
    /// Before the first loss the rate grows by e-fold every `start_tau` while limited.
    pub start_tau: Duration,
    /// After the first loss the rate grows by this many bytes/s per second while limited.
    pub additive: f64,
    /// How many destinations are remembered before idle ones are pruned.
    pub max_entries: usize,
}

/// One full-sized uTP datagram on a 1500-byte link (what `librqbit_utp` sends by default).
pub const DATAGRAM: usize = 1500;

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            // Measured (bench/bench_utp.py, bench/utp_seed.py): libtorrent and Transmission
            // take 10-20 MB/s over uTP here from the first moment; start there and grow.
            start_rate: 16e6,
            // Below this a real link's own congestion control (CUBIC in the library) is the
            // limit anyway; the pacer only has to stop bursts.
            min_rate: 1e6,
            // No uTP peer measured here takes more than ~200 MB/s; the ceiling only bounds
            // growth while nothing pushes back.
            max_rate: 400e6,
            // 16 datagrams, a sixth of the 92 that fill a default 208 KiB receive buffer (see
            // the module docs). Measured seeding 256 MiB to libtorrent (bench/bench_utp.py,
            // two runs each): 64 gave 33-55 MB/s with 169-2,518 drops at the leecher, 32
            // gave 65-76 MB/s with 94-189, 8-24 gave 64-82 MB/s with 3-591 (noisy, shared
            // machine); the ACKs that wake the sender refill the bucket often enough that a
            // small one still reaches the rate.
            max_burst: 16 * DATAGRAM,
            // tokio's timer fires on 1 ms ticks and is often late under load; 2 ms of rate
            // per refill keeps the average at the rate.
            burst_time: Duration::from_millis(2),
            // CUBIC's multiplicative decrease (RFC 8312 beta_cubic).
            cut: 0.7,
            // A loopback round trip with a full receive buffer is a few ms; a WAN one is
            // tens. 20 ms groups the retransmissions of one burst on loopback without
            // ignoring a second loss on a long path for long.
            cut_holdoff: Duration::from_millis(20),
            // Doubling in ~70 ms: 16 -> 128 MB/s in about 0.2 s.
            start_tau: Duration::from_millis(100),
            // 32 MB/s per second: back from a cut at 100 MB/s (to 70) in about a second.
            additive: 32e6,
            max_entries: 1024,
        }
    }
}

/// Which flow a datagram belongs to: the peer and the uTP connection id it carries.
pub type FlowKey = (SocketAddr, u16);

#[derive(Debug)]
struct Flow {
    rate: f64,
    tokens: f64,
    refilled: Instant,
    /// The highest sequence number sent, to tell a retransmission from new data.
    highest_seq: Option<u16>,
    last_cut: Option<Instant>,
    lost_once: bool,
    last_refused: Option<Instant>,
    last_used: Instant,
}

/// The pacing decision for every flow; see the module docs.
#[derive(Debug)]
pub struct Pacer {
    config: PacerConfig,
    flows: HashMap<FlowKey, Flow>,
}

impl Pacer {
    /// A pacer that knows no flows yet.
    pub fn new(config: PacerConfig) -> Self {
        Pacer {
            config,
            flows: HashMap::new(),
        }
    }

    /// The current rate of a flow, bytes/s (None if unknown).
    #[cfg(test)]
    fn rate(&self, key: &FlowKey) -> Option<f64> {
        self.flows.get(key).map(|f| f.rate)
    }

    fn capacity(config: &PacerConfig, rate: f64) -> f64 {
        (rate * config.burst_time.as_secs_f64())
            .min(config.max_burst as f64)
            .max(DATAGRAM as f64)
    }

    /// May a data datagram of `len` bytes with sequence number `seq` leave for `key` at `now`?
    /// `Ok(())` takes its tokens (and records it as sent); `Err(at)` says when to ask again.
    pub fn admit(
        &mut self,
        now: Instant,
        key: FlowKey,
        seq: u16,
        len: usize,
    ) -> Result<(), Instant> {
        if self.flows.len() >= self.config.max_entries && !self.flows.contains_key(&key) {
            self.prune(now);
        }
        let config = &self.config;
        let flow = self.flows.entry(key).or_insert_with(|| Flow {
            rate: config.start_rate,
            tokens: Self::capacity(config, config.start_rate),
            refilled: now,
            highest_seq: None,
            last_cut: None,
            lost_once: false,
            last_refused: None,
            last_used: now,
        });
        flow.last_used = now;

        let elapsed = now.saturating_duration_since(flow.refilled).as_secs_f64();
        flow.refilled = now;
        let limited = flow
            .last_refused
            .is_some_and(|t| now.saturating_duration_since(t) <= LIMITED_WINDOW);
        if limited && elapsed > 0.0 {
            // Grow only over time spent held back (a long idle gap counts as one window).
            let dt = elapsed.min(LIMITED_WINDOW.as_secs_f64());
            flow.rate = if flow.lost_once {
                flow.rate + config.additive * dt
            } else {
                flow.rate * (dt / config.start_tau.as_secs_f64()).exp()
            }
            .min(config.max_rate);
        }
        let cap = Self::capacity(config, flow.rate);
        flow.tokens = (flow.tokens + elapsed * flow.rate).min(cap);

        // A retransmission is the library's loss signal: cut once per loss event. It is
        // decided before admission, so the retransmission itself already leaves at the new
        // rate.
        let retransmit = flow
            .highest_seq
            // Strictly below: the highest one offered again is a datagram the socket refused
            // (`Pending`) being retried, not a loss. Sequence numbers wrap (BEP 29: u16).
            .is_some_and(|h| (seq.wrapping_sub(h) as i16) < 0);
        if retransmit
            && flow
                .last_cut
                .is_none_or(|t| now.saturating_duration_since(t) >= config.cut_holdoff)
        {
            flow.rate = (flow.rate * config.cut).max(config.min_rate);
            flow.tokens = flow.tokens.min(Self::capacity(config, flow.rate));
            flow.last_cut = Some(now);
            flow.lost_once = true;
        }

        // A datagram larger than the bucket could never pass; it waits for a full bucket.
        let need = (len as f64).min(Self::capacity(config, flow.rate));
        if flow.tokens >= need {
            flow.tokens -= len as f64;
            if !retransmit {
                flow.highest_seq = Some(seq);
            }
            Ok(())
        } else {
            flow.last_refused = Some(now);
            let wait = (need - flow.tokens) / flow.rate;
            Err(now + Duration::from_secs_f64(wait))
        }
    }

    /// Forget flows idle for [`IDLE_FORGET`]; if that frees nothing, the least recently used.
    fn prune(&mut self, now: Instant) {
        self.flows
            .retain(|_, f| now.saturating_duration_since(f.last_used) < IDLE_FORGET);
        if self.flows.len() >= self.config.max_entries {
            if let Some(oldest) = self
                .flows
                .iter()
                .min_by_key(|(_, f)| f.last_used)
                .map(|(k, _)| *k)
            {
                self.flows.remove(&oldest);
            }
        }
    }

    /// How many flows it remembers.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.flows.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        ("127.0.0.1:6881".parse().unwrap(), 7)
    }

    /// A fixed rate: no growth, so the arithmetic below is exact.
    fn fixed(rate: f64) -> PacerConfig {
        PacerConfig {
            start_rate: rate,
            max_rate: rate,
            ..PacerConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_is_bounded_and_the_refusal_says_when() {
        let config = fixed(10e6);
        let mut p = Pacer::new(config.clone());
        let now = Instant::now();
        let mut sent = 0;
        let at = loop {
            match p.admit(now, key(), sent as u16, DATAGRAM) {
                Ok(()) => sent += 1,
                Err(at) => break at,
            }
        };
        // 10 MB/s for 2 ms is 20,000 bytes: 13 datagrams, the 14th waits.
        let cap = 10e6 * config.burst_time.as_secs_f64();
        assert_eq!(sent, (cap / DATAGRAM as f64).floor() as usize);
        let short = DATAGRAM as f64 - (cap - (sent - 1) as f64 * DATAGRAM as f64 - DATAGRAM as f64);
        let expect = Duration::from_secs_f64(short / 10e6);
        let waited = at - now;
        assert!(
            waited.abs_diff(expect) < Duration::from_micros(2),
            "{waited:?} vs {expect:?}"
        );
        // Asking again at that moment lets it go.
        tokio::time::advance(waited).await;
        assert_eq!(
            p.admit(Instant::now(), key(), sent as u16, DATAGRAM),
            Ok(())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_a_second_the_bytes_sent_match_the_rate() {
        let rate = 5e6;
        let mut p = Pacer::new(fixed(rate));
        let start = Instant::now();
        let mut bytes = 0usize;
        let mut seq = 0u16;
        while Instant::now() - start < Duration::from_secs(1) {
            match p.admit(Instant::now(), key(), seq, DATAGRAM) {
                Ok(()) => {
                    bytes += DATAGRAM;
                    seq = seq.wrapping_add(1);
                }
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
        let cap = rate * PacerConfig::default().burst_time.as_secs_f64();
        let (lo, hi) = (rate - DATAGRAM as f64, rate + cap + DATAGRAM as f64);
        assert!(
            (lo..=hi).contains(&(bytes as f64)),
            "{bytes} not in {lo}..{hi}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retransmission_cuts_once_per_loss_event() {
        let config = PacerConfig::default();
        let mut p = Pacer::new(config.clone());
        let now = Instant::now();
        for seq in 100..105 {
            p.admit(now, key(), seq, 100).unwrap();
        }
        let r0 = p.rate(&key()).unwrap();
        // Seq 101 again: a loss; the rate is cut.
        let _ = p.admit(now, key(), 101, 100);
        let r1 = p.rate(&key()).unwrap();
        assert_eq!(r1, r0 * config.cut);
        // More retransmissions of the same event leave it alone.
        let _ = p.admit(now + config.cut_holdoff / 2, key(), 102, 100);
        assert_eq!(p.rate(&key()).unwrap(), r1);
        // A loss after the hold-off is a new event.
        let _ = p.admit(now + config.cut_holdoff, key(), 103, 100);
        assert_eq!(p.rate(&key()).unwrap(), r1 * config.cut);
    }

    #[tokio::test(start_paused = true)]
    async fn cuts_stop_at_the_floor() {
        let config = PacerConfig::default();
        let mut p = Pacer::new(config.clone());
        let mut now = Instant::now();
        p.admit(now, key(), 50, 100).unwrap();
        for _ in 0..100 {
            now += config.cut_holdoff;
            let _ = p.admit(now, key(), 10, 100);
        }
        assert_eq!(p.rate(&key()).unwrap(), config.min_rate);
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_highest_sequence_number_again_is_not_a_loss() {
        // The socket refused it (`Pending`) and the library offers it again.
        let mut p = Pacer::new(PacerConfig::default());
        let now = Instant::now();
        p.admit(now, key(), 9, 100).unwrap();
        let r0 = p.rate(&key()).unwrap();
        p.admit(now, key(), 9, 100).unwrap();
        assert_eq!(p.rate(&key()).unwrap(), r0);
    }

    #[tokio::test(start_paused = true)]
    async fn sequence_numbers_wrap() {
        let mut p = Pacer::new(PacerConfig::default());
        let now = Instant::now();
        p.admit(now, key(), u16::MAX, 100).unwrap();
        let r0 = p.rate(&key()).unwrap();
        p.admit(now, key(), 0, 100).unwrap();
        assert_eq!(p.rate(&key()).unwrap(), r0, "0 after 65535 is new data");
        let _ = p.admit(now, key(), u16::MAX - 3, 100);
        assert!(
            p.rate(&key()).unwrap() < r0,
            "65532 after 0 is a retransmission"
        );
    }

    /// Sends as fast as the pacer allows for `time`, or (when `limited` is false) one small
    /// datagram per millisecond, which never exhausts the bucket.
    async fn drive(p: &mut Pacer, time: Duration, limited: bool, seq: &mut u16) {
        let end = Instant::now() + time;
        while Instant::now() < end {
            let len = if limited { DATAGRAM } else { 100 };
            match p.admit(Instant::now(), key(), *seq, len) {
                Ok(()) => {
                    *seq = seq.wrapping_add(1);
                    if !limited {
                        tokio::time::advance(Duration::from_millis(1)).await;
                    }
                }
                Err(at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_grows_only_while_the_pacer_is_the_limit() {
        let config = PacerConfig::default();
        let mut p = Pacer::new(config.clone());
        let mut seq = 0;
        drive(&mut p, Duration::from_millis(500), false, &mut seq).await;
        assert_eq!(
            p.rate(&key()).unwrap(),
            config.start_rate,
            "idle flows keep their rate"
        );
        drive(&mut p, Duration::from_millis(100), true, &mut seq).await;
        let grown = p.rate(&key()).unwrap();
        // Slow start: e-fold per start_tau (100 ms), so about 2.7x; allow timer slack.
        assert!(grown > config.start_rate * 2.0, "{grown}");
        drive(&mut p, Duration::from_secs(3), true, &mut seq).await;
        assert_eq!(
            p.rate(&key()).unwrap(),
            config.max_rate,
            "growth stops at the ceiling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_loss_growth_is_additive() {
        let config = PacerConfig::default();
        let mut p = Pacer::new(config.clone());
        let mut seq = 1000;
        p.admit(Instant::now(), key(), seq, 100).unwrap();
        let _ = p.admit(Instant::now(), key(), seq - 1, 100);
        let cut = p.rate(&key()).unwrap();
        seq += 1;
        drive(&mut p, Duration::from_millis(500), true, &mut seq).await;
        let grown = p.rate(&key()).unwrap() - cut;
        let expect = config.additive * 0.5;
        assert!(
            (expect * 0.9..=expect * 1.01).contains(&grown),
            "grew {grown}, expected about {expect}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_flow_table_is_bounded() {
        let config = PacerConfig {
            max_entries: 8,
            ..PacerConfig::default()
        };
        let mut p = Pacer::new(config);
        let now = Instant::now();
        for port in 0..100u16 {
            let k: FlowKey = (SocketAddr::from(([127, 0, 0, 1], port)), 1);
            p.admit(now, k, 0, 100).unwrap();
            assert!(p.len() <= 8);
        }
    }
}
