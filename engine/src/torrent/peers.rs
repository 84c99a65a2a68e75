//! Peer admission policy, sans-IO: which addresses are one host, how many connections a host may
//! hold, which idle peer makes room for a newcomer, and which address the bounded address book
//! forgets first. The torrent task owns the peers and the book and asks these functions; nothing
//! here reads the clock, spawns or touches a socket.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::peer::PeerKey;

/// Addresses remembered per torrent. A tracker answers at most ~200 at a time and peer exchange
/// will add more; libtorrent keeps 3,000 per torrent, we keep fewer because a session may hold
/// hundreds of torrents (1,000 × ~100 bytes each is ~100 KB per torrent).
pub(super) const MAX_KNOWN_PEERS: usize = 1000;

/// A peer must have been connected this long before it can be evicted: long enough to send its
/// bitfield and say whether it is interested (BEP 3 peers do so right after the handshake,
/// within milliseconds), short enough that silent sockets holding every slot cost an honest
/// newcomer seconds, not the 20 s a black-box run measured with the old value.
pub(super) const EVICT_MIN_AGE: Duration = Duration::from_secs(5);

/// Part of the per-torrent peer slots incoming connections may never take, so our own dials
/// (to addresses we chose) always find room: one in five, as a fraction of `max_peers`.
pub(crate) const DIAL_RESERVE_DIVISOR: usize = 5;

/// Who counts as one host for caps and bans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum HostKey {
    /// An IPv4 host (IPv4-mapped IPv6 addresses included): an incoming peer comes back from
    /// another port, so the address is the host.
    V4(std::net::Ipv4Addr),
    /// An IPv6 host by its /64: one subscriber usually gets a whole /64 and can pick any
    /// address in it, so a narrower key would not hold anyone.
    V6Net(u64),
    /// A loopback peer: many distinct peers legitimately share 127.0.0.1 (local setups,
    /// tests), so each address and port is its own host.
    Addr(SocketAddr),
}

/// Whether an address from a peer source is worth dialling: a port, and a unicast address
/// (PEX, trackers and the DHT can hand out `0.0.0.0`, broadcast or multicast addresses).
pub(crate) fn dialable(addr: SocketAddr) -> bool {
    let ip_ok = match addr.ip() {
        std::net::IpAddr::V4(v4) => {
            !v4.is_unspecified() && !v4.is_broadcast() && !v4.is_multicast()
        }
        std::net::IpAddr::V6(v6) => !v6.is_unspecified() && !v6.is_multicast(),
    };
    addr.port() != 0 && ip_ok
}

/// The host `addr` belongs to. `loopback_as_host` treats loopback like any other address
/// (one host per IP), which tests of the per-host caps ask for.
pub(crate) fn host_key(addr: SocketAddr, loopback_as_host: bool) -> HostKey {
    let ip = match addr.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    if ip.is_loopback() && !loopback_as_host {
        return HostKey::Addr(addr);
    }
    match ip {
        IpAddr::V4(v4) => HostKey::V4(v4),
        IpAddr::V6(v6) => HostKey::V6Net((u128::from(v6) >> 64) as u64),
    }
}

/// Bans always keep the loopback exception: banning every local peer for one bad one would
/// stop local setups and tests.
pub(super) fn ban_key(addr: SocketAddr) -> HostKey {
    host_key(addr, false)
}

/// Incoming connections may use at most this many of `max_peers` slots.
pub(super) fn max_incoming(max_peers: usize) -> usize {
    max_peers - max_peers / DIAL_RESERVE_DIVISOR
}

/// One connected peer as eviction sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct EvictCandidate {
    pub key: PeerKey,
    /// We want something it has.
    pub interesting: bool,
    /// It wants something we have.
    pub interested: bool,
    /// It dialled us.
    pub incoming: bool,
    /// How long it has been connected.
    pub age: Duration,
    /// How long since it last sent or received payload (or changed its interest).
    pub idle: Duration,
}

/// The peer to drop for a newcomer: one neither side wants anything from, connected long enough
/// to have said so, idle longest (ties by key, so the choice depends only on the inputs).
/// `incoming_only` limits the choice to incoming peers (when the incoming share is full).
pub(super) fn choose_eviction(
    candidates: &[EvictCandidate],
    incoming_only: bool,
) -> Option<PeerKey> {
    candidates
        .iter()
        .filter(|c| !c.interesting && !c.interested && c.age >= EVICT_MIN_AGE)
        .filter(|c| c.incoming || !incoming_only)
        .max_by_key(|c| (c.idle, std::cmp::Reverse(c.key)))
        .map(|c| c.key)
}

/// One address-book entry as eviction sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct BookEntry {
    pub addr: SocketAddr,
    /// Failed dials (or connections that ended at once) since it last worked.
    pub failures: u32,
    /// When it was added, as a sequence number (lower: older).
    pub added: u64,
    /// Connected, connecting or given by the user (`--peer`): never forgotten.
    pub pinned: bool,
}

/// The address to forget when the book is full: the one that failed most, then the oldest.
pub(super) fn choose_book_victim(entries: impl Iterator<Item = BookEntry>) -> Option<SocketAddr> {
    entries
        .filter(|e| !e.pinned)
        .max_by_key(|e| (e.failures, std::cmp::Reverse(e.added)))
        .map(|e| e.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_unicast_addresses_with_a_port_are_dialled() {
        for ok in [
            "10.0.0.1:6881",
            "127.0.0.1:1",
            "[2001:db8::1]:6881",
            "[::1]:80",
        ] {
            assert!(dialable(addr(ok)), "{ok}");
        }
        for bad in [
            "10.0.0.1:0",
            "0.0.0.0:6881",
            "255.255.255.255:80",
            "224.0.0.1:80",
            "239.192.152.143:6771",
            "[::]:6881",
            "[ff02::1]:80",
        ] {
            assert!(!dialable(addr(bad)), "{bad}");
        }
    }

    #[test]
    fn hosts_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(
            host_key(addr("10.0.0.1:1000"), false),
            host_key(addr("10.0.0.1:2000"), false)
        );
        assert_ne!(
            host_key(addr("10.0.0.1:1000"), false),
            host_key(addr("10.0.0.2:1000"), false)
        );
        assert_eq!(
            host_key(addr("[::ffff:10.0.0.1]:3000"), false),
            host_key(addr("10.0.0.1:1000"), false)
        );
        // Same /64, different interface ids: one host.
        assert_eq!(
            host_key(addr("[2001:db8:1:2::1]:1"), false),
            host_key(addr("[2001:db8:1:2:ffff::9]:2"), false)
        );
        // Another /64: another host.
        assert_ne!(
            host_key(addr("[2001:db8:1:2::1]:1"), false),
            host_key(addr("[2001:db8:1:3::1]:1"), false)
        );
    }

    #[test]
    fn loopback_peers_are_distinct_unless_asked() {
        let a = addr("127.0.0.1:1000");
        let b = addr("127.0.0.1:2000");
        assert_ne!(ban_key(a), ban_key(b));
        assert_ne!(host_key(a, false), host_key(b, false));
        assert_eq!(host_key(a, true), host_key(b, true));
        assert_ne!(ban_key(addr("[::1]:1")), ban_key(addr("[::1]:2")));
    }

    #[test]
    fn incoming_leaves_a_fifth_for_dials() {
        assert_eq!(max_incoming(50), 40);
        assert_eq!(max_incoming(4), 4);
        assert_eq!(max_incoming(5), 4);
    }

    fn cand(
        key: PeerKey,
        interesting: bool,
        interested: bool,
        age: u64,
        idle: u64,
    ) -> EvictCandidate {
        EvictCandidate {
            key,
            interesting,
            interested,
            incoming: key.is_multiple_of(2),
            age: Duration::from_secs(age),
            idle: Duration::from_secs(idle),
        }
    }

    #[test]
    fn eviction_takes_the_longest_idle_uninterested_peer() {
        let peers = [
            cand(1, true, false, 100, 90),  // we want its data
            cand(2, false, true, 100, 90),  // it wants ours
            cand(3, false, false, 100, 30), // idle, outgoing
            cand(4, false, false, 100, 50), // idle longest, incoming
            cand(6, false, false, 4, 4),    // too new to judge
        ];
        assert_eq!(choose_eviction(&peers, false), Some(4));
        assert_eq!(choose_eviction(&peers[..3], false), Some(3));
        // Only incoming ones when the incoming share is what is full.
        assert_eq!(choose_eviction(&peers[..3], true), None);
        assert_eq!(choose_eviction(&peers[..2], false), None);
        assert_eq!(choose_eviction(&peers[4..], false), None);
    }

    #[test]
    fn the_book_forgets_failed_then_oldest_never_pinned() {
        let e = |port: u16, failures: u32, added: u64, pinned: bool| BookEntry {
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            failures,
            added,
            pinned,
        };
        let book = [e(1, 0, 1, false), e(2, 3, 5, false), e(3, 9, 0, true)];
        assert_eq!(
            choose_book_victim(book.into_iter()).map(|a| a.port()),
            Some(2)
        );
        let book = [e(1, 0, 7, false), e(2, 0, 5, false), e(3, 0, 0, true)];
        assert_eq!(
            choose_book_victim(book.into_iter()).map(|a| a.port()),
            Some(2)
        );
        assert_eq!(choose_book_victim([e(3, 1, 0, true)].into_iter()), None);
    }
}
