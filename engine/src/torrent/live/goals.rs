//! When a live torrent transfers at all: the queue's gate, seeding goals, and resuming a
//! finished torrent; and the torrent's record (seeding time, totals) kept up to date.
//!
//! Queued or finished, a torrent holds no connections and makes no announces; it sends
//! `stopped` when it stops (if it had sent `started`) and `started` when it runs again.

#[allow(unused_imports)]
use super::*;

impl Torrent {
    /// Count seeding time since the last call (only while actually seeding).
    pub(super) fn count_seeding(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_tick);
        self.last_tick = now;
        if self.active() && self.is_seed() {
            self.keeper.add_seeding(elapsed);
            self.check_goals();
        }
    }

    /// Stop seeding if a goal is reached.
    fn check_goals(&mut self) {
        self.keeper.set_run_totals(self.downloaded, self.uploaded);
        let r = &self.keeper.record;
        let ratio = crate::status::ratio(r.uploaded, r.downloaded, self.layout.total_length);
        let reached = self.keeper.record.goals.reached(
            *self.p.seed_defaults.borrow(),
            ratio,
            self.keeper.seeding(),
        );
        if let Some(goal) = reached {
            tracing::info!(name = %self.metainfo.info.name, goal = goal.label(), ratio, "seeding goal reached");
            self.stop_transfer();
            self.finished = Some(goal);
            self.keeper.record.finished = Some(goal);
            self.save_record_soon();
            self.publish();
        }
    }

    /// The queue opened or closed our gate.
    pub(super) fn on_gate(&mut self) {
        let queued = !*self.p.may_run.borrow_and_update();
        if queued == self.queued {
            return;
        }
        // Seeding time up to now counts under the old state (a quiet torrent's last count may
        // be a minute old).
        self.count_seeding(now());
        let was_active = self.active();
        self.queued = queued;
        self.after_change(was_active);
    }

    /// The user resumes: after a pause, or a finished torrent seeds again with the goal it
    /// reached turned off (as Transmission does; it would stop again at once otherwise).
    pub(super) fn on_resume(&mut self) {
        self.count_seeding(now());
        let was_active = self.active();
        self.paused = false;
        if let Some(goal) = self.finished.take() {
            let goals = self.keeper.record.goals.after_manual_resume(goal);
            tracing::info!(name = %self.metainfo.info.name, goal = goal.label(), "resumed after its seeding goal: that goal is off for this torrent");
            self.keeper.record.goals = goals;
            self.keeper.record.finished = None;
            self.save_record_soon();
        }
        self.after_change(was_active);
    }

    fn after_change(&mut self, was_active: bool) {
        let active = self.active();
        if was_active && !active {
            self.stop_transfer();
        } else if !was_active && active {
            self.announcer.restart(now());
            self.dial_new_now();
            self.discover(now());
        }
        self.publish();
    }

    /// Close every connection and tell trackers we stopped.
    fn stop_transfer(&mut self) {
        self.close_all_peers();
        self.announce_stopped_for_now();
    }

    /// Write the record soon, with this run's totals.
    pub(super) fn save_record_soon(&mut self) {
        self.keeper.set_run_totals(self.downloaded, self.uploaded);
        self.keeper.save_soon(now());
    }
}
