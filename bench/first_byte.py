#!/usr/bin/python3
"""Time to the first payload byte, from process start, through a real tracker.

A libtorrent seeder (this process) serves a 64 MiB file and is registered with opentracker over
HTTP. Each round starts a fresh `zigtorrent run --headless` on a one-torrent watch folder and
measures, from just before the process is spawned, when its status lines first show downloaded
bytes (`--status-bytes`, every 20 ms; the last status line before the first byte bounds the
error to one interval). Then a fresh libtorrent session (the same machine, same seeder, same
tracker) is timed from its creation to its first payload byte. Rounds alternate; medians are
printed. Nothing is warm: every round uses new folders, a new process and a new announce.

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


def zig_round(binary, torrent, root):
    torrents, downloads = os.path.join(root, "torrents"), os.path.join(root, "downloads")
    os.makedirs(torrents)
    os.symlink(torrent, os.path.join(torrents, "t.torrent"))
    argv = [binary, "run", "--headless", "--torrents", torrents, "--downloads", downloads,
            "--transport", "tcp", "--listen", str(H.free_port()), "--status-interval", "0.02",
            "--status-bytes"]
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         env=dict(os.environ, ZIGTORRENT_DHT="false", ZIGTORRENT_LSD="false"))
    try:
        for line in p.stdout:
            if line.startswith("bytes ") and " downloaded " in line:
                got = int(line.split(" downloaded ")[1].split()[0])
                if got > 0:
                    return time.monotonic() - t0
            if time.monotonic() - t0 > 30:
                break
        raise SystemExit("zigtorrent got no byte within 30 s")
    finally:
        p.terminate()
        p.wait(10)


def lt_round(torrent, root):
    t0 = time.monotonic()
    ses = L.session(H.free_port())
    h = L.add(ses, torrent, root)
    while h.status().total_payload_download == 0:
        if time.monotonic() - t0 > 30:
            raise SystemExit("libtorrent got no byte within 30 s")
        time.sleep(0.002)
    secs = time.monotonic() - t0
    del h, ses
    return secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=H.default_bin())
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    root = tempfile.mkdtemp(prefix="zt-first-byte-")
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
            zig.append(zig_round(a.bin, t, os.path.join(root, f"z{i}")))
            lt.append(lt_round(t, os.path.join(root, f"l{i}")))
            print(f"round {i + 1}: zigtorrent {zig[-1]:.3f} s, libtorrent {lt[-1]:.3f} s", flush=True)
        print(f"median time to first payload byte: zigtorrent {statistics.median(zig):.3f} s "
              f"(from process start), libtorrent {statistics.median(lt):.3f} s (from session creation)")
    finally:
        H.cleanup()


if __name__ == "__main__":
    main()
