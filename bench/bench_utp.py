#!/usr/bin/python3
"""uTP row of the loopback benchmark: one payload from a uTP-only libtorrent seeder.

    bench/bench_utp.py ZIGTORRENT_BIN [--size BYTES]   (default 1 GiB)

In one run, on 127.0.0.1, uTP only on both sides:
  lt -> lt    a uTP-only libtorrent leecher downloads from a uTP-only libtorrent seeder (baseline)
  lt -> zig   `zigtorrent run --transport utp` downloads from the same seeder
  zig -> lt   zigtorrent seeds over uTP to a uTP-only libtorrent leecher
Each row also prints `drops`: the growth of the kernel's UDP RcvbufErrors counter
(/proc/net/snmp; machine-wide, so on loopback it counts the datagrams either end lost to a full
receive buffer during that row, and any other UDP traffic's); zig -> lt also the drops of the
libtorrent leecher's own socket (/proc/net/udp), which nothing else touches. Prints MB/s for each and ratio = zigtorrent MB/s / libtorrent MB/s (goal >= 1.0), then one
machine-readable line `utp_row {...}` (JSON) for bench.py to pick up.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from utp_seed import socket_drops, udp_counters  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "interop"))
import utp_interop as u  # noqa: E402


def lt_to_lt(env, work):
    s1, s2 = u.free_port(), u.free_port()
    seed = u.lt_session(s1, tcp=False, utp=True)
    h1 = u.lt_add(seed, env.torrent, os.path.dirname(env.data), seed=True)
    leech = u.lt_session(s2, tcp=False, utp=True)
    h2 = u.lt_add(leech, env.torrent, u._mk(work, "lt-lt"), seed=False)
    u.wait_for("seeder", lambda: h1.status().is_seeding, 30)
    t0 = time.monotonic()
    h2.connect_peer(("127.0.0.1", s1))
    u.wait_for("lt leecher", lambda: h2.status().is_seeding, 1800)
    return time.monotonic() - t0


def lt_to_zig(env, work):
    lport, zport = u.free_port(), u.free_port()
    ses = u.lt_session(lport, tcp=False, utp=True)
    h = u.lt_add(ses, env.torrent, os.path.dirname(env.data), seed=True)
    u.wait_for("seeder", lambda: h.status().is_seeding, 30)
    d = u._mk(work, "lt-zig")
    shutil.copy(env.torrent, u._mk(d, "torrents"))
    t0 = time.monotonic()
    zig = u.zig_run(env.bin, d, "utp", zport, peers=[f"127.0.0.1:{lport}"])
    out = os.path.join(d, "downloads", os.path.basename(env.data))
    u.wait_for("zigtorrent", lambda: os.path.isfile(out), 1800)
    took = time.monotonic() - t0
    u.stop(zig)
    if u.sha1_file(out) != env.sha1:
        raise u.Failed("zigtorrent's copy differs")
    return took


LAST_LEECHER_DROPS = {}


def zig_to_lt(env, work):
    zport, lport = u.free_port(), u.free_port()
    d = u._mk(work, "zig-lt")
    shutil.copy(env.torrent, u._mk(d, "torrents"))
    os.link(env.data, os.path.join(u._mk(d, "downloads"), os.path.basename(env.data)))
    zig = u.zig_run(env.bin, d, "utp", zport)
    u.wait_for("zigtorrent to seed",
               lambda: "seeding" in u.log_tail(os.path.join(d, "zig.log"), 3), 600)
    ses = u.lt_session(lport, tcp=False, utp=True)
    h = u.lt_add(ses, env.torrent, u._mk(work, "zig-lt-out"), seed=False)
    t0 = time.monotonic()
    h.connect_peer(("127.0.0.1", zport))
    u.wait_for("lt leecher", lambda: h.status().is_seeding, 1800)
    took = time.monotonic() - t0
    LAST_LEECHER_DROPS["zig_to_lt"] = socket_drops(lport)
    u.stop(zig)
    return took


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bin")
    ap.add_argument("--size", type=int, default=1 << 30)
    ap.add_argument("--rows", default="lt_to_lt,lt_to_zig,zig_to_lt",
                    help="which rows to run (comma-separated); ratios need all three")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="zt-bench-utp-")
    try:
        env = u.Env(args.bin, root, args.size)
        mb = args.size / 1e6
        res = {}
        for name, f in (("lt_to_lt", lt_to_lt), ("lt_to_zig", lt_to_zig),
                        ("zig_to_lt", zig_to_lt)):
            if name not in args.rows.split(","):
                continue
            drops0, _ = udp_counters()
            took = f(env, root)
            drops = udp_counters()[0] - drops0
            res[name] = round(mb / took, 1)
            res[name + "_drops"] = drops
            extra = ""
            if name in LAST_LEECHER_DROPS:
                res[name + "_leecher_drops"] = LAST_LEECHER_DROPS[name]
                extra = f"  leecher socket drops {LAST_LEECHER_DROPS[name]}"
            print(f"{name:10} {res[name]:8.1f} MB/s  ({took:.1f}s)  drops {drops}{extra}",
                  flush=True)
            u.cleanup()
        res["size"] = args.size
        if all(k in res for k in ("lt_to_lt", "lt_to_zig", "zig_to_lt")):
            res["ratio_download"] = round(res["lt_to_zig"] / res["lt_to_lt"], 2)
            res["ratio_upload"] = round(res["zig_to_lt"] / res["lt_to_lt"], 2)
            print(f"ratio download {res['ratio_download']}  upload {res['ratio_upload']} "
                  "(zigtorrent / libtorrent, goal >= 1.0)")
        print("utp_row " + json.dumps(res))
    finally:
        u.cleanup()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
