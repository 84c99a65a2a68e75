#!/usr/bin/python3
"""Encrypted connections (MSE/PE) against real clients at their strictest settings, on
127.0.0.1 (the fast extension's interop is `e_fast_extension` in interop.py). Every transfer is
checked byte for byte against the source, and every scenario checks from zigtorrent's own log
(`peer connected ... encryption=rc4`) and, where the other client can tell, from its side too,
that the payload went over RC4.

Scenarios (each prints PASS/FAIL with a figure; exit status 1 if any failed):
  e_lt_seeds_tcp      libtorrent forcing RC4 both ways (TCP only) seeds; zigtorrent with the
                      default `--encryption prefer` dials it
  e_lt_leeches_tcp    zigtorrent seeds; a libtorrent leecher forcing RC4 dials us over TCP
  e_lt_seeds_utp      the same seeder over uTP only; `zigtorrent --transport utp` dials it
  e_lt_leeches_utp    a libtorrent leecher forcing RC4 over uTP only dials us
  e_require_forced    `--encryption require` downloads from the RC4-forcing libtorrent seeder
  e_require_plain     `--encryption require` against a plaintext-only libtorrent seeder (both
                      dial each other): no payload moves, no connection is made
  e_qbt_seeds         qBittorrent set to require encryption seeds; zigtorrent dials it
  e_qbt_leeches       zigtorrent seeds; qBittorrent (requiring encryption) downloads from us
  e_tr_seeds          Transmission with encryption "required" seeds; zigtorrent dials it
  e_tr_leeches        zigtorrent seeds and dials a Transmission leecher requiring encryption
  e_aria2_seeds       aria2 with --bt-require-crypto=true seeds; zigtorrent finds it through
                      opentracker and dials it
  e_aria2_leeches     zigtorrent seeds; aria2 requiring RC4 finds us through opentracker

Usage: /usr/bin/python3 tests/interop/encryption.py [BIN] [--only NAME,...] [--keep]
"""

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clients as C  # noqa: E402
import harness as H  # noqa: E402
import lt as L  # noqa: E402
import qbt as Q  # noqa: E402

TIMEOUT = 90
SINGLE_SIZE = 8 * 1024 * 1024 + 3
# How long `--encryption require` and a plaintext-only peer are left to find a way to talk.
REFUSE_WINDOW = 15

# libtorrent's settings for "RC4 or nothing, both ways", and for plaintext only.
LT_FORCED = L.ENCRYPTION["forced"]
LT_PLAIN = L.ENCRYPTION["disabled"]
LT_UTP_ONLY = {"enable_incoming_tcp": False, "enable_outgoing_tcp": False}
LT_ID = "-LT"


class Ctx(C.Ctx):
    def run_zig(self, transport, peers=(), extra=()):
        logp = os.path.join(self.dir, "zigtorrent.log")
        listen = H.free_port()
        z = self.zig.run(self.sub("torrents"), self.sub("downloads"), self.sub("state"), logp,
                         listen=listen, peers=peers, transport=transport,
                         log_level=C.ZIG_LOG_LEVEL,
                         extra=["--status-interval", "0.5", *extra])
        self.zport = listen
        return z, logp


def rc4_connections(logp, client_prefix, transport=None):
    """zigtorrent's log must show a connection to a `client_prefix` peer, and every such
    connection must be RC4-encrypted (over `transport` if given). Returns them."""
    conns = C.zig_talked_to(logp, client_prefix, transport=transport)
    plain = [c for c in conns if c.get("encryption") != "rc4"]
    if plain:
        raise H.CheckFailed(f"connections to {client_prefix}… not RC4-encrypted: {plain}")
    return conns


def describe(conns):
    return ", ".join(sorted({f"{c.get('client')} {c.get('transport')} "
                             f"{'out' if c.get('outgoing') == 'true' else 'in'} "
                             f"{c.get('encryption')}" for c in conns}))


# libtorrent's side of the transfers is held to this rate (bytes/s) so that its peer list, polled
# every 0.1 s, shows the settled connection at least once (unthrottled, 8 MiB take 0.2 s).
LT_RATE = 4_000_000


def lt_flags_sampler(handle, seen):
    """Adds libtorrent's own view of each connected peer (its port, RC4 or not) to `seen`."""
    # A peer still connecting or in its handshake has no encryption flag yet.
    unsettled = L.lt.peer_info.handshake | L.lt.peer_info.connecting

    def sample():
        for p in handle.get_peer_info():
            if p.flags & unsettled:
                continue
            rc4 = bool(p.flags & L.lt.peer_info.rc4_encrypted)
            seen.add((p.ip[1], "rc4" if rc4 else "plain"))
        return handle.status().total_payload_upload + handle.status().total_payload_download
    return sample


def lt_checks(seen, what):
    plain = [s for s in seen if s[1] != "rc4"]
    if plain:
        raise H.CheckFailed(f"{what}: libtorrent lists connections that are not RC4: {plain}")
    if not seen:
        raise H.CheckFailed(f"{what}: libtorrent never listed a connected peer")


def _lt_seed(ctx, src, t, utp, extra):
    port = H.free_port()
    settings = dict(extra)
    if utp:
        settings.update(LT_UTP_ONLY)
    ses = L.session(port, utp=utp, extra=settings, upload_rate_limit=LT_RATE)
    h = L.add(ses, t, os.path.dirname(src))
    if not L.wait_checked(h).is_seeding:
        raise H.CheckFailed(f"libtorrent seeder: data does not match {t}")
    return ses, h, port


def _zig_downloads_from_lt(ctx, utp, zig_extra=(), lt_extra=LT_FORCED):
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    t, _ = ctx.torrent(src)
    # The torrent file sits in the watch folder already: zigtorrent adds it at start.
    _ses, h, port = _lt_seed(ctx, src, t, utp, lt_extra)
    transport = "utp" if utp else "tcp"
    z, logp = ctx.run_zig(transport, peers=[f"127.0.0.1:{port}"], extra=zig_extra)
    downloads = ctx.sub("downloads")
    expected = H.expected_files(src, name)
    seen = set()
    tr = C.transfer(f"zigtorrent downloading from libtorrent over {transport}",
                    C.total_size(src), lambda: H.sizes_complete(downloads, expected),
                    lt_flags_sampler(h, seen), {"zigtorrent": z},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\nlibtorrent saw {seen}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(downloads, name), "zigtorrent's copy")
    lt_checks(seen, "libtorrent seeder")
    conns = rc4_connections(logp, LT_ID, transport=transport)
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    return (f"{tr.figure()}; zigtorrent saw {describe(conns)}; libtorrent saw {sorted(seen)}; "
            f"SIGINT exit 0 in {secs:.1f}s")


def _lt_downloads_from_zig(ctx, utp):
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    t, _ = ctx.torrent(src, piece_length=C.MULTI_PIECE)
    shutil.copytree(src, os.path.join(ctx.sub("downloads"), name))
    transport = "utp" if utp else "tcp"
    z, logp = ctx.run_zig(transport)
    C.wait_zig_seeding(z, logp)
    settings = dict(LT_FORCED)
    if utp:
        settings.update(LT_UTP_ONLY)
    ses = L.session(H.free_port(), utp=utp, extra=settings, download_rate_limit=LT_RATE)
    dst = ctx.sub("lt-data")
    h = L.add(ses, t, dst)
    L.connect(h, ctx.zport)
    seen = set()
    sample = lt_flags_sampler(h, seen)

    def done():
        sample()
        st = h.status()
        return st.is_seeding and st.state == L.lt.torrent_status.seeding

    def moved():
        if h.status().num_peers == 0:
            L.connect(h, ctx.zport)
        return sample()
    tr = C.transfer(f"libtorrent downloading from zigtorrent over {transport}",
                    C.total_size(src), done, moved, {"zigtorrent": z},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\nlibtorrent saw {seen}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(dst, name), "libtorrent's copy")
    lt_checks(seen, "libtorrent leecher")
    conns = rc4_connections(logp, LT_ID, transport=transport)
    if not any(c.get("outgoing") == "false" for c in conns):
        raise H.CheckFailed(f"libtorrent was to dial us; zigtorrent logged {describe(conns)}")
    secs, _ = H.graceful_stop(z, signal.SIGTERM)
    return (f"{tr.figure()}; zigtorrent saw {describe(conns)}; libtorrent saw {sorted(seen)}; "
            f"SIGTERM exit 0 in {secs:.1f}s")


def e_lt_seeds_tcp(ctx):
    return _zig_downloads_from_lt(ctx, utp=False)


def e_lt_leeches_tcp(ctx):
    return _lt_downloads_from_zig(ctx, utp=False)


def e_lt_seeds_utp(ctx):
    return _zig_downloads_from_lt(ctx, utp=True)


def e_lt_leeches_utp(ctx):
    return _lt_downloads_from_zig(ctx, utp=True)


def e_require_forced(ctx):
    return _zig_downloads_from_lt(ctx, utp=False, zig_extra=["--encryption", "require"])


def e_require_plain(ctx):
    """Both sides try: we dial the plaintext-only seeder, it dials us. Nothing may move."""
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    t, _ = ctx.torrent(src)
    _ses, h, port = _lt_seed(ctx, src, t, False, LT_PLAIN)
    z, logp = ctx.run_zig("tcp", peers=[f"127.0.0.1:{port}"], extra=["--encryption", "require"])
    deadline = time.time() + REFUSE_WINDOW
    dials = 0
    peers_seen = set()
    while time.time() < deadline:
        if H.reap_if_exited(z) is not None:
            raise H.CheckFailed(f"zigtorrent exited ({z.returncode}):\n{H.tail(logp)}")
        if dials < 5 and time.time() > deadline - REFUSE_WINDOW + 2 * (dials + 1):
            L.connect(h, ctx.zport)
            dials += 1
        peers_seen.update(p[2] for p in L.peers(h))
        time.sleep(0.2)
    sent = h.status().total_payload_upload
    if sent:
        raise H.CheckFailed(f"the plaintext-only seeder sent {sent} payload bytes")
    got = os.path.join(ctx.sub("downloads"), name)
    if os.path.exists(got) and os.path.getsize(got) == C.total_size(src):
        raise H.CheckFailed(f"{got} is complete although nothing was to be exchanged")
    conns = [c for c in H.peer_connections(logp) if c.get("client", "").startswith(LT_ID)]
    if conns:
        raise H.CheckFailed(f"zigtorrent connected to the plaintext-only peer: {conns}")
    statuses = H.last_status(logp)
    if not statuses:
        raise H.CheckFailed(f"zigtorrent printed no status line:\n{H.tail(logp)}")
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    return (f"{REFUSE_WINDOW}s, {dials} dials from libtorrent and ours to it: 0 payload bytes, "
            f"no connection (libtorrent listed {sorted(p for p in peers_seen if p) or 'none'}); "
            f"SIGINT exit 0 in {secs:.1f}s")


def e_qbt_seeds(ctx):
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    t, ih = ctx.torrent(src)
    data = ctx.sub("qbt-data")
    shutil.copy(src, data)
    q = Q.QBittorrent(ctx.sub("qbt"), encryption=1)
    q.add_torrent_file(t, data)
    q.wait_complete(ih, 60)
    z, logp = ctx.run_zig("tcp", peers=[f"127.0.0.1:{q.peer_port}"])
    downloads = ctx.sub("downloads")
    expected = H.expected_files(src, name)
    tr = C.transfer("zigtorrent downloading from qBittorrent", C.total_size(src),
                    lambda: H.sizes_complete(downloads, expected),
                    lambda: q.info(ih)["uploaded"], {"zigtorrent": z, "qbittorrent": q.proc},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\n{H.tail(q.log)}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(downloads, name), "zigtorrent's copy")
    conns = rc4_connections(logp, "-qB", transport="tcp")
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    q.stop()
    return (f"qBittorrent {q.version} requiring encryption: {tr.figure()}; zigtorrent saw "
            f"{describe(conns)}; SIGINT exit 0 in {secs:.1f}s")


def e_qbt_leeches(ctx):
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    t, ih = ctx.torrent(src, piece_length=C.MULTI_PIECE)
    shutil.copytree(src, os.path.join(ctx.sub("downloads"), name))
    q = Q.QBittorrent(ctx.sub("qbt"), encryption=1)
    z, logp = ctx.run_zig("tcp")
    C.wait_zig_seeding(z, logp)
    dst = ctx.sub("qbt-data")
    q.add_torrent_file(t, dst)
    try:
        q.wait_complete(ih, TIMEOUT, poke=lambda: q.add_peer(ih, f"127.0.0.1:{ctx.zport}"))
    except H.CheckFailed as e:
        raise H.CheckFailed(f"{e}\n{C.dropped(logp)}\n{C.zig_excerpt(logp)}")
    C.compare(src, os.path.join(dst, name), "qBittorrent's copy")
    conns = rc4_connections(logp, "-qB", transport="tcp")
    secs, _ = H.graceful_stop(z, signal.SIGTERM)
    q.stop()
    return (f"qBittorrent {q.version} requiring encryption got every file from us; zigtorrent "
            f"saw {describe(conns)}; SIGTERM exit 0 in {secs:.1f}s")


def e_tr_seeds(ctx):
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    t, _ = ctx.torrent(src)
    data = ctx.sub("tr-data")
    shutil.copy(src, data)
    trn = H.Transmission(ctx.sub("transmission"), data, utp=False, encryption=2)
    tid = trn.add(t, data)
    trn.wait_seeding(tid)
    z, logp = ctx.run_zig("tcp", peers=[f"127.0.0.1:{trn.peer_port}"])
    downloads = ctx.sub("downloads")
    expected = H.expected_files(src, name)
    tr = C.transfer("zigtorrent downloading from Transmission", C.total_size(src),
                    lambda: H.sizes_complete(downloads, expected),
                    lambda: trn.torrent(tid)["uploadedEver"],
                    {"zigtorrent": z, "transmission-daemon": trn.proc},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\n{H.tail(trn.log)}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(downloads, name), "zigtorrent's copy")
    conns = rc4_connections(logp, C.TRANSMISSION_ID, transport="tcp")
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    trn.stop()
    return (f"Transmission requiring encryption: {tr.figure()}; zigtorrent saw "
            f"{describe(conns)}; SIGINT exit 0 in {secs:.1f}s")


def e_tr_leeches(ctx):
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    t, _ = ctx.torrent(src, piece_length=C.MULTI_PIECE)
    got_dir = ctx.sub("tr-data")
    trn = H.Transmission(ctx.sub("transmission"), got_dir, utp=False, encryption=2)
    tid = trn.add(t, got_dir)
    shutil.copytree(src, os.path.join(ctx.sub("downloads"), name))
    z, logp = ctx.run_zig("tcp", peers=[f"127.0.0.1:{trn.peer_port}"])
    expected = {rel: n for rel, n in H.expected_files(src, name).items() if n}

    def done():
        return (trn.torrent(tid, ["percentDone"])["percentDone"] == 1
                and H.sizes_complete(got_dir, expected))
    tr = C.transfer("Transmission downloading from zigtorrent", C.total_size(src), done,
                    lambda: trn.torrent(tid)["downloadedEver"],
                    {"zigtorrent": z, "transmission-daemon": trn.proc},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\n{H.tail(trn.log)}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(got_dir, name), "Transmission's copy", skip_empty=True)
    if trn.torrent(tid)["corruptEver"]:
        raise H.CheckFailed("Transmission discarded corrupt bytes from us")
    conns = rc4_connections(logp, C.TRANSMISSION_ID, transport="tcp")
    secs, _ = H.graceful_stop(z, signal.SIGTERM)
    trn.stop()
    return (f"Transmission requiring encryption: {tr.figure()}; zigtorrent saw "
            f"{describe(conns)}; SIGTERM exit 0 in {secs:.1f}s")


def e_aria2_seeds(ctx):
    src = ctx.payloads["multi"]
    name = os.path.basename(src)
    tracker = ctx.tracker()
    t, ih = ctx.torrent(src, [tracker.http], C.MULTI_PIECE)
    tracker.allow([ih])
    data = ctx.sub("aria2-data")
    shutil.copytree(src, os.path.join(data, name))
    a = H.Aria2(ctx.sub("aria2"), require_crypto=True)
    gid = a.add_torrent(t, dir=data, check_integrity="true", seed_ratio="0.0")
    deadline = time.time() + 60
    while True:
        st = a.status(gid)
        if st.get("seeder") == "true" and st["completedLength"] == st["totalLength"]:
            break
        if st["status"] == "error" or time.time() > deadline:
            raise H.CheckFailed(f"aria2 not seeding: {st}\n{a.excerpt()}")
        time.sleep(0.1)
    tracker.wait_peers(ih)
    z, logp = ctx.run_zig("tcp")
    downloads = ctx.sub("downloads")
    expected = H.expected_files(src, name)
    tr = C.transfer("zigtorrent downloading from aria2", C.total_size(src),
                    lambda: H.sizes_complete(downloads, expected),
                    lambda: int(a.status(gid)["uploadLength"]),
                    {"zigtorrent": z, "aria2c": a.proc},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\n{a.excerpt()}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(downloads, name), "zigtorrent's copy")
    conns = rc4_connections(logp, C.ARIA2_ID, transport="tcp")
    secs, _ = H.graceful_stop(z, signal.SIGINT)
    a.stop()
    return (f"aria2 requiring RC4: {tr.figure()}; zigtorrent saw {describe(conns)}; "
            f"SIGINT exit 0 in {secs:.1f}s")


def e_aria2_leeches(ctx):
    src = ctx.payloads["single"]
    name = os.path.basename(src)
    tracker = ctx.tracker()
    t, ih = ctx.torrent(src, [tracker.http])
    tracker.allow([ih])
    shutil.copy(src, ctx.sub("downloads"))
    z, logp = ctx.run_zig("tcp")
    C.wait_zig_seeding(z, logp)
    tracker.wait_peers(ih)
    a = H.Aria2(ctx.sub("aria2"), require_crypto=True)
    got_dir = ctx.sub("aria2-data")
    gid = a.add_torrent(t, dir=got_dir, seed_time="0")
    state = {}

    def moved():
        state.update(a.status(gid))
        return int(state["completedLength"])

    def done():
        if state.get("status") in ("error", "removed"):
            raise H.CheckFailed(f"aria2 download {state['status']}: {state.get('errorMessage')}"
                                f"\n{a.excerpt()}")
        return state.get("status") == "complete"
    tr = C.transfer("aria2 downloading from zigtorrent", C.total_size(src), done, moved,
                    {"zigtorrent": z, "aria2c": a.proc},
                    lambda: f"{C.dropped(logp)}\n{C.zig_excerpt(logp)}\n{a.excerpt()}",
                    timeout=TIMEOUT)
    C.compare(src, os.path.join(got_dir, name), "aria2's copy")
    conns = rc4_connections(logp, C.ARIA2_ID, transport="tcp")
    a.stop()
    secs, _ = H.graceful_stop(z, signal.SIGTERM)
    return (f"aria2 requiring RC4: {tr.figure()}; zigtorrent saw {describe(conns)}; "
            f"SIGTERM exit 0 in {secs:.1f}s")


SCENARIOS = [e_lt_seeds_tcp, e_lt_leeches_tcp, e_lt_seeds_utp, e_lt_leeches_utp, e_require_forced,
             e_require_plain, e_qbt_seeds, e_qbt_leeches, e_tr_seeds, e_tr_leeches, e_aria2_seeds,
             e_aria2_leeches]
NEEDS = {"aria2c": "aria2", "transmission-daemon": "transmission-daemon",
         "opentracker": "opentracker", "qbittorrent-nox": "qbittorrent-nox"}


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
        print(f"encryption.py: missing tools: apt-get install {' '.join(missing)}",
              file=sys.stderr)
        return 2
    root = tempfile.mkdtemp(prefix="zt-crypto-")
    H.log(f"work folder {root}; libtorrent {L.lt.__version__}; zigtorrent {args.bin}")
    pay = os.path.join(root, "payloads")
    payloads = {
        "multi": L.make_multi(pay, "multi", C.MULTI_LAYOUT, seed="crypto-multi"),
        "single": L.make_single(pay, "single.bin", SINGLE_SIZE, seed="crypto-single"),
    }
    zig = H.Zig(args.bin)
    suite = {}
    return H.run_scenarios(scenarios, lambda name: Ctx(root, name, payloads, zig, suite),
                           root, suite, keep=args.keep,
                           expected=(H.CheckFailed, L.InteropError))


if __name__ == "__main__":
    sys.exit(main())
