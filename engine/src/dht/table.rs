//! A routing table (BEP 5; one per address family, BEP 32): which nodes we know, how good they are, who is closest to an id.
//! Sans-IO: time comes in as `now`.
//!
//! It owns the buckets and the state of each node in them. It never sends anything: it says
//! which node should be pinged (a questionable one in a full bucket) and the node decides.
//!
//! Shape: bucket `i` holds the nodes sharing exactly `i` leading bits with our id, except the
//! last bucket, which holds every node sharing at least as many. Only the last bucket (the one
//! our own id falls in) splits when it is full, so the table holds at most
//! [`MAX_BUCKETS`] × [`K`] nodes. A node enters only after it answered one of our queries, so a
//! spoofed source address cannot fill the table.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::krpc::{Contact, Id, ID_LEN};

/// BEP 5: K = 8 nodes per bucket.
pub const K: usize = 8;

/// One bucket per bit of the id space (BEP 5 ids are 160 bits).
pub const MAX_BUCKETS: usize = ID_LEN * 8;

/// BEP 5: a node is good if it answered us, or answered once and queried us, within 15 minutes;
/// a bucket untouched that long is refreshed.
pub const GOOD_FOR: Duration = Duration::from_secs(15 * 60);

/// Queries a node may fail in a row before it is bad (BEP 5 says "multiple"; libtorrent and
/// mainline use a handful; 2 lets a full bucket recover quickly on a small network).
const FAILS_TO_BAD: u32 = 2;

/// How a node stands (BEP 5 "good", "questionable", "bad").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Answered (or answered before and queried us) within [`GOOD_FOR`].
    Good,
    /// Not heard from lately; worth a ping.
    Questionable,
    /// Failed [`FAILS_TO_BAD`] queries in a row; replaced by the next newcomer.
    Bad,
}

#[derive(Clone, Debug)]
struct Entry {
    contact: Contact,
    last_response: Instant,
    last_query: Option<Instant>,
    fails: u32,
}

impl Entry {
    fn standing(&self, now: Instant) -> Standing {
        if self.fails >= FAILS_TO_BAD {
            Standing::Bad
        } else if now.saturating_duration_since(self.last_response) < GOOD_FOR
            || self
                .last_query
                .is_some_and(|q| now.saturating_duration_since(q) < GOOD_FOR)
        {
            Standing::Good
        } else {
            Standing::Questionable
        }
    }
}

#[derive(Clone, Debug)]
struct Bucket {
    nodes: Vec<Entry>,
    last_changed: Instant,
}

/// What [`Table::heard_response`] did with a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// Already there; refreshed.
    Updated,
    /// Added (maybe replacing a bad node).
    Added,
    /// The bucket is full of nodes that are not bad; `ping` is the least recently seen
    /// questionable one, if any, so its fate can be settled and room made.
    Full {
        /// A questionable node of that bucket.
        ping: Option<SocketAddr>,
    },
    /// Our own id, or an id already held at another address: ignored.
    Refused,
}

/// The routing table.
#[derive(Debug)]
pub struct Table {
    own: Id,
    buckets: Vec<Bucket>,
}

impl Table {
    /// An empty table around our id `own`.
    pub fn new(own: Id, now: Instant) -> Table {
        Table {
            own,
            buckets: vec![Bucket {
                nodes: Vec::new(),
                last_changed: now,
            }],
        }
    }

    /// Our id.
    pub fn own_id(&self) -> Id {
        self.own
    }

    fn bucket_of(&self, id: &Id) -> usize {
        self.own.common_prefix(id).min(self.buckets.len() - 1)
    }

    fn find(&self, id: &Id) -> Option<(usize, usize)> {
        let b = self.bucket_of(id);
        self.buckets[b]
            .nodes
            .iter()
            .position(|e| e.contact.id == *id)
            .map(|i| (b, i))
    }

    /// Node `c` answered one of our queries: refresh it, or add it when its bucket has room (a
    /// bad node's place counts as room; the last bucket splits when full).
    pub fn heard_response(&mut self, c: Contact, now: Instant) -> Insert {
        if c.id == self.own {
            return Insert::Refused;
        }
        if let Some((b, i)) = self.find(&c.id) {
            let e = &mut self.buckets[b].nodes[i];
            if e.contact.addr != c.addr {
                // Another address claims a known id: keep the one we know until it goes bad.
                if e.fails < FAILS_TO_BAD {
                    return Insert::Refused;
                }
                e.contact.addr = c.addr;
            }
            e.last_response = now;
            e.fails = 0;
            self.buckets[b].last_changed = now;
            return Insert::Updated;
        }
        // One node per address: a node that restarted with a new id replaces its old entry.
        self.remove_addr(&c.addr);
        loop {
            let b = self.bucket_of(&c.id);
            let can_split = b == self.buckets.len() - 1 && self.buckets.len() < MAX_BUCKETS;
            let bucket = &mut self.buckets[b];
            let entry = Entry {
                contact: c,
                last_response: now,
                last_query: None,
                fails: 0,
            };
            if bucket.nodes.len() < K {
                bucket.nodes.push(entry);
                bucket.last_changed = now;
                return Insert::Added;
            }
            if let Some(bad) = bucket
                .nodes
                .iter()
                .position(|e| e.standing(now) == Standing::Bad)
            {
                bucket.nodes[bad] = entry;
                bucket.last_changed = now;
                return Insert::Added;
            }
            if can_split {
                self.split(now);
                continue;
            }
            let ping = bucket
                .nodes
                .iter()
                .filter(|e| e.standing(now) == Standing::Questionable)
                .min_by_key(|e| e.last_response)
                .map(|e| e.contact.addr);
            return Insert::Full { ping };
        }
    }

    /// Whether a node with `id` would be taken now (known, or its bucket has room or a bad
    /// node, or it could split): worth pinging a stranger who queried us.
    pub fn would_take(&self, id: &Id, now: Instant) -> bool {
        if *id == self.own {
            return false;
        }
        if self.find(id).is_some() {
            return false;
        }
        let b = self.bucket_of(id);
        let bucket = &self.buckets[b];
        bucket.nodes.len() < K
            || bucket
                .nodes
                .iter()
                .any(|e| e.standing(now) == Standing::Bad)
            || (b == self.buckets.len() - 1 && self.buckets.len() < MAX_BUCKETS)
    }

    fn split(&mut self, now: Instant) {
        let depth = self.buckets.len() - 1;
        let last = self
            .buckets
            .last_mut()
            .expect("the table has at least one bucket");
        let old = std::mem::take(&mut last.nodes);
        last.last_changed = now;
        let (stay, next): (Vec<Entry>, Vec<Entry>) = old
            .into_iter()
            .partition(|e| self.own.common_prefix(&e.contact.id) == depth);
        self.buckets[depth].nodes = stay;
        self.buckets.push(Bucket {
            nodes: next,
            last_changed: now,
        });
    }

    fn remove_addr(&mut self, addr: &SocketAddr) {
        for b in &mut self.buckets {
            b.nodes.retain(|e| e.contact.addr != *addr);
        }
    }

    /// Node `id` queried us: it stays good while it keeps doing so (if it answered before).
    pub fn heard_query(&mut self, id: &Id, addr: SocketAddr, now: Instant) {
        if let Some((b, i)) = self.find(id) {
            let e = &mut self.buckets[b].nodes[i];
            if e.contact.addr == addr {
                e.last_query = Some(now);
            }
        }
    }

    /// A query to `addr` timed out.
    pub fn failed(&mut self, addr: &SocketAddr) {
        for b in &mut self.buckets {
            for e in &mut b.nodes {
                if e.contact.addr == *addr {
                    e.fails = e.fails.saturating_add(1);
                }
            }
        }
    }

    /// Up to `n` nodes that are not bad, closest to `target` first.
    pub fn closest(&self, target: &Id, n: usize, now: Instant) -> Vec<Contact> {
        let mut all: Vec<Contact> = self
            .buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|e| e.standing(now) != Standing::Bad)
            .map(|e| e.contact)
            .collect();
        all.sort_by_key(|c| c.id.distance(target));
        all.truncate(n);
        all
    }

    /// Nodes that are not bad (good ones first), for the state file.
    pub fn live_nodes(&self, now: Instant) -> Vec<SocketAddr> {
        let mut v: Vec<&Entry> = self
            .buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|e| e.standing(now) != Standing::Bad)
            .collect();
        v.sort_by_key(|e| e.standing(now) != Standing::Good);
        v.into_iter().map(|e| e.contact.addr).collect()
    }

    /// Number of nodes that are not bad.
    pub fn len(&self, now: Instant) -> usize {
        self.buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|e| e.standing(now) != Standing::Bad)
            .count()
    }

    /// Number of buckets.
    pub fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    /// Questionable nodes, least recently heard first, at most `n`: to be pinged.
    pub fn questionable(&self, n: usize, now: Instant) -> Vec<SocketAddr> {
        let mut v: Vec<&Entry> = self
            .buckets
            .iter()
            .flat_map(|b| &b.nodes)
            .filter(|e| e.standing(now) == Standing::Questionable)
            .collect();
        v.sort_by_key(|e| e.last_response);
        v.into_iter().take(n).map(|e| e.contact.addr).collect()
    }

    /// The first bucket unchanged for [`GOOD_FOR`] (marked changed now, so it is returned once
    /// per period), and a random id in its range to look up (BEP 5 bucket refresh).
    pub fn stale_bucket(&mut self, now: Instant, random: [u8; ID_LEN]) -> Option<Id> {
        let count = self.buckets.len();
        let (i, bucket) = self
            .buckets
            .iter_mut()
            .enumerate()
            .find(|(_, b)| now.saturating_duration_since(b.last_changed) >= GOOD_FOR)?;
        bucket.last_changed = now;
        Some(id_in_bucket(&self.own, i, i == count - 1, random))
    }

    /// When the next bucket becomes stale.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.buckets.iter().map(|b| b.last_changed + GOOD_FOR).min()
    }
}

/// An id sharing exactly `depth` leading bits with `own` (at least `depth` for the last
/// bucket), the other bits from `random`.
fn id_in_bucket(own: &Id, depth: usize, last: bool, random: [u8; ID_LEN]) -> Id {
    let mut id = random;
    for bit in 0..depth.min(ID_LEN * 8) {
        let (byte, mask) = (bit / 8, 0x80u8 >> (bit % 8));
        id[byte] = (id[byte] & !mask) | (own.0[byte] & mask);
    }
    if !last && depth < ID_LEN * 8 {
        let (byte, mask) = (depth / 8, 0x80u8 >> (depth % 8));
        id[byte] = (id[byte] & !mask) | (!own.0[byte] & mask);
    }
    Id(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn contact(first: u8, n: u32) -> Contact {
        let mut id = [0u8; ID_LEN];
        id[0] = first;
        id[16..].copy_from_slice(&n.to_be_bytes());
        Contact {
            id: Id(id),
            addr: SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + n), 6881)),
        }
    }

    #[test]
    fn buckets_split_on_our_side_and_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Table::new(Id([0; ID_LEN]), t0);
        // Far half (first bit 1): one bucket of K, the rest refused once full.
        for n in 0..20 {
            t.heard_response(contact(0x80, n), t0);
        }
        // Near half: these split the table further.
        for n in 100..120 {
            t.heard_response(contact(0x01, n), t0);
        }
        let far = t.closest(&Id([0xff; ID_LEN]), 100, t0);
        assert_eq!(far.iter().filter(|c| c.id.0[0] == 0x80).count(), K);
        assert!(t.bucket_count() > 1);
        assert!(t.len(t0) <= t.bucket_count() * K);
        let r = t.heard_response(contact(0x80, 50), t0);
        assert_eq!(r, Insert::Full { ping: None }, "all good: nobody to ping");
    }

    #[test]
    fn standing_follows_bep5_and_bad_nodes_are_replaced() {
        let t0 = Instant::now();
        let mut t = Table::new(Id([0; ID_LEN]), t0);
        for n in 0..K as u32 {
            assert_eq!(t.heard_response(contact(0x80, n), t0), Insert::Added);
        }
        let later = t0 + GOOD_FOR;
        let r = t.heard_response(contact(0x80, 99), later);
        let Insert::Full { ping: Some(p) } = r else {
            panic!("a questionable node should be named: {r:?}")
        };
        t.failed(&p);
        assert!(
            !t.would_take(&contact(0x80, 99).id, later),
            "one failure is not bad"
        );
        t.failed(&p);
        assert!(t.would_take(&contact(0x80, 99).id, later));
        assert_eq!(t.heard_response(contact(0x80, 99), later), Insert::Added);
        assert!(!t.live_nodes(later).contains(&p));
        // A node that queries us after answering once is good again.
        let q = contact(0x80, 1);
        t.heard_query(&q.id, q.addr, later);
        assert_eq!(t.questionable(100, later).len(), K - 2);
    }

    #[test]
    fn own_id_and_hijacked_ids_are_refused() {
        let t0 = Instant::now();
        let own = Id([7; ID_LEN]);
        let mut t = Table::new(own, t0);
        let me = Contact {
            id: own,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
        };
        assert_eq!(t.heard_response(me, t0), Insert::Refused);
        let a = contact(0x80, 1);
        t.heard_response(a, t0);
        let thief = Contact {
            id: a.id,
            addr: SocketAddr::from((Ipv4Addr::new(10, 9, 9, 9), 1)),
        };
        assert_eq!(t.heard_response(thief, t0), Insert::Refused);
        assert_eq!(t.live_nodes(t0), vec![a.addr]);
    }

    #[test]
    fn refresh_targets_fall_in_their_bucket() {
        let own = Id([0b1010_1010; ID_LEN]);
        for depth in [0, 1, 7, 8, 20] {
            let id = id_in_bucket(&own, depth, false, [0x55; ID_LEN]);
            assert_eq!(own.common_prefix(&id), depth);
        }
        let id = id_in_bucket(&own, 5, true, [0x00; ID_LEN]);
        assert!(own.common_prefix(&id) >= 5);
    }
}
