#!/usr/bin/python3
"""uTP seeding to other clients: zigtorrent and libtorrent each seed one payload to Transmission
and to qBittorrent over uTP on loopback, and the UDP receive-buffer drops of each run are counted.

    bench/utp_seed.py ZIGTORRENT_BIN [--size BYTES] [--rounds N] [--only tr,qbt] [--seeders zig,lt]

Default 48 MiB, one round. For each leecher (transmission-daemon 3.00, qbittorrent-nox 4.5) and
each seeder (`zigtorrent run --transport utp`, a uTP-only libtorrent 2.0 session), in that order:
a fresh leecher process with an empty download folder is given the torrent, a fresh seeder holding
the payload dials it over uTP, and the run ends when the leecher has every piece verified.

Only uTP can carry the payload: both seeders speak uTP only (zigtorrent's `--transport utp`,
libtorrent with TCP off both ways) and are the side that dials; qBittorrent is also set to uTP
only (`bittorrent_protocol` 2, read back); Transmission 3.00 has no uTP-only switch but reports
each peer's transport, which is printed.

Printed per run: MB/s over the transfer phase (first downloaded byte seen by the leecher to its
completion: Transmission starts a transfer on its 10 s rechoke pulse, so time from start would
mostly measure that pulse; qBittorrent's figures refresh every 0.1 s, so for it this phase is
coarse), MB/s from the dial, `leecher drops`: datagrams the leecher's UDP socket dropped for a
full receive buffer (its own counter in /proc/net/udp, read just before it stops), and
`machine`: the growth of the kernel's RcvbufErrors counter (/proc/net/snmp) over the run,
which also counts any other UDP traffic on the machine. One JSON line `utp_seed {...}` at the
end. Every process started is stopped by PID.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "interop"))
import harness as H  # noqa: E402
import qbt as Q  # noqa: E402
import utp_interop as u  # noqa: E402

# qBittorrent's Web API `bittorrent_protocol`: 0 TCP and uTP, 1 TCP, 2 uTP.
QBT_UTP_ONLY = 2


def udp_counters():
    """(RcvbufErrors, InDatagrams) from /proc/net/snmp."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    names, values = rows[0][1:], [int(v) for v in rows[1][1:]]
    d = dict(zip(names, values))
    return d["RcvbufErrors"], d["InDatagrams"]


def socket_drops(port):
    """Datagrams the UDP sockets bound to `port` dropped for a full receive buffer, over their
    lifetime (last column of /proc/net/udp and udp6): exact for one peer's socket, unlike the
    machine-wide counter."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 12 and int(cols[1].rsplit(":", 1)[1], 16) == port:
                total += int(cols[-1])
    return total


def disk_bytes(path):
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0


class TrLeecher:
    name = "transmission"

    def __init__(self, env, work):
        self.dir = u._mk(work, "tr-data")
        self.trn = H.Transmission(work, self.dir, utp=True)
        self.tid = self.trn.add(env.torrent, self.dir)
        self.port = self.trn.peer_port
        self.seen = set()

    def have(self):
        t = self.trn.torrent(self.tid, ["haveValid", "percentDone", "peers"])
        for p in t["peers"]:
            self.seen.add((p["clientName"], "uTP" if p["isUTP"] else "TCP"))
        return t["haveValid"], t["percentDone"] == 1

    def downloaded(self):
        return self.trn.torrent(self.tid, ["downloadedEver"])["downloadedEver"]

    def transports(self):
        return sorted(self.seen)

    def out(self, env):
        return os.path.join(self.dir, os.path.basename(env.data))

    def stop(self):
        self.trn.stop()


class QbtLeecher:
    name = "qbittorrent"

    def __init__(self, env, work):
        self.dir = u._mk(work, "qbt-data")
        self.q = Q.QBittorrent(u._mk(work, "qbt"), encryption=2)
        self.q._post_form("/api/v2/app/setPreferences",
                          json=json.dumps({"bittorrent_protocol": QBT_UTP_ONLY,
                                           # Stats refresh (ms; default 1500), so the
                                           # first byte is seen within ~0.1 s.
                                           "refresh_interval": 100}))
        got = json.loads(self.q._get("/api/v2/app/preferences")).get("bittorrent_protocol")
        if got != QBT_UTP_ONLY:
            raise H.CheckFailed(f"qBittorrent did not take uTP only (bittorrent_protocol {got})")
        self.hash = H.Zig(env.bin).info_hash(env.torrent)[0]
        self.q.add_torrent_file(env.torrent, self.dir)
        self.port = self.q.peer_port
        self.seen = set()

    def have(self):
        t = self.q.info(self.hash)
        if not t:
            return 0, False
        try:
            peers = json.loads(self.q._get("/api/v2/sync/torrentPeers", hash=self.hash))
            for p in (peers.get("peers") or {}).values():
                self.seen.add((p.get("client", "?"), p.get("connection", "?")))
        except (OSError, ValueError):
            pass
        done = t.get("progress") == 1 and t.get("state") in ("uploading", "stalledUP",
                                                              "queuedUP", "forcedUP")
        # `completed` counts verified pieces, `downloaded` every payload byte received; the
        # first nonzero one marks the first byte.
        return max(int(t.get("completed", 0)), int(t.get("downloaded", 0))), done

    def transports(self):
        return sorted(self.seen)

    def out(self, env):
        return os.path.join(self.dir, os.path.basename(env.data))

    def stop(self):
        self.q.stop()


def zig_seed(env, work, leecher_port):
    d = u._mk(work, "zig")
    shutil.copy(env.torrent, u._mk(d, "torrents"))
    os.link(env.data, os.path.join(u._mk(d, "downloads"), os.path.basename(env.data)))
    zig = u.zig_run(env.bin, d, "utp", u.free_port(), peers=[f"127.0.0.1:{leecher_port}"])
    return lambda: u.stop(zig)


def lt_seed(env, work, leecher_port):
    ses = u.lt_session(u.free_port(), tcp=False, utp=True)
    h = u.lt_add(ses, env.torrent, os.path.dirname(env.data), seed=True)
    u.wait_for("libtorrent to seed", lambda: h.status().is_seeding, 30)
    h.connect_peer(("127.0.0.1", leecher_port))
    # Transmission and qBittorrent may not dial back; repeat the dial while the run waits.
    state = {"ses": ses, "h": h}

    def stop():
        state["ses"].remove_torrent(state["h"])
        state.clear()
    stop.redial = lambda: h.connect_peer(("127.0.0.1", leecher_port))
    return stop


def one_run(env, leecher_cls, seeder, timeout):
    work = env.dir(f"{leecher_cls.name}-{seeder}")
    leecher = leecher_cls(env, work)
    drops0, dgrams0 = udp_counters()
    t_dial = time.monotonic()
    stop_seeder = (zig_seed if seeder == "zig" else lt_seed)(env, work, leecher.port)
    first = None  # (time, bytes) at the first sample with payload
    try:
        end = t_dial + timeout
        last_redial = t_dial
        while True:
            have, done = leecher.have()
            # The clients' own counters refresh coarsely; bytes already on disk show the
            # first payload sooner (both write sparse files).
            have = max(have, disk_bytes(leecher.out(env)))
            now = time.monotonic()
            if first is None and have > 0:
                first = (now, have)
            if done:
                break
            if now > end:
                raise H.CheckFailed(f"{leecher.name} <- {seeder}: {have} of {env.size} bytes "
                                    f"after {timeout}s")
            redial = getattr(stop_seeder, "redial", None)
            if redial and first is None and now - last_redial > 3:
                redial()
                last_redial = now
            time.sleep(0.05)
        t_end = time.monotonic()
    finally:
        leecher_drops = socket_drops(leecher.port)
        stop_seeder()
        transports = leecher.transports()
        leecher.stop()
    drops1, dgrams1 = udp_counters()
    if u.sha1_file(leecher.out(env)) != env.sha1:
        raise H.CheckFailed(f"{leecher.name}'s copy from {seeder} differs")
    t_first, b_first = first if first else (t_dial, 0)
    phase = max(t_end - t_first, 1e-3)
    return {
        "leecher": leecher.name, "seeder": seeder,
        "mbps": round((env.size - b_first) / phase / 1e6, 1),
        "mbps_from_dial": round(env.size / (t_end - t_dial) / 1e6, 1),
        "first_byte_s": round(t_first - t_dial, 1),
        "drops": leecher_drops, "drops_machine": drops1 - drops0,
        "datagrams": dgrams1 - dgrams0,
        "peers": transports,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bin")
    ap.add_argument("--size", type=int, default=48 << 20)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="tr,qbt", help="leechers: tr, qbt")
    ap.add_argument("--seeders", default="zig,lt", help="seeders in run order: zig, lt")
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = ap.parse_args()
    leechers = {"tr": TrLeecher, "qbt": QbtLeecher}
    root = tempfile.mkdtemp(prefix="zt-utp-seed-")
    results = []
    try:
        env = u.Env(args.bin, root, args.size)
        for r in range(args.rounds):
            for key in args.only.split(","):
                for seeder in args.seeders.split(","):
                    res = one_run(env, leechers[key], seeder, args.timeout)
                    res["round"] = r + 1
                    results.append(res)
                    print(f"round {r + 1}  {seeder:3} -> {res['leecher']:12} "
                          f"{res['mbps']:7.1f} MB/s (from dial {res['mbps_from_dial']:.1f}, "
                          f"first byte {res['first_byte_s']}s)  leecher drops {res['drops']:5} "
                          f"(machine {res['drops_machine']} of {res['datagrams']} datagrams)  "
                          f"peers {res['peers']}", flush=True)
                    u.cleanup()
        print("utp_seed " + json.dumps(results))
    finally:
        u.cleanup()
        H.cleanup()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
