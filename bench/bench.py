#!/usr/bin/python3
"""Loopback download benchmark: zigtorrent against libtorrent's own leecher, same seeder, same run.

A libtorrent seeder (its own process) serves each payload on 127.0.0.1. In every round, zigtorrent
and a libtorrent leecher (also its own process) each download into a fresh folder, one after the
other, alternating which goes first. Per download: wall seconds from process start to "all bytes
there" (zigtorrent: every final file at its full size and no `.part` left, then SIGINT; libtorrent:
is_seeding), MB/s (10^6 bytes), CPU seconds (user+sys from wait4) and peak RSS (the larger of polled
VmHWM and wait4's ru_maxrss). Every download is then SHA-1 checked against the source (not timed).

Payloads (cached in --work, default /tmp/zt-bench):
  big   one 1 GiB file, 1 MiB pieces
  many  ~1,000 files of 1 KiB-1 MiB in nested folders (~256 MiB), 256 KiB pieces
  enc   the `big` file again from a seeder forcing MSE/PE with RC4 (libtorrent's leecher forcing
        it too, zigtorrent with `--encryption require`); with `big` in the same run the summary
        gives the encrypted/plaintext ratio per client
  utp   the uTP row: bench_utp.py, one run of 1 GiB over uTP only (libtorrent -> libtorrent,
        libtorrent -> zigtorrent, zigtorrent -> libtorrent; see that file)

Both TCP payloads run zigtorrent with `--transport tcp` and a TCP-only libtorrent.

Usage: /usr/bin/python3 bench/bench.py [--bin PATH] [--rounds 3] [--payload big,many,utp] [--lt-only]
"""

import argparse
import json
import os
import random
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
}


def prepare(work, which):
    """(payload path, torrent path, {rel: (size, sha1)}) for a payload, generating it once."""
    pay = os.path.join(work, "payloads")
    if which in ("big", "enc"):
        src = L.make_single(pay, "big-1GiB.bin", 1 << 30, seed="zt-bench-big")
    else:
        src = L.make_multi(pay, "many", many_layout(), seed="zt-bench-many")
    torrent = os.path.join(work, f"{which}.torrent")
    digests = os.path.join(work, f"{which}.digests.json")
    stamp = os.path.join(work, f"{which}.stamp")
    want_stamp = f"{src} {PAYLOADS[which]['piece']}"
    if not (os.path.isfile(torrent) and os.path.isfile(digests) and os.path.isfile(stamp)
            and open(stamp).read() == want_stamp):
        H.log(f"{which}: hashing payload and making the torrent")
        L.make_torrent(src, torrent, piece_length=PAYLOADS[which]["piece"])
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


def start_seeder(work, which, torrent, src):
    port = H.free_port()
    logp = os.path.join(work, "logs", f"seeder-{which}.log")
    p = H.spawn(["/usr/bin/python3", "-u", LT_PY, "seed", "--torrent", torrent, "--save-path",
                 os.path.dirname(src), "--port", str(port), "--encryption", encryption(which)],
                "libtorrent seeder", logp, persistent=True)
    deadline = time.time() + 300  # a full recheck of 1 GiB on a slow disk
    while time.time() < deadline:
        text = open(logp).read() if os.path.exists(logp) else ""
        if "SEEDING" in text:
            return p, port
        if "ERROR" in text or p.poll() is not None:
            raise H.CheckFailed(f"seeder failed:\n{H.tail(logp)}")
        time.sleep(0.1)
    raise H.CheckFailed(f"seeder not ready after 300s:\n{H.tail(logp)}")


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
    # Status lines every 50 ms (the smallest interval): "seeding" is the cheap trigger to look at the files, whose own
    # check (every size right, no .part left) is what ends the clock. Walking ~1,000 files at
    # that rate would load the machine under test.
    p = zig.run(torrents, downloads, state, logp, listen=H.free_port(),
                peers=[f"127.0.0.1:{seed_port}"], extra=["--status-interval", "0.05", *extra])
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
    rc, _, ru = H.stop(p, signal.SIGINT, grace=10)
    note = "" if rc == 0 else f"exit {rc} after SIGINT"
    verify(src, os.path.join(downloads, name), want)
    shutil.rmtree(base, ignore_errors=True)
    return secs, ru, mem, note


def run_lt(work, tag, torrent, src, want, seed_port, timeout, enc="default"):
    base = os.path.join(work, "runs", tag)
    shutil.rmtree(base, ignore_errors=True)
    os.makedirs(base)
    logp = os.path.join(work, "logs", f"{tag}.log")
    if os.path.exists(logp):
        os.remove(logp)
    t0 = time.time()
    p = H.spawn(["/usr/bin/python3", "-u", LT_PY, "leech", "--torrent", torrent, "--save-path", base,
                 "--port", str(H.free_port()), "--peer", f"127.0.0.1:{seed_port}",
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
    rc, _, ru = H.stop(p, signal.SIGTERM, grace=10)
    verify(src, os.path.join(base, os.path.basename(src)), want)
    shutil.rmtree(base, ignore_errors=True)
    return secs, ru, mem, "" if rc == 0 else f"exit {rc}"


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
    ap.add_argument("--payload", default="big,many,utp",
                    help="comma list of: big, many, enc (over TCP), utp (bench_utp.py: 1 GiB "
                         "over uTP)")
    ap.add_argument("--utp-size", type=int, default=1 << 30, help="bytes for the utp row")
    ap.add_argument("--work", default="/tmp/zt-bench", help="payload cache and scratch folder")
    ap.add_argument("--lt-only", action="store_true", help="libtorrent leecher only (baseline)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per download")
    args = ap.parse_args()

    payloads = [p for p in args.payload.split(",") if p]
    utp = "utp" in payloads
    payloads = [p for p in payloads if p != "utp"]
    for p in payloads:
        if p not in PAYLOADS:
            ap.error(f"unknown payload {p}")
    zig = H.Zig(args.bin)
    clients = ["libtorrent"] if args.lt_only else ["zigtorrent", "libtorrent"]
    if not args.lt_only:
        zig.check_exists()
    os.makedirs(os.path.join(args.work, "logs"), exist_ok=True)
    H.log(f"work {args.work}; libtorrent {L.lt.__version__}; clients {clients}; rounds {args.rounds}")

    rows = []
    failures = []
    for which in payloads:
        src, torrent, want = prepare(args.work, which)
        total = sum(s for s, _ in want.values())
        warm_cache(src)
        seeder, seed_port = start_seeder(args.work, which, torrent, src)
        enc = encryption(which)
        zig_extra = ["--encryption", "require"] if enc == "forced" else []
        # One uncounted download primes the seeder (libtorrent maps the payload and faults its
        # pages in on first use); otherwise whichever client goes first pays for that.
        H.log(f"{which}: warm-up download (not counted)")
        run_lt(args.work, f"{which}-warmup", torrent, src, want, seed_port, args.timeout, enc)
        for r in range(args.rounds):
            order = clients if r % 2 == 0 else list(reversed(clients))
            for client in order:
                tag = f"{which}-{client}-{r + 1}"
                H.log(f"{tag}: downloading {total / 1e6:.0f} MB")
                try:
                    if client == "zigtorrent":
                        secs, ru, mem, note = run_zig(zig, args.work, tag, torrent, src, want,
                                                      seed_port, args.timeout, zig_extra)
                    else:
                        secs, ru, mem, note = run_lt(args.work, tag, torrent, src, want,
                                                     seed_port, args.timeout, enc)
                except H.CheckFailed as e:
                    failures.append(f"{tag}: {e}")
                    H.log(f"{tag}: FAILED: {e}")
                    H.cleanup(everything=False)  # the failed leecher, not the seeder
                    continue
                cpu = (ru.ru_utime + ru.ru_stime) if ru else float("nan")
                rss_mib = max(mem.hwm, ru.ru_maxrss if ru else 0) / 1024
                rows.append({"payload": which, "client": client, "round": r + 1, "seconds": secs,
                             "mbps": total / 1e6 / secs, "cpu": cpu, "rss_mib": rss_mib,
                             "anon_mib": mem.anon / 1024, "note": note})
                H.log(f"{tag}: {secs:.2f}s {total / 1e6 / secs:.1f} MB/s cpu {cpu:.2f}s "
                      f"rss {rss_mib:.0f} MiB anon {mem.anon / 1024:.0f} MiB {note}")
        H.stop(seeder)
    utp_row = None
    if utp and not args.lt_only:
        utp_row = run_utp_row(args.bin, args.utp_size, failures)

    print()
    print(f"{'payload':8} {'client':11} {'round':>5} {'seconds':>8} {'MB/s':>8} {'CPU s':>7} "
          f"{'peak RSS MiB':>12} {'peak anon MiB':>13}  note")
    for row in rows:
        print(f"{row['payload']:8} {row['client']:11} {row['round']:>5} {row['seconds']:>8.2f} "
              f"{row['mbps']:>8.1f} {row['cpu']:>7.2f} {row['rss_mib']:>12.0f} "
              f"{row['anon_mib']:>13.0f}  {row['note']}")
    print("(peak RSS: VmHWM / ru_maxrss, counts mmapped file pages; peak anon: sampled RssAnon)")
    print()
    for which in payloads:
        for client in clients:
            rs = [x for x in rows if x["payload"] == which and x["client"] == client]
            if rs:
                print(f"{which:8} {client:11} median {statistics.median(x['mbps'] for x in rs):8.1f} MB/s, "
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
        json.dump({"rows": rows, "utp": utp_row, "failures": failures,
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
