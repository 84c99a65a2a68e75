//! Peer sources seen from the live phase: tracker announces (scheduled by `Announcer`), DHT
//! searches and the early announce when starving.

#[allow(unused_imports)]
use super::*;

impl Torrent {
    pub(super) fn announce_request(&self, event: Event) -> AnnounceRequest {
        let have = self.picker.have();
        // Pieces whose data vanished while seeding are left to download again, not claimed.
        let left: u64 = (0..self.layout.piece_count())
            .filter(|i| !have.get(*i as usize) || self.lost.get(*i as usize))
            .map(|i| self.layout.piece_len(i) as u64)
            .sum();
        AnnounceRequest {
            info_hash: self.metainfo.info_hash,
            peer_id: self.p.peer_id,
            port: self.p.listen_port,
            uploaded: self.uploaded,
            downloaded: self.downloaded,
            left,
            event,
            num_want: Some(if event == Event::Stopped { 0 } else { NUM_WANT }),
            key: self.announcer.key(),
        }
    }

    /// Few peers and nobody left to dial while downloading: ask the tracker early (BEP 3 lets
    /// us, within its `min interval`; we also wait at least [`STARVING_ANNOUNCE_GAP`]).
    pub(super) fn starving(&self, now: Instant) -> bool {
        self.announcer.early_allowed(now)
            && !self.is_seed()
            && self.peers.len() < STARVING_PEERS
            && !self
                .known
                .values()
                .any(|k| !k.connected && !k.connecting && !k.incoming_only)
    }

    /// Ask the DHT for peers (and announce us) when due.
    /// Ask every source that is due for peers: the trackers (`completed` once we are a seed),
    /// the DHT, LSD. Each tick, and at once when the torrent becomes active (its queue gate
    /// opens, the user resumes it): a torrent leaving the queue must not wait for its next
    /// tick to announce.
    pub(super) fn discover(&mut self, now: Instant) {
        let starving = self.starving(now);
        if self.is_seed() && !self.sent_completed {
            self.sent_completed = self.announce(Event::Completed);
        } else if self.announcer.due(now) || starving {
            self.announce(self.announcer.regular_event());
        }
        self.search_dht(now, starving);
        if self.next_lsd.is_none_or(|t| now >= t)
            && sources::announce_lsd(&self.p.discovery, self.metainfo.info_hash)
        {
            self.next_lsd = Some(now + sources::LSD_INTERVAL);
        }
    }

    pub(super) fn search_dht(&mut self, now: Instant, early: bool) {
        let Some(dht) = self.p.discovery.as_ref().and_then(|d| d.dht()) else {
            return;
        };
        if !self.dht_schedule.begin(now, early) {
            return;
        }
        let peers_tx = self.internal_tx.clone();
        let done_tx = self.internal_tx.clone();
        sources::spawn_dht_search(
            dht,
            self.metainfo.info_hash,
            self.p.listen_port,
            move |peers| peers_tx.send(Internal::DhtPeers(peers)).is_ok(),
            move |found| {
                let _ = done_tx.send(Internal::DhtDone(found));
            },
        );
    }

    /// Announce `event` now; false (nothing sent) while another announce is in flight.
    pub(super) fn announce(&mut self, event: Event) -> bool {
        let Some(tiers) = self.announcer.begin(now()) else {
            return false;
        };
        self.send_announce(tiers, event);
        true
    }

    /// Send `event` to `tiers` in a task; the result comes back as `Internal::AnnounceDone`.
    fn send_announce(&mut self, tiers: TrackerTiers, event: Event) {
        let req = self.announce_request(event);
        let tx = self.internal_tx.clone();
        announce::spawn_announce(
            self.p.tracker.clone(),
            tiers,
            req,
            move |tiers, event, result| {
                let _ = tx.send(Internal::AnnounceDone {
                    tiers: Box::new(tiers),
                    event,
                    result: Box::new(result),
                });
            },
        );
    }
}

impl Torrent {
    /// Tell trackers we stop for now (queued, a goal reached), if we told them we started.
    pub(super) fn announce_stopped_for_now(&mut self) {
        let Some(tiers) = self.announcer.stop_for_now(now()) else {
            return;
        };
        self.send_announce(tiers, Event::Stopped);
    }
}
