#!/usr/bin/python3
"""Magnet interop: zigtorrent joins swarms from magnet links (BEP 9 metadata exchange) and
serves metadata to libtorrent, all on 127.0.0.1 with opentracker.

Scenarios (each prints PASS/FAIL with a reason; exit status 1 if any failed):
  m_tracker   a `.magnet` with `tr=` in the watch folder; libtorrent seeds via opentracker;
              zigtorrent fetches the metadata and the data
  m_xpe       a magnet with only `x.pe` (no tracker) given on the command line
  m_serve     a libtorrent magnet leecher gets metadata and data from zigtorrent alone
  m_dht       a magnet with nothing but the info-hash: zigtorrent finds a libtorrent seeder
              through a small loopback DHT of libtorrent nodes (`--dht-bootstrap`)
  m_dht_serve zigtorrent seeds and announces through a loopback DHT of libtorrent nodes; a
              libtorrent leecher whose only DHT bootstrap is zigtorrent's node must query it
              (2-byte transaction ids) to find the network, then finds and downloads from us
  m_pex       zigtorrent knows only a (throttled) libtorrent leecher and learns the seeder
              through that peer's PEX (BEP 11), then downloads from the seeder
  m_tr_seed   Transmission seeds; zigtorrent joins from a magnet naming it in `x.pe`
  m_tr_leech  zigtorrent seeds; Transmission adds only the magnet and gets metadata and data from
              us (we dial it: Transmission 3.00 ignores 127.x peers from trackers)
  m_qbt_seed  qBittorrent seeds; zigtorrent joins from a magnet naming it in `x.pe`
  m_qbt_leech zigtorrent seeds; qBittorrent adds only the magnet (and our address) and gets
              metadata and data from us
  m_restart   after the metadata was fetched, a restart with no other peer seeds to a
              libtorrent leecher (the metadata came from the state folder)

Completion is decided by the files on disk (sizes, then SHA-1 of every file against the
source), never by parsing zigtorrent's status lines.

Usage: /usr/bin/python3 tests/interop/magnet.py [--bin PATH] [--only NAME,...] [--keep]
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import dht_interop as D  # noqa: E402
import harness as H  # noqa: E402
import lt as L  # noqa: E402
import qbt as Q  # noqa: E402

TIMEOUT = 90  # seconds for a ~6 MiB payload over loopback: generous, CI machines are slow


def _compare(src, dst, what, skip_empty=False):
    diffs = L.compare_trees(src, dst)
    if skip_empty:
        # Transmission before 4.1 never creates zero-length files (transmission#417).
        empty = {rel for rel, (size, _) in L.tree_digests(src).items() if size == 0}
        diffs = [d for d in diffs if not (d.startswith("missing ") and d[8:] in empty)]
    if diffs:
        raise H.CheckFailed(f"{what}: {len(diffs)} difference(s): {diffs[:5]}")


def _lt_seeder(torrent, payload_parent):
    port = H.free_port()
    ses = L.session(port)
    h = L.add(ses, torrent, payload_parent)
    st = L.wait_checked(h)
    if not st.is_seeding:
        raise H.CheckFailed(f"libtorrent seeder: data does not match {torrent} (state {st.state})")
    return ses, h, port


def _wait_download(z, downloads, src, name, logp):
    expected = H.expected_files(src, name)
    t0 = time.time()
    while not H.sizes_complete(downloads, expected):
        if H.reap_if_exited(z) is not None:
            raise H.CheckFailed(f"zigtorrent exited early ({z.returncode}):\n{H.tail(logp)}")
        if time.time() - t0 > TIMEOUT:
            H.wait_files(downloads, expected, 0, z, log_path=logp)  # raises with details
        time.sleep(0.1)
    secs = time.time() - t0
    _compare(src, os.path.join(downloads, name), "zigtorrent download")
    return secs


def _setup(ctx, payload, piece_length, in_watch):
    """Folders for one scenario and a torrent of `payload` (in the watch folder if `in_watch`):
    (source, name, torrents, downloads, state, torrent file, info-hash)."""
    ctx.zig.check_exists()
    src = ctx.payloads[payload]
    name = os.path.basename(src)
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    t = os.path.join(torrents if in_watch else ctx.dir, f"{name}.torrent")
    ih = L.make_torrent(src, t, piece_length=piece_length, source=f"zt-interop {ctx.name}")
    return src, name, torrents, downloads, state, t, ih


def _magnet(ih, name, trackers=(), peers=()):
    uri = f"magnet:?xt=urn:btih:{ih}&dn={name}"
    for t in trackers:
        uri += "&tr=" + t.replace(":", "%3A").replace("/", "%2F")
    for p in peers:
        uri += f"&x.pe={p}"
    return uri


def _saved_metadata(state, ih):
    return os.path.join(state, "metadata", f"{ih}.torrent")


def m_tracker(ctx):
    ctx.zig.check_exists()
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    t = os.path.join(ctx.dir, f"{name}.torrent")
    tracker = ctx.tracker([])
    url = f"http://127.0.0.1:{tracker.port}/announce"
    ih = L.make_torrent(src, t, trackers=[url], piece_length=64 * 1024,
                        source=f"zt-interop {ctx.name}")
    tracker.allow([ih])
    _seed_ses, seed_h, _ = _lt_seeder(t, os.path.dirname(src))
    tracker.wait_seeders(ih)
    with open(os.path.join(torrents, "link.magnet"), "w") as f:
        f.write(_magnet(ih, name, trackers=[url]) + "\n")
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port())
    secs = _wait_download(z, downloads, src, name, logp)
    if not os.path.isfile(_saved_metadata(state, ih)):
        raise H.CheckFailed("the fetched metadata was not kept in the state folder")
    if L.info_hash(_saved_metadata(state, ih)) != ih:
        raise H.CheckFailed("the kept metadata has another info-hash")
    sent = seed_h.status().total_payload_upload
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    return f"{secs:.1f}s from start via {url}; seeder sent {sent} B; SIGINT exit 0 in {stop_secs:.1f}s"


def m_xpe(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "single", 32 * 1024, in_watch=False)
    _seed_ses, _seed_h, seed_port = _lt_seeder(t, os.path.dirname(src))
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    uri = _magnet(ih, name, peers=[f"127.0.0.1:{seed_port}"])
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(), extra=[uri])
    secs = _wait_download(z, downloads, src, name, logp)
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    return f"{secs:.1f}s from start with x.pe only; SIGINT exit 0 in {stop_secs:.1f}s"


def m_dht(ctx):
    ctx.zig.check_exists()
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    nodes = D.start_network(3)
    seeder, seeder_port = nodes[1]
    t = os.path.join(ctx.dir, f"{name}.torrent")
    ih = L.make_torrent(src, t, piece_length=32 * 1024, source=f"zt-interop {ctx.name}")
    h = L.add(seeder, t, os.path.dirname(src))
    if not L.wait_checked(h).is_seeding:
        raise H.CheckFailed("libtorrent seeder: data does not match")
    h.force_dht_announce()
    with open(os.path.join(torrents, "hash-only.magnet"), "w") as f:
        f.write(f"magnet:?xt=urn:btih:{ih}\n")
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    boot = f"127.0.0.1:{nodes[0][1]}"
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(),
                    extra=["--dht-bootstrap", boot])
    secs = _wait_download(z, downloads, src, name, logp)
    sent = h.status().total_payload_upload
    if sent < os.path.getsize(src):
        raise H.CheckFailed(f"the DHT-found seeder sent only {sent} bytes")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    if not os.path.isfile(os.path.join(state, "dht.nodes")):
        raise H.CheckFailed("the DHT routing table was not kept in the state folder")
    return (f"{secs:.1f}s from start, seeder 127.0.0.1:{seeder_port} found through the DHT "
            f"(bootstrap {boot}); SIGINT exit 0 in {stop_secs:.1f}s")


def m_dht_serve(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "single", 32 * 1024, in_watch=True)
    shutil.copy(src, os.path.join(downloads, name))
    # Three: with two, the second libtorrent node learns nobody (its bootstrap is a "router").
    nodes = D.start_network(3)
    zport = H.free_port()
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    # --transport tcp: the DHT then takes the UDP port of --listen itself (uTP does not hold it).
    z = ctx.zig.run(torrents, downloads, state, logp, listen=zport,
                    extra=["--dht-bootstrap", f"127.0.0.1:{nodes[0][1]}"])
    # Our seeder announces once its first search ends; wait until a libtorrent node has it.
    sha = L.lt.sha1_hash(bytes.fromhex(ih))
    deadline = time.time() + 60
    stored = False
    while time.time() < deadline and not stored:
        if H.reap_if_exited(z) is not None:
            raise H.CheckFailed(f"zigtorrent exited early ({z.returncode}):\n{H.tail(logp)}")
        nodes[1][0].dht_get_peers(sha)
        time.sleep(1)
        for a in nodes[1][0].pop_alerts():
            if isinstance(a, L.lt.dht_get_peers_reply_alert):
                stored = stored or any(pe[1] == zport for pe in a.peers())
    if not stored:
        raise H.CheckFailed(f"zigtorrent's announce never reached the libtorrent DHT\n{H.tail(logp)}")
    # The leecher knows nothing but our DHT node: no tracker, no peer, no other bootstrap.
    lport = H.free_port()
    leech = L.session(lport, extra=D.dht_settings(lport, f"127.0.0.1:{zport}"))
    dst = ctx.sub("leech")
    h = L.add(leech, t, dst)
    t0 = time.time()
    last_announce = 0.0
    seen = set()
    while not h.status().is_seeding:
        if time.time() - t0 > TIMEOUT:
            raise H.CheckFailed(f"libtorrent leecher: {h.status().progress:.0%} after {TIMEOUT}s, "
                                f"DHT nodes {D.dht_nodes(leech)}, peers {sorted(seen)}\n{H.tail(logp)}")
        if time.time() - last_announce > 5:
            h.force_dht_announce()
            last_announce = time.time()
        seen.update((p[0], p[1]) for p in L.peers(h))
        time.sleep(0.2)
    secs = time.time() - t0
    _compare(src, os.path.join(dst, name), "libtorrent's copy")
    learnt = D.dht_nodes(leech)
    if learnt == 0:
        raise H.CheckFailed("the leecher's DHT table is empty: it never learnt nodes from ours")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    return (f"libtorrent leecher bootstrapped from our node only ({learnt} DHT nodes learnt), found "
            f"and downloaded from us in {secs:.1f}s; SIGINT exit 0 in {stop_secs:.1f}s")


def m_pex(ctx):
    src, name, torrents, downloads, state, t, _ = _setup(ctx, "single", 32 * 1024, in_watch=True)
    _seed_ses, seed_h, seed_port = _lt_seeder(t, os.path.dirname(src))
    # The middle peer: a libtorrent leecher connected to the seeder, throttled so it has almost
    # nothing to give; zigtorrent is told only about it.
    mid_port = H.free_port()
    mid = L.session(mid_port)
    mid_h = L.add(mid, t, ctx.sub("middle"))
    mid_h.set_download_limit(4096)
    L.connect(mid_h, seed_port)
    t0 = time.time()
    while not any(p[1] == seed_port for p in L.peers(mid_h)):
        if time.time() - t0 > 20:
            raise H.CheckFailed("the middle libtorrent peer never connected to the seeder")
        time.sleep(0.1)
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(),
                    peers=[f"127.0.0.1:{mid_port}"])
    secs = _wait_download(z, downloads, src, name, logp)
    sent = seed_h.status().total_payload_upload
    mid_sent = mid_h.status().total_payload_upload
    if sent < os.path.getsize(src) - mid_sent:
        raise H.CheckFailed(f"the seeder sent only {sent} bytes (middle peer {mid_sent})")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    return (f"{secs:.1f}s from start; the seeder, learnt through the middle peer's PEX, sent "
            f"{sent} B, the middle peer {mid_sent} B; SIGINT exit 0 in {stop_secs:.1f}s")


def m_tr_seed(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "single", 32 * 1024, in_watch=False)
    tr = H.Transmission(ctx.sub("tr"), os.path.dirname(src), utp=False)
    tid = tr.add(t, os.path.dirname(src))
    tr.wait_seeding(tid)
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    uri = _magnet(ih, name, peers=[f"127.0.0.1:{tr.peer_port}"])
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(), extra=[uri])
    secs = _wait_download(z, downloads, src, name, logp)
    sent = tr.torrent(tid)["uploadedEver"]
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    tr.stop()
    return (f"{secs:.1f}s from start (Transmission unchokes on a 10 s pulse); it sent {sent} B; "
            f"SIGINT exit 0 in {stop_secs:.1f}s")


def m_tr_leech(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "multi", 64 * 1024, in_watch=True)
    shutil.copytree(src, os.path.join(downloads, name))
    dst = ctx.sub("tr-downloads")
    tr = H.Transmission(ctx.sub("tr"), dst, utp=False)
    a = tr.rpc("torrent-add", filename=_magnet(ih, name), **{"download-dir": dst, "paused": False})
    tid = (a.get("torrent-added") or a.get("torrent-duplicate"))["id"]
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(),
                    peers=[f"127.0.0.1:{tr.peer_port}"])
    try:
        tr.wait_seeding(tid, timeout=TIMEOUT)
    except H.CheckFailed as e:
        raise H.CheckFailed(f"{e}\n{H.tail(logp)}")
    _compare(src, os.path.join(dst, name), "Transmission's copy", skip_empty=True)
    corrupt = tr.torrent(tid)["corruptEver"]
    if corrupt:
        raise H.CheckFailed(f"Transmission discarded {corrupt} corrupt bytes from us")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    tr.stop()
    return f"Transmission got metadata and data from us alone; SIGINT exit 0 in {stop_secs:.1f}s"


def m_qbt_seed(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "single", 32 * 1024, in_watch=False)
    q = Q.QBittorrent(ctx.sub("qbt"))
    q.add_torrent_file(t, os.path.dirname(src))
    q.wait_complete(ih, 60)
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    uri = _magnet(ih, name, peers=[f"127.0.0.1:{q.peer_port}"])
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(), extra=[uri])
    secs = _wait_download(z, downloads, src, name, logp)
    # qBittorrent refreshes its counters every second or two.
    deadline = time.time() + 10
    while (sent := q.info(ih)["uploaded"]) < os.path.getsize(src) and time.time() < deadline:
        time.sleep(0.3)
    if sent < os.path.getsize(src):
        raise H.CheckFailed(f"qBittorrent counted only {sent} bytes sent")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    q.stop()
    return (f"qBittorrent {q.version}: {secs:.1f}s from start, it sent {sent} B; "
            f"SIGINT exit 0 in {stop_secs:.1f}s")


def m_qbt_leech(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "multi", 64 * 1024, in_watch=True)
    shutil.copytree(src, os.path.join(downloads, name))
    zport = H.free_port()
    q = Q.QBittorrent(ctx.sub("qbt"))
    dst = ctx.sub("qbt-downloads")
    q.add_magnet(_magnet(ih, name), dst)
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    # Both ways: we dial qBittorrent, and it is told our address (its first tries can land
    # while we still check our data, and libtorrent then waits a while before trying again).
    z = ctx.zig.run(torrents, downloads, state, logp, listen=zport, log_level="info",
                    peers=[f"127.0.0.1:{q.peer_port}"])
    try:
        q.wait_complete(ih, TIMEOUT, poke=lambda: q.add_peer(ih, f"127.0.0.1:{zport}"))
    except H.CheckFailed as e:
        raise H.CheckFailed(f"{e}\n{H.tail(logp)}")
    _compare(src, os.path.join(dst, name), "qBittorrent's copy")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    q.stop()
    return (f"qBittorrent {q.version} got metadata and data from us alone; "
            f"SIGINT exit 0 in {stop_secs:.1f}s")


def _lt_magnet_leech(uri, dst, zport, what):
    ses = L.session(H.free_port())
    p = L.lt.parse_magnet_uri(uri)
    p.save_path = dst
    h = ses.add_torrent(p)
    L.connect(h, zport)
    t0 = time.time()
    while not h.status().has_metadata:
        if time.time() - t0 > TIMEOUT:
            raise H.CheckFailed(f"{what}: no metadata after {TIMEOUT}s; peers {L.peers(h)}")
        if int(time.time() - t0) % 3 == 0:
            L.connect(h, zport)
        time.sleep(0.2)
    meta_secs = time.time() - t0
    L.wait_seeding(h, TIMEOUT, connect_to=zport, what=what)
    return ses, h, meta_secs


def m_serve(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "multi", 64 * 1024, in_watch=True)
    shutil.copytree(src, os.path.join(downloads, name))
    zport = H.free_port()
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=zport)
    dst = ctx.sub("leech")
    try:
        _ses, h, meta_secs = _lt_magnet_leech(_magnet(ih, name), dst, zport,
                                              "libtorrent magnet leecher from zigtorrent")
    except (L.InteropError, H.CheckFailed) as e:
        raise H.CheckFailed(f"{e}\n{H.tail(logp)}")
    _compare(src, os.path.join(dst, name), "libtorrent's copy")
    stop_secs, _ = H.graceful_stop(z, signal.SIGTERM)
    return f"metadata in {meta_secs:.1f}s, then data, all from zigtorrent; SIGTERM exit 0 in {stop_secs:.1f}s"


def m_restart(ctx):
    src, name, torrents, downloads, state, t, ih = _setup(ctx, "single", 32 * 1024, in_watch=False)
    seed_ses, _seed_h, seed_port = _lt_seeder(t, os.path.dirname(src))
    with open(os.path.join(torrents, "r.magnet"), "w") as f:
        f.write(_magnet(ih, name, peers=[f"127.0.0.1:{seed_port}"]))
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port())
    _wait_download(z, downloads, src, name, logp)
    H.graceful_stop(z, signal.SIGINT)
    del seed_ses  # the only peer that could give metadata is gone
    # The same magnet, now without any peer: only the state folder can supply the metadata.
    with open(os.path.join(torrents, "r.magnet"), "w") as f:
        f.write(_magnet(ih, name))
    zport = H.free_port()
    logp2 = os.path.join(ctx.dir, "zigtorrent2.log")
    z = ctx.zig.run(torrents, downloads, state, logp2, listen=zport)
    leech = L.session(H.free_port())
    dst = ctx.sub("leech")
    h = L.add(leech, t, dst)
    L.connect(h, zport)
    try:
        L.wait_seeding(h, TIMEOUT, connect_to=zport, what="libtorrent leecher from restarted zigtorrent")
    except L.InteropError as e:
        raise H.CheckFailed(f"{e}\n{H.tail(logp2)}")
    _compare(src, os.path.join(dst, name), "libtorrent's copy")
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    return f"restart seeded from kept metadata; SIGINT exit 0 in {stop_secs:.1f}s"


SCENARIOS = [m_tracker, m_xpe, m_dht, m_dht_serve, m_serve, m_pex, m_tr_seed, m_tr_leech, m_qbt_seed, m_qbt_leech,
             m_restart]


def main():
    ap = argparse.ArgumentParser(description="zigtorrent magnet interop (libtorrent, opentracker)")
    ap.add_argument("--bin", default=H.default_bin(), help="zigtorrent binary (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--keep", action="store_true", help="keep the work folder for inspection")
    args = ap.parse_args()
    scenarios = SCENARIOS
    if args.only:
        names = set(args.only.split(","))
        scenarios = [s for s in SCENARIOS if s.__name__ in names]
        unknown = names - {s.__name__ for s in scenarios}
        if unknown:
            ap.error(f"unknown scenario(s): {sorted(unknown)}")
    root = tempfile.mkdtemp(prefix="zt-magnet-")
    H.log(f"work folder {root}; libtorrent {L.lt.__version__}; zigtorrent {args.bin}")
    pay = os.path.join(root, "payloads")
    payloads = {
        "multi": L.small_multi(pay, "multi"),
        "single": L.make_single(pay, "single.bin", 3 * 1024 * 1024 + 5),
    }
    zig = H.Zig(args.bin)
    suite = {}
    return H.run_scenarios(scenarios, lambda name: H.Ctx(root, name, payloads, zig, suite),
                           root, suite, keep=args.keep,
                           expected=(H.CheckFailed, L.InteropError))


if __name__ == "__main__":
    sys.exit(main())
