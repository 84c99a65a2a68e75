#!/usr/bin/python3
"""Time to the first payload byte, from process start, through a real tracker.

A libtorrent seeder (this process) serves a 64 MiB file and is registered with opentracker over
HTTP. Each round starts a fresh `zigtorrent run --headless` on a one-torrent watch folder and
measures, from just before the process is spawned, when the seeder's payload upload counter
first moves (polled every millisecond): the first payload byte sent to it. Then a fresh
libtorrent session in this process (same seeder, same tracker; no process start to pay) is timed
the same way from its creation. Rounds alternate; medians are printed. Nothing is warm: every
round uses new folders, a new process and a new announce.

Usage: /usr/bin/python3 bench/first_byte.py [--bin PATH] [--rounds N]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "interop"))
import harness as H  # noqa: E402
import lt as L  # noqa: E402


def first_upload(seed_h, t0, before, proc=None):
    """Seconds from `t0` until the seeder's payload upload counter moves past `before`."""
    while seed_h.status().total_payload_upload <= before:
        if time.monotonic() - t0 > 30:
            raise SystemExit("no payload byte within 30 s")
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"zigtorrent exited {proc.returncode}")
        time.sleep(0.001)
    return time.monotonic() - t0


def zig_round(binary, torrent, root, seed_h):
    torrents, downloads = os.path.join(root, "torrents"), os.path.join(root, "downloads")
    os.makedirs(torrents)
    os.symlink(torrent, os.path.join(torrents, "t.torrent"))
    argv = [binary, "run", "--headless", "--torrents", torrents, "--downloads", downloads,
            "--transport", "tcp", "--listen", str(H.free_port()),
            "--log-level", os.environ.get("ZT_LOG", "warn")]
    err = open(os.path.join(root, "stderr.log"), "w")
    before = seed_h.status().total_payload_upload
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                         env=dict(os.environ, ZIGTORRENT_DHT="false", ZIGTORRENT_LSD="false"))
    try:
        return first_upload(seed_h, t0, before, p)
    finally:
        p.terminate()
        p.wait(10)


def lt_round(torrent, root, seed_h):
    before = seed_h.status().total_payload_upload
    t0 = time.monotonic()
    ses = L.session(H.free_port())
    h = L.add(ses, torrent, root)
    secs = first_upload(seed_h, t0, before)
    ses.remove_torrent(h)
    del h, ses
    return secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=H.default_bin())
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="zt-first-byte-")
    print(f"work folder {root}", flush=True)
    try:
        src = L.make_single(os.path.join(root, "payload"), "big.bin", 64 * 1024 * 1024)
        tracker = H.OpenTracker(H.free_port())
        url = f"http://127.0.0.1:{tracker.port}/announce"
        t = os.path.join(root, "big.torrent")
        ih = L.make_torrent(src, t, trackers=[url], piece_length=256 * 1024)
        tracker.allow([ih])
        seed = L.session(H.free_port())
        h = L.add(seed, t, os.path.dirname(src))
        L.wait_checked(h)
        tracker.wait_seeders(ih)
        zig, lt = [], []
        for i in range(a.rounds):
            zig.append(zig_round(a.bin, t, os.path.join(root, f"z{i}"), h))
            time.sleep(1)  # let the seeder drop the last peer
            lt.append(lt_round(t, os.path.join(root, f"l{i}"), h))
            time.sleep(1)
            print(f"round {i + 1}: zigtorrent {zig[-1]:.3f} s, libtorrent {lt[-1]:.3f} s", flush=True)
        print(f"median time to first payload byte: zigtorrent {statistics.median(zig):.3f} s "
              f"(from process spawn), libtorrent {statistics.median(lt):.3f} s (from session "
              f"creation, in-process)")
    finally:
        H.cleanup()


if __name__ == "__main__":
    main()
