//! The address book at work: taking in addresses from every source, dialling them (at once,
//! within per-torrent, per-host and session limits), and making room for incoming peers.

#[allow(unused_imports)]
use super::*;

impl Torrent {
    pub(in crate::torrent) fn add_known(&mut self, addrs: Vec<SocketAddr>) {
        let own = self.p.listen_port;
        // More than the book holds would only evict each other.
        for addr in addrs.into_iter().take(MAX_KNOWN_PEERS) {
            if !peers::dialable(addr)
                || (addr.ip().is_loopback() && addr.port() == own)
                    && !self.p.extra_peers.contains(&addr)
            {
                continue;
            }
            // A tracker handing back an address we only knew from an incoming connection makes
            // it dialable.
            if let Some(k) = self.known.get_mut(&addr) {
                k.incoming_only = false;
                continue;
            }
            if self.known.len() >= MAX_KNOWN_PEERS {
                let extra = &self.p.extra_peers;
                let victim = peers::choose_book_victim(self.known.iter().map(|(a, k)| BookEntry {
                    addr: *a,
                    failures: k.failures,
                    added: k.added,
                    pinned: k.connected || k.connecting || extra.contains(a),
                }));
                match victim {
                    Some(v) => {
                        self.known.remove(&v);
                    }
                    None => continue,
                }
            }
            self.known_seq += 1;
            self.known.insert(
                addr,
                KnownPeer {
                    added: self.known_seq,
                    ..Default::default()
                },
            );
        }
    }

    /// Dial addresses the moment a peer source hands them over: waiting for the next tick
    /// cost up to a second before the first byte of every download.
    pub(super) fn dial_new_now(&mut self) {
        if self.active() {
            self.connect_more(now());
        }
    }

    /// Connections to `addr`'s host, counting handshakes in progress.
    pub(super) fn host_connections(&self, addr: SocketAddr) -> usize {
        let loopback = self.p.limits.loopback_as_host;
        let host = host_key(addr, loopback);
        self.peers
            .values()
            .filter(|p| host_key(p.addr, loopback) == host)
            .count()
            + self
                .known
                .iter()
                .filter(|(a, k)| k.connecting && host_key(**a, loopback) == host)
                .count()
    }

    /// Whether an incoming peer may take a slot, evicting an idle peer if that makes one.
    /// Incoming peers never take the slots kept for our dials.
    pub(super) fn make_room_for_incoming(&mut self, now: Instant) -> bool {
        // Handshakes in progress count too: the peer already has our handshake and may be
        // connected before this one is (a burst of newcomers must not slip past the share).
        let answering = self
            .known
            .values()
            .filter(|k| k.connecting && k.incoming_only)
            .count();
        let incoming = self.peers.values().filter(|p| !p.outgoing).count() + answering;
        let incoming_full = incoming >= peers::max_incoming(self.p.max_peers);
        if self.peers.len() + answering < self.p.max_peers && !incoming_full {
            return true;
        }
        let candidates: Vec<EvictCandidate> = self
            .peers
            .iter()
            .map(|(k, p)| EvictCandidate {
                key: *k,
                interesting: p.am_interested,
                interested: p.peer_interested,
                incoming: !p.outgoing,
                age: now.saturating_duration_since(p.connected_at),
                idle: now.saturating_duration_since(p.last_active),
            })
            .collect();
        match peers::choose_eviction(&candidates, incoming_full) {
            Some(key) => {
                self.remove_peer(key, "evicted (idle) for a new peer");
                true
            }
            None => false,
        }
    }

    pub(super) fn connect_more(&mut self, now: Instant) {
        let mut budget = self.p.max_peers.saturating_sub(
            self.peers.len() + self.known.values().filter(|k| k.connecting).count(),
        );
        if budget == 0 {
            return;
        }
        let seed = self.is_seed();
        let loopback = self.p.limits.loopback_as_host;
        let mut per_host: HashMap<HostKey, usize> = HashMap::new();
        for a in self.peers.values().map(|p| p.addr).chain(
            self.known
                .iter()
                .filter(|(_, k)| k.connecting)
                .map(|(a, _)| *a),
        ) {
            *per_host.entry(host_key(a, loopback)).or_default() += 1;
        }
        // Peers that dialled us and told us their listening port (BEP 10 `p`): that address
        // is already connected, however we learnt it (PEX, a tracker).
        let listening: HashSet<SocketAddr> = self
            .peers
            .values()
            .filter_map(|p| p.listen_addr())
            .collect();
        let candidates: Vec<SocketAddr> = self
            .known
            .iter()
            .filter(|(a, k)| {
                !k.connected
                    && !listening.contains(*a)
                    && !k.connecting
                    && !k.incoming_only
                    && !self.banned.contains(&ban_key(**a))
                    && k.next_try.is_none_or(|t| now >= t)
            })
            .map(|(a, _)| *a)
            .collect();
        for addr in candidates {
            if budget == 0 {
                break;
            }
            // Seeding, another seed has nothing for us and wants nothing from us.
            if seed && self.known.get(&addr).is_some_and(|k| k.seed) {
                continue;
            }
            let host = per_host.entry(host_key(addr, loopback)).or_default();
            if *host >= self.p.limits.max_per_host {
                continue;
            }
            *host += 1;
            let Ok(permit) = self.p.peer_slots.clone().try_acquire_owned() else {
                break;
            };
            let permit = PeerSlot::outgoing(permit);
            budget -= 1;
            let known = self.known.get_mut(&addr).expect("candidate from known");
            known.connecting = true;
            let transport = self.p.transport.clone();
            let dialer = self.p.dialer.clone();
            let ours = Handshake::new(self.metainfo.info_hash, self.p.peer_id);
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let msg = match dialer.dial(&*transport, addr, ours).await {
                    Ok(conn) => Internal::Connected {
                        conn: Box::new((conn, permit)),
                        outgoing: true,
                    },
                    Err(e) => Internal::ConnectFailed(Box::new((addr, e.to_string()))),
                };
                let _ = tx.send(msg);
            });
        }
    }
}
