//! Peer sources other than trackers (see `announce`): DHT searches today; the address book
//! (`peers`) takes what every source finds, and the phase dials new addresses the moment they
//! arrive. Scheduling is decided here without reading the clock (the caller passes `now`);
//! running a search is a spawned task that hands addresses back in batches.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dht::Dht;
use crate::lsd::Lsd;
use crate::types::InfoHash;

/// The session's discovery services (DHT, LSD), filled in once they have started in the
/// background: starting them may wait on name resolution, and nothing else should.
#[derive(Default)]
pub(crate) struct Discovery {
    pub dht: Option<Arc<Dht>>,
    pub lsd: Option<Arc<Lsd>>,
}

/// Shared between the session and every torrent allowed to use it (not private, BEP 27).
/// A torrent with nothing to do sleeps until its next announce; [`DiscoverySlot::started`]
/// wakes it when a service it could use starts.
#[derive(Clone)]
pub(crate) struct DiscoverySlot(
    Arc<std::sync::Mutex<Discovery>>,
    Arc<tokio::sync::watch::Sender<()>>,
);

impl Default for DiscoverySlot {
    fn default() -> Self {
        DiscoverySlot(
            Arc::default(),
            Arc::new(tokio::sync::watch::Sender::new(())),
        )
    }
}

impl DiscoverySlot {
    /// Changes (marked seen) each time a service starts.
    pub(crate) fn started(&self) -> tokio::sync::watch::Receiver<()> {
        let mut rx = self.1.subscribe();
        rx.mark_unchanged();
        rx
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Discovery> {
        // Plain fields; a panic elsewhere leaves them usable.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The DHT node, once it runs.
    pub(crate) fn dht(&self) -> Option<Arc<Dht>> {
        self.lock().dht.clone()
    }

    /// The LSD service, once it runs.
    pub(crate) fn lsd(&self) -> Option<Arc<Lsd>> {
        self.lock().lsd.clone()
    }

    pub(crate) fn set_dht(&self, dht: Arc<Dht>) {
        self.lock().dht = Some(dht);
        self.1.send_replace(());
    }

    pub(crate) fn set_lsd(&self, lsd: Arc<Lsd>) {
        self.lock().lsd = Some(lsd);
        self.1.send_replace(());
    }

    /// Take both out (at shutdown).
    pub(crate) fn take(&self) -> Discovery {
        std::mem::take(&mut *self.lock())
    }
}

/// Give the DHT the nodes a `.torrent` names (BEP 5 `nodes`), resolved off the torrent task.
/// The node pings each; those that answer join the routing table (see `dht::Dht::add_node`).
pub(super) fn learn_dht_nodes(discovery: &Option<DiscoverySlot>, nodes: &[(String, u16)]) {
    let Some(dht) = discovery.as_ref().and_then(|d| d.dht()) else {
        return;
    };
    if nodes.is_empty() {
        return;
    }
    let nodes = nodes.to_vec();
    // Held weakly: a slow resolver must not keep the node from saving its table at shutdown.
    let dht = Arc::downgrade(&dht);
    tokio::spawn(async move {
        for (host, port) in nodes {
            let lookup = tokio::net::lookup_host((host.as_str(), port));
            if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(10), lookup).await {
                let Some(dht) = dht.upgrade() else { return };
                for addr in addrs.take(2) {
                    dht.add_node(addr);
                }
            }
        }
    });
}

/// How often a torrent announces itself on the local network: BEP 14 allows once a minute;
/// every five, as libtorrent does, keeps a session of thousands of torrents from flooding the
/// LAN (a new peer on the LAN announces too, and we answer by dialling it).
pub(super) const LSD_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Announce `info_hash` on the local network; false if LSD does not run (yet).
pub(super) fn announce_lsd(discovery: &Option<DiscoverySlot>, info_hash: InfoHash) -> bool {
    let Some(lsd) = discovery.as_ref().and_then(|d| d.lsd()) else {
        return false;
    };
    tokio::spawn(async move { lsd.announce(&[info_hash]).await });
    true
}

/// Search again this soon after a search that found nobody (the DHT may still be
/// bootstrapping at start).
const DHT_RETRY_EMPTY: Duration = Duration::from_secs(30);
/// Search (and announce) this often while we still need data or metadata.
const DHT_INTERVAL_DOWNLOADING: Duration = Duration::from_secs(5 * 60);
/// Announce this often while seeding: BEP 5 stores forget peers after about 30 minutes.
const DHT_INTERVAL_SEEDING: Duration = Duration::from_secs(15 * 60);
/// Addresses handed over per batch (the first arrive as soon as the search finds them).
const BATCH: usize = 16;

/// When the next DHT search of one torrent runs.
#[derive(Debug)]
pub(super) struct DhtSchedule {
    next: Option<Instant>,
    running: bool,
    /// When the last search ended: an early search still waits [`DHT_RETRY_EMPTY`] after it.
    last_end: Option<Instant>,
}

impl DhtSchedule {
    /// The first search is due at `now`.
    pub(super) fn new(now: Instant) -> Self {
        DhtSchedule {
            next: Some(now),
            running: false,
            last_end: None,
        }
    }

    /// Start a search now if one is due (or `early`, e.g. starving) and none runs.
    pub(super) fn begin(&mut self, now: Instant, early: bool) -> bool {
        let early_ok = early
            && self
                .last_end
                .is_none_or(|t| now.duration_since(t) >= DHT_RETRY_EMPTY);
        if self.running || !(early_ok || self.next.is_some_and(|t| now >= t)) {
            return false;
        }
        self.running = true;
        self.next = None;
        true
    }

    /// When [`DhtSchedule::begin`] next says yes (`early`: it may start early), if no search
    /// runs.
    pub(super) fn next(&self, early: bool) -> Option<Instant> {
        if self.running {
            return None;
        }
        let retry = self.last_end.map(|t| t + DHT_RETRY_EMPTY).filter(|_| early);
        match (self.next, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A search ended having found `found` addresses.
    pub(super) fn finish(&mut self, now: Instant, found: usize, seeding: bool) {
        self.running = false;
        self.last_end = Some(now);
        let wait = if found == 0 {
            DHT_RETRY_EMPTY
        } else if seeding {
            DHT_INTERVAL_SEEDING
        } else {
            DHT_INTERVAL_DOWNLOADING
        };
        self.next = Some(now + wait);
    }
}

/// One DHT search for `info_hash`, announcing `port`: `on_peers` gets the addresses in
/// batches as they are found (it returns false when nobody listens any more), `on_done` the
/// number found when the search is over.
pub(super) fn spawn_dht_search(
    dht: Arc<Dht>,
    info_hash: InfoHash,
    port: u16,
    mut on_peers: impl FnMut(Vec<SocketAddr>) -> bool + Send + 'static,
    on_done: impl FnOnce(usize) + Send + 'static,
) {
    tokio::spawn(async move {
        let mut rx = dht.get_peers(info_hash, Some(port));
        drop(dht);
        let mut found = 0;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let more = rx.recv().await;
            if let Some(addr) = more {
                batch.push(addr);
                found += 1;
            }
            // Hand over what is here at once: the first addresses matter most.
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(addr) => {
                        batch.push(addr);
                        found += 1;
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() && !on_peers(std::mem::take(&mut batch)) {
                return;
            }
            if more.is_none() {
                break;
            }
        }
        on_done(found);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searches_are_spaced_by_what_they_found() {
        let t0 = Instant::now();
        let mut s = DhtSchedule::new(t0);
        assert!(s.begin(t0, false));
        assert!(!s.begin(t0, true), "one search at a time");
        s.finish(t0, 0, false);
        assert!(!s.begin(t0 + DHT_RETRY_EMPTY - Duration::from_secs(1), false));
        assert!(s.begin(t0 + DHT_RETRY_EMPTY, false));
        s.finish(t0, 12, false);
        assert!(!s.begin(t0 + DHT_INTERVAL_DOWNLOADING / 2, false));
        assert!(
            !s.begin(t0 + DHT_RETRY_EMPTY / 2, true),
            "never right after the last one"
        );
        assert!(
            s.begin(t0 + DHT_INTERVAL_DOWNLOADING / 2, true),
            "early when starving"
        );
        s.finish(t0, 12, true);
        assert!(!s.begin(t0 + DHT_INTERVAL_DOWNLOADING, false));
        assert!(s.begin(t0 + DHT_INTERVAL_SEEDING, false));
    }
}
