#!/usr/bin/python3
"""Interop suite: zigtorrent against libtorrent 2.0 and opentracker on 127.0.0.1.

Scenarios (each prints PASS/FAIL with a reason; exit status 1 if any failed):
  lt_direct        libtorrent seeder -> libtorrent leecher, direct connect (harness self-test)
  lt_tracker_http  the same through opentracker over HTTP (harness self-test)
  lt_tracker_udp   the same through opentracker over UDP, BEP 15 (harness self-test)
  a_tracker_http   libtorrent seeds a multi-file payload via opentracker (HTTP); zigtorrent downloads
  a_tracker_udp    the same with a UDP tracker
  b_zig_seeds      zigtorrent seeds pre-placed data; a libtorrent leecher connects to it directly
  c_create         `zigtorrent create` + `info`: same info-hash as libtorrent, and libtorrent
                   verifies every piece of the source against it
  d_crash          SIGKILL zigtorrent mid-download: no incomplete file at a final path; restart
                   completes byte-identical

Completion is decided by the files on disk (sizes, no `.part`, then SHA-1 of every file against
the source), never by parsing zigtorrent's status lines.

Usage: /usr/bin/python3 tests/interop/interop.py [--bin PATH] [--lt-only] [--only NAME,...] [--keep]
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import lt as L  # noqa: E402

DOWNLOAD_TIMEOUT = 90  # seconds for a ~6 MiB payload over loopback: generous, CI machines are slow


def _compare(src, dst, what):
    diffs = L.compare_trees(src, dst)
    if diffs:
        raise H.CheckFailed(f"{what}: {len(diffs)} difference(s): {diffs[:5]}")


def _lt_seeder(ctx, torrent, payload_parent, upload_limit=0):
    port = H.free_port()
    ses = L.session(port, upload_rate_limit=upload_limit)
    h = L.add(ses, torrent, payload_parent)
    st = L.wait_checked(h)
    if not st.is_seeding:
        raise H.CheckFailed(f"libtorrent seeder: data does not match {torrent} (state {st.state})")
    return ses, h, port


def _check_sent(seed_h, src):
    """The download must have come from our seeder: it sent at least the payload's size."""
    total = sum(size for size, _ in L.tree_digests(src).values())
    sent = seed_h.status().total_payload_upload
    if sent < total:
        raise H.CheckFailed(f"the libtorrent seeder sent only {sent} of {total} bytes")


def _watch_peers(h, seen):
    for ip, port, client, _prog in L.peers(h):
        seen.add(f"{ip}:{port} '{client}'")


# --------------------------------------------------------------------------------------------
# Harness self-tests: libtorrent only. Prove the helpers and opentracker set-up are sound.


def lt_direct(ctx):
    src = ctx.payloads["multi"]
    t = os.path.join(ctx.dir, "multi.torrent")
    L.make_torrent(src, t, piece_length=64 * 1024)
    seed_ses, seed_h, seed_port = _lt_seeder(ctx, t, os.path.dirname(src))
    leech_ses = L.session(H.free_port())
    dst = ctx.sub("leech")
    h = L.add(leech_ses, t, dst)
    L.connect(h, seed_port)
    seen = set()
    L.wait_seeding(h, DOWNLOAD_TIMEOUT, connect_to=seed_port, what="libtorrent leecher", seen=seen)
    _check_sent(seed_h, src)
    _compare(src, os.path.join(dst, os.path.basename(src)), "leecher copy")
    return f"leecher saw {sorted(seen)}; seeder sent {seed_h.status().total_payload_upload} bytes"


def _lt_via_tracker(ctx, scheme):
    src = ctx.payloads["multi"]
    t = os.path.join(ctx.dir, "multi.torrent")
    tracker = ctx.tracker([])
    url = f"{scheme}://127.0.0.1:{tracker.port}/announce"
    ih = L.make_torrent(src, t, trackers=[url], piece_length=64 * 1024,
                        source=f"zt-interop {ctx.name}")
    tracker.allow([ih])
    seed_ses, seed_h, seed_port = _lt_seeder(ctx, t, os.path.dirname(src))
    tracker.wait_seeders(ih)
    leech_ses = L.session(H.free_port())
    dst = ctx.sub("leech")
    h = L.add(leech_ses, t, dst)  # no connect_peer: the tracker is the only way to find the seeder
    seen = set()
    L.wait_seeding(h, DOWNLOAD_TIMEOUT, what=f"libtorrent leecher via {scheme} tracker", seen=seen)
    _check_sent(seed_h, src)
    _compare(src, os.path.join(dst, os.path.basename(src)), "leecher copy")
    scrape = tracker.scrape(ih)
    if scrape[0] < 2:
        # The leecher announces `completed` on finishing; give the announce a moment.
        h.force_reannounce()
        time.sleep(2)
        scrape = tracker.scrape(ih)
    return f"tracker {url} scrape complete/incomplete {scrape}, leecher saw {sorted(seen)}"


def lt_tracker_http(ctx):
    return _lt_via_tracker(ctx, "http")


def lt_tracker_udp(ctx):
    return _lt_via_tracker(ctx, "udp")


# --------------------------------------------------------------------------------------------
# zigtorrent scenarios


def _zig_leech_via_tracker(ctx, scheme):
    ctx.zig.check_exists()
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    t = os.path.join(torrents, f"{name}.torrent")
    tracker = ctx.tracker([])
    url = f"{scheme}://127.0.0.1:{tracker.port}/announce"
    ih = L.make_torrent(src, t, trackers=[url], piece_length=64 * 1024,
                        source=f"zt-interop {ctx.name}")
    tracker.allow([ih])
    seed_ses, seed_h, _ = _lt_seeder(ctx, t, os.path.dirname(src))
    tracker.wait_seeders(ih)
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port())
    seen = set()
    t0 = time.time()
    expected = H.expected_files(src, name)
    while not H.sizes_complete(downloads, expected):
        _watch_peers(seed_h, seen)
        if H.reap_if_exited(z) is not None:
            raise H.CheckFailed(f"zigtorrent exited early ({z.returncode}):\n{H.tail(logp)}")
        if time.time() - t0 > DOWNLOAD_TIMEOUT:
            H.wait_files(downloads, expected, 0, z, log_path=logp)  # raises with details
        time.sleep(0.1)
    secs = time.time() - t0
    _compare(src, os.path.join(downloads, name), "zigtorrent download")
    _check_sent(seed_h, src)
    stop_secs, _ = H.graceful_stop(z, signal.SIGINT)
    _compare(src, os.path.join(downloads, name), "zigtorrent download after exit")
    return f"{secs:.1f}s via {url}; seeder saw {sorted(seen)}; SIGINT exit 0 in {stop_secs:.1f}s"


def a_tracker_http(ctx):
    return _zig_leech_via_tracker(ctx, "http")


def a_tracker_udp(ctx):
    return _zig_leech_via_tracker(ctx, "udp")


def b_zig_seeds(ctx):
    ctx.zig.check_exists()
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    t = os.path.join(torrents, f"{name}.torrent")
    L.make_torrent(src, t, piece_length=64 * 1024)  # no tracker: the leecher connects directly
    shutil.copytree(src, os.path.join(downloads, name))
    zport = H.free_port()
    logp = os.path.join(ctx.dir, "zigtorrent.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=zport)
    leech_ses = L.session(H.free_port())
    dst = ctx.sub("leech")
    h = L.add(leech_ses, t, dst)
    L.connect(h, zport)
    peers = set()
    try:
        # zigtorrent first verifies its data, so the first connects may be refused: retried.
        L.wait_seeding(h, DOWNLOAD_TIMEOUT, connect_to=zport, what="libtorrent leecher from zigtorrent",
                       seen=peers)
    except L.InteropError as e:
        raise H.CheckFailed(f"{e}\n{H.tail(logp)}")
    got = h.status().total_payload_download
    if got < sum(size for size, _ in L.tree_digests(src).values()):
        raise H.CheckFailed(f"complete, yet only {got} payload bytes came from zigtorrent")
    _compare(src, os.path.join(dst, name), "libtorrent's copy")
    _compare(src, os.path.join(downloads, name), "zigtorrent's seeded data (must be untouched)")
    stop_secs, _ = H.graceful_stop(z, signal.SIGTERM)
    return f"leecher peers {peers}; SIGTERM exit 0 in {stop_secs:.1f}s"


def c_create(ctx):
    ctx.zig.check_exists()
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    notes = []
    # 1. Our info parses libtorrent's torrent to the same info-hash.
    lt_t = os.path.join(ctx.dir, "by-libtorrent.torrent")
    lt_ih = L.make_torrent(src, lt_t, trackers=["http://127.0.0.1:1/announce"], piece_length=32768)
    zig_ih, _ = ctx.zig.info_hash(lt_t)
    if zig_ih != lt_ih:
        raise H.CheckFailed(f"zigtorrent info on a libtorrent torrent: {zig_ih}, libtorrent {lt_ih}")
    notes.append("info agrees on libtorrent's torrent")
    # 2. Our create, in two flavours, is read by libtorrent identically and verifies the source.
    cases = [
        ("auto", []),
        ("explicit", ["--piece-length", "65536", "--private", "--comment", "interop test"]),
    ]
    for label, extra in cases:
        out = os.path.join(ctx.dir, f"by-zig-{label}.torrent")
        trackers = ["http://127.0.0.1:6969/announce", "udp://127.0.0.1:6969/announce"]
        args = ["create", src]
        for tr in trackers:
            args += ["--tracker", tr]
        rc, so, se = ctx.zig.cmd(*args, *extra, "-o", out)
        if rc != 0 or not os.path.isfile(out):
            raise H.CheckFailed(f"zigtorrent create ({label}) exited {rc}: {se.strip()[:500]}")
        try:
            ti = L.lt.torrent_info(out)
        except RuntimeError as e:
            raise H.CheckFailed(f"libtorrent rejects zigtorrent's {label} torrent: {e}")
        lt_hash = str(ti.info_hashes().v1)
        zig_hash, _ = ctx.zig.info_hash(out)
        if zig_hash != lt_hash:
            raise H.CheckFailed(f"{label}: zigtorrent info says {zig_hash}, libtorrent {lt_hash}")
        expected = H.expected_files(src, name)
        files = ti.files()
        got = {files.file_path(i): files.file_size(i) for i in range(files.num_files())}
        if ti.name() != name:
            raise H.CheckFailed(f"{label}: name {ti.name()!r}, want {name!r}")
        if got != expected:
            raise H.CheckFailed(f"{label}: files {sorted(got.items())} want {sorted(expected.items())}")
        urls = [e.url for e in ti.trackers()]
        if urls != trackers:
            raise H.CheckFailed(f"{label}: trackers {urls}, want {trackers}")
        tiers = [e.tier for e in ti.trackers()]
        if tiers != [0, 1]:
            raise H.CheckFailed(f"{label}: tracker tiers {tiers}, want [0, 1] (one tier per --tracker)")
        pl = ti.piece_length()
        if extra:
            if pl != 65536 or not ti.priv() or ti.comment() != "interop test":
                raise H.CheckFailed(f"{label}: piece length {pl}, private {ti.priv()}, "
                                    f"comment {ti.comment()!r}")
        elif pl & (pl - 1) or not 16384 <= pl <= 16 * 1024 * 1024:
            raise H.CheckFailed(f"{label}: automatic piece length {pl} is not a power of two in range")
        # libtorrent rechecks every piece of the source against our hashes before it seeds.
        ses = L.session(H.free_port())
        h = L.add(ses, out, os.path.dirname(src))
        st = L.wait_checked(h)
        if not st.is_seeding:
            raise H.CheckFailed(f"{label}: libtorrent's check of the source against zigtorrent's "
                                f"torrent: {st.num_pieces}/{ti.num_pieces()} pieces match")
        del ses
        notes.append(f"{label}: {ti.num_pieces()}x{pl} pieces all verified by libtorrent")
    # 3. A single file.
    single = ctx.payloads["single"]
    out = os.path.join(ctx.dir, "single.torrent")
    rc, _, se = ctx.zig.cmd("create", single, "--tracker", "http://127.0.0.1:6969/announce", "-o", out)
    if rc != 0:
        raise H.CheckFailed(f"zigtorrent create (single file) exited {rc}: {se.strip()[:500]}")
    ti = L.lt.torrent_info(out)
    if ctx.zig.info_hash(out)[0] != str(ti.info_hashes().v1) or ti.num_files() != 1:
        raise H.CheckFailed("single file: info-hash or file count disagree with libtorrent")
    ses = L.session(H.free_port())
    if not L.wait_checked(L.add(ses, out, os.path.dirname(single))).is_seeding:
        raise H.CheckFailed("single file: libtorrent does not verify the source against it")
    notes.append("single file ok")
    return "; ".join(notes)


def d_crash(ctx):
    ctx.zig.check_exists()
    src = ctx.payloads["crash"]
    name = os.path.basename(src)
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    t = os.path.join(torrents, f"{name}.torrent")
    L.make_torrent(src, t, piece_length=64 * 1024)
    total = sum(s for s, _ in L.tree_digests(src).values())
    limit = 2 * 1024 * 1024  # bytes/s: a ~16 MiB payload takes ~8 s
    seed_ses, seed_h, seed_port = _lt_seeder(ctx, t, os.path.dirname(src), upload_limit=limit)
    logp = os.path.join(ctx.dir, "zigtorrent-1.log")
    peer = [f"127.0.0.1:{seed_port}"]
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(), peers=peer)
    t0 = time.time()
    while seed_h.status().total_payload_upload < 0.4 * total:
        if H.reap_if_exited(z) is not None:
            raise H.CheckFailed(f"zigtorrent exited early ({z.returncode}):\n{H.tail(logp)}")
        if time.time() - t0 > DOWNLOAD_TIMEOUT:
            raise H.CheckFailed(f"seeder uploaded only {seed_h.status().total_payload_upload} of "
                                f"{total} bytes in {DOWNLOAD_TIMEOUT}s:\n{H.tail(logp)}")
        time.sleep(0.05)
    sent = seed_h.status().total_payload_upload
    H.stop(z, signal.SIGKILL)
    # At this instant: every file at a final path must be complete and correct.
    want = L.tree_digests(src)
    top = os.path.join(downloads, name)
    finals, parts, bad = 0, 0, []
    # Incomplete data lives under the state folder (parts/<info-hash>/<index>.part), never
    # beside the final paths.
    for dirpath, _d, names in os.walk(os.path.join(state, "parts")):
        parts += sum(1 for n in names if n.endswith(".part"))
    for dirpath, _d, names in os.walk(top):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), top)
            if rel.endswith(".part"):
                bad.append(f"{rel}: a .part file under the downloads folder")
                continue
            finals += 1
            if rel not in want:
                bad.append(f"unexpected file {rel}")
            elif L.tree_digests(os.path.join(top, rel))[n] != want[rel]:
                bad.append(f"{rel} is at its final path but incomplete or wrong")
    if bad:
        raise H.CheckFailed(f"after SIGKILL at {sent}/{total} bytes sent: {bad[:5]}")
    if finals == len(want) and parts == 0:
        raise H.CheckFailed("download had already finished when killed: the test proved nothing")
    # Restart with the same folders: it must finish, byte-identical.
    logp2 = os.path.join(ctx.dir, "zigtorrent-2.log")
    z2 = ctx.zig.run(torrents, downloads, state, logp2, listen=H.free_port(), peers=peer)
    secs = H.wait_files(downloads, H.expected_files(src, name), DOWNLOAD_TIMEOUT, z2, log_path=logp2)
    _compare(src, top, "zigtorrent download after restart")
    H.graceful_stop(z2, signal.SIGINT)
    return (f"killed at {sent}/{total} bytes sent with {finals} final + {parts} .part files, "
            f"all finals correct; restart completed in {secs:.1f}s")


def _fast_negotiated(logp, what):
    """zigtorrent's `peer connected` lines for libtorrent peers must all say `fast=true`."""
    conns = [c for c in H.peer_connections(logp) if c.get("client", "").startswith("-LT")]
    if not conns:
        raise H.CheckFailed(f"{what}: no libtorrent connection in zigtorrent's log\n{H.tail(logp)}")
    plain = [c for c in conns if c.get("fast") != "true"]
    if plain:
        raise H.CheckFailed(f"{what}: fast extension (BEP 6) not negotiated with libtorrent: {plain}")
    return len(conns)


def e_fast_extension(ctx):
    """BEP 6 with libtorrent, both ways: the fast extension is negotiated (our log says
    `fast=true` for every libtorrent connection) and the data arrives byte-identical."""
    ctx.zig.check_exists()
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    # zigtorrent leeches from a libtorrent seeder.
    torrents, downloads, state = ctx.sub("torrents"), ctx.sub("downloads"), ctx.sub("state")
    t = os.path.join(torrents, f"{name}.torrent")
    L.make_torrent(src, t, piece_length=64 * 1024)
    seed_ses, seed_h, seed_port = _lt_seeder(ctx, t, os.path.dirname(src))
    logp = os.path.join(ctx.dir, "zigtorrent-leech.log")
    z = ctx.zig.run(torrents, downloads, state, logp, listen=H.free_port(),
                    peers=[f"127.0.0.1:{seed_port}"], log_level="info")
    t0 = time.time()
    H.wait_files(downloads, H.expected_files(src, name), DOWNLOAD_TIMEOUT, z, log_path=logp)
    secs = time.time() - t0
    _compare(src, os.path.join(downloads, name), "zigtorrent download")
    _check_sent(seed_h, src)
    H.graceful_stop(z, signal.SIGINT)
    n_in = _fast_negotiated(logp, "zigtorrent leeching from libtorrent")
    # zigtorrent seeds to a libtorrent leecher.
    torrents2, downloads2, state2 = ctx.sub("torrents2"), ctx.sub("downloads2"), ctx.sub("state2")
    shutil.copy(t, torrents2)
    shutil.copy(src, os.path.join(downloads2, name))
    zport = H.free_port()
    logp2 = os.path.join(ctx.dir, "zigtorrent-seed.log")
    z2 = ctx.zig.run(torrents2, downloads2, state2, logp2, listen=zport, log_level="info")
    leech_ses = L.session(H.free_port())
    dst = ctx.sub("leech")
    h = L.add(leech_ses, t, dst)
    L.connect(h, zport)
    try:
        L.wait_seeding(h, DOWNLOAD_TIMEOUT, connect_to=zport, what="libtorrent leecher from zigtorrent")
    except L.InteropError as e:
        raise H.CheckFailed(f"{e}\n{H.tail(logp2)}")
    _compare(src, os.path.join(dst, name), "libtorrent's copy")
    H.graceful_stop(z2, signal.SIGTERM)
    n_out = _fast_negotiated(logp2, "zigtorrent seeding to libtorrent")
    return (f"zigtorrent leeched in {secs:.1f}s; fast=true on {n_in} connection(s) leeching, "
            f"{n_out} seeding")


LT_ONLY = [lt_direct, lt_tracker_http, lt_tracker_udp]
ZIG = [a_tracker_http, a_tracker_udp, b_zig_seeds, c_create, d_crash, e_fast_extension]


def main():
    ap = argparse.ArgumentParser(description="zigtorrent interop suite (libtorrent, opentracker)")
    ap.add_argument("--bin", default=H.default_bin(), help="zigtorrent binary (default: %(default)s)")
    ap.add_argument("--lt-only", action="store_true", help="only the libtorrent/opentracker self-tests")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--keep", action="store_true", help="keep the work folder for inspection")
    args = ap.parse_args()

    scenarios = LT_ONLY + ([] if args.lt_only else ZIG)
    if args.only:
        names = set(args.only.split(","))
        scenarios = [s for s in LT_ONLY + ZIG if s.__name__ in names]
        unknown = names - {s.__name__ for s in scenarios}
        if unknown:
            ap.error(f"unknown scenario(s): {sorted(unknown)}")

    root = tempfile.mkdtemp(prefix="zt-interop-")
    H.log(f"work folder {root}; libtorrent {L.lt.__version__}; zigtorrent {args.bin}")
    pay = os.path.join(root, "payloads")
    payloads = {
        "multi": L.small_multi(pay, "multi"),
        "single": L.make_single(pay, "single.bin", 3 * 1024 * 1024 + 5),
        "crash": L.make_multi(pay, "crash", L.multi_layout(24, 100_000, 1_300_000, seed="crash"),
                              seed="crash"),
    }
    zig = H.Zig(args.bin)
    suite = {}
    return H.run_scenarios(scenarios, lambda name: H.Ctx(root, name, payloads, zig, suite),
                           root, suite, keep=args.keep,
                           expected=(H.CheckFailed, L.InteropError))


if __name__ == "__main__":
    sys.exit(main())
