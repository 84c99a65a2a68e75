//! Who we upload to: tit-for-tat with an optimistic unchoke (BEP 3 "choking"). Sans-IO.
//!
//! Owns only the choice of unchoked peers and the current optimistic unchoke. It measures
//! nothing and sends nothing: the torrent task samples rates, calls [`Choker::rechoke`] every
//! [`RECHOKE_INTERVAL`] and sends `choke`/`unchoke` for the differences.
//!
//! ## The rule
//!
//! 1. Rank every peer by the rate that matters: what it sends us while we download
//!    (tit-for-tat), what we manage to send it while we seed (so our upload goes where it moves
//!    fastest). Ties break by key so the outcome depends only on the inputs and the rng.
//! 2. Walk down the ranking, unchoking each peer, until [`REGULAR_SLOTS`] *interested* peers are
//!    unchoked. Uninterested peers passed on the way are unchoked too (BEP 3: they cost nothing
//!    until they become interested, and are then ready at once); they do not use a slot. So with
//!    fewer than [`REGULAR_SLOTS`] interested peers everyone is unchoked.
//! 3. One more interested peer that is still choked gets the optimistic unchoke, chosen at
//!    random (peers first seen less than [`OPTIMISTIC_INTERVAL`] ago weigh
//!    [`NEW_PEER_WEIGHT`]× so newcomers get a first chance to prove themselves). It keeps the
//!    slot for [`OPTIMISTIC_INTERVAL`]; it is replaced early if it leaves, loses interest or
//!    earns a regular slot.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::picker::PeerKey;

/// How often the caller should call [`Choker::rechoke`].
pub const RECHOKE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one optimistic unchoke lasts before rotating.
pub const OPTIMISTIC_INTERVAL: Duration = Duration::from_secs(30);
/// Regular (rate-based) upload slots.
pub const REGULAR_SLOTS: usize = 4;
/// Weight of a recently connected peer in the optimistic draw (mainline clients use 3).
pub const NEW_PEER_WEIGHT: u32 = 3;

/// One peer as the choker sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PeerSample {
    /// The peer.
    pub key: PeerKey,
    /// Whether it wants data from us.
    pub interested: bool,
    /// Bytes/s it sends us (leeching criterion).
    pub download_rate: u64,
    /// Bytes/s we send it (seeding criterion).
    pub upload_rate: u64,
}

/// Upload slot allocator.
#[derive(Debug, Default)]
pub struct Choker {
    /// The optimistic peer and when it got the slot.
    optimistic: Option<(PeerKey, Instant)>,
    /// When each present peer was first passed to `rechoke` (forgotten once it is absent).
    first_seen: HashMap<PeerKey, Instant>,
}

impl Choker {
    /// A choker with no optimistic peer yet.
    pub fn new() -> Self {
        Choker::default()
    }

    /// The current optimistic unchoke, if any.
    pub fn optimistic(&self) -> Option<PeerKey> {
        self.optimistic.map(|(k, _)| k)
    }

    /// Decide the set of unchoked peers now.
    pub fn rechoke(
        &mut self,
        now: Instant,
        peers: &[PeerSample],
        seeding: bool,
        rng: &mut impl Rng,
    ) -> HashSet<PeerKey> {
        self.first_seen
            .retain(|k, _| peers.iter().any(|p| p.key == *k));
        for p in peers {
            self.first_seen.entry(p.key).or_insert(now);
        }

        let rate = |p: &PeerSample| {
            if seeding {
                p.upload_rate
            } else {
                p.download_rate
            }
        };
        let mut ranked: Vec<&PeerSample> = peers.iter().collect();
        ranked.sort_by(|a, b| rate(b).cmp(&rate(a)).then(a.key.cmp(&b.key)));

        let mut unchoked = HashSet::new();
        let mut regular = 0;
        for p in &ranked {
            if regular == REGULAR_SLOTS {
                break;
            }
            unchoked.insert(p.key);
            regular += usize::from(p.interested);
        }

        // Candidates for the optimistic slot: interested and still choked, in rank order.
        let candidates: Vec<PeerKey> = ranked
            .iter()
            .filter(|p| p.interested && !unchoked.contains(&p.key))
            .map(|p| p.key)
            .collect();
        let keep = self.optimistic.filter(|&(k, since)| {
            candidates.contains(&k) && now.saturating_duration_since(since) < OPTIMISTIC_INTERVAL
        });
        self.optimistic = match keep {
            Some(current) => Some(current),
            None => {
                // On rotation, prefer someone other than the outgoing peer.
                let outgoing = self.optimistic.map(|(k, _)| k);
                let fresh: Vec<PeerKey> = candidates
                    .iter()
                    .copied()
                    .filter(|&k| Some(k) != outgoing)
                    .collect();
                let pool = if fresh.is_empty() { candidates } else { fresh };
                self.draw(now, &pool, rng).map(|k| (k, now))
            }
        };
        if let Some((k, _)) = self.optimistic {
            unchoked.insert(k);
        }
        unchoked
    }

    /// A weighted random member of `pool`; new peers weigh [`NEW_PEER_WEIGHT`].
    fn draw(&self, now: Instant, pool: &[PeerKey], rng: &mut impl Rng) -> Option<PeerKey> {
        let weight = |k: &PeerKey| {
            let seen = self.first_seen.get(k).copied().unwrap_or(now);
            if now.saturating_duration_since(seen) < OPTIMISTIC_INTERVAL {
                NEW_PEER_WEIGHT
            } else {
                1
            }
        };
        let total: u32 = pool.iter().map(weight).sum();
        if total == 0 {
            return None;
        }
        let mut ticket = rng.gen_range(0..total);
        for k in pool {
            let w = weight(k);
            if ticket < w {
                return Some(*k);
            }
            ticket -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn peer(key: PeerKey, interested: bool, down: u64, up: u64) -> PeerSample {
        PeerSample {
            key,
            interested,
            download_rate: down,
            upload_rate: up,
        }
    }

    fn set(keys: &[PeerKey]) -> HashSet<PeerKey> {
        keys.iter().copied().collect()
    }

    #[test]
    fn top_four_by_download_rate_plus_one_optimistic() {
        let peers: Vec<_> = (1..=8)
            .map(|k| peer(k, true, k * 100, 1000 - k * 100))
            .collect();
        let mut c = Choker::new();
        let mut rng = StdRng::seed_from_u64(1);
        let got = c.rechoke(Instant::now(), &peers, false, &mut rng);
        assert_eq!(got.len(), REGULAR_SLOTS + 1);
        for k in [5, 6, 7, 8] {
            assert!(got.contains(&k), "{got:?}");
        }
        let opt = c.optimistic().expect("an optimistic peer");
        assert!((1..=4).contains(&opt));
    }

    #[test]
    fn seeding_ranks_by_upload_rate() {
        let peers: Vec<_> = (1..=8)
            .map(|k| peer(k, true, k * 100, 1000 - k * 100))
            .collect();
        let mut c = Choker::new();
        let got = c.rechoke(Instant::now(), &peers, true, &mut StdRng::seed_from_u64(2));
        for k in [1, 2, 3, 4] {
            assert!(got.contains(&k), "{got:?}");
        }
        assert!((5..=8).contains(&c.optimistic().unwrap()));
    }

    #[test]
    fn fewer_than_five_peers_all_interested_unchoked() {
        let peers: Vec<_> = (1..=3).map(|k| peer(k, true, 0, 0)).collect();
        let mut c = Choker::new();
        let got = c.rechoke(Instant::now(), &peers, false, &mut StdRng::seed_from_u64(3));
        assert_eq!(got, set(&[1, 2, 3]));
        assert_eq!(c.optimistic(), None);
        let peers: Vec<_> = (1..=5).map(|k| peer(k, true, k, 0)).collect();
        let got = c.rechoke(Instant::now(), &peers, false, &mut StdRng::seed_from_u64(3));
        assert_eq!(got, set(&[1, 2, 3, 4, 5]));
        assert_eq!(c.optimistic(), Some(1));
    }

    #[test]
    fn uninterested_peers_take_no_slot() {
        // Fast but uninterested peers ranked above the interested ones are unchoked too, and
        // the four interested peers still get their slots; slower uninterested ones stay choked.
        let mut peers = vec![peer(100, false, 10_000, 0), peer(101, false, 9_000, 0)];
        peers.extend((1..=6).map(|k| peer(k, true, k * 10, 0)));
        peers.push(peer(102, false, 1, 0));
        let mut c = Choker::new();
        let got = c.rechoke(Instant::now(), &peers, false, &mut StdRng::seed_from_u64(4));
        for k in [100, 101, 3, 4, 5, 6] {
            assert!(got.contains(&k), "{got:?}");
        }
        assert!(!got.contains(&102));
        let opt = c.optimistic().unwrap();
        assert!(opt == 1 || opt == 2);
        assert_eq!(got.len(), 7);
    }

    #[test]
    fn optimistic_rotates_after_thirty_seconds_not_before() {
        let mut peers: Vec<_> = (1..=4).map(|k| peer(k, true, 1000 + k, 0)).collect();
        peers.extend((10..20).map(|k| peer(k, true, 0, 0)));
        let mut c = Choker::new();
        let mut rng = StdRng::seed_from_u64(5);
        let t0 = Instant::now();
        c.rechoke(t0, &peers, false, &mut rng);
        let first = c.optimistic().unwrap();
        assert!((10..20).contains(&first));
        for s in [10, 20, 29] {
            let got = c.rechoke(t0 + Duration::from_secs(s), &peers, false, &mut rng);
            assert_eq!(c.optimistic(), Some(first), "rotated early at {s}s");
            assert!(got.contains(&first));
        }
        let got = c.rechoke(t0 + Duration::from_secs(30), &peers, false, &mut rng);
        let second = c.optimistic().unwrap();
        assert_ne!(second, first);
        assert!(got.contains(&second) && !got.contains(&first));
        // Same seed, same inputs: same decisions.
        let mut again = Choker::new();
        let mut rng2 = StdRng::seed_from_u64(5);
        again.rechoke(t0, &peers, false, &mut rng2);
        assert_eq!(again.optimistic(), Some(first));
    }

    #[test]
    fn optimistic_replaced_when_it_leaves_or_becomes_regular() {
        let mut peers: Vec<_> = (1..=4).map(|k| peer(k, true, 1000 + k, 0)).collect();
        peers.extend((10..13).map(|k| peer(k, true, 0, 0)));
        let mut c = Choker::new();
        let mut rng = StdRng::seed_from_u64(6);
        let t0 = Instant::now();
        c.rechoke(t0, &peers, false, &mut rng);
        let first = c.optimistic().unwrap();
        // It disconnects.
        peers.retain(|p| p.key != first);
        let got = c.rechoke(t0 + Duration::from_secs(10), &peers, false, &mut rng);
        let second = c.optimistic().unwrap();
        assert_ne!(second, first);
        assert!(got.contains(&second));
        // It uploads fast enough to earn a regular slot: someone else becomes optimistic.
        for p in &mut peers {
            if p.key == second {
                p.download_rate = 1_000_000;
            }
        }
        let got = c.rechoke(t0 + Duration::from_secs(20), &peers, false, &mut rng);
        assert!(got.contains(&second));
        let third = c.optimistic().unwrap();
        // Peer 1 lost its regular slot to `second`, so it is a candidate now too.
        assert!(third != second && third != first);
        assert_eq!(got.len(), REGULAR_SLOTS + 1);
        // It loses interest: replaced as well (with one candidate left, that one).
        for p in &mut peers {
            if p.key == third {
                p.interested = false;
            }
        }
        c.rechoke(t0 + Duration::from_secs(25), &peers, false, &mut rng);
        assert_ne!(c.optimistic(), Some(third));
    }

    #[test]
    fn new_peers_are_favoured_in_the_optimistic_draw() {
        let t0 = Instant::now();
        let old: Vec<_> = (1..=4).map(|k| peer(k, true, 1000 + k, 0)).collect();
        let mut new_hits = 0;
        for seed in 0..200 {
            let mut c = Choker::new();
            let mut rng = StdRng::seed_from_u64(seed);
            let mut peers = old.clone();
            peers.extend((10..14).map(|k| peer(k, true, 0, 0)));
            c.rechoke(t0, &peers, false, &mut rng);
            // A minute later two newcomers join; the old four candidates are no longer new.
            peers.extend([peer(20, true, 0, 0), peer(21, true, 0, 0)]);
            c.rechoke(t0 + Duration::from_secs(60), &peers, false, &mut rng);
            new_hits += usize::from(c.optimistic().unwrap() >= 20);
        }
        // The outgoing peer is excluded, leaving three old and two new candidates: uniform
        // would pick a newcomer 2/5 of the time (80 of 200), weighted ×3 gives 6/9 (~133).
        assert!(new_hits > 110, "new peers drawn {new_hits}/200 times");
    }
}
