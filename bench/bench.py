#!/usr/bin/python3
"""Loopback download benchmark: zigtorrent against libtorrent's own leecher, measured as a user
lives it.

Default (`--mode user`): each download is one fresh leecher process (zigtorrent on a one-torrent
watch folder, or libtorrent's leecher as its own process) that finds a fresh libtorrent seeder
(its own process, started for that download alone) through opentracker over HTTP: no `--peer`,
no warm seeder, no warm-up download. Before each download: `sync` and a 2 s settle, and the
tracker must list that seeder alone. Per round the two leechers alternate which goes first.
Per download:
  seconds     from just before the leecher process is spawned to "all bytes there" (zigtorrent:
              every final file at its full size and no `.part` left, then SIGINT; libtorrent:
              is_seeding); zigtorrent's includes its fsyncs before each file takes its final name
  first byte  from spawn to the seeder's first payload byte out (the seeder polls its counter
              every millisecond and stamps CLOCK_MONOTONIC, which all processes share)
  transfer    MB/s over the transfer phase alone (size / (seconds - first byte))
  MB/s        10^6 bytes over the whole download; CPU seconds (user+sys from wait4); peak RSS
              (VmHWM, polled every 10 ms until the process exits, its stop included) and peak
              sampled RssAnon. Not wait4's ru_maxrss: a child of this Python process inherits
              its RSS at the fork (24-34 MiB with libtorrent loaded) as a floor, which is what
              the zigtorrent rows showed as "peak RSS" before (33-34 MiB) whatever they used
Every download is then SHA-1 checked against the source (not timed).

`--mode quick` is the old shortcut, kept for quick A/B checks of the data path only: one warm
seeder for all rounds, primed by an uncounted download, handed over with `--peer`; no tracker,
no first-byte figure. Its figures flatter whoever pays a start-up cost; don't quote them as
what users see.

Payloads (cached in --work, default /tmp/zt-bench):
  big   one 1 GiB file, 1 MiB pieces
  many  ~1,000 files of 1 KiB-1 MiB in nested folders (~256 MiB), 256 KiB pieces
  enc   the `big` file again from a seeder forcing MSE/PE with RC4 (libtorrent's leecher forcing
        it too, zigtorrent with `--encryption require`); with `big` in the same run the summary
        gives the encrypted/plaintext ratio per client
  small one 64 MiB file, 256 KiB pieces: a quick check of the benchmark itself
  utp   the uTP row: bench_utp.py, one run of 1 GiB over uTP only (libtorrent -> libtorrent,
        libtorrent -> zigtorrent, zigtorrent -> libtorrent; see that file)
  seed  the seeding row (user mode only): the `big` file seeded *to* libtorrent's leecher, once by
        zigtorrent and once by libtorrent, alternating which goes first. Per download: a fresh
        seeder process registered with opentracker (zigtorrent `run` on a one-torrent watch folder
        whose data is complete; libtorrent `lt.py seed`, which checks the data first), `sync` and
        the settle, then a fresh libtorrent leecher (the same settings both times) that finds it
        through the tracker (it waits for its SIGTERM after completing, so its `stopped` announce
        goes out and the next round's settle sees one seeder). zigtorrent seeds as a user's seeder does, from resume state: one
        uncounted start checks the data and writes that state, and every counted start is a
        later one (it still waits for the status line to say seeding before the leecher starts).
          seconds  from leecher spawn to its is_seeding; MB/s over that
          CPU s    of the *seeder* process while the leecher ran (utime+stime from /proc, so
                   libtorrent's recheck at its start is not counted)
          peak RSS of the seeder over its life (VmHWM as above; libtorrent's counts the
                   mapped payload) and its peak sampled RssAnon

The TCP payloads run zigtorrent with `--transport tcp` and a TCP-only libtorrent.

Usage: /usr/bin/python3 bench/bench.py [--bin PATH] [--mode user|quick] [--rounds 3]
           [--payload big,many,enc,utp,seed] [--lt-only]
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "interop"))

import harness as H  # noqa: E402
import lt as L  # noqa: E402

LT_PY = os.path.join(HERE, "..", "tests", "interop", "lt.py")
MIB = 1024 * 1024


def many_layout():
    """~1,000 files, 1 KiB-1 MiB, skewed small (size ~ u^3) so the total lands near 256 MiB."""
    rng = random.Random("zt-bench-many")
    files = []
    for i in range(1000):
        size = 1024 + int((MIB - 1024) * rng.random() ** 3)
        parts = [f"dir{rng.randrange(6)}" for _ in range(rng.randrange(4))]
        files.append(("/".join(parts + [f"file{i:04d}.dat"]), size))
    return files


PAYLOADS = {
    "big": {"piece": MIB},
    "many": {"piece": 256 * 1024},
    "enc": {"piece": MIB, "encryption": "forced"},
    "small": {"piece": 256 * 1024},
    "seed": {"piece": MIB},
}


def make_torrent_apart(src, torrent, trackers, piece):
    """`L.make_torrent` in a child process. libtorrent maps the payload to hash it; in this
    process that resident gigabyte would show in every leecher's peak RSS, because a forked
    child's ru_maxrss keeps the parent's RSS from before its exec."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lt; "
            "lt.make_torrent(sys.argv[2], sys.argv[3], trackers=sys.argv[5:], "
            "piece_length=int(sys.argv[4]))")
    subprocess.run([sys.executable, "-c", code, os.path.dirname(LT_PY), src, torrent, str(piece),
                    *trackers], check=True)


def prepare(work, which, trackers=()):
    """(payload path, torrent path, {rel: (size, sha1)}) for a payload, generating it once (the
    torrent again whenever `trackers` change)."""
    pay = os.path.join(work, "payloads")
    if which in ("big", "enc", "seed"):
        src = L.make_single(pay, "big-1GiB.bin", 1 << 30, seed="zt-bench-big")
    elif which == "small":
        src = L.make_single(pay, "small-64MiB.bin", 64 * MIB, seed="zt-bench-small")
    else:
        src = L.make_multi(pay, "many", many_layout(), seed="zt-bench-many")
    torrent = os.path.join(work, f"{which}.torrent")
    digests = os.path.join(work, f"{which}.digests.json")
    stamp = os.path.join(work, f"{which}.stamp")
    want_stamp = f"{src} {PAYLOADS[which]['piece']} {' '.join(trackers)}"
    if not (os.path.isfile(torrent) and os.path.isfile(digests) and os.path.isfile(stamp)
            and open(stamp).read() == want_stamp):
        H.log(f"{which}: hashing payload and making the torrent")
        make_torrent_apart(src, torrent, trackers, PAYLOADS[which]["piece"])
        with open(digests, "w") as f:
            json.dump(L.tree_digests(src), f)
        with open(stamp, "w") as f:
            f.write(want_stamp)
    with open(digests) as f:
        want = {k: tuple(v) for k, v in json.load(f).items()}
    return src, torrent, want


def mem_kib(pid):
    """(VmHWM, RssAnon) of a live process in KiB. VmHWM counts file pages mapped in too, which
    libtorrent 2.0's mmap disk I/O inflates to roughly the payload size; RssAnon (heap and
    stacks) is the comparable figure, sampled at each poll."""
    hwm = anon = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
                elif line.startswith("RssAnon:"):
                    anon = int(line.split()[1])
    except OSError:
        pass
    return hwm, anon


class Mem:
    """Peak VmHWM and peak sampled RssAnon of one process."""

    def __init__(self, pid):
        self.pid, self.hwm, self.anon = pid, 0, 0

    def poll(self):
        h, a = mem_kib(self.pid)
        self.hwm, self.anon = max(self.hwm, h), max(self.anon, a)


def stop_watching(p, sig, mem, grace=10.0):
    """`H.stop(p, sig, grace)`, polling `mem` until `p` exits, so its VmHWM covers the stop."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while time.time() < deadline and H.reap_if_exited(p) is None:
        mem.poll()
        time.sleep(POLL)
    return H.stop(p, sig, grace=0.1)


# How often completion is polled, for both clients (libtorrent's leecher polls itself as often).
POLL = 0.01


def read_from(path, offset):
    """Text of `path` from byte `offset` on ('' if it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def verify(src, dst, want):
    got = L.tree_digests(dst)
    if got != want:
        bad = [k for k in set(want) | set(got) if want.get(k) != got.get(k)]
        raise H.CheckFailed(f"download at {dst} differs from the source in {len(bad)} file(s): {bad[:3]}")


def warm_cache(src):
    """Read the payload once so every round finds it in the page cache. Without this the first
    download of a run pays for the seeder's disk reads and is slow for a reason that is not the
    client's."""
    for root, _, files in os.walk(src):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def encryption(which):
    return PAYLOADS[which].get("encryption", "default")


class Seeder:
    """A libtorrent seeder process; `first_byte()` reads the monotonic time it stamped when its
    first payload byte went out (user mode)."""

    def __init__(self, proc, port, log):
        self.proc, self.port, self.log = proc, port, log

    def first_byte(self, timeout=5):
        deadline = time.time() + timeout
        while time.time() < deadline:
            m = re.search(r"FIRST_BYTE (\d+\.\d+)", read_from(self.log, 0))
            if m:
                return float(m.group(1))
            time.sleep(0.01)
        return None


def start_seeder(work, which, torrent, src, tag, first_byte=False):
    port = H.free_port()
    logp = os.path.join(work, "logs", f"seeder-{tag}.log")
    if os.path.exists(logp):
        os.remove(logp)
    argv = ["/usr/bin/python3", "-u", LT_PY, "seed", "--torrent", torrent, "--save-path",
            os.path.dirname(src), "--port", str(port), "--encryption", encryption(which)]
    if first_byte:
        argv.append("--first-byte")
    p = H.spawn(argv, "libtorrent seeder", logp, persistent=True)
    deadline = time.time() + 300  # a full recheck of 1 GiB on a slow disk
    while time.time() < deadline:
        text = open(logp).read() if os.path.exists(logp) else ""
        if "SEEDING" in text:
            return Seeder(p, port, logp)
        if "ERROR" in text or p.poll() is not None:
            raise H.CheckFailed(f"seeder failed:\n{H.tail(logp)}")
        time.sleep(0.1)
    raise H.CheckFailed(f"seeder not ready after 300s:\n{H.tail(logp)}")


def settle(tracker, info_hash):
    """Flush dirty pages, let the machine go quiet, and make sure the tracker lists exactly one
    seeder (this download's) and no leftover leecher from an earlier one."""
    os.sync()
    time.sleep(2)
    if tracker is None:
        return
    deadline = time.time() + 30
    while tracker.scrape(info_hash) != (1, 0):
        if time.time() > deadline:
            raise H.CheckFailed(f"tracker still lists {tracker.scrape(info_hash)} (complete, "
                                f"incomplete) for the payload; want (1, 0)")
        time.sleep(0.2)


def run_zig(zig, work, tag, torrent, src, want, seed_port, timeout, extra=()):
    base = os.path.join(work, "runs", tag)
    shutil.rmtree(base, ignore_errors=True)
    torrents, downloads, state = (os.path.join(base, d) for d in ("torrents", "downloads", "state"))
    for d in (torrents, downloads, state):
        os.makedirs(d)
    shutil.copy(torrent, torrents)
    name = os.path.basename(src)
    expected = {(name if os.path.isfile(src) else os.path.join(name, rel)): size
                for rel, (size, _) in want.items()}
    logp = os.path.join(work, "logs", f"{tag}.log")
    t0 = time.time()
    t0_mono = time.monotonic()
    # Status lines every 50 ms (the smallest interval): "seeding" is the cheap trigger to look at the files, whose own
    # check (every size right, no .part left) is what ends the clock. Walking ~1,000 files at
    # that rate would load the machine under test.
    p = zig.run(torrents, downloads, state, logp, listen=H.free_port(),
                peers=[f"127.0.0.1:{seed_port}"] if seed_port else [],
                extra=["--status-interval", "0.05", *extra])
    mem = Mem(p.pid)
    seen = 0
    while True:
        text = read_from(logp, seen)
        seen += len(text)
        if " seeding" in text and H.sizes_complete(downloads, expected):
            break
        mem.poll()
        if H.reap_if_exited(p) is not None:
            raise H.CheckFailed(f"zigtorrent exited early ({p.returncode}):\n{H.tail(logp)}")
        if time.time() - t0 > timeout:
            raise H.CheckFailed(f"zigtorrent not done after {timeout}s:\n{H.tail(logp)}")
        time.sleep(POLL)
    secs = time.time() - t0
    mem.poll()
    rc, _, ru = stop_watching(p, signal.SIGINT, mem)
    note = "" if rc == 0 else f"exit {rc} after SIGINT"
    verify(src, os.path.join(downloads, name), want)
    shutil.rmtree(base, ignore_errors=True)
    return secs, ru, mem, note, t0_mono


def run_lt(work, tag, torrent, src, want, seed_port, timeout, enc="default"):
    base = os.path.join(work, "runs", tag)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    logp = os.path.join(work, "logs", f"{tag}.log")
    if os.path.exists(logp):
        os.remove(logp)
    t0 = time.time()
    t0_mono = time.monotonic()
    peer = ["--peer", f"127.0.0.1:{seed_port}"] if seed_port else []
    p = H.spawn(["/usr/bin/python3", "-u", LT_PY, "leech", "--torrent", torrent, "--save-path", base,
                 "--port", str(H.free_port()), *peer,
                 "--timeout", str(timeout), "--keep-seeding", "--encryption", enc],
                "libtorrent leecher", logp)
    mem = Mem(p.pid)
    while True:
        text = open(logp).read() if os.path.exists(logp) else ""
        if "DONE" in text:
            break
        mem.poll()
        if "ERROR" in text or H.reap_if_exited(p) is not None:
            raise H.CheckFailed(f"libtorrent leecher failed:\n{H.tail(logp)}")
        if time.time() - t0 > timeout:
            raise H.CheckFailed(f"libtorrent leecher not done after {timeout}s:\n{H.tail(logp)}")
        time.sleep(POLL)
    secs = time.time() - t0
    mem.poll()
    rc, _, ru = stop_watching(p, signal.SIGTERM, mem)
    verify(src, os.path.join(base, os.path.basename(src)), want)
    shutil.rmtree(base, ignore_errors=True)
    return secs, ru, mem, "" if rc == 0 else f"exit {rc}", t0_mono


def cpu_seconds(pid):
    """utime + stime of a live process so far, from /proc (all its threads)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # Fields 14 and 15 of proc(5); `rest` starts at field 3.
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class ZigSeeder:
    """zigtorrent seeding the payload where it lies: a one-torrent watch folder, the payload's
    folder as downloads, and one state folder kept across rounds (its resume state is what a
    user's seeder starts from). `prime()` is the uncounted first start that checks the data."""

    def __init__(self, zig, work, torrent, src):
        self.zig, self.work = zig, work
        base = os.path.join(work, "runs", "seed-zigtorrent")
        shutil.rmtree(base, ignore_errors=True)
        self.torrents, self.state = os.path.join(base, "torrents"), os.path.join(base, "state")
        for d in (self.torrents, self.state):
            os.makedirs(d)
        shutil.copy(torrent, self.torrents)
        self.downloads = os.path.dirname(src)

    def start(self, tag, timeout=300):
        """A fresh seeder process; returns (process, log path) once its status says seeding."""
        logp = os.path.join(self.work, "logs", f"seeder-{tag}.log")
        if os.path.exists(logp):
            os.remove(logp)
        p = self.zig.run(self.torrents, self.downloads, self.state, logp, listen=H.free_port(),
                         extra=["--status-interval", "0.5"])
        deadline = time.time() + timeout
        while time.time() < deadline:
            if " seeding" in read_from(logp, 0):
                return p, logp
            if H.reap_if_exited(p) is not None:
                raise H.CheckFailed(f"zigtorrent seeder exited ({p.returncode}):\n{H.tail(logp)}")
            time.sleep(0.05)
        H.stop(p, signal.SIGINT, grace=10)
        raise H.CheckFailed(f"zigtorrent seeder not seeding after {timeout}s:\n{H.tail(logp)}")

    def prime(self):
        H.log("seed: first zigtorrent start checks the data and writes resume state (not counted)")
        p, logp = self.start("zigtorrent-prime")
        rc, _, _ = H.stop(p, signal.SIGINT, grace=10)
        if rc != 0:
            raise H.CheckFailed(f"zigtorrent seeder exit {rc} after SIGINT:\n{H.tail(logp)}")


def run_seed_round(client, zig_seeder, work, tag, torrent, src, want, tracker, ih, timeout):
    """One seeding download: a fresh seeder (`client`), then a fresh libtorrent leecher that finds
    it through the tracker. Returns (seconds, seeder CPU seconds while the leecher ran, seeder
    Mem)."""
    if client == "zigtorrent":
        seeder, _ = zig_seeder.start(tag)
    else:
        seeder = start_seeder(work, "seed", torrent, src, tag).proc
    smem = Mem(seeder.pid)
    try:
        tracker.wait_seeders(ih)
        settle(tracker, ih)
        smem.poll()
        H.log(f"{tag}: libtorrent leecher downloading {sum(s for s, _ in want.values()) / 1e6:.0f} MB")
        base = os.path.join(work, "runs", tag)
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        logp = os.path.join(work, "logs", f"{tag}.log")
        if os.path.exists(logp):
            os.remove(logp)
        t0 = time.time()
        cpu0 = cpu_seconds(seeder.pid)
        leecher = H.spawn(["/usr/bin/python3", "-u", LT_PY, "leech", "--torrent", torrent,
                           "--save-path", base, "--port", str(H.free_port()),
                           "--timeout", str(timeout), "--keep-seeding"], "libtorrent leecher", logp)
        while True:
            text = read_from(logp, 0)
            if "DONE" in text:
                break
            smem.poll()
            if "ERROR" in text or H.reap_if_exited(leecher) is not None:
                raise H.CheckFailed(f"libtorrent leecher failed:\n{H.tail(logp)}")
            if time.time() - t0 > timeout:
                raise H.CheckFailed(f"libtorrent leecher not done after {timeout}s:\n{H.tail(logp)}")
            time.sleep(POLL)
        secs = time.time() - t0
        cpu = cpu_seconds(seeder.pid) - cpu0
        smem.poll()
        H.stop(leecher, signal.SIGTERM, grace=10)
        verify(src, os.path.join(base, os.path.basename(src)), want)
        shutil.rmtree(base, ignore_errors=True)
    finally:
        rc, _, _ = stop_watching(seeder, signal.SIGINT if client == "zigtorrent"
                                 else signal.SIGTERM, smem)
    note = "" if rc == 0 else f"seeder exit {rc}"
    return secs, cpu, smem, note


def run_seed_rows(args, zig, tracker, clients, rows, failures):
    """The seeding row (see the module doc): rounds of the two seeders, alternating."""
    src, torrent, want = prepare(args.work, "seed", [tracker.http])
    ih = L.info_hash(torrent)
    tracker.allow([ih])
    total = sum(s for s, _ in want.values())
    warm_cache(src)
    zig_seeder = None
    if "zigtorrent" in clients:
        zig_seeder = ZigSeeder(zig, args.work, torrent, src)
        zig_seeder.prime()
    for r in range(args.rounds):
        order = clients if r % 2 == 0 else list(reversed(clients))
        for client in order:
            tag = f"seed-{client}-{r + 1}"
            try:
                secs, cpu, mem, note = run_seed_round(client, zig_seeder, args.work, tag, torrent,
                                                      src, want, tracker, ih, args.timeout)
            except H.CheckFailed as e:
                failures.append(f"{tag}: {e}")
                H.log(f"{tag}: FAILED: {e}")
                H.cleanup(everything=False)
                continue
            rows.append({"payload": "seed", "client": client, "round": r + 1, "seconds": secs,
                         "mbps": total / 1e6 / secs, "cpu": cpu, "rss_mib": mem.hwm / 1024,
                         "anon_mib": mem.anon / 1024, "first_byte": None,
                         "transfer_mbps": None, "note": note})
            H.log(f"{tag}: {secs:.2f}s {total / 1e6 / secs:.1f} MB/s seeder cpu {cpu:.2f}s "
                  f"rss {mem.hwm / 1024:.0f} MiB anon {mem.anon / 1024:.0f} MiB {note}")


def run_utp_row(bin_, size, failures):
    """The uTP row: bench_utp.py in its own process (it drives its own libtorrent sessions);
    returns its `utp_row` JSON, or None after recording the failure."""
    H.log(f"utp: bench_utp.py, {size / 1e6:.0f} MB over uTP")
    p = subprocess.run([sys.executable, "-u", os.path.join(HERE, "bench_utp.py"), bin_,
                        "--size", str(size)], capture_output=True, text=True, timeout=3600)
    for line in p.stdout.splitlines():
        H.log(f"utp: {line}")
        if line.startswith("utp_row "):
            return json.loads(line[len("utp_row "):])
    failures.append(f"utp: bench_utp.py exited {p.returncode}: {p.stderr.strip()[-2000:]}")
    return None


def main():
    repo = os.path.dirname(HERE)
    default_bin = os.environ.get("ZIGTORRENT_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target"), "release", "zigtorrent")
    ap = argparse.ArgumentParser(description="zigtorrent vs libtorrent loopback benchmark")
    ap.add_argument("--bin", default=default_bin, help="zigtorrent binary (default: %(default)s)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=("user", "quick"), default="user",
                    help="user: fresh seeder per download, found through opentracker, timed from "
                         "process start (default); quick: one warm seeder handed over with --peer")
    ap.add_argument("--payload", default="big,many,utp",
                    help="comma list of: big, many, enc, small (over TCP), utp (bench_utp.py: 1 GiB "
                         "over uTP), seed (1 GiB seeded to libtorrent's leecher, user mode)")
    ap.add_argument("--utp-size", type=int, default=1 << 30, help="bytes for the utp row")
    ap.add_argument("--work", default="/tmp/zt-bench", help="payload cache and scratch folder")
    ap.add_argument("--lt-only", action="store_true", help="libtorrent leecher only (baseline)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per download")
    args = ap.parse_args()

    payloads = [p for p in args.payload.split(",") if p]
    utp = "utp" in payloads
    seed = "seed" in payloads
    if seed and args.mode != "user":
        ap.error("the seed row runs in user mode only")
    payloads = [p for p in payloads if p not in ("utp", "seed")]
    for p in payloads:
        if p not in PAYLOADS:
            ap.error(f"unknown payload {p}")
    zig = H.Zig(args.bin)
    clients = ["libtorrent"] if args.lt_only else ["zigtorrent", "libtorrent"]
    if not args.lt_only:
        zig.check_exists()
    os.makedirs(os.path.join(args.work, "logs"), exist_ok=True)
    H.log(f"work {args.work}; libtorrent {L.lt.__version__}; clients {clients}; rounds {args.rounds}")

    tracker = None
    if args.mode == "user" and (payloads or seed):
        tracker = H.OpenTracker(H.free_port())
    rows = []
    failures = []
    for which in payloads:
        src, torrent, want = prepare(args.work, which, [tracker.http] if tracker else [])
        ih = L.info_hash(torrent)
        if tracker:
            tracker.allow([ih])
        total = sum(s for s, _ in want.values())
        warm_cache(src)
        enc = encryption(which)
        zig_extra = ["--encryption", "require"] if enc == "forced" else []
        seeder = None
        if args.mode == "quick":
            seeder = start_seeder(args.work, which, torrent, src, which)
            # One uncounted download primes the seeder (libtorrent maps the payload and faults
            # its pages in on first use); otherwise whichever client goes first pays for that.
            H.log(f"{which}: warm-up download (not counted)")
            run_lt(args.work, f"{which}-warmup", torrent, src, want, seeder.port, args.timeout,
                   enc)
        for r in range(args.rounds):
            order = clients if r % 2 == 0 else list(reversed(clients))
            for client in order:
                tag = f"{which}-{client}-{r + 1}"
                try:
                    if args.mode == "user":
                        # A fresh seeder for this download alone, found through the tracker.
                        seeder = start_seeder(args.work, which, torrent, src, tag, first_byte=True)
                        tracker.wait_seeders(ih)
                        settle(tracker, ih)
                    H.log(f"{tag}: downloading {total / 1e6:.0f} MB")
                    peer_port = seeder.port if args.mode == "quick" else None
                    if client == "zigtorrent":
                        secs, ru, mem, note, t0 = run_zig(zig, args.work, tag, torrent, src, want,
                                                          peer_port, args.timeout, zig_extra)
                    else:
                        secs, ru, mem, note, t0 = run_lt(args.work, tag, torrent, src, want,
                                                         peer_port, args.timeout, enc)
                    first = None
                    if args.mode == "user":
                        stamp = seeder.first_byte()
                        first = stamp - t0 if stamp else None
                        H.stop(seeder.proc)
                except H.CheckFailed as e:
                    failures.append(f"{tag}: {e}")
                    H.log(f"{tag}: FAILED: {e}")
                    # The failed leecher, and in user mode its seeder; quick mode's seeder stays.
                    if args.mode == "user" and seeder:
                        H.stop(seeder.proc)
                    H.cleanup(everything=False)
                    continue
                cpu = (ru.ru_utime + ru.ru_stime) if ru else float("nan")
                rss_mib = mem.hwm / 1024
                phase = total / 1e6 / (secs - first) if first is not None and secs > first else None
                rows.append({"payload": which, "client": client, "round": r + 1, "seconds": secs,
                             "mbps": total / 1e6 / secs, "cpu": cpu, "rss_mib": rss_mib,
                             "anon_mib": mem.anon / 1024, "first_byte": first,
                             "transfer_mbps": phase, "note": note})
                H.log(f"{tag}: {secs:.2f}s {total / 1e6 / secs:.1f} MB/s cpu {cpu:.2f}s "
                      f"rss {rss_mib:.0f} MiB anon {mem.anon / 1024:.0f} MiB"
                      + (f" first byte {first:.3f}s transfer {phase:.1f} MB/s" if phase else "")
                      + f" {note}")
        if args.mode == "quick":
            H.stop(seeder.proc)
    if seed:
        run_seed_rows(args, zig, tracker, clients, rows, failures)
    if tracker:
        tracker.stop()
    utp_row = None
    if utp and not args.lt_only:
        utp_row = run_utp_row(args.bin, args.utp_size, failures)

    print()
    print(f"mode {args.mode}")
    print(f"{'payload':8} {'client':11} {'round':>5} {'seconds':>8} {'MB/s':>8} {'1st byte':>8} "
          f"{'xfer MB/s':>9} {'CPU s':>7} {'peak RSS MiB':>12} {'peak anon MiB':>13}  note")
    for row in rows:
        fb = f"{row['first_byte']:.3f}" if row["first_byte"] is not None else "-"
        xf = f"{row['transfer_mbps']:.1f}" if row["transfer_mbps"] is not None else "-"
        print(f"{row['payload']:8} {row['client']:11} {row['round']:>5} {row['seconds']:>8.2f} "
              f"{row['mbps']:>8.1f} {fb:>8} {xf:>9} {row['cpu']:>7.2f} {row['rss_mib']:>12.0f} "
              f"{row['anon_mib']:>13.0f}  {row['note']}")
    print("(peak RSS: VmHWM polled until exit, counts mmapped file pages; peak anon: sampled RssAnon;"
          " seed rows: the seeder's, CPU while the leecher ran)")
    print()
    for which in payloads + (["seed"] if seed else []):
        for client in clients:
            rs = [x for x in rows if x["payload"] == which and x["client"] == client]
            if rs:
                fbs = [x["first_byte"] for x in rs if x["first_byte"] is not None]
                xfs = [x["transfer_mbps"] for x in rs if x["transfer_mbps"] is not None]
                extra = (f", first byte {statistics.median(fbs):.3f} s, transfer phase "
                         f"{statistics.median(xfs):.1f} MB/s" if fbs and xfs else "")
                print(f"{which:8} {client:11} median {statistics.median(x['mbps'] for x in rs):8.1f} MB/s{extra}, "
                      f"CPU {statistics.median(x['cpu'] for x in rs):.2f} s, "
                      f"RSS {statistics.median(x['rss_mib'] for x in rs):.0f} MiB "
                      f"(anon {statistics.median(x['anon_mib'] for x in rs):.0f} MiB)")
        if len(clients) == 2:
            ratios = []
            for r in range(1, args.rounds + 1):
                z = [x for x in rows if (x["payload"], x["client"], x["round"]) == (which, "zigtorrent", r)]
                lt_ = [x for x in rows if (x["payload"], x["client"], x["round"]) == (which, "libtorrent", r)]
                if z and lt_:
                    ratios.append(z[0]["mbps"] / lt_[0]["mbps"])
            if ratios:
                print(f"{which:8} median ratio zigtorrent/libtorrent MB/s: "
                      f"{statistics.median(ratios):.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")
    if "big" in payloads and "enc" in payloads:
        for client in clients:
            med = {w: statistics.median([x["mbps"] for x in rows
                                         if (x["payload"], x["client"]) == (w, client)] or [0])
                   for w in ("big", "enc")}
            if med["big"]:
                print(f"{'enc':8} {client:11} encrypted/plaintext median MB/s: "
                      f"{med['enc'] / med['big']:.2f} ({med['enc']:.1f} / {med['big']:.1f})")
    if utp_row:
        print(f"utp      {utp_row['size'] / 1e6:.0f} MB, one run, uTP only on both sides: "
              f"libtorrent->libtorrent {utp_row['lt_to_lt']} MB/s, "
              f"libtorrent->zigtorrent {utp_row['lt_to_zig']} MB/s (ratio "
              f"{utp_row['ratio_download']}), zigtorrent->libtorrent {utp_row['zig_to_lt']} MB/s "
              f"(ratio {utp_row['ratio_upload']})")
    out = os.path.join(args.work, f"results-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({"mode": args.mode, "rows": rows, "utp": utp_row, "failures": failures,
                   "libtorrent": L.lt.__version__}, f, indent=1)
    print(f"\nresults: {out}")
    if failures:
        print(f"{len(failures)} download(s) FAILED:")
        for f_ in failures:
            print(f"  {f_.splitlines()[0]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
