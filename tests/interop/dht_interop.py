#!/usr/bin/python3
"""A small DHT of libtorrent nodes on loopback, for checking that our DHT node joins it.

libtorrent's defaults keep loopback nodes out of a DHT (one node per IP in the routing table and
in searches, node ids that must match the IP per BEP 42, "dark internet" ports ignored); the
settings in `dht_settings` lift exactly those limits, so several nodes on 127.0.0.1 form a network.
Nothing here ever contacts a public router: `dht_bootstrap_nodes` is always given.

Run as a command, it is a manual and CI check of a probe program:

    dht_interop.py find PROBE...      # PROBE gets {bootstrap} and {info_hash} substituted; it must
                                      # print "peer 127.0.0.1:PORT" for the libtorrent seeder
    dht_interop.py announce PROBE...  # PROBE gets {bootstrap}, {info_hash}, {port}; it must announce
                                      # that port, and a libtorrent node must then find it

Every process started is recorded by PID in harness.py and killed at exit.
"""

import os
import subprocess
import sys
import tempfile
import time
import warnings

import libtorrent as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import lt as ltx  # noqa: E402


def dht_settings(port, bootstrap):
    """libtorrent settings for a DHT node on 127.0.0.1:`port`, bootstrapped from `bootstrap`
    ("host:port,..." or "" for the first node of the network)."""
    return {
        "listen_interfaces": f"127.0.0.1:{port}",
        "outgoing_interfaces": "",
        "enable_dht": True,
        "dht_bootstrap_nodes": bootstrap,
        # Several nodes share 127.0.0.1: allow them in the routing table and in one search.
        "dht_restrict_routing_ips": False,
        "dht_restrict_search_ips": False,
        # BEP 42: loopback node ids cannot match an external IP; don't prefer or demand it.
        "dht_prefer_verified_node_ids": False,
        "dht_enforce_node_id": False,
        # Ports below 1024 and some ranges are skipped as "dark internet"; ephemeral ports are not,
        # but keep every loopback node usable.
        "dht_ignore_dark_internet": False,
        # libtorrent bans an IP that sends it 50 DHT packets within 10 s (5 minutes). Every node
        # here is 127.0.0.1, so the whole network's chatter (and a test polling get_peers) counts
        # as one sender: lift the ban, or a busy moment silences everyone for the rest of a test.
        "dht_block_ratelimit": 100000,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "allow_multiple_connections_per_ip": True,
        "alert_mask": lt.alert_category.error | lt.alert_category.status
        | lt.alert_category.dht | lt.alert_category.dht_operation,
    }


def dht_nodes(ses):
    """How many nodes `ses` has in its DHT routing table."""
    with warnings.catch_warnings():
        # session.status() is deprecated in 2.0 but still the simplest read of this number.
        warnings.simplefilter("ignore", DeprecationWarning)
        return ses.status().dht_nodes


def start_network(n):
    """`n` libtorrent sessions forming one DHT on 127.0.0.1; node 0 is everyone's bootstrap.
    Returns [(session, port)]."""
    nodes = []
    first = harness.free_port()
    nodes.append((lt.session(dht_settings(first, "")), first))
    deadline = time.time() + 30
    for i in range(1, n):
        port = harness.free_port()
        nodes.append((lt.session(dht_settings(port, f"127.0.0.1:{first}")), port))
        # libtorrent keeps bootstrap nodes out of its routing table (they are "routers"): a node
        # learns the others from node 0's answers, so start the next one once node 0 knows this one.
        while time.time() < deadline and dht_nodes(nodes[0][0]) < i:
            time.sleep(0.1)
    while time.time() < deadline and any(dht_nodes(s) == 0 for s, _ in nodes):
        time.sleep(0.2)
    counts = [dht_nodes(s) for s, _ in nodes]
    if any(c == 0 for c in counts):
        raise harness.CheckFailed(f"libtorrent DHT did not form: routing table sizes {counts}")
    harness.log(f"libtorrent DHT of {n} nodes, routing table sizes {counts}")
    return nodes


def run_probe(template, **values):
    argv = [a.format(**values) for a in template]
    harness.log("probe: " + " ".join(argv))
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    sys.stdout.write(p.stdout)
    sys.stderr.write(p.stderr[-3000:])
    return p


def check_find(template):
    """A libtorrent seeder announces a torrent to the libtorrent DHT; the probe must find it."""
    nodes = start_network(3)
    seeder, seeder_port = nodes[1]
    with tempfile.TemporaryDirectory() as d:
        payload = ltx.make_single(d, "payload.bin", 256 * 1024)
        tf = os.path.join(d, "t.torrent")
        ih = ltx.make_torrent(payload, tf)
        h = ltx.add(seeder, tf, d, seed_mode=True)
        h.force_dht_announce()
        # Wait until another node has stored the announce.
        deadline = time.time() + 30
        stored = False
        while time.time() < deadline and not stored:
            for s, _ in (nodes[0], nodes[2]):
                s.dht_get_peers(lt.sha1_hash(bytes.fromhex(ih)))
            time.sleep(1)
            for s, _ in (nodes[0], nodes[2]):
                for a in s.pop_alerts():
                    if isinstance(a, lt.dht_get_peers_reply_alert) and a.num_peers() > 0:
                        stored = True
        if not stored:
            raise harness.CheckFailed("the libtorrent seeder's announce was never stored")
        p = run_probe(template, bootstrap=f"127.0.0.1:{nodes[0][1]}", info_hash=ih)
        want = f"peer 127.0.0.1:{seeder_port}"
        if p.returncode != 0 or want not in p.stdout.splitlines():
            raise harness.CheckFailed(f"probe exit {p.returncode}, wanted a line {want!r}")
    harness.log(f"PASS find: probe found the libtorrent seeder at 127.0.0.1:{seeder_port}")


def check_announce(template):
    """The probe announces a port; a libtorrent node must find that address by get_peers."""
    nodes = start_network(3)
    ih = os.urandom(20).hex()
    port = 7777
    probe = subprocess.Popen(
        [a.format(bootstrap=f"127.0.0.1:{nodes[0][1]}", info_hash=ih, port=port)
         for a in template],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    harness._PROCS.append((probe, "probe", False))
    found = []
    deadline = time.time() + 60
    while time.time() < deadline and not found:
        nodes[2][0].dht_get_peers(lt.sha1_hash(bytes.fromhex(ih)))
        time.sleep(1)
        for a in nodes[2][0].pop_alerts():
            if isinstance(a, lt.dht_get_peers_reply_alert):
                found += [pe for pe in a.peers() if pe[1] == port]
    harness.stop(probe)
    if not found:
        raise harness.CheckFailed("no libtorrent node found the probe's announce")
    harness.log(f"PASS announce: libtorrent found {sorted(set(found))}")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("find", "announce"):
        sys.exit(__doc__)
    try:
        (check_find if sys.argv[1] == "find" else check_announce)(sys.argv[2:])
    except harness.CheckFailed as e:
        harness.log(f"FAIL {e}")
        sys.exit(1)
    finally:
        harness.cleanup()


if __name__ == "__main__":
    main()
