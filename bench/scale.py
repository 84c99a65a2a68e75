#!/usr/bin/python3
"""Scale benchmarks: many torrents at rest, and many torrents downloading at once.

  scale.py rest   [--bin PATH] [--count 10000] [--measure 30] [--settle 0]
      COUNT complete single-file torrents (20 KiB each, two 16 KiB pieces) in one watch folder,
      their data in the download folder, every tracker unreachable (127.0.0.1:9 refuses), DHT and
      LSD off. Two starts, each a fresh process: the first with an empty state folder (it checks
      every file), the second on the state the first left (resume). Per start:
        loaded   seconds from spawn until the status lines list COUNT torrents, all seeding
        cpu      % of one core over MEASURE seconds (utime+stime from /proc), starting SETTLE
                 seconds after loaded (0: at once, so the window holds the first retries of
                 the dead tracker, 30-45 s after each torrent's first announce)
        rss      VmRSS at the end of that window, and the peak (VmHWM)
        stop     seconds from SIGINT to exit (must be 0)
  scale.py motion [--bin PATH] [--count 200] [--each BYTES]
      COUNT torrents of EACH bytes (default 1 MiB) seeded by one libtorrent session and found
      through opentracker, downloaded by one fresh zigtorrent process at once (no queue limit);
      then one torrent of
      COUNT x EACH bytes the same way. Reports both aggregate rates (from spawn to the last file
      at its final path) and their ratio.

Torrents are written by this script (a few lines of bencode), so 10,000 take seconds to make.
Generated folders are cached in --work (default /tmp/zt-scale) by count.

Usage: /usr/bin/python3 bench/scale.py rest|motion [options]
"""

import argparse
import hashlib
import os
import shutil
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "interop"))

import harness as H  # noqa: E402

PIECE = 16 * 1024
UNREACHABLE = "http://127.0.0.1:9/announce"  # the discard port: refused at once on loopback


def bencode(v):
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(map(bencode, v)) + b"e"
    if isinstance(v, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, x) for k, x in v.items())
        return b"d" + b"".join(bencode(k) + bencode(x) for k, x in items) + b"e"
    raise TypeError(type(v))


def make_torrent(data_path, name, announce, piece=PIECE):
    """A single-file v1 torrent of `data_path` (hashed here); returns (bytes, info-hash hex)."""
    pieces = b""
    size = 0
    with open(data_path, "rb") as f:
        while True:
            chunk = f.read(piece)
            if not chunk:
                break
            size += len(chunk)
            pieces += hashlib.sha1(chunk).digest()
    info = {"length": size, "name": name, "piece length": piece, "pieces": pieces}
    meta = {"announce": announce, "info": info}
    return bencode(meta), hashlib.sha1(bencode(info)).hexdigest()


def write_data(path, size, seed):
    """`size` deterministic bytes (SHA-256 counter stream of `seed`)."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    with open(path, "wb") as f:
        f.write(out[:size])


def prepare_many(root, count, each, announce, tag):
    """`count` torrents in <root>/<tag>/torrents with their data in <root>/<tag>/data
    (cached); returns (torrents folder, data folder, [info-hash])."""
    base = os.path.join(root, f"{tag}-{count}-{each}")
    torrents, data = os.path.join(base, "torrents"), os.path.join(base, "data")
    marker = os.path.join(base, "complete")
    hashes = os.path.join(base, "hashes")
    if os.path.isfile(marker) and open(marker).read() == announce:
        return torrents, data, open(hashes).read().split()
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(torrents)
    os.makedirs(data)
    H.log(f"making {count} torrents of {each} bytes in {base}")
    ihs = []
    for i in range(count):
        name = f"t{i:05d}.bin"
        write_data(os.path.join(data, name), each, f"{tag}:{i}")
        blob, ih = make_torrent(os.path.join(data, name), name, announce,
                                piece=PIECE if each <= 4 * 1024 * 1024 else 256 * 1024)
        with open(os.path.join(torrents, f"t{i:05d}.torrent"), "wb") as f:
            f.write(blob)
        ihs.append(ih)
    with open(hashes, "w") as f:
        f.write("\n".join(ihs))
    with open(marker, "w") as f:
        f.write(announce)
    return torrents, data, ihs


def proc_cpu(pid):
    """utime+stime of `pid` in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem(pid):
    """(VmRSS, VmHWM) in MiB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


class StatusWatch:
    """Follows zigtorrent's status lines (`<name>: <pct>% ... <state>`) in its log."""

    def __init__(self, log):
        self.log, self.offset, self.partial, self.state = log, 0, "", {}

    def poll(self):
        try:
            with open(self.log, "rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        text = self.partial + chunk.decode("utf-8", "replace")
        lines = text.split("\n")
        self.partial = lines.pop()
        for line in lines:
            s = H.parse_status(line)
            if s:
                self.state[s["name"].rstrip(":")] = s["state"]

    def count(self, state):
        return sum(1 for s in self.state.values() if s == state)


# Status lines at the default interval (2 s), as a user runs it headless: the load time is
# known to within that, and the status lines (printed for torrents whose line changed) are part
# of the CPU figure.
STATUS_INTERVAL = "2"


def zig_start(binary, torrents, downloads, state, log, extra=()):
    argv = [binary, "run", "--headless", "--torrents", torrents, "--downloads", downloads,
            "--state", state, "--listen", str(H.free_port()), "--status-interval",
            STATUS_INTERVAL, *extra]
    if os.environ.get("ZT_LOG"):  # diagnostics: e.g. ZT_LOG=info,zigtorrent_engine=debug
        argv += ["--log-level", os.environ["ZT_LOG"]]
    env = dict(os.environ, ZIGTORRENT_DHT="false", ZIGTORRENT_LSD="false")
    return H.spawn(argv, "zigtorrent run", log, env=env)


def rest_once(binary, torrents, downloads, state, log, count, measure, settle=0.0):
    t0 = time.monotonic()
    p = zig_start(binary, torrents, downloads, state, log)
    watch = StatusWatch(log)
    while True:
        watch.poll()
        if watch.count("seeding") >= count:
            break
        if H.reap_if_exited(p) is not None:
            raise H.CheckFailed(f"zigtorrent exited ({p.returncode}):\n{H.tail(log)}")
        if time.monotonic() - t0 > 600:
            raise H.CheckFailed(f"only {watch.count('seeding')} of {count} seeding after 600 s")
        time.sleep(0.05)
    loaded = time.monotonic() - t0
    time.sleep(settle)
    c0, w0 = proc_cpu(p.pid), time.monotonic()
    time.sleep(measure)
    cpu = (proc_cpu(p.pid) - c0) / (time.monotonic() - w0) * 100
    rss, hwm = proc_mem(p.pid)
    rc, stop_secs, _ = H.stop(p, signal.SIGINT, grace=60)
    return {"loaded_s": loaded, "cpu_pct": cpu, "rss_mib": rss, "hwm_mib": hwm,
            "stop_s": stop_secs, "exit": rc}


def cmd_rest(a):
    torrents, data, _ = prepare_many(a.work, a.count, 20 * 1024, UNREACHABLE, "rest")
    run = os.path.join(a.work, f"rest-run-{a.count}")
    shutil.rmtree(run, ignore_errors=True)
    downloads, state = os.path.join(run, "downloads"), os.path.join(run, "state")
    shutil.copytree(data, downloads)
    os.makedirs(state)
    os.sync()
    time.sleep(2)
    rows = []
    for label in ("first start (checks every file)", "second start (resume from state)"):
        H.log(f"rest: {a.count} torrents, {label}")
        r = rest_once(a.bin, torrents, downloads, state, os.path.join(run, f"log-{len(rows)}"),
                      a.count, a.measure, a.settle)
        r["start"] = label
        rows.append(r)
        H.log(f"rest: {r}")
    print(f"\n{a.count} complete torrents at rest, no peers, tracker unreachable, DHT/LSD off:")
    for r in rows:
        print(f"  {r['start']}: loaded in {r['loaded_s']:.1f} s; {r['cpu_pct']:.1f} % of a core "
              f"over {a.measure} s (from {a.settle} s after loaded); RSS {r['rss_mib']:.0f} MiB (peak {r['hwm_mib']:.0f}); "
              f"SIGINT to exit {r['stop_s']:.2f} s (exit {r['exit']})")
    shutil.rmtree(run, ignore_errors=True)
    return 0 if all(r["exit"] == 0 for r in rows) else 1


def motion_once(a, tracker, torrents, data, ihs, label):
    import lt as L  # libtorrent only for this command
    # The seeder must not be what limits: libtorrent unchokes 8 peers at a time by default (each
    # of our torrents is another peer to it), allows 200 connections, and listens with a backlog
    # of 5, so most of 200 simultaneous dials would lose their SYN and retry 1, 3, 7 s later.
    seed = L.session(H.free_port(), extra={"unchoke_slots_limit": -1, "connections_limit": 2000,
                                           "listen_queue_size": 1024})
    handles = []
    for name in sorted(os.listdir(torrents)):
        handles.append(L.add(seed, os.path.join(torrents, name), data, seed_mode=True))
    tracker.allow(ihs)
    for h in handles:
        h.force_reannounce()
    deadline = time.time() + 120
    while sum(1 for ih in ihs if tracker.scrape(ih)[0] >= 1) < len(ihs):
        if time.time() > deadline:
            raise H.CheckFailed("the seeder never reached the tracker for every torrent")
        time.sleep(0.5)
    run = os.path.join(a.work, f"motion-run-{label}")
    shutil.rmtree(run, ignore_errors=True)
    downloads, state = os.path.join(run, "downloads"), os.path.join(run, "state")
    os.makedirs(downloads)
    os.makedirs(state)
    want = {n: os.path.getsize(os.path.join(data, n)) for n in os.listdir(data)}
    total = sum(want.values())
    os.sync()
    time.sleep(2)
    t0 = time.monotonic()
    log = os.path.join(run, "log")
    # "At once": no queue limit by default (`--max-active 5` is the client's own default).
    p = zig_start(a.bin, torrents, downloads, state, log,
                  extra=["--transport", "tcp", "--max-active-downloads", str(a.max_active)])
    while not H.sizes_complete(downloads, want):
        if H.reap_if_exited(p) is not None:
            raise H.CheckFailed(f"zigtorrent exited ({p.returncode}):\n{H.tail(log)}")
        if time.monotonic() - t0 > 900:
            raise H.CheckFailed(f"{label}: not complete after 900 s")
        time.sleep(0.05)
    secs = time.monotonic() - t0
    cpu = proc_cpu(p.pid)
    H.graceful_stop(p, signal.SIGINT, limit=60)
    for n, size in want.items():
        a_ = hashlib.sha1(open(os.path.join(data, n), "rb").read()).digest()
        b_ = hashlib.sha1(open(os.path.join(downloads, n), "rb").read()).digest()
        if a_ != b_:
            raise H.CheckFailed(f"{label}: {n} differs from the source")
    del handles, seed
    if not os.environ.get("ZT_KEEP"):
        shutil.rmtree(run, ignore_errors=True)
    return {"label": label, "torrents": len(ihs), "bytes": total, "seconds": secs,
            "mbps": total / 1e6 / secs, "cpu_s": cpu}


def cmd_motion(a):
    tracker = H.OpenTracker(H.free_port())
    try:
        many = prepare_many(a.work, a.count, a.each, tracker.http, "motion")
        one = prepare_many(a.work, 1, a.count * a.each, tracker.http, "motion-one")
        rows = [motion_once(a, tracker, *many, f"{a.count} torrents"),
                motion_once(a, tracker, *one, "1 torrent")]
    finally:
        tracker.stop()
    print()
    for r in rows:
        print(f"  {r['label']}: {r['bytes'] / 1e6:.0f} MB in {r['seconds']:.2f} s from spawn = "
              f"{r['mbps']:.1f} MB/s, CPU {r['cpu_s']:.2f} s")
    print(f"  aggregate rate of {a.count} torrents / one torrent: "
          f"{rows[0]['mbps'] / rows[1]['mbps']:.2f} (goal >= 0.8)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, count in (("rest", 10000), ("motion", 200)):
        s = sub.add_parser(name)
        s.add_argument("--bin", default=H.default_bin())
        s.add_argument("--count", type=int, default=count)
        s.add_argument("--work", default="/tmp/zt-scale")
        if name == "rest":
            s.add_argument("--measure", type=float, default=30, help="CPU window, seconds")
            s.add_argument("--settle", type=float, default=0,
                           help="seconds between loaded and the CPU window")
        else:
            s.add_argument("--each", type=int, default=1024 * 1024, help="bytes per torrent")
            s.add_argument("--max-active", type=int, default=0,
                           help="zigtorrent's --max-active-downloads (0: no queue limit)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    try:
        return cmd_rest(a) if a.cmd == "rest" else cmd_motion(a)
    finally:
        H.cleanup()


if __name__ == "__main__":
    sys.exit(main())
