//! The node driven by scripted datagrams and a manual clock: no sockets, no sleeps.

use super::*;
use crate::dht::krpc::Message;
use std::net::Ipv4Addr;

fn config() -> NodeConfig {
    NodeConfig {
        max_peers_per_search: 100,
        ipv6: true,
    }
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, last), port))
}

/// Everything the node queued, decoded.
fn sent(n: &mut Node) -> Vec<(SocketAddr, Message)> {
    let mut out = Vec::new();
    while let Some((to, bytes)) = n.poll_transmit() {
        out.push((to, krpc::decode(&bytes).expect("the node sends valid KRPC")));
    }
    out
}

fn ask(n: &mut Node, from: SocketAddr, tid: &[u8], q: Query, now: Instant) -> Message {
    let id = Id([0x99; ID_LEN]);
    n.handle_datagram(from, &krpc::encode_query(tid, &id, &q, true), now);
    let mut replies: Vec<Message> = sent(n)
        .into_iter()
        .filter(|(to, _)| *to == from)
        .map(|(_, m)| m)
        .collect();
    assert_eq!(replies.len(), 1, "one answer to {q:?}: {replies:?}");
    replies.remove(0)
}

fn response(m: Message) -> Response {
    match m.body {
        Body::Response(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

fn error_code(m: Message) -> i64 {
    match m.body {
        Body::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

const HASH: Id = Id([0x42; ID_LEN]);

#[test]
fn answers_each_query_kind_echoing_the_tid() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 1);
    let from = addr(1, 5000);
    let ping = ask(&mut n, from, b"\x01\x02", Query::Ping, t0);
    assert_eq!(ping.tid, b"\x01\x02");
    assert_eq!(response(ping).id, Some(n.id()));

    let found = ask(&mut n, from, b"t", Query::FindNode { target: HASH }, t0);
    assert_eq!(found.tid, b"t");
    assert!(
        response(found).nodes.is_empty(),
        "an empty table has nobody"
    );

    let got = response(ask(
        &mut n,
        from,
        b"abcd",
        Query::GetPeers { info_hash: HASH },
        t0,
    ));
    let token = got.token.expect("get_peers gives a token");
    assert!(got.values.is_empty());

    let ann = Query::AnnouncePeer {
        info_hash: HASH,
        port: 6881,
        implied_port: false,
        token: token.clone(),
    };
    assert_eq!(response(ask(&mut n, from, b"xy", ann, t0)).id, Some(n.id()));
    let got = response(ask(
        &mut n,
        from,
        b"z",
        Query::GetPeers { info_hash: HASH },
        t0,
    ));
    assert_eq!(
        got.values,
        vec![SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 6881))]
    );

    let unknown = ask(&mut n, from, b"u", Query::Unknown(b"get".to_vec()), t0);
    assert_eq!(error_code(unknown), krpc::code::METHOD_UNKNOWN);

    // A malformed query with a usable tid is told so.
    n.handle_datagram(from, b"d1:ad2:id3:abce1:q4:ping1:t2:mm1:y1:qe", t0);
    let replies = sent(&mut n);
    assert_eq!(replies.len(), 1);
    assert_eq!(replies[0].1.tid, b"mm");
    assert_eq!(error_code(replies[0].1.clone()), krpc::code::PROTOCOL);
}

#[test]
fn tokens_are_bound_to_the_ip_and_expire_after_two_rotations() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 2);
    let alice = addr(1, 5000);
    let token = response(ask(
        &mut n,
        alice,
        b"a",
        Query::GetPeers { info_hash: HASH },
        t0,
    ))
    .token
    .expect("token");
    let announce = |port| Query::AnnouncePeer {
        info_hash: HASH,
        port,
        implied_port: false,
        token: token.clone(),
    };
    // Another IP cannot use Alice's token.
    let mallory = ask(&mut n, addr(2, 5000), b"m", announce(1), t0);
    assert_eq!(error_code(mallory), krpc::code::PROTOCOL);
    // Alice's port may change; the token is bound to the IP only.
    let moved = ask(&mut n, addr(1, 5001), b"b", announce(2), t0);
    assert!(matches!(moved.body, Body::Response(_)));

    // One rotation: still accepted.
    let t1 = t0 + SECRET_ROTATION;
    n.handle_timeout(t1);
    assert!(matches!(
        ask(&mut n, alice, b"c", announce(3), t1).body,
        Body::Response(_)
    ));
    // Two rotations: refused.
    let t2 = t1 + SECRET_ROTATION;
    n.handle_timeout(t2);
    assert_eq!(
        error_code(ask(&mut n, alice, b"d", announce(4), t2)),
        krpc::code::PROTOCOL
    );
}

#[test]
fn the_peer_store_is_capped_and_forgets_after_thirty_minutes() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 3);
    let announce = |n: &mut Node, ip: Ipv4Addr, hash: Id, implied: bool, now| {
        let from = SocketAddr::from((ip, 4000));
        let token = n.token(&n.secret, &from.ip());
        let q = Query::AnnouncePeer {
            info_hash: hash,
            port: 6881,
            implied_port: implied,
            token,
        };
        ask(n, from, b"t", q, now)
    };
    let ip = |i: u32| Ipv4Addr::from(0x0b00_0000 + i);
    // implied_port: the source port counts.
    announce(&mut n, ip(0), HASH, true, t0);
    assert_eq!(
        n.store.get(&HASH, 10, false, t0),
        vec![SocketAddr::from((ip(0), 4000))]
    );
    for i in 1..(MAX_PEERS_PER_HASH as u32 + 20) {
        announce(&mut n, ip(i), HASH, false, t0);
    }
    assert_eq!(n.store.by_hash[&HASH].len(), MAX_PEERS_PER_HASH);
    let got = response(ask(
        &mut n,
        addr(9, 1),
        b"g",
        Query::GetPeers { info_hash: HASH },
        t0,
    ));
    assert_eq!(got.values.len(), krpc::MAX_VALUES_SENT);

    // Distinct info-hashes are capped too: the one past the cap is refused with an error.
    for h in 0..MAX_HASHES as u32 {
        let mut id = [0u8; ID_LEN];
        id[..4].copy_from_slice(&h.to_be_bytes());
        if Id(id) == HASH {
            continue;
        }
        announce(&mut n, ip(1000 + h), Id(id), false, t0);
    }
    assert_eq!(n.store.by_hash.len(), MAX_HASHES);
    let refused = announce(&mut n, ip(9999), Id([0xee; ID_LEN]), false, t0);
    assert_eq!(error_code(refused), krpc::code::GENERIC);
    assert!(n.store.total <= MAX_STORED_PEERS);

    // 30 minutes later everything is gone.
    let later = t0 + PEER_TTL;
    n.handle_timeout(later);
    assert!(n.store.get(&HASH, 10, false, later).is_empty());
    assert_eq!(n.store.total, 0);
    assert!(n.store.by_hash.is_empty());
}

#[test]
fn answers_are_rate_limited_per_source() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 4);
    let ping = krpc::encode_query(b"p", &Id([1; ID_LEN]), &Query::Ping, true);
    for _ in 0..150 {
        n.handle_datagram(addr(1, 1), &ping, t0);
    }
    assert_eq!(sent(&mut n).len(), ANSWER_BURST as usize);
    // Another source has its own budget.
    n.handle_datagram(addr(2, 1), &ping, t0);
    assert_eq!(sent(&mut n).len(), 1);
    // One second refills ANSWER_RATE answers.
    let t1 = t0 + Duration::from_secs(1);
    for _ in 0..50 {
        n.handle_datagram(addr(1, 1), &ping, t1);
    }
    assert_eq!(sent(&mut n).len(), ANSWER_RATE as usize);
}

#[test]
fn a_querier_joins_the_table_only_after_answering_a_ping() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 5);
    let stranger = addr(7, 7000);
    let sid = Id([0x77; ID_LEN]);
    n.handle_datagram(
        stranger,
        &krpc::encode_query(b"q1", &sid, &Query::Ping, false),
        t0,
    );
    let out = sent(&mut n);
    assert_eq!(out.len(), 2, "an answer and a ping: {out:?}");
    let (_, ping) = out
        .into_iter()
        .find(|(_, m)| matches!(m.body, Body::Query { .. }))
        .expect("a ping to the stranger");
    assert_eq!(n.node_count(t0), 0, "not before it answered");
    // A reply from another address with the right tid is ignored.
    let reply = krpc::encode_response(&ping.tid, &sid, &Response::default());
    n.handle_datagram(addr(8, 7000), &reply, t0);
    assert_eq!(n.node_count(t0), 0);
    n.handle_datagram(stranger, &reply, t0);
    assert_eq!(n.live_nodes(t0), vec![stranger]);

    // A read-only querier (BEP 43) is answered but never pinged.
    let ro = krpc::encode_query(b"q2", &Id([0x78; ID_LEN]), &Query::Ping, true);
    n.handle_datagram(addr(9, 1), &ro, t0);
    assert_eq!(sent(&mut n).len(), 1);
}

/// A scripted network of `count` remote nodes: each knows all others and answers `get_peers`
/// with the 8 closest to the target; the holder (closest to HASH) also returns a peer. Nodes in
/// `dead` never answer.
struct Net {
    nodes: Vec<(Id, SocketAddr)>,
    dead: HashSet<SocketAddr>,
    peer: SocketAddr,
    announced: Vec<(SocketAddr, u16, Vec<u8>)>,
    queries: usize,
}

impl Net {
    fn new(count: u32) -> Net {
        let mut rng = StdRng::seed_from_u64(77);
        let nodes: Vec<(Id, SocketAddr)> = (0..count)
            .map(|i| {
                (
                    Id(rng.gen()),
                    SocketAddr::from((Ipv4Addr::from(0x0c00_0001 + i), 6881)),
                )
            })
            .collect();
        Net {
            nodes,
            dead: HashSet::new(),
            peer: "10.9.9.9:51413".parse().expect("literal"),
            announced: Vec::new(),
            queries: 0,
        }
    }

    fn closest(&self, target: &Id) -> Vec<(Id, SocketAddr)> {
        let mut v = self.nodes.clone();
        v.sort_by_key(|(id, _)| id.distance(target));
        v
    }

    fn token(addr: &SocketAddr) -> Vec<u8> {
        format!("tok{}", addr.ip()).into_bytes()
    }

    /// The remote node at `to` answers `m` (or `None` if dead or unknown).
    fn answer(&mut self, to: SocketAddr, m: &Message) -> Option<Vec<u8>> {
        self.queries += 1;
        let me = self.nodes.iter().find(|(_, a)| *a == to)?.0;
        if self.dead.contains(&to) {
            return None;
        }
        let Body::Query { query, .. } = &m.body else {
            return None;
        };
        let nodes_for = |t: &Id| -> Vec<Contact> {
            self.closest(t)
                .into_iter()
                .filter(|(id, _)| *id != me)
                .take(K)
                .map(|(id, addr)| Contact { id, addr })
                .collect()
        };
        let r = match query.clone() {
            Query::FindNode { target } => Response {
                nodes: nodes_for(&target),
                ..Response::default()
            },
            Query::GetPeers { info_hash } => {
                let holder = self.closest(&info_hash)[0].1;
                Response {
                    nodes: nodes_for(&info_hash),
                    values: if to == holder {
                        vec![self.peer]
                    } else {
                        Vec::new()
                    },
                    token: Some(Net::token(&to)),
                    id: None,
                }
            }
            Query::AnnouncePeer { port, token, .. } => {
                self.announced.push((to, port, token));
                Response::default()
            }
            _ => Response::default(),
        };
        Some(krpc::encode_response(&m.tid, &me, &r))
    }
}

/// Runs the node against the network until `until`, the clock jumping to each deadline; returns
/// the events and when the last one came.
fn run(n: &mut Node, net: &mut Net, mut now: Instant, until: Instant) -> (Vec<Event>, Instant) {
    let mut events = Vec::new();
    let mut last = now;
    for _ in 0..10_000 {
        let out = sent(n);
        let quiet = out.is_empty();
        for (to, m) in out {
            if let Some(reply) = net.answer(to, &m) {
                n.handle_datagram(to, &reply, now);
            }
        }
        while let Some(e) = n.poll_event() {
            events.push(e);
            last = now;
        }
        if quiet {
            if now >= until {
                break;
            }
            now = n.poll_timeout().min(until).max(now);
            n.handle_timeout(now);
        }
    }
    (events, last)
}

#[test]
fn a_lookup_over_a_scripted_network_ends_and_announces_to_the_closest() {
    let t0 = Instant::now();
    let mut net = Net::new(60);
    // Two of the ten closest never answer: the lookup must go around them.
    let order = net.closest(&HASH);
    net.dead.insert(order[1].1);
    net.dead.insert(order[4].1);
    let mut n = Node::new(config(), t0, 6);
    // Bootstrap through one far node, then search.
    n.bootstrap(vec![order[59].1], t0);
    let (events, t1) = run(&mut n, &mut net, t0, t0 + Duration::from_secs(30));
    assert!(
        // Everyone returns (about) the same closest nodes, two of them dead: a few are enough.
        matches!(events.as_slice(), [Event::Bootstrapped { nodes }] if *nodes >= K / 2),
        "{events:?}"
    );
    let before = net.queries;
    let lookup = n.get_peers(HASH, Some(6000), false, t1);
    let (events, t2) = run(&mut n, &mut net, t1, t1 + Duration::from_secs(30));
    assert_eq!(
        events,
        vec![
            Event::Peers {
                lookup,
                peers: vec![net.peer]
            },
            Event::Done { lookup, found: 1 }
        ]
    );
    // Announced on our port, with each node's own token, to K live nodes, among them every
    // live node of the K closest (what lies beyond depends on what the responders knew).
    let to: HashSet<SocketAddr> = net.announced.iter().map(|(a, _, _)| *a).collect();
    assert_eq!(to.len(), K, "{to:?}");
    assert_eq!(net.announced.len(), K, "one announce per node");
    assert!(to.iter().all(|a| !net.dead.contains(a)));
    for (_, a) in order.iter().take(K).filter(|(_, a)| !net.dead.contains(a)) {
        assert!(to.contains(a), "{a} is among the closest and alive");
    }
    assert!(net
        .announced
        .iter()
        .all(|(a, port, token)| *port == 6000 && *token == Net::token(a)));
    assert!(
        net.queries - before <= MAX_LOOKUP_QUERIES,
        "bounded queries"
    );
    assert!(
        t2 < t1 + LOOKUP_DEADLINE,
        "ended by itself, not by the deadline"
    );
    assert_eq!(n.lookup_count(), 0);
    assert!(n.node_count(t2) <= 60);
}

#[test]
fn a_lookup_with_nobody_answering_ends_empty() {
    let t0 = Instant::now();
    let mut net = Net::new(4);
    net.dead = net.nodes.iter().map(|(_, a)| *a).collect();
    let mut n = Node::new(config(), t0, 7);
    n.bootstrap(net.nodes.iter().map(|(_, a)| *a).collect(), t0);
    let lookup = n.get_peers(HASH, Some(6000), false, t0);
    let (events, t1) = run(&mut n, &mut net, t0, t0 + Duration::from_secs(10));
    assert!(
        events.contains(&Event::Bootstrapped { nodes: 0 }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Done { lookup, found: 0 }),
        "{events:?}"
    );
    assert!(
        t1 <= t0 + QUERY_TIMEOUT * 3,
        "ended after the timeouts: {:?}",
        t1 - t0
    );
    assert!(net.announced.is_empty());
}

#[test]
fn cancelled_and_excess_lookups_are_bounded() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 8);
    n.bootstrap(vec!["10.7.7.7:1".parse().expect("literal")], t0);
    let ids: Vec<LookupId> = (0..MAX_LOOKUPS as u8 + 5)
        .map(|i| n.get_peers(Id([i; ID_LEN]), None, false, t0))
        .collect();
    assert_eq!(n.lookups.len(), MAX_LOOKUPS);
    // The bootstrap lookup counts too.
    assert_eq!(n.lookup_count(), MAX_LOOKUPS + 6);
    for id in &ids {
        n.cancel(*id);
    }
    n.handle_timeout(t0 + QUERY_TIMEOUT);
    let mut events = Vec::new();
    while let Some(e) = n.poll_event() {
        events.push(e);
    }
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, Event::Done { .. } | Event::Peers { .. })),
        "no events for cancelled lookups: {events:?}"
    );
    assert!(n.pending.len() <= MAX_IN_FLIGHT);
}

#[test]
fn quiet_nodes_are_pinged_and_stale_buckets_refreshed() {
    let t0 = Instant::now();
    let mut net = Net::new(30);
    let mut n = Node::new(config(), t0, 9);
    n.bootstrap(vec![net.nodes[0].1], t0);
    let (_, t1) = run(&mut n, &mut net, t0, t0 + Duration::from_secs(10));
    let known = n.node_count(t1);
    assert!(known > 0);
    // Nothing due yet: a maintenance round sends nothing while every node is good.
    let soon = t1 + MAINTENANCE;
    n.handle_timeout(soon);
    assert!(sent(&mut n).is_empty());
    // Fifteen quiet minutes later: pings for questionable nodes, a find_node to refresh.
    let later = t1 + crate::dht::table::GOOD_FOR + MAINTENANCE;
    n.handle_timeout(later);
    let out = sent(&mut n);
    let pings = out
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.body,
                Body::Query {
                    query: Query::Ping,
                    ..
                }
            )
        })
        .count();
    let refresh = out
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.body,
                Body::Query {
                    query: Query::FindNode { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(pings, PINGS_PER_ROUND.min(known), "{out:?}");
    assert!(refresh >= 1, "{out:?}");
}

#[test]
fn ipv6_queriers_get_nodes6_and_want_picks_the_families() {
    let t0 = Instant::now();
    let mut n = Node::new(config(), t0, 10);
    // One node of each family in the tables (they answered a ping).
    let four: SocketAddr = "10.0.0.4:4000".parse().expect("literal");
    let six: SocketAddr = "[2001:db8::6]:6000".parse().expect("literal");
    for (addr, b) in [(four, 0x04u8), (six, 0x06)] {
        n.add_node(addr, t0);
        let (_, ping) = sent(&mut n).pop().expect("a ping");
        let reply = krpc::encode_response(&ping.tid, &Id([b; ID_LEN]), &Response::default());
        n.handle_datagram(addr, &reply, t0);
    }
    assert_eq!(n.node_count(t0), 2);
    let family = |r: &Response| -> Vec<bool> { r.nodes.iter().map(|c| c.addr.is_ipv6()).collect() };
    let from6: SocketAddr = "[2001:db8::9]:1".parse().expect("literal");
    let r = response(ask(
        &mut n,
        from6,
        b"a",
        Query::FindNode { target: HASH },
        t0,
    ));
    assert_eq!(family(&r), vec![true], "an IPv6 querier gets IPv6 nodes");
    let r = response(ask(
        &mut n,
        addr(1, 1),
        b"b",
        Query::FindNode { target: HASH },
        t0,
    ));
    assert_eq!(family(&r), vec![false]);
    // BEP 32 `want`: both families.
    let mut q = b"d1:ad2:id20:".to_vec();
    q.extend_from_slice(&[0x99; ID_LEN]);
    q.extend_from_slice(b"6:target20:");
    q.extend_from_slice(&HASH.0);
    q.extend_from_slice(b"4:wantl2:n42:n6ee1:q9:find_node1:t2:ww1:y1:qe");
    n.handle_datagram(addr(1, 1), &q, t0);
    let out = sent(&mut n);
    let Body::Response(r) = &out[0].1.body else {
        panic!("a response: {out:?}")
    };
    assert_eq!(family(r), vec![false, true]);

    // Values are given per family: an IPv6 announce is not handed to an IPv4 querier.
    let token = n.token(&n.secret, &from6.ip());
    let ann = Query::AnnouncePeer {
        info_hash: HASH,
        port: 7000,
        implied_port: false,
        token,
    };
    assert!(matches!(
        ask(&mut n, from6, b"c", ann, t0).body,
        Body::Response(_)
    ));
    let got4 = response(ask(
        &mut n,
        addr(1, 1),
        b"d",
        Query::GetPeers { info_hash: HASH },
        t0,
    ));
    assert!(got4.values.is_empty());
    let got6 = response(ask(
        &mut n,
        from6,
        b"e",
        Query::GetPeers { info_hash: HASH },
        t0,
    ));
    assert_eq!(
        got6.values,
        vec!["[2001:db8::9]:7000".parse::<SocketAddr>().expect("literal")]
    );
}
