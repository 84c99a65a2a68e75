//! Loopback-only tests: every node binds a distinct 127.0.0.x address and is bootstrapped
//! explicitly, never from the public routers.

use super::*;
use std::net::{Ipv4Addr, UdpSocket};

fn on(n: u8) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, n), 0))
}

async fn node(n: u8, bootstrap: Bootstrap, state_file: Option<PathBuf>) -> Dht {
    let mut cfg = DhtConfig::new(on(n));
    cfg.bootstrap = bootstrap;
    cfg.state_file = state_file;
    Dht::start(cfg)
        .await
        .expect("a DHT node starts on loopback")
}

fn from(dht: &Dht) -> Bootstrap {
    Bootstrap::Nodes(vec![dht.local_addr().to_string()])
}

async fn collect(mut rx: mpsc::Receiver<SocketAddr>) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    while let Some(a) = rx.recv().await {
        out.push(a);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_announced_through_one_node_is_found_from_another() {
    let b = node(2, Bootstrap::Nobody, None).await;
    let a = node(3, from(&b), None).await;
    let c = node(4, from(&b), None).await;
    assert!(a.bootstrapped().await, "A joins through B");
    assert!(c.bootstrapped().await, "C joins through B");

    let hash = InfoHash([0x5a; 20]);
    let before = collect(a.get_peers(hash, Some(6000))).await;
    assert!(before.is_empty(), "nobody announced yet: {before:?}");

    let found = collect(c.get_peers(hash, None)).await;
    assert_eq!(found, vec![SocketAddr::from(([127, 0, 0, 3], 6000))]);

    for n in [a, b, c] {
        n.shutdown().await.expect("no state file to write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_yields_distinct_addresses_up_to_its_limit() {
    let b = node(11, Bootstrap::Nobody, None).await;
    let hash = InfoHash([0x77; 20]);
    let mut announcers = Vec::new();
    for (n, port) in [(12, 6001), (13, 6002), (14, 6003)] {
        let a = node(n, from(&b), None).await;
        assert!(a.bootstrapped().await);
        collect(a.get_peers(hash, Some(port))).await;
        announcers.push(a);
    }

    let c = node(15, from(&b), None).await;
    assert!(c.bootstrapped().await);
    let all = collect(c.get_peers(hash, None)).await;
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "duplicates in {all:?}");
    assert_eq!(distinct.len(), 3, "{all:?}");

    let mut cfg = DhtConfig::new(on(16));
    cfg.bootstrap = from(&b);
    cfg.max_peers_per_search = 2;
    let limited = Dht::start(cfg).await.expect("start");
    assert!(limited.bootstrapped().await);
    let some = collect(limited.get_peers(hash, None)).await;
    assert_eq!(some.len(), 2, "{some:?}");
    assert!(some.iter().all(|a| all.contains(a)));

    for n in announcers.into_iter().chain([b, c, limited]) {
        n.shutdown().await.expect("no state file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_bootstraps_from_the_saved_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let state = dir.path().join("state").join("dht.nodes");
    let b = node(5, Bootstrap::Nobody, None).await;
    let a = node(6, from(&b), Some(state.clone())).await;
    assert!(a.bootstrapped().await);
    // A node added at run time is saved once it answered.
    let extra = node(9, Bootstrap::Nobody, None).await;
    a.add_node(extra.local_addr());
    for _ in 0..100 {
        if a.node_count().await >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await.expect("state file written");

    let text = std::fs::read_to_string(&state).expect("state file exists");
    let saved = parse_state(&text);
    let b_addr = b.local_addr();
    assert!(saved.contains(&b_addr), "{saved:?}");
    let extra_addr = extra.local_addr();
    assert!(saved.contains(&extra_addr), "{saved:?}");
    extra.shutdown().await.expect("no state file");
    let leftovers: Vec<_> = std::fs::read_dir(state.parent().expect("has a parent"))
        .expect("dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "dht.nodes")
        .collect();
    assert!(leftovers.is_empty(), "temp file left: {leftovers:?}");

    // No bootstrap given: only the saved nodes can bring it back into the network.
    let again = node(6, Bootstrap::Nobody, Some(state)).await;
    assert!(again.bootstrapped().await);
    assert!(again.node_count().await >= 1);
    again.shutdown().await.expect("state file written");
    b.shutdown().await.expect("no state file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_port() {
    let a = node(7, Bootstrap::Nobody, None).await;
    let addr = a.local_addr();
    assert!(UdpSocket::bind(addr).is_err(), "the node holds {addr}");
    a.shutdown().await.expect("no state file");
    UdpSocket::bind(addr).expect("the port is free once shutdown returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_falls_back_to_an_ephemeral_one() {
    let taken = UdpSocket::bind(on(8)).expect("bind");
    let want = taken.local_addr().expect("addr");
    let mut cfg = DhtConfig::new(want);
    cfg.bootstrap = Bootstrap::Nobody;
    let a = Dht::start(cfg).await.expect("starts on another port");
    assert_eq!(a.local_addr().ip(), want.ip());
    assert_ne!(a.local_addr().port(), want.port());
    a.shutdown().await.expect("no state file");
}

#[tokio::test]
async fn an_ipv6_main_address_is_refused() {
    // IPv6 goes in `listen6`; the main socket is IPv4.
    let cfg = DhtConfig::new("[::1]:0".parse().expect("literal"));
    assert!(matches!(
        Dht::start(cfg).await,
        Err(DhtError::Ipv6NotSupported(_))
    ));
}

#[test]
fn state_text_round_trips_and_skips_bad_lines() {
    let nodes: Vec<SocketAddr> = vec![
        "[::1]:5".parse().expect("literal"),
        "10.0.0.1:6881".parse().expect("literal"),
        "127.0.0.2:4000".parse().expect("literal"),
    ];
    assert_eq!(parse_state(&format_state(&nodes)), nodes);

    let text = format!(
        "{STATE_FILE_HEADER}\nnot an address\n0.0.0.0:1\n[::]:7\n10.0.0.1:0\n[::1]:5\n\
         10.0.0.1:6881\n10.0.0.1:6881\n 127.0.0.2:4000 \n"
    );
    assert_eq!(parse_state(&text), nodes);
    assert!(parse_state("other-format 2\n10.0.0.1:6881\n").is_empty());
    assert!(parse_state("").is_empty());
}

#[test]
fn state_is_capped() {
    let many: Vec<SocketAddr> = (0..MAX_SAVED_NODES as u32 + 50)
        .map(|i| SocketAddr::from((Ipv4Addr::from(0x0a00_0000 + i), 6881)))
        .collect();
    let text = format_state(&many);
    assert!(text.len() as u64 <= MAX_STATE_FILE_BYTES);
    assert_eq!(parse_state(&text), many[..MAX_SAVED_NODES].to_vec());
    let long = format!(
        "{STATE_FILE_HEADER}\n{}",
        many.iter().map(|a| format!("{a}\n")).collect::<String>()
    );
    assert_eq!(parse_state(&long).len(), MAX_SAVED_NODES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_node_joins_the_running_table() {
    let b = node(20, Bootstrap::Nobody, None).await;
    let a = node(21, Bootstrap::Nobody, None).await;
    assert!(!a.bootstrapped().await, "nobody to bootstrap from");
    assert_eq!(a.node_count().await, 0);
    a.add_node("[::1]:6881".parse().expect("literal"));
    a.add_node(b.local_addr());
    // The ping's answer arrives within the query timeout; poll the count, bounded.
    let mut count = 0;
    for _ in 0..100 {
        count = a.node_count().await;
        if count > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count, 1, "B answered A's ping and is in A's table");
    for n in [a, b] {
        n.shutdown().await.expect("no state file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_find_what_each_other_announced() {
    let first = node(30, Bootstrap::Nobody, None).await;
    let mut nodes = Vec::new();
    for n in 31..38 {
        let d = node(n, from(&first), None).await;
        assert!(d.bootstrapped().await, "node {n} joins");
        nodes.push(d);
    }
    // Each of the seven announces its own torrent; then each finds every other's.
    let hash = |n: usize| InfoHash([0x10 + n as u8; 20]);
    for (i, d) in nodes.iter().enumerate() {
        collect(d.get_peers(hash(i), Some(7000 + i as u16))).await;
    }
    for (i, d) in nodes.iter().enumerate() {
        let j = (i + 3) % nodes.len();
        let found = collect(d.get_peers(hash(j), None)).await;
        let want = SocketAddr::from(([127, 0, 0, 31 + j as u8], 7000 + j as u16));
        assert_eq!(found, vec![want], "node {i} looking for node {j}'s torrent");
    }
    let from_first = collect(first.get_peers(hash(0), None)).await;
    assert_eq!(from_first, vec![SocketAddr::from(([127, 0, 0, 31], 7000))]);
    for d in nodes.into_iter().chain([first]) {
        d.shutdown().await.expect("no state file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_do_not_stop_the_node() {
    let b = node(17, Bootstrap::Nobody, None).await;
    let attacker = UdpSocket::bind(on(18)).expect("bind");
    let deep = |open: &str| {
        let mut d = String::from("d1:ad2:id20:aaaaaaaaaaaaaaaaaaaa1:x");
        d.push_str(&open.repeat(2000));
        d.into_bytes()
    };
    let datagrams: Vec<Vec<u8>> = vec![
        deep("l"),
        deep("d1:k"),
        b"d1:t9999999999:aaaaaaaaaaaaaaaaaaaaaaaa".to_vec(),
        b"d1:t2:aa1:y1:q1:q4:ping1:ad2:id3:abcee".to_vec(),
        b"d1:t2:aa1:y1:r1:rd2:id20:aaaaaaaaaaaaaaaaaaaa5:nodes7:garbageee".to_vec(),
        b"d1:t2:aa1:y1:q1:q9:get_peers1:ad2:id20:aaaaaaaaaaaaaaaaaaaa9:info_hash3:abcee".to_vec(),
        vec![b'd'; 2048],
        vec![0xff; 3000],
    ];
    for d in &datagrams {
        attacker.send_to(d, b.local_addr()).expect("send");
    }
    // Still a working node: a newcomer joins through it.
    let a = node(19, from(&b), None).await;
    assert!(a.bootstrapped().await);
    for n in [a, b] {
        n.shutdown().await.expect("no state file");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_byte_transaction_id_is_answered_over_the_socket() {
    let b = node(22, Bootstrap::Nobody, None).await;
    let client = UdpSocket::bind(on(23)).expect("bind");
    // A bound on a lost datagram only; the answer normally comes in microseconds.
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let query = krpc::encode_query(
        b"\x8a\x03",
        &krpc::Id([0x33; 20]),
        &krpc::Query::GetPeers {
            info_hash: krpc::Id([0x44; 20]),
        },
        true,
    );
    client.send_to(&query, b.local_addr()).expect("send");
    let reply = tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 2048];
        let (n, _) = client.recv_from(&mut buf).expect("an answer");
        buf[..n].to_vec()
    })
    .await
    .expect("join");
    let m = krpc::decode(&reply).expect("a well-formed answer");
    assert_eq!(m.tid, b"\x8a\x03");
    let krpc::Body::Response(r) = m.body else {
        panic!("a response, not {:?}", m.body)
    };
    assert!(r.id.is_some() && r.token.is_some());
    b.shutdown().await.expect("no state file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_find_each_other_over_ipv6() {
    let v6 = |n: u8, bootstrap| {
        let mut cfg = DhtConfig::new(on(n));
        cfg.listen6 = Some("[::1]:0".parse().expect("literal"));
        cfg.bootstrap = bootstrap;
        cfg
    };
    let b = Dht::start(v6(40, Bootstrap::Nobody)).await.expect("start");
    let b6 = b.local_addr6().expect("an IPv6 socket on ::1");
    // Only B's IPv6 address is known: the IPv4 DHT stays empty, so what is found came over IPv6.
    let a = Dht::start(v6(41, Bootstrap::Nodes(vec![b6.to_string()])))
        .await
        .expect("start");
    let c = Dht::start(v6(42, Bootstrap::Nodes(vec![b6.to_string()])))
        .await
        .expect("start");
    assert!(a.bootstrapped().await && c.bootstrapped().await);
    let hash = InfoHash([0x66; 20]);
    collect(a.get_peers(hash, Some(6100))).await;
    let found = collect(c.get_peers(hash, None)).await;
    assert_eq!(
        found,
        vec!["[::1]:6100".parse::<SocketAddr>().expect("literal")]
    );
    // A node on one IPv4 address does not open IPv6 unless asked.
    assert_eq!(DhtConfig::new(on(43)).listen6, None);
    assert!(DhtConfig::new("0.0.0.0:6881".parse().expect("literal"))
        .listen6
        .is_some());
    for n in [a, b, c] {
        n.shutdown().await.expect("no state file");
    }
}
