#!/usr/bin/python3
"""Interop with aria2 and Transmission (over TCP), zigtorrent in both directions, on 127.0.0.1.

Scenarios (each prints PASS/FAIL with a figure; exit status 1 if any failed):
  aria2_seeds               aria2 seeds a multi-file torrent, announced to opentracker (HTTP);
                            zigtorrent (default transport) finds it there and downloads
  aria2_leeches             zigtorrent (default transport) seeds a 24 MiB file; aria2 finds it
                            through opentracker, downloads it, and exits 0
  transmission_seeds_tcp    transmission-daemon with uTP off seeds the 24 MiB file;
                            `zigtorrent run --transport tcp` dials it with --peer
  transmission_leeches_tcp  `zigtorrent run --transport tcp` seeds the multi-file torrent and
                            dials a transmission-daemon leecher (uTP off) with --peer

Each check can fail. Every copy is compared with the source file by file (size and SHA-1).
The other client must report having sent (or received) the whole payload, which only our peer
could have given it. zigtorrent's own log must show a connection to that client's peer id, over
TCP where the scenario says so. The aria2 scenarios leave zigtorrent on its default transport:
aria2 has no uTP, so with the default `both` they also prove the fall-back to TCP.

Torrents are made by `zigtorrent create`, so the other clients also read our torrents.
How each client is made to work on loopback is written on `harness.Transmission` and
`harness.Aria2`: Transmission 3.00 ignores 127.x peers from a tracker (we dial it); aria2
cannot be told a peer (it finds us through the tracker).

Usage: /usr/bin/python3 tests/interop/clients.py [BIN] [--only NAME,...] [--keep]
"""

import argparse
import datetime
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import harness as H  # noqa: E402
import lt as L  # noqa: E402  (payloads and tree comparison only; no libtorrent session here)

TIMEOUT = 90  # s for one transfer; loopback needs a few, CI machines are slow
STALL = 30  # s without a byte moving ends a transfer early (Transmission's first unchoke: ~10 s)
SINGLE_SIZE = 24 * 1024 * 1024
MULTI_PIECE = 256 * 1024
# Nested folders, sizes that straddle pieces, one file smaller than a piece, one empty file.
MULTI_LAYOUT = [
    ("a.bin", 3_000_007),
    ("docs/readme.txt", 17),
    ("docs/b.bin", 2 * 1024 * 1024 + 1),
    ("c/d/e.bin", 4_500_000),
    ("c/empty.dat", 0),
]
ZIG_LOG_LEVEL = "info,zigtorrent_engine::torrent=debug"  # debug: why a peer was dropped
ARIA2_ID = "A2-"  # aria2's peer id prefix (A2-<major>-<minor>-<patch>-)
TRANSMISSION_ID = "-TR"  # Azureus style, -TR3000- for 3.00


class Ctx(H.Ctx):
    """The shared scenario context, plus making torrents with `zigtorrent create`."""

    def torrent(self, src, trackers=(), piece_length=None):
        """`zigtorrent create` of `src` into <torrents>/<name>.torrent; returns (path, info-hash)."""
        out = os.path.join(self.sub("torrents"), os.path.basename(src) + ".torrent")
        args = ["create", src]
        for url in trackers:
            args += ["--tracker", url]
        if piece_length:
            args += ["--piece-length", piece_length]
        rc, _, err = self.zig.cmd(*args, "-o", out)
        if rc != 0:
            raise H.CheckFailed(f"zigtorrent create exited {rc}: {err.strip()[:500]}")
        return out, self.zig.info_hash(out)[0]

    def run_zig(self, transport, peers=()):
        """zigtorrent on this scenario's torrents/downloads/state folders; returns (proc, log)."""
        logp = os.path.join(self.dir, "zigtorrent.log")
        z = self.zig.run(self.sub("torrents"), self.sub("downloads"), self.sub("state"), logp,
                         listen=H.free_port(), peers=peers, transport=transport,
                         log_level=ZIG_LOG_LEVEL, extra=["--status-interval", "0.5"])
        return z, logp


# --------------------------------------------------------------------------------------------
# Checks shared by the scenarios


def total_size(src):
    return sum(size for size, _ in L.tree_digests(src).values())


def compare(src, dst, what, skip_empty=False):
    """Byte-identical check (size and SHA-1 per file). `skip_empty` lets zero-length files be
    absent, for clients that never create them."""
    diffs = L.compare_trees(src, dst)
    if skip_empty:
        empty = {rel for rel, (size, _) in L.tree_digests(src).items() if size == 0}
        diffs = [d for d in diffs if not (d.startswith("missing ") and d[8:] in empty)]
    if diffs:
        raise H.CheckFailed(f"{what}: {len(diffs)} difference(s) from the source: {diffs[:5]}")


class Transfer:
    """Timing of one transfer, from the byte count the other client reports."""

    def __init__(self, size, secs, first_byte):
        self.size, self.secs, self.first_byte = size, secs, first_byte

    def figure(self):
        out = (f"{self.size / 2**20:.1f} MiB in {self.secs:.1f}s "
               f"({self.size / max(self.secs, 1e-3) / 1e6:.1f} MB/s overall")
        moving = self.secs - (self.first_byte or 0.0)
        if moving >= 0.5:
            return out + f"; {self.size / moving / 1e6:.1f} MB/s after the first byte at " \
                         f"{self.first_byte or 0.0:.1f}s)"
        # Polled every 0.1 s: a shorter data phase cannot be timed from outside.
        return out + f"; data phase under 0.5s, over {self.size / 0.5 / 1e6:.0f} MB/s)"


def transfer(what, size, done, moved, procs, diag, timeout=TIMEOUT, stall=STALL):
    """Poll every 0.1 s until `done()`; returns the Transfer of `size` bytes. `moved()` is the byte count the other client reports
    (sent or received); `procs` maps labels to processes that must stay alive; `diag()` adds
    logs to a failure. Fails on timeout, on a death, or when no byte moved for `stall` s."""
    t0 = time.time()
    first = None
    last, last_change = -1, t0
    while True:
        n = moved()
        now = time.time()
        if n != last:
            last, last_change = n, now
        if n > 0 and first is None:
            first = now - t0
        if done():
            return Transfer(size, now - t0, first)
        for label, p in procs.items():
            rc = H.reap_if_exited(p)
            if rc is not None:
                raise H.CheckFailed(f"{what}: {label} exited with {rc} after {now - t0:.1f}s\n"
                                    f"{diag()}")
        if now - t0 > timeout:
            raise H.CheckFailed(f"{what}: not done after {timeout}s, {n} bytes moved\n{diag()}")
        if now - last_change > stall:
            raise H.CheckFailed(f"{what}: stalled, no byte moved for {stall}s (at {n} bytes, "
                                f"{now - t0:.0f}s in)\n{diag()}")
        time.sleep(0.1)


def wait_count(what, get, want, timeout=5):
    """The other client's byte counters lag a little behind the data on disk."""
    deadline = time.time() + timeout
    while True:
        n = get()
        if n >= want or time.time() > deadline:
            if n < want:
                raise H.CheckFailed(f"{what}: {n} bytes, want at least {want}")
            return n
        time.sleep(0.2)


def zig_talked_to(logp, client_prefix, transport=None):
    """zigtorrent's log must show a connection to a peer whose id starts with `client_prefix`
    (over `transport` if given). Returns the matching connections."""
    conns = H.peer_connections(logp)
    hits = [c for c in conns if c.get("client", "").startswith(client_prefix)]
    if not hits:
        raise H.CheckFailed(f"zigtorrent's log shows no connection to a {client_prefix}… peer; "
                            f"connections: {conns}\n{zig_excerpt(logp)}")
    if transport:
        other = [c for c in hits if c.get("transport") != transport]
        if other:
            raise H.CheckFailed(f"want only {transport} connections, zigtorrent logged {other}")
    return hits


def dropped(logp, limit=5):
    """Why zigtorrent dropped peers (debug lines), for failure reports."""
    try:
        with open(logp, "rb") as f:
            lines = [l for l in f.read().decode("utf-8", "replace").splitlines()
                     if "peer disconnected" in l or "handshake failed" in l]
    except OSError:
        return ""
    out = "zigtorrent dropped peers:\n" + "\n".join("    | " + l for l in lines[-limit:])
    if any("bitfield after the first message" in l for l in lines):
        out += ("\n    (aria2 announces new pieces with a BITFIELD mid-connection, see "
                "harness.Aria2; zigtorrent ends the connection over it)")
    return out


def zig_excerpt(logp, n=15):
    """The last `n` lines of zigtorrent's log that are not status lines."""
    try:
        with open(logp, "rb") as f:
            lines = [l for l in f.read().decode("utf-8", "replace").splitlines()
                     if not H.parse_status(l)]
    except OSError:
        return "    | (no log)"
    return "zigtorrent log (status lines left out):\n" + "\n".join("    | " + l for l in lines[-n:])


def peer_ids(aria2, gid, seen):
    """Add the first 8 characters of each peer id aria2 lists (percent-encoded by aria2; all
    zero before the handshake is through) to `seen`."""
    for p in aria2.peers(gid):
        pid = urllib.parse.unquote(p.get("peerId", ""))[:8]
        if pid.strip("\x00"):
            seen.add(pid)


def connect_to_complete(logp, client_prefix):
    """Seconds from zigtorrent's first connection to a `client_prefix` peer to its `download
    complete` line, by the log's own timestamps; None if either line is missing."""
    stamp = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")
    start = end = None
    with open(logp, "rb") as f:
        for line in f.read().decode("utf-8", "replace").splitlines():
            m = stamp.match(line)
            if not m:
                continue
            t = datetime.datetime.fromisoformat(m.group(1))
            if start is None and "peer connected" in line and f"client={client_prefix}" in line:
                start = t
            elif start is not None and "download complete" in line:
                end = t
                break
    return (end - start).total_seconds() if start and end else None


def describe(conns):
    return ", ".join(sorted({f"{c.get('client')} {c.get('transport')} "
                             f"{'out' if c.get('outgoing') == 'true' else 'in'}"
                             for c in conns}))


def wait_zig_seeding(z, logp, timeout=60):
    """Until zigtorrent has checked its data and prints a `seeding` status line."""
    deadline = time.time() + timeout
    while True:
        if any(s["state"] == "seeding" for s in H.last_status(logp).values()):
            return
        if H.reap_if_exited(z) is not None:
            raise H.CheckFailed(f"zigtorrent exited early ({z.returncode}):\n{H.tail(logp)}")
        if time.time() > deadline:
            raise H.CheckFailed(f"zigtorrent not seeding after {timeout}s:\n{H.tail(logp)}")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# aria2


def aria2_seeds(ctx):
    """aria2 seeds the multi-file payload; zigtorrent finds it through the tracker."""
    ctx.zig.check_exists()
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    size = total_size(src)
    tracker = ctx.tracker()
    t, ih = ctx.torrent(src, [tracker.http], MULTI_PIECE)
    tracker.allow([ih])
    data = ctx.sub("aria2-data")
    shutil.copytree(src, os.path.join(data, name))
    a = H.Aria2(ctx.sub("aria2"))
    # check-integrity: aria2 hashes the data before it seeds; seed-ratio 0.0: seed forever.
    gid = a.add_torrent(t, dir=data, check_integrity="true", seed_ratio="0.0")
    deadline = time.time() + 60
    while True:
        st = a.status(gid)
        if st["status"] == "error":
            raise H.CheckFailed(f"aria2: {st.get('errorMessage')}\n{a.excerpt()}")
        if st.get("seeder") == "true" and st["completedLength"] == st["totalLength"]:
            break
        if time.time() > deadline:
            raise H.CheckFailed(f"aria2 not seeding after 60s: {st}\n{a.excerpt()}")
        time.sleep(0.1)
    tracker.wait_peers(ih)  # no --peer: the tracker is the only way to find aria2
    z, logp = ctx.run_zig(transport=None)
    downloads = ctx.sub("downloads")
    expected = H.expected_files(src, name)
    seen = set()

    def moved():
        peer_ids(a, gid, seen)
        return int(a.status(gid)["uploadLength"])
    tr = transfer("zigtorrent downloading from aria2", size,
                  lambda: H.sizes_complete(downloads, expected), moved,
                  {"zigtorrent": z, "aria2c": a.proc},
                  lambda: f"{dropped(logp)}\n{zig_excerpt(logp)}\naria2 log:\n{a.excerpt()}")
    compare(src, os.path.join(downloads, name), "zigtorrent's copy")
    sent = wait_count("aria2's uploadLength", lambda: int(a.status(gid)["uploadLength"]), size)
    # aria2 has no uTP: whatever zigtorrent's default transport, it must have ended on TCP.
    conns = zig_talked_to(logp, ARIA2_ID, transport="tcp")
    span = connect_to_complete(logp, ARIA2_ID)
    if span:  # the data phase can be too short to time by polling; our log times it exactly
        timed = f"; connect to complete in {span:.2f}s ({size / max(span, 1e-3) / 1e6:.1f} MB/s)"
    else:
        timed = ""
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    a.stop()
    return (f"{tr.figure()}{timed}; {len(expected)} files; aria2 uploaded {sent} bytes, "
            f"listed peers {sorted(seen)}; zigtorrent saw {describe(conns)}; "
            f"SIGINT exit 0 in {secs:.1f}s")


def aria2_leeches(ctx):
    """zigtorrent seeds the 24 MiB file; aria2 finds it through the tracker and downloads it."""
    ctx.zig.check_exists()
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    size = total_size(src)
    tracker = ctx.tracker()
    t, ih = ctx.torrent(src, [tracker.http])  # automatic piece length: 1536 x 16 KiB
    tracker.allow([ih])
    shutil.copy(src, ctx.sub("downloads"))
    z, logp = ctx.run_zig(transport=None)
    wait_zig_seeding(z, logp)
    tracker.wait_peers(ih)
    a = H.Aria2(ctx.sub("aria2"))
    got_dir = ctx.sub("aria2-data")
    # seed-time 0: aria2 stops the download as soon as it is complete (status "complete").
    gid = a.add_torrent(t, dir=got_dir, seed_time="0")
    seen = set()
    state = {}

    def moved():
        st = a.status(gid)
        state.update(st)
        peer_ids(a, gid, seen)
        return int(st["completedLength"])

    def done():
        if state.get("status") in ("error", "removed"):
            raise H.CheckFailed(f"aria2 download {state['status']}: {state.get('errorMessage')}"
                                f"\n{a.excerpt()}")
        return state.get("status") == "complete"
    tr = transfer("aria2 downloading from zigtorrent", size, done, moved,
                  {"zigtorrent": z, "aria2c": a.proc},
                  lambda: f"{dropped(logp)}\naria2 listed peers {sorted(seen)}\n"
                          f"{zig_excerpt(logp)}")
    if state.get("errorCode", "0") != "0":
        raise H.CheckFailed(f"aria2 finished with error code {state['errorCode']}")
    # aria2 started from an empty folder and zigtorrent was the only seeder it could reach.
    compare(src, os.path.join(got_dir, name), "aria2's copy")
    conns = zig_talked_to(logp, ARIA2_ID, transport="tcp")  # aria2 has no uTP
    rc = a.shutdown()
    if rc != 0:
        raise H.CheckFailed(f"aria2c exit code {rc} after aria2.shutdown (want 0)\n{a.excerpt()}")
    secs, _ = H.graceful_stop(z, signal.SIGTERM)
    return (f"{tr.figure()}; aria2 complete, exit 0, listed peers {sorted(seen)}; "
            f"zigtorrent saw {describe(conns)}; SIGTERM exit 0 in {secs:.1f}s")


# --------------------------------------------------------------------------------------------
# Transmission over TCP


def _tr_peer_sampler(trn, tid, counter, seen):
    def moved():
        t = trn.torrent(tid)
        for p in t["peers"]:
            seen.add((p["clientName"], "uTP" if p["isUTP"] else "TCP"))
        return t[counter]
    return moved


def _tr_checks(seen):
    utp = [s for s in seen if s[1] != "TCP"]
    if utp:
        raise H.CheckFailed(f"Transmission (uTP off) reported uTP peers: {utp}")


def transmission_seeds_tcp(ctx):
    """Transmission (TCP only) seeds the 24 MiB file; zigtorrent --transport tcp dials it."""
    ctx.zig.check_exists()
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    size = total_size(src)
    t, _ = ctx.torrent(src)  # no tracker: Transmission 3.00 would ignore 127.x peers from one
    data = ctx.sub("tr-data")
    shutil.copy(src, data)
    trn = H.Transmission(ctx.sub("transmission"), data, utp=False)
    tid = trn.add(t, data)
    trn.wait_seeding(tid)
    z, logp = ctx.run_zig("tcp", peers=[f"127.0.0.1:{trn.peer_port}"])
    downloads = ctx.sub("downloads")
    expected = H.expected_files(src, name)
    seen = set()
    tr = transfer("zigtorrent downloading from Transmission", size,
                  lambda: H.sizes_complete(downloads, expected),
                  _tr_peer_sampler(trn, tid, "uploadedEver", seen),
                  {"zigtorrent": z, "transmission-daemon": trn.proc},
                  lambda: f"{dropped(logp)}\n{zig_excerpt(logp)}\n"
                          f"transmission:\n{H.tail(trn.log)}")
    compare(src, os.path.join(downloads, name), "zigtorrent's copy")
    sent = wait_count("Transmission's uploadedEver", lambda: trn.torrent(tid)["uploadedEver"], size)
    _tr_checks(seen)
    conns = zig_talked_to(logp, TRANSMISSION_ID, transport="tcp")
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    trn.stop()
    return (f"{tr.figure()}; Transmission uploaded {sent} bytes, listed peers {sorted(seen)}; "
            f"zigtorrent saw {describe(conns)}; SIGINT exit 0 in {secs:.1f}s")


def transmission_leeches_tcp(ctx):
    """zigtorrent --transport tcp seeds the multi-file payload and dials a Transmission leecher."""
    ctx.zig.check_exists()
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    size = total_size(src)
    t, _ = ctx.torrent(src, piece_length=MULTI_PIECE)
    got_dir = ctx.sub("tr-data")
    trn = H.Transmission(ctx.sub("transmission"), got_dir, utp=False)
    tid = trn.add(t, got_dir)
    shutil.copytree(src, os.path.join(ctx.sub("downloads"), name))
    z, logp = ctx.run_zig("tcp", peers=[f"127.0.0.1:{trn.peer_port}"])
    # Transmission before 4.1 never creates zero-length files (transmission#417), so the
    # payload's empty file is not waited for, nor required, in its copy.
    expected = {rel: n for rel, n in H.expected_files(src, name).items() if n}
    seen = set()

    def done():
        # Complete in Transmission's eyes, and every file renamed from `.part` to its name.
        return (trn.torrent(tid, ["percentDone"])["percentDone"] == 1
                and H.sizes_complete(got_dir, expected))
    tr = transfer("Transmission downloading from zigtorrent", size, done,
                  _tr_peer_sampler(trn, tid, "downloadedEver", seen),
                  {"zigtorrent": z, "transmission-daemon": trn.proc},
                  lambda: f"{dropped(logp)}\n{zig_excerpt(logp)}\n"
                          f"transmission:\n{H.tail(trn.log)}")
    compare(src, os.path.join(got_dir, name), "Transmission's copy", skip_empty=True)
    final = trn.torrent(tid)
    if final["corruptEver"]:
        raise H.CheckFailed(f"Transmission discarded {final['corruptEver']} corrupt bytes from us")
    got = wait_count("Transmission's downloadedEver",
                     lambda: trn.torrent(tid)["downloadedEver"], size)
    _tr_checks(seen)
    conns = zig_talked_to(logp, TRANSMISSION_ID, transport="tcp")
    compare(src, os.path.join(ctx.sub("downloads"), name), "zigtorrent's seeded data")
    secs, _ = H.graceful_stop(z, signal.SIGTERM)
    trn.stop()
    return (f"{tr.figure()}; {len(expected)} files; Transmission downloaded {got} bytes, "
            f"0 corrupt, listed peers {sorted(seen)}; zigtorrent saw {describe(conns)}; "
            f"SIGTERM exit 0 in {secs:.1f}s")


SCENARIOS = [aria2_seeds, aria2_leeches, transmission_seeds_tcp, transmission_leeches_tcp]
NEEDS = {"aria2c": "aria2", "transmission-daemon": "transmission-daemon",
         "opentracker": "opentracker"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bin", nargs="?", default=H.default_bin(),
                    help="zigtorrent binary (default: %(default)s)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--keep", action="store_true", help="keep the work folder for inspection")
    args = ap.parse_args()
    scenarios = SCENARIOS
    if args.only:
        names = set(args.only.split(","))
        scenarios = [s for s in SCENARIOS if s.__name__ in names]
        unknown = names - {s.__name__ for s in scenarios}
        if unknown:
            ap.error(f"unknown scenario(s) {sorted(unknown)}; have "
                     f"{', '.join(s.__name__ for s in SCENARIOS)}")
    missing = [pkg for tool, pkg in NEEDS.items() if not shutil.which(tool)]
    if missing:
        print(f"clients.py: missing tools: apt-get install {' '.join(missing)}", file=sys.stderr)
        return 2

    root = tempfile.mkdtemp(prefix="zt-clients-")
    H.log(f"work folder {root}; zigtorrent {args.bin}")
    pay = os.path.join(root, "payloads")
    payloads = {
        "multi": L.make_multi(pay, "multi", MULTI_LAYOUT, seed="clients-multi"),
        "single": L.make_single(pay, "single.bin", SINGLE_SIZE, seed="clients-single"),
    }
    zig = H.Zig(args.bin)
    suite = {}
    return H.run_scenarios(scenarios, lambda name: Ctx(root, name, payloads, zig, suite),
                           root, suite, keep=args.keep,
                           expected=(H.CheckFailed, L.InteropError))


if __name__ == "__main__":
    sys.exit(main())
