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
//! What it owns: one token bucket and one in-flight count per destination (peer address and
//! connection id), which let a datagram go when the bucket holds its size and the cap allows
//! it, and otherwise say what it waits for. The bucket refills at a rate that follows loss as
//! the peer experiences it:
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
//! - **capped in flight** ([`WindowConfig`]): new data waits while more than
//!   `max(floor, 2 x rate x min RTT)` datagrams are unacknowledged. The ACKs (`ack_nr` of any
//!   packet the peer sends on the connection) are read by the socket on their way to the
//!   library ([`Pacer::on_ack`]); so is one RTT sample per round trip. Whatever waits in a
//!   receiver's socket buffer is unacknowledged, so the floor bounds what that buffer can
//!   ever hold; on loopback a rate alone overran it whenever the peer paused reading for a
//!   millisecond or two. Retransmissions are never held by the cap.
//! - **bounded**: the rate stays within [`PacerConfig::min_rate`] ..
//!   [`PacerConfig::max_rate`]; the bucket holds at most one refill interval's worth (a few
//!   datagrams at low rates), never more than [`PacerConfig::max_burst`] (the in-flight
//!   floor: a burst never puts more in a receiver's buffer than the cap already allows).
//!
//! It never delays control packets (ACKs, SYN, FIN): only data is paced, by the caller.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// How recently the pacer must have refused a datagram for the rate to grow.
pub const LIMITED_WINDOW: Duration = Duration::from_millis(10);

/// How far behind our highest sequence number an `ack_nr` may lie and still be taken as an
/// ACK of ours: more than the library ever has in flight (its send buffer, at most 2 MiB, is
/// ~1,500 datagrams), far less than the 65,536 sequence numbers, so an ACK of another flow
/// (a random sequence space) rarely fits. Also the largest in-flight cap.
const SEQ_WINDOW: u16 = 8192;

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
    /// Cap on datagrams in flight (sent, not yet cumulatively acknowledged) per flow; `None`
    /// turns the cap off. See [`WindowConfig`].
    pub window: Option<WindowConfig>,
}

/// The in-flight cap of a flow: at most `max(floor, gain x rate x min RTT)` datagrams sent and
/// not yet acknowledged.
///
/// Why: a rate alone cannot protect a receiver's UDP buffer. When the peer stops reading for a
/// moment (its network thread busy with disk or hashing work), datagrams keep arriving at the
/// paced rate and the buffer overflows after ~92 of them. Everything sitting in that buffer is
/// unacknowledged, so a cap on what is unacknowledged is a cap on what the buffer can ever
/// hold: the sender then waits for ACKs instead of dropping, and resumes as the peer reads.
/// The `gain x rate x min RTT` term keeps a long path (where most of what is in flight is on
/// the wire, not in a buffer) from being limited by the floor.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowConfig {
    /// Datagrams always allowed in flight.
    pub floor: usize,
    /// Multiple of the bandwidth-delay product (pacing rate x minimum RTT) allowed in flight.
    pub gain: f64,
    /// The minimum RTT is measured afresh after this long (paths change).
    pub min_rtt_window: Duration,
    /// ACK information older than this no longer caps the flow: if ACKs stop being seen
    /// (a peer we cannot match), the flow is paced by rate alone, as without the cap.
    pub ack_stale: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            // About two thirds of the ~92 full datagrams a default 208 KiB receive buffer
            // holds (module docs). Measured seeding 1 GiB to libtorrent (two runs each): 64
            // gave 122-142 MB/s and no drops; 80 gave 113-116 MB/s and 51-59 datagrams
            // dropped at the leecher (so a datagram costs it more buffer than estimated).
            floor: 64,
            // Twice the bandwidth-delay product, as BBR allows in flight: enough to keep a
            // paced flow busy while ACKs come back in bursts.
            gain: 2.0,
            // BBR's min RTT filter window.
            min_rtt_window: Duration::from_secs(10),
            // Above the library's minimum RTO (200 ms): by then it retransmits anyway, and
            // retransmissions are never held by the cap.
            ack_stale: Duration::from_millis(500),
        }
    }
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
            // As many datagrams as the in-flight floor (`WindowConfig::floor`), which is what
            // protects a default 208 KiB receive buffer now; the bucket only has to stop a
            // burst beyond that. Measured seeding 1 GiB to libtorrent with the in-flight cap
            // (two runs each, run-to-run noise ~15 %): 16 datagrams 101-118 MB/s (the sender
            // waited ~10,000 times a second for the 1 ms timer), 32 109-131, 64 122-142,
            // all without drops. (Before the cap, 64 gave 33-55 MB/s with 169-2,518 drops
            // and 16 was chosen.)
            max_burst: 64 * DATAGRAM,
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
            window: Some(WindowConfig::default()),
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
    /// The highest cumulative `ack_nr` the peer sent for this flow, and when an ACK for it
    /// was last seen.
    acked: Option<(u16, Instant)>,
    /// One sequence number being timed for the RTT and when it was sent; dropped if it is
    /// sent again (Karn: a retransmission's ACK does not say which copy it answers).
    probe: Option<(u16, Instant)>,
    /// The smallest RTT sample and when it was taken.
    min_rtt: Option<(Duration, Instant)>,
    stats: FlowStats,
}

/// What a flow did since its last report (logged at debug level, once a second per flow).
#[derive(Debug, Default)]
struct FlowStats {
    since: Option<Instant>,
    sent: u64,
    bytes: u64,
    retransmits: u64,
    cuts: u64,
    paced_waits: u64,
    window_waits: u64,
    max_in_flight: usize,
    peer_window: u32,
}

/// Why a datagram may not leave yet, and when to ask again.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Refusal {
    /// The bucket is short of tokens until then.
    Paced(Instant),
    /// Too much is in flight: ask again when an ACK for the flow arrives, or at this time at
    /// the latest (when the ACK information goes stale).
    Window(Instant),
}

impl Refusal {
    /// The latest time to ask again.
    pub fn at(self) -> Instant {
        match self {
            Refusal::Paced(at) | Refusal::Window(at) => at,
        }
    }
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

    /// Datagrams of `flow` in flight at `now`, if the flow's ACK information is fresh.
    fn in_flight(config: &WindowConfig, flow: &Flow, now: Instant) -> Option<usize> {
        let (highest, (acked, at)) = (flow.highest_seq?, flow.acked?);
        if now.saturating_duration_since(at) >= config.ack_stale {
            return None;
        }
        // Wrapping distance; an ACK is only taken when it lies at or behind `highest`.
        Some(highest.wrapping_sub(acked) as usize)
    }

    /// The in-flight cap of `flow`, datagrams.
    fn window_cap(config: &WindowConfig, flow: &Flow, now: Instant) -> usize {
        let bdp = flow
            .min_rtt
            .filter(|(_, at)| now.saturating_duration_since(*at) < config.min_rtt_window)
            .map(|(rtt, _)| config.gain * flow.rate * rtt.as_secs_f64() / DATAGRAM as f64)
            .unwrap_or(0.0);
        (bdp.ceil() as usize).clamp(config.floor, SEQ_WINDOW as usize)
    }

    /// May a data datagram of `len` bytes with sequence number `seq` leave for `key` at `now`?
    /// `Ok(())` takes its tokens (and records it as sent); `Err` says what it waits for.
    pub fn admit(
        &mut self,
        now: Instant,
        key: FlowKey,
        seq: u16,
        len: usize,
    ) -> Result<(), Refusal> {
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
            acked: None,
            probe: None,
            min_rtt: None,
            stats: FlowStats::default(),
        });
        flow.last_used = now;
        report(key, flow, config, now);

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
            flow.stats.cuts += 1;
        }
        if retransmit {
            flow.probe = flow.probe.filter(|(p, _)| *p != seq);
        } else if let Some(window) = &config.window {
            // New data waits while the cap is reached; a retransmission never does (it is
            // what repairs the loss that holds the ACKs back).
            if let Some(in_flight) = Self::in_flight(window, flow, now) {
                flow.stats.max_in_flight = flow.stats.max_in_flight.max(in_flight);
                if in_flight >= Self::window_cap(window, flow, now) {
                    flow.stats.window_waits += 1;
                    let stale = flow.acked.map_or(now, |(_, at)| at + window.ack_stale);
                    return Err(Refusal::Window(stale.max(now)));
                }
            }
        }

        // A datagram larger than the bucket could never pass; it waits for a full bucket.
        let need = (len as f64).min(Self::capacity(config, flow.rate));
        if flow.tokens >= need {
            flow.tokens -= len as f64;
            flow.stats.sent += 1;
            flow.stats.bytes += len as u64;
            if retransmit {
                flow.stats.retransmits += 1;
            } else {
                if flow.highest_seq != Some(seq) && flow.probe.is_none() {
                    flow.probe = Some((seq, now));
                }
                flow.highest_seq = Some(seq);
            }
            Ok(())
        } else {
            flow.last_refused = Some(now);
            flow.stats.paced_waits += 1;
            let wait = (need - flow.tokens) / flow.rate;
            Err(Refusal::Paced(now + Duration::from_secs_f64(wait)))
        }
    }

    /// An ACK (any packet carrying `ack_nr`, with the peer's advertised window `wnd`) arrived
    /// from `from` on the connection the peer calls `conn_id`. Returns the flow it belongs
    /// to, whose waiting sends may now go.
    ///
    /// BEP 29 connection ids: the side that connects receives on `id` and sends on `id + 1`,
    /// the side that accepts receives on `id + 1` and sends on `id`; the peer stamps its
    /// packets with our receive id. So our sending flow is `conn_id + 1` (we connected) or
    /// `conn_id - 1` (we accepted). Only a flow whose sent range contains `ack_nr` takes it,
    /// which also tells the two apart.
    pub fn on_ack(
        &mut self,
        now: Instant,
        from: SocketAddr,
        conn_id: u16,
        ack_nr: u16,
        wnd: u32,
    ) -> Option<FlowKey> {
        for key in [
            (from, conn_id.wrapping_add(1)),
            (from, conn_id.wrapping_sub(1)),
        ] {
            let Some(flow) = self.flows.get_mut(&key) else {
                continue;
            };
            let Some(highest) = flow.highest_seq else {
                continue;
            };
            // Ours only if it lies between what was already acknowledged (or, before the first
            // ACK, `SEQ_WINDOW` back) and the highest sequence number sent.
            let behind = highest.wrapping_sub(ack_nr);
            let range = flow
                .acked
                .map_or(SEQ_WINDOW, |(a, _)| highest.wrapping_sub(a));
            if behind > range.min(SEQ_WINDOW) {
                continue;
            }
            // Within the range above, `ack_nr` is never behind the previous ACK.
            flow.acked = Some((ack_nr, now));
            flow.stats.peer_window = wnd;
            if let Some((p, sent)) = flow.probe {
                if (ack_nr.wrapping_sub(p) as i16) >= 0 {
                    let rtt = now.saturating_duration_since(sent);
                    let window = self
                        .config
                        .window
                        .as_ref()
                        .map_or(Duration::from_secs(10), |w| w.min_rtt_window);
                    let keep = flow.min_rtt.is_some_and(|(m, at)| {
                        m <= rtt && now.saturating_duration_since(at) < window
                    });
                    if !keep {
                        flow.min_rtt = Some((rtt, now));
                    }
                    flow.probe = None;
                }
            }
            return Some(key);
        }
        None
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

    /// The minimum RTT measured for a flow.
    #[cfg(test)]
    fn min_rtt(&self, key: &FlowKey) -> Option<Duration> {
        self.flows.get(key)?.min_rtt.map(|(r, _)| r)
    }
}

/// Log what `flow` did over the last second (debug level), then start counting afresh.
fn report(key: FlowKey, flow: &mut Flow, config: &PacerConfig, now: Instant) {
    let since = *flow.stats.since.get_or_insert(now);
    let elapsed = now.saturating_duration_since(since);
    if elapsed < REPORT_EVERY {
        return;
    }
    let cap = config
        .window
        .as_ref()
        .map(|w| Pacer::window_cap(w, flow, now));
    let s = std::mem::take(&mut flow.stats);
    tracing::debug!(
        peer = %key.0,
        conn_id = key.1,
        mb_per_s = format_args!("{:.1}", s.bytes as f64 / elapsed.as_secs_f64() / 1e6),
        rate_mb_per_s = format_args!("{:.1}", flow.rate / 1e6),
        sent = s.sent,
        retransmits = s.retransmits,
        cuts = s.cuts,
        paced_waits = s.paced_waits,
        window_waits = s.window_waits,
        max_in_flight = s.max_in_flight,
        cap = ?cap,
        min_rtt_us = ?flow.min_rtt.map(|(r, _)| r.as_micros()),
        peer_window = s.peer_window,
        "uTP flow"
    );
    flow.stats.since = Some(now);
}

/// How often a flow's counters are logged.
const REPORT_EVERY: Duration = Duration::from_secs(1);

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
                Err(r) => break r.at(),
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
                Err(r) => tokio::time::sleep_until(r.at()).await,
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
                Err(r) => tokio::time::sleep_until(r.at()).await,
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

    /// A pacer whose bucket never refuses small datagrams, so only the window decides.
    fn window_only(floor: usize) -> PacerConfig {
        PacerConfig {
            start_rate: 100e6,
            max_rate: 100e6,
            max_burst: usize::MAX,
            burst_time: Duration::from_secs(1),
            window: Some(WindowConfig {
                floor,
                ..WindowConfig::default()
            }),
            ..PacerConfig::default()
        }
    }

    /// The connection id the peer stamps on its ACKs of our flow `key` when we connected
    /// (BEP 29: we send on our receive id + 1).
    fn ack_id() -> u16 {
        key().1 - 1
    }

    /// Sends new datagrams from `*seq` on until one is refused; how many went.
    fn send_until_refused(p: &mut Pacer, now: Instant, seq: &mut u16) -> (usize, Refusal) {
        let mut sent = 0;
        loop {
            match p.admit(now, key(), *seq, 100) {
                Ok(()) => {
                    sent += 1;
                    *seq = seq.wrapping_add(1);
                }
                Err(r) => return (sent, r),
            }
            assert!(sent < 100_000, "never refused");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn new_data_waits_for_acks_at_the_window_cap() {
        let mut p = Pacer::new(window_only(8));
        let now = Instant::now();
        let peer = key().0;
        p.admit(now, key(), 100, 100).unwrap();
        // Before any ACK there is nothing to count in flight against: no cap.
        assert_eq!(p.on_ack(now, peer, ack_id(), 100, 1 << 20), Some(key()));
        let mut seq = 101;
        let (sent, refusal) = send_until_refused(&mut p, now, &mut seq);
        assert_eq!(sent, 8, "up to the floor in flight");
        let stale = now + WindowConfig::default().ack_stale;
        assert_eq!(refusal, Refusal::Window(stale));
        // An ACK of three datagrams lets three more go.
        assert_eq!(p.on_ack(now, peer, ack_id(), 103, 1 << 20), Some(key()));
        let (sent, _) = send_until_refused(&mut p, now, &mut seq);
        assert_eq!(sent, 3);
        // A retransmission is never held by the cap.
        assert_eq!(p.admit(now, key(), 104, 100), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_ack_no_longer_caps_the_flow() {
        let mut p = Pacer::new(window_only(4));
        let now = Instant::now();
        p.admit(now, key(), 0, 100).unwrap();
        p.on_ack(now, key().0, ack_id(), 0, 0);
        let mut seq = 1;
        let (sent, refusal) = send_until_refused(&mut p, now, &mut seq);
        assert_eq!(sent, 4);
        // Nothing heard until the refusal's deadline: the flow goes on, paced by rate only.
        assert_eq!(p.admit(refusal.at(), key(), seq, 100), Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_follows_the_bandwidth_delay_product() {
        let config = window_only(8);
        let mut p = Pacer::new(config.clone());
        let start = Instant::now();
        p.admit(start, key(), 0, 100).unwrap();
        // The first new datagram is timed: acknowledged 3 ms later.
        let later = start + Duration::from_millis(3);
        p.on_ack(later, key().0, ack_id(), 0, 0);
        assert_eq!(p.min_rtt(&key()), Some(Duration::from_millis(3)));
        let mut seq = 1;
        let (sent, _) = send_until_refused(&mut p, later, &mut seq);
        // 2 x 100 MB/s x 3 ms = 600 kB: 400 full datagrams.
        let bdp = config.window.unwrap().gain * 100e6 * 0.003 / DATAGRAM as f64;
        assert_eq!(sent, bdp.ceil() as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retransmitted_packet_gives_no_rtt_sample() {
        let mut p = Pacer::new(window_only(8));
        let now = Instant::now();
        p.admit(now, key(), 0, 100).unwrap();
        p.admit(now, key(), 1, 100).unwrap();
        // Seq 0 (the one being timed) is sent again: its ACK could answer either copy.
        p.admit(now + Duration::from_millis(1), key(), 0, 100)
            .unwrap();
        p.on_ack(now + Duration::from_millis(2), key().0, ack_id(), 1, 0);
        assert_eq!(p.min_rtt(&key()), None);
        // The next new datagram is timed instead.
        p.admit(now + Duration::from_millis(3), key(), 2, 100)
            .unwrap();
        p.on_ack(now + Duration::from_millis(5), key().0, ack_id(), 2, 0);
        assert_eq!(p.min_rtt(&key()), Some(Duration::from_millis(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn acks_find_their_flow_by_connection_id_and_sequence_range() {
        let mut p = Pacer::new(window_only(8));
        let now = Instant::now();
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        // Two flows to one peer: one we connected (we send on 13, the peer stamps 12 on its
        // ACKs) and one we accepted (we send on 11, the peer stamps 12 as well).
        p.admit(now, (peer, 13), 1000, 100).unwrap();
        p.admit(now, (peer, 11), 40000, 100).unwrap();
        assert_eq!(p.on_ack(now, peer, 12, 40000, 0), Some((peer, 11)));
        assert_eq!(p.on_ack(now, peer, 12, 999, 0), Some((peer, 13)));
        // Ahead of anything sent, another address, an unknown connection: nobody's.
        assert_eq!(p.on_ack(now, peer, 12, 1001, 0), None);
        assert_eq!(p.on_ack(now, key().0, 12, 999, 0), None);
        assert_eq!(p.on_ack(now, peer, 500, 999, 0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_ack_behind_the_last_one_is_not_taken() {
        let mut p = Pacer::new(window_only(4));
        let now = Instant::now();
        p.admit(now, key(), 0, 100).unwrap();
        p.on_ack(now, key().0, ack_id(), 0, 0);
        let mut seq = 1;
        send_until_refused(&mut p, now, &mut seq);
        p.on_ack(now, key().0, ack_id(), 4, 0);
        // A reordered older ACK does not shrink what counts as acknowledged.
        assert_eq!(p.on_ack(now, key().0, ack_id(), 2, 0), None);
        let (sent, _) = send_until_refused(&mut p, now, &mut seq);
        assert_eq!(sent, 4);
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
