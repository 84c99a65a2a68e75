//! Seeding goals and the queue: which torrents may transfer at all.
//!
//! This module owns the *decisions* only, as pure functions and plain types: whether a seeding
//! goal is reached ([`SeedGoals::reached`]) and which torrents may run under the session's
//! limits on active downloads and seeds ([`plan`]). The session runs [`plan`] whenever a
//! torrent's state changes and opens or closes each torrent's gate; a torrent whose gate is
//! closed is `Queued` (no connections, no announces). Nothing here reads the clock or touches
//! a socket or a file.

use std::time::Duration;

/// One seeding goal of a torrent: the session's default, none, or its own value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Goal<T> {
    /// Use the session's default ([`crate::SessionConfig`] `seed_ratio` / `seed_time`).
    #[default]
    Global,
    /// No goal: seed until told otherwise.
    Off,
    /// Stop at this value.
    Value(T),
}

impl<T: Copy> Goal<T> {
    /// The goal in force, given the session's default.
    pub fn effective(self, global: Option<T>) -> Option<T> {
        match self {
            Goal::Global => global,
            Goal::Off => None,
            Goal::Value(v) => Some(v),
        }
    }
}

/// When a complete torrent stops seeding (whichever comes first).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SeedGoals {
    /// All-time uploaded / size (see [`crate::TorrentStatus::ratio`]).
    pub ratio: Goal<f64>,
    /// Time spent seeding, over every run.
    pub time: Goal<Duration>,
}

/// Which goal a finished torrent reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoalReached {
    /// Its ratio goal.
    Ratio,
    /// Its seeding-time goal.
    Time,
}

impl GoalReached {
    /// `ratio` or `time`: the word kept in the torrent's record and shown to users.
    pub fn label(self) -> &'static str {
        match self {
            GoalReached::Ratio => "ratio",
            GoalReached::Time => "time",
        }
    }
}

impl SeedGoals {
    /// Which goal (if any) a seeding torrent has reached, with the session's defaults applied.
    /// The ratio is checked first (both at once say "ratio").
    pub fn reached(
        &self,
        defaults: (Option<f64>, Option<Duration>),
        ratio: f64,
        seeding: Duration,
    ) -> Option<GoalReached> {
        if self.ratio.effective(defaults.0).is_some_and(|r| ratio >= r) {
            Some(GoalReached::Ratio)
        } else if self
            .time
            .effective(defaults.1)
            .is_some_and(|t| seeding >= t)
        {
            Some(GoalReached::Time)
        } else {
            None
        }
    }

    /// The goals after a user resumes a torrent that reached `reached`: that goal is turned
    /// off for this torrent, as Transmission does ("restarted manually -- disabling its seed
    /// ratio"), otherwise it would stop again at once. The other goal stays.
    pub fn after_manual_resume(mut self, reached: GoalReached) -> Self {
        match reached {
            GoalReached::Ratio => self.ratio = Goal::Off,
            GoalReached::Time => self.time = Goal::Off,
        }
        self
    }
}

/// Where [`crate::Session::queue_move`] moves a torrent in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueMove {
    /// First of all.
    Top,
    /// One place earlier.
    Up,
    /// One place later.
    Down,
    /// Last of all.
    Bottom,
}

/// What the queue needs to know of one torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// Wants to download (a magnet fetching metadata counts too).
    Download,
    /// Complete and wants to seed.
    Seed,
    /// Checking its data: not active, but it keeps the download slot its place in the queue
    /// would give a waiting download, so that when the check ends it starts in queue order
    /// (not whichever check ends first), peers that dialled it meanwhile are answered, and a
    /// restart does not start every torrent only to queue most of them a moment later.
    Checking,
    /// Does not take a slot: paused, failed, finished.
    Inactive,
}

/// One torrent as [`plan`] sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueEntry {
    /// Its place in the queue (lower first); ties are broken by the order of entries.
    pub position: u64,
    /// What slot it wants.
    pub kind: QueueKind,
    /// Its gate is open now.
    pub running: bool,
}

/// Limits on active torrents; `None`: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Downloads (and magnets fetching metadata) transferring at once.
    pub downloads: Option<usize>,
    /// Complete torrents seeding at once.
    pub seeds: Option<usize>,
}

/// Which torrents may run: `result[i]` for `entries[i]`. Per kind, torrents running now keep
/// their slot (a queued torrent never pushes out a running one, even when moved to the top);
/// if more run than the limit allows (it was lowered, or a download completed into the seeds),
/// those latest in the queue stop. Free slots go to waiting torrents in queue order; checking
/// torrents wait for download slots alongside waiting downloads. Inactive torrents get a
/// closed gate, so resuming one goes through the queue.
pub fn plan(entries: &[QueueEntry], limits: QueueLimits) -> Vec<bool> {
    let mut allowed = vec![false; entries.len()];
    for (kind, limit) in [
        (QueueKind::Download, limits.downloads),
        (QueueKind::Seed, limits.seeds),
    ] {
        let mut order: Vec<usize> = (0..entries.len())
            .filter(|&i| {
                let k = entries[i].kind;
                k == kind || (kind == QueueKind::Download && k == QueueKind::Checking)
            })
            .collect();
        order.sort_by_key(|&i| (entries[i].position, i));
        let limit = limit.unwrap_or(usize::MAX);
        let mut slots = 0;
        let running = |i: &&usize| entries[**i].running && entries[**i].kind == kind;
        for &i in order.iter().filter(running) {
            if slots < limit {
                allowed[i] = true;
                slots += 1;
            }
        }
        for &i in order.iter().filter(|i| !running(i)) {
            if slots < limit {
                allowed[i] = true;
                slots += 1;
            }
        }
    }
    allowed
}

/// The queue order after moving the torrent at `index` of `order` (a list of torrents in
/// queue order) by `how`.
pub fn moved<T>(mut order: Vec<T>, index: usize, how: QueueMove) -> Vec<T> {
    if index >= order.len() {
        return order;
    }
    let item = order.remove(index);
    let to = match how {
        QueueMove::Top => 0,
        QueueMove::Up => index.saturating_sub(1),
        QueueMove::Down => (index + 1).min(order.len()),
        QueueMove::Bottom => order.len(),
    };
    order.insert(to, item);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(position: u64, kind: QueueKind, running: bool) -> QueueEntry {
        QueueEntry {
            position,
            kind,
            running,
        }
    }

    const ONE_EACH: QueueLimits = QueueLimits {
        downloads: Some(1),
        seeds: Some(1),
    };

    #[test]
    fn waiting_torrents_start_in_queue_order() {
        use QueueKind::*;
        let entries = [
            e(2, Download, false),
            e(0, Download, false),
            e(1, Seed, false),
        ];
        assert_eq!(plan(&entries, ONE_EACH), vec![false, true, true]);
        // No limits: everyone active runs, inactive ones never.
        let entries = [
            e(2, Download, false),
            e(0, Inactive, true),
            e(1, Seed, false),
        ];
        assert_eq!(
            plan(&entries, QueueLimits::default()),
            vec![true, false, true]
        );
    }

    #[test]
    fn running_torrents_keep_their_slot() {
        use QueueKind::*;
        // Position 0 waits, position 5 runs: 5 keeps its slot.
        let entries = [e(0, Download, false), e(5, Download, true)];
        assert_eq!(plan(&entries, ONE_EACH), vec![false, true]);
        // When it finishes (now a seed), 0 starts; the new seed takes the free seed slot.
        let entries = [e(0, Download, false), e(5, Seed, true)];
        assert_eq!(plan(&entries, ONE_EACH), vec![true, true]);
        // Over the limit: the latest in the queue stops.
        let entries = [e(3, Seed, true), e(1, Seed, true), e(2, Seed, true)];
        let two = QueueLimits {
            downloads: None,
            seeds: Some(2),
        };
        assert_eq!(plan(&entries, two), vec![false, true, true]);
    }

    #[test]
    fn checking_torrents_wait_for_download_slots_in_queue_order() {
        use QueueKind::*;
        let two = QueueLimits {
            downloads: Some(2),
            seeds: Some(0),
        };
        // A running download keeps its slot; the other goes to the first in the queue, a
        // checking torrent before a later waiting download.
        let entries = [
            e(3, Download, false),
            e(9, Download, true),
            e(1, Checking, true),
            e(2, Checking, false),
            e(4, Seed, false),
        ];
        assert_eq!(plan(&entries, two), vec![false, true, true, false, false]);
        // A checking torrent never pushes out a running download.
        let entries = [e(0, Checking, false), e(5, Download, true)];
        assert_eq!(plan(&entries, ONE_EACH), vec![false, true]);
    }

    #[test]
    fn a_limit_of_zero_queues_everything_of_that_kind() {
        use QueueKind::*;
        let limits = QueueLimits {
            downloads: Some(0),
            seeds: None,
        };
        let entries = [e(0, Download, true), e(1, Seed, false)];
        assert_eq!(plan(&entries, limits), vec![false, true]);
    }

    #[test]
    fn moves() {
        let v = vec!['a', 'b', 'c', 'd'];
        assert_eq!(
            moved(v.clone(), 2, QueueMove::Top),
            vec!['c', 'a', 'b', 'd']
        );
        assert_eq!(moved(v.clone(), 2, QueueMove::Up), vec!['a', 'c', 'b', 'd']);
        assert_eq!(moved(v.clone(), 0, QueueMove::Up), v);
        assert_eq!(
            moved(v.clone(), 1, QueueMove::Down),
            vec!['a', 'c', 'b', 'd']
        );
        assert_eq!(moved(v.clone(), 3, QueueMove::Down), v);
        assert_eq!(
            moved(v.clone(), 0, QueueMove::Bottom),
            vec!['b', 'c', 'd', 'a']
        );
        assert_eq!(moved(v.clone(), 9, QueueMove::Top), v);
    }

    #[test]
    fn goals() {
        let secs = Duration::from_secs;
        let g = SeedGoals::default();
        assert_eq!(g.reached((None, None), 9.0, secs(1 << 20)), None);
        assert_eq!(
            g.reached((Some(2.0), None), 2.0, secs(0)),
            Some(GoalReached::Ratio)
        );
        assert_eq!(g.reached((Some(2.0), None), 1.99, secs(0)), None);
        let own = SeedGoals {
            ratio: Goal::Off,
            time: Goal::Value(secs(60)),
        };
        assert_eq!(own.reached((Some(0.5), None), 1.0, secs(59)), None);
        assert_eq!(
            own.reached((Some(0.5), None), 1.0, secs(60)),
            Some(GoalReached::Time)
        );
        let resumed = SeedGoals {
            ratio: Goal::Global,
            time: Goal::Value(secs(60)),
        }
        .after_manual_resume(GoalReached::Ratio);
        assert_eq!(resumed.ratio, Goal::Off);
        assert_eq!(resumed.time, Goal::Value(secs(60)));
    }
}
