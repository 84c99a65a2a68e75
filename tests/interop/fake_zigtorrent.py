#!/usr/bin/python3
"""A stand-in for the `zigtorrent` binary, built on libtorrent, to dry-run the interop suite.

It speaks the command-line contract (run --headless / create / info) so the harness itself can be
checked before the real binary exists:

    tests/interop/run.sh tests/interop/fake_zigtorrent.py

Like zigtorrent, it keeps incomplete data away from final paths: it downloads into
`<downloads>/.fake-staging` and moves a torrent's files into place once libtorrent has verified all
of it (data already at the final path is checked and seeded where it is). Without that,
libtorrent's preallocated final files fail a_* and d_crash: those checks have teeth.
Not a test of anything else; never used by CI.
"""

import argparse
import glob
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lt as L  # noqa: E402


def cmd_info(a):
    ti = L.lt.torrent_info(a.file)
    fs = ti.files()
    print(f"name: {ti.name()}")
    print(f"info-hash: {ti.info_hashes().v1}")
    print(f"total size: {ti.total_size()}")
    print(f"pieces: {ti.num_pieces()} x {ti.piece_length()}")
    for i in range(fs.num_files()):
        print(f"  {fs.file_size(i):>12}  {fs.file_path(i)}")
    return 0


def cmd_create(a):
    L.make_torrent(a.path, a.o, trackers=a.tracker, piece_length=a.piece_length or 0,
                   private=a.private, comment=a.comment)
    return 0


def cmd_run(a):
    for d in (a.torrents, a.downloads):
        os.makedirs(d, exist_ok=True)
    ses = L.session(a.listen or 6881)
    handles = {}
    staged = {}  # torrent path -> True while its data is in the staging folder
    staging = os.path.join(a.downloads, ".fake-staging")
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    last = retry = 0.0
    while not stop:
        for t in sorted(glob.glob(os.path.join(a.torrents, "*.torrent"))):
            if t not in handles:
                name = L.lt.torrent_info(t).name()
                in_place = os.path.exists(os.path.join(a.downloads, name))
                h = L.add(ses, t, a.downloads if in_place else staging)
                staged[t] = not in_place
                for p in a.peer:
                    host, port = p.rsplit(":", 1)
                    L.connect(h, int(port), host)
                handles[t] = h
        for t, h in handles.items():
            if a.peer and h.status().num_peers == 0 and time.time() - retry > 3:
                for p in a.peer:  # like zigtorrent, keep trying --peer peers
                    host, port = p.rsplit(":", 1)
                    L.connect(h, int(port), host)
                retry = time.time()
            if staged[t] and h.status().is_seeding:
                h.move_storage(a.downloads)
                staged[t] = False
        if time.time() - last > 2:
            last = time.time()
            for h in handles.values():
                s = h.status()
                state = {L.lt.torrent_status.seeding: "seeding",
                         L.lt.torrent_status.downloading: "downloading"}.get(s.state, "checking")
                print(f"{s.name} {s.progress * 100:.1f}% down {s.download_rate} up {s.upload_rate} "
                      f"peers {s.num_peers} {state}", flush=True)
        time.sleep(0.2)
    return 0


def main():
    ap = argparse.ArgumentParser(prog="zigtorrent (libtorrent stand-in)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info")
    i.add_argument("file")
    c = sub.add_parser("create")
    c.add_argument("path")
    c.add_argument("--tracker", action="append", default=[])
    c.add_argument("--piece-length", type=int)
    c.add_argument("--private", action="store_true")
    c.add_argument("--comment")
    c.add_argument("-o", required=True)
    r = sub.add_parser("run")
    r.add_argument("--headless", action="store_true")
    r.add_argument("--torrents", default="torrents")
    r.add_argument("--downloads", default="downloads")
    r.add_argument("--state")
    r.add_argument("--listen", type=int)
    r.add_argument("--peer", action="append", default=[])
    r.add_argument("--transport", default="tcp")
    r.add_argument("--storage", default="fs")
    a = ap.parse_args()
    return {"info": cmd_info, "create": cmd_create, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
