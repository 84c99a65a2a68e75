//! When the torrent task next needs to run its periodic work.
//!
//! While anything moves (peers connected or being dialled, pieces in flight, a rate not yet
//! back at zero) the work runs once a second: rates, rechoke, request timeouts, PEX. A quiet
//! torrent (the usual state of a seed nobody wants) has nothing to do each second, and a
//! session of 10,000 of them ticking would cost a fifth of a core for nothing. It sleeps
//! instead until the earliest job it has scheduled: an announce, a DHT or LSD round, a
//! redial, a flush, a record write, a seeding-time goal; and at least every [`QUIET_TICK`], so
//! its status (seeding time) stays fresh. Events wake it at once (a peer dialling in, an
//! announce reply, a user's command, a discovery service starting).

#[allow(unused_imports)]
use super::*;

/// The periodic work's period while anything moves.
pub(super) const TICK: Duration = Duration::from_secs(1);
/// The longest a quiet torrent sleeps: its published seeding time is at most this old.
const QUIET_TICK: Duration = Duration::from_secs(60);

impl Torrent {
    /// Something moves, or may move within the second: the periodic work runs each second.
    pub(super) fn needs_tick(&self) -> bool {
        !self.peers.is_empty()
            || !self.pieces.is_empty()
            || self.verifying > 0
            || self.flushing
            || self.download_rate.get() > 0.0
            || self.upload_rate.get() > 0.0
            || self.known.values().any(|k| k.connecting)
    }

    /// When the periodic work next runs, decided after it ran at `now`. Drops the peer event
    /// queue of a torrent left without peers.
    pub(super) fn next_wake(&mut self, now: Instant) -> Instant {
        if self.needs_tick() {
            return now + TICK;
        }
        self.peer_events = None;
        let mut at = now + QUIET_TICK;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = at.min(t);
            }
        };
        consider(self.keeper.next_save(now));
        if self.dirty {
            consider(Some(self.last_flush + FLUSH_INTERVAL));
        }
        if self.active() {
            let downloading = !self.is_seed();
            consider(self.announcer.next());
            // Starving (nobody left to dial; see `starving`): an early announce and an early
            // DHT search. With addresses waiting out their backoff, their redial is the job.
            let starving = downloading
                && !self
                    .known
                    .values()
                    .any(|k| !k.connected && !k.connecting && !k.incoming_only);
            if starving {
                consider(self.announcer.early_at());
            }
            if self.p.discovery.as_ref().is_some_and(|d| d.dht().is_some()) {
                consider(self.dht_schedule.next(starving));
            }
            if self.is_seed() && !self.sent_completed {
                consider(Some(now)); // `completed` not yet sent (an announce was running)
            }
            if self.p.discovery.as_ref().is_some_and(|d| d.lsd().is_some()) {
                consider(Some(self.next_lsd.unwrap_or(now)));
            }
            consider(self.next_dial(now));
            consider(self.seeding_goal_at(now));
        }
        // Never in the past, never sooner than a tick: a job due now runs at the next tick.
        at.max(now + TICK)
    }

    /// When an address in the book may next be dialled (`now` if one may be now).
    fn next_dial(&self, now: Instant) -> Option<Instant> {
        let seed = self.is_seed();
        self.known
            .iter()
            .filter(|(a, k)| {
                let busy = k.connected || k.connecting;
                let useless = k.incoming_only || (seed && k.seed);
                !busy && !useless && !self.banned.contains(&ban_key(**a))
            })
            .map(|(_, k)| k.next_try.unwrap_or(now))
            .min()
    }

    /// When seeding reaches its time goal, if it is seeding toward one.
    fn seeding_goal_at(&self, now: Instant) -> Option<Instant> {
        if !self.is_seed() {
            return None;
        }
        let goal = self
            .keeper
            .record
            .goals
            .time
            .effective(self.p.seed_defaults.borrow().1)?;
        Some(now + goal.saturating_sub(self.keeper.seeding()))
    }
}
