#!/usr/bin/python3
"""Helpers for driving libtorrent 2.0 (Debian's python3-libtorrent) in interop tests and benchmarks.

Run with /usr/bin/python3: that is the interpreter Debian's python3-libtorrent is built for.

Used two ways:
  * as a library (``import lt as ltx``): payloads, torrents, sessions, waits, tree comparison;
  * as a command (``lt.py seed ...`` / ``lt.py leech ...``) so a seeder or leecher can run as its
    own process, whose CPU time and peak RSS can be measured from outside like any other client.

Everything binds to 127.0.0.1 only, with DHT, LSD, UPnP and NAT-PMP off.
"""

import argparse
import hashlib
import os
import random
import signal
import sys
import time

import libtorrent as lt

# Deterministic payload data is produced in chunks of this size (keeps memory flat for 1 GiB files).
_CHUNK = 4 * 1024 * 1024


class InteropError(Exception):
    """A check failed; the message says what and why."""


# --------------------------------------------------------------------------------------------
# Payloads


def write_file(path, size, seed):
    """Write `size` deterministic pseudo-random bytes derived from `seed` to `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    rng = random.Random(seed)
    left = size
    with open(path + ".tmp", "wb") as f:
        while left > 0:
            n = min(_CHUNK, left)
            f.write(rng.randbytes(n))
            left -= n
    os.replace(path + ".tmp", path)


def make_single(root, name, size, seed="single"):
    """A one-file payload `root/name` of `size` bytes. Returns its path. Reuses a finished one."""
    path = os.path.join(root, name)
    if not (os.path.isfile(path) and os.path.getsize(path) == size):
        write_file(path, size, f"{seed}:{name}:{size}")
    return path


def multi_layout(n_files, min_size, max_size, seed="multi", depth=3, include_empty=True):
    """A deterministic list of (relative path, size) for a nested multi-file tree."""
    rng = random.Random(seed)
    files = []
    for i in range(n_files):
        parts = [f"d{rng.randrange(4)}" for _ in range(rng.randrange(depth + 1))]
        size = rng.randint(min_size, max_size)
        files.append(("/".join(parts + [f"f{i:04d}.bin"]), size))
    if include_empty:
        files.append(("empty.txt", 0))
    return files


def make_multi(root, name, layout, seed="multi"):
    """A folder payload `root/name` with files from `layout` [(relpath, size)]. Returns its path.

    A `.complete` marker records a finished generation so re-runs reuse the cached tree.
    """
    top = os.path.join(root, name)
    marker = os.path.join(root, f".{name}.complete")
    want = repr(sorted(layout))
    if os.path.isfile(marker) and open(marker).read() == want:
        return top
    for rel, size in layout:
        write_file(os.path.join(top, rel), size, f"{seed}:{rel}:{size}")
    with open(marker, "w") as f:
        f.write(want)
    return top


def small_multi(root, name="multi", seed="small-multi"):
    """A small multi-file tree (~6 MiB, nested folders, odd sizes, one empty file) for interop."""
    layout = [
        ("a.bin", 1_000_003),
        ("sub/b.bin", 2_500_000),
        ("sub/deeper/c.bin", 17),
        ("sub/deeper/d.bin", 2 * 1024 * 1024),
        ("z/e.txt", 65_537),
        ("z/empty.dat", 0),
    ]
    return make_multi(root, name, layout, seed)


def tree_digests(path):
    """{relative path: (size, sha1 hex)} of every regular file under `path` (or of the file itself)."""
    out = {}
    if os.path.isfile(path):
        return {os.path.basename(path): _digest(path)}
    for dirpath, _dirs, names in os.walk(path):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.relpath(full, path)] = _digest(full)
    return out


def _digest(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            h.update(b)
    return (os.path.getsize(path), h.hexdigest())


def compare_trees(src, dst):
    """List of human-readable differences between the payload at `src` and the copy at `dst`."""
    if not os.path.exists(dst):
        return [f"{dst} does not exist"]
    a, b = tree_digests(src), tree_digests(dst)
    diffs = []
    for rel in sorted(set(a) | set(b)):
        if rel not in b:
            diffs.append(f"missing {rel}")
        elif rel not in a:
            diffs.append(f"unexpected {rel}")
        elif a[rel] != b[rel]:
            diffs.append(f"differs {rel}: size {b[rel][0]} want {a[rel][0]}")
    return diffs


# --------------------------------------------------------------------------------------------
# Torrents


def make_torrent(payload, out, trackers=(), piece_length=0, private=False, comment=None,
                 source=None):
    """Create a v1-only .torrent of file or folder `payload` at `out`. Returns the info-hash hex.

    libtorrent 2.0 makes hybrid v1+v2 torrents by default; `v1_only` keeps it to what ZigTorrent
    speaks (and avoids BEP 47 pad files). `source` adds an info["source"] string, as private
    trackers do: it gives the same data a distinct info-hash, and a client must hash the info
    dictionary as found, unknown keys included.
    """
    fs = lt.file_storage()
    lt.add_files(fs, payload)
    if fs.num_files() == 0:
        raise InteropError(f"no files found under {payload}")
    ct = lt.create_torrent(fs, piece_length, lt.create_torrent.v1_only)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    if private:
        ct.set_priv(True)
    if comment:
        ct.set_comment(comment)
    ct.set_creator("zigtorrent-interop")
    lt.set_piece_hashes(ct, os.path.dirname(os.path.abspath(payload)))
    entry = ct.generate()
    if source:
        entry[b"info"][b"source"] = source.encode()
    data = lt.bencode(entry)
    with open(out, "wb") as f:
        f.write(data)
    return info_hash(out)


def info_hash(torrent_file):
    """The v1 info-hash (40 hex) of a .torrent file, as libtorrent computes it."""
    ti = lt.torrent_info(torrent_file)
    return str(ti.info_hashes().v1)


# --------------------------------------------------------------------------------------------
# Sessions


# MSE/PE settings by name (`--encryption` of the seed and leech commands): `forced` is RC4 or
# nothing, both ways (enc_policy.forced = 0, enc_level.rc4 = 2); `disabled` plaintext only.
ENCRYPTION = {
    "default": {},
    "forced": {"in_enc_policy": 0, "out_enc_policy": 0, "allowed_enc_level": 2, "prefer_rc4": True},
    "disabled": {"in_enc_policy": 2, "out_enc_policy": 2, "allowed_enc_level": 1},
}


def session(port, upload_rate_limit=0, utp=False, extra=None, download_rate_limit=0):
    """A libtorrent session listening on 127.0.0.1:`port` with every discovery feature off.

    `upload_rate_limit` and `download_rate_limit` (bytes/s, 0 = none) are made to apply to
    loopback peers too: libtorrent puts local-network peers in an unlimited peer class by
    default, so we remap all IPs to the global one.
    """
    settings = {
        "listen_interfaces": f"127.0.0.1:{port}",
        "outgoing_interfaces": "",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        # All peers share 127.0.0.1: without this, a second peer from that IP is refused.
        "allow_multiple_connections_per_ip": True,
        "enable_incoming_utp": utp,
        "enable_outgoing_utp": utp,
        "enable_incoming_tcp": True,
        "enable_outgoing_tcp": True,
        "announce_to_all_trackers": True,
        "announce_to_all_tiers": True,
        # Don't let the session stall on auto-management limits with several torrents.
        "active_downloads": -1,
        "active_seeds": -1,
        "active_limit": -1,
        "upload_rate_limit": upload_rate_limit,
        "download_rate_limit": download_rate_limit,
        "alert_mask": lt.alert_category.error | lt.alert_category.status | lt.alert_category.tracker,
        "user_agent": "zigtorrent-interop/libtorrent-" + lt.__version__,
    }
    if extra:
        settings.update(extra)
    ses = lt.session(settings)
    if upload_rate_limit or download_rate_limit:
        f = lt.ip_filter()
        f.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
        ses.set_peer_class_filter(f)
    wait_listening(ses, port)
    return ses


def wait_listening(ses, port, timeout=10):
    """Wait until the session reports it listens on `port`; raise if it failed to bind."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for a in ses.pop_alerts():
            if isinstance(a, lt.listen_failed_alert):
                raise InteropError(f"libtorrent could not listen on {port}: {a.message()}")
        if ses.listen_port() == port and ses.is_listening():
            return
        time.sleep(0.05)
    raise InteropError(f"libtorrent not listening on {port} after {timeout}s")


def add(ses, torrent_file, save_path, seed_mode=False, upload_limit=0):
    """Add `torrent_file` saving under `save_path`. Data already there is checked before seeding,
    unless `seed_mode` (trust the data, hash lazily). Returns the torrent handle."""
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent_file)
    atp.save_path = save_path
    flags = atp.flags & ~lt.torrent_flags.auto_managed & ~lt.torrent_flags.paused
    if seed_mode:
        flags |= lt.torrent_flags.seed_mode
    atp.flags = flags
    h = ses.add_torrent(atp)
    if upload_limit:
        h.set_upload_limit(upload_limit)
    return h


def connect(handle, port, host="127.0.0.1"):
    """Ask libtorrent to connect this torrent to a peer at host:port."""
    handle.connect_peer((host, port))


def peers(handle):
    """[(ip, port, client, progress)] of this torrent's connected peers."""
    return [(p.ip[0], p.ip[1], p.client.decode("utf-8", "replace") if isinstance(p.client, bytes)
             else str(p.client), p.progress) for p in handle.get_peer_info()]


def errors(ses):
    """Drain alerts, returning messages of error alerts (torrent errors, tracker errors)."""
    msgs = []
    for a in ses.pop_alerts():
        if a.category() & lt.alert_category.error:
            msgs.append(f"{type(a).__name__}: {a.message()}")
    return msgs


def tracker_report(ses):
    """Drain alerts, returning (ok replies, error messages) from trackers."""
    ok, bad = [], []
    for a in ses.pop_alerts():
        if isinstance(a, lt.tracker_reply_alert):
            ok.append(a.message())
        elif isinstance(a, (lt.tracker_error_alert, lt.tracker_warning_alert)):
            bad.append(a.message())
    return ok, bad


def wait_seeding(handle, timeout, connect_to=None, what="libtorrent", seen=None):
    """Wait until `handle` has every piece (and is seeding). Re-asks for the peer `connect_to`
    (a port on 127.0.0.1) now and then in case the first attempt raced the peer's start-up.
    Peers met on the way are added to the set `seen` as "ip:port client" (seeds drop each other
    once both are complete, so the peer list afterwards is usually empty).
    Returns the status. Raises InteropError on timeout or torrent error."""
    start = time.time()
    last_connect = 0.0
    seen = set() if seen is None else seen
    while True:
        st = handle.status()
        if st.errc.value() != 0:
            raise InteropError(f"{what}: torrent error: {st.errc.message()}")
        for p in peers(handle):
            seen.add(f"{p[0]}:{p[1]} {p[2]}")
        if st.is_seeding and st.state == lt.torrent_status.seeding:
            return st
        now = time.time()
        if connect_to and now - last_connect > 3 and st.num_peers == 0:
            connect(handle, connect_to)
            last_connect = now
        if now - start > timeout:
            raise InteropError(
                f"{what}: not complete after {timeout}s: state {st.state}, "
                f"progress {st.progress * 100:.1f}%, peers {st.num_peers}, seen {sorted(seen)}")
        time.sleep(0.01)  # the benchmark times completion through this loop


def wait_checked(handle, timeout=60):
    """Wait until libtorrent finished checking; returns the status (is_seeding tells the result)."""
    start = time.time()
    while True:
        st = handle.status()
        if st.state not in (lt.torrent_status.checking_files, lt.torrent_status.checking_resume_data) \
                and st.has_metadata and time.time() - start > 0.2:
            return st
        if time.time() - start > timeout:
            raise InteropError(f"libtorrent still checking after {timeout}s")
        time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Command line: a seeder or leecher as its own process (used by bench and interop scenarios).


def _cmd_seed(args):
    ses = session(args.port, upload_rate_limit=args.upload_limit,
                  extra=ENCRYPTION[args.encryption])
    h = add(ses, args.torrent, args.save_path, seed_mode=args.seed_mode)
    st = wait_checked(h)
    if not st.is_seeding:
        print(f"ERROR data under {args.save_path} does not match {args.torrent}", flush=True)
        return 1
    print(f"SEEDING {args.port} {info_hash(args.torrent)}", flush=True)
    _run_until_signal(ses, h, args.verbose, first_byte=args.first_byte)
    return 0


def _cmd_leech(args):
    ses = session(args.port, extra=ENCRYPTION[args.encryption])
    start = time.time()
    h = add(ses, args.torrent, args.save_path)
    for p in args.peer:
        host, port = p.rsplit(":", 1)
        connect(h, int(port), host)
    connect_to = int(args.peer[0].rsplit(":", 1)[1]) if args.peer else None
    seen = set()
    try:
        st = wait_seeding(h, args.timeout, connect_to=connect_to, what="libtorrent leecher",
                          seen=seen)
    except InteropError as e:
        print(f"ERROR {e}", flush=True)
        return 1
    secs = time.time() - start
    print(f"DONE {secs:.3f} {st.total_wanted} peers={sorted(seen)}", flush=True)
    if args.keep_seeding:
        _run_until_signal(ses, h, args.verbose)
    return 0


def _run_until_signal(ses, h, verbose, first_byte=False):
    """Until SIGTERM/SIGINT. With `first_byte`, the payload upload counter is polled every
    millisecond until it moves, then `FIRST_BYTE <time.monotonic()>` is printed: CLOCK_MONOTONIC
    is system-wide on Linux, so another process can set it against its own start time."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while first_byte and not stop:
        if h.status().total_payload_upload > 0:
            print(f"FIRST_BYTE {time.monotonic():.6f}", flush=True)
            break
        time.sleep(0.001)
    while not stop:
        time.sleep(0.2)
        if verbose:
            for m in errors(ses):
                print(f"ALERT {m}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seed", help="seed a torrent from data under --save-path until SIGTERM")
    s.add_argument("--torrent", required=True)
    s.add_argument("--save-path", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--upload-limit", type=int, default=0, help="bytes/s, 0 = unlimited")
    s.add_argument("--seed-mode", action="store_true", help="trust the data (no full recheck)")
    s.add_argument("--verbose", action="store_true")
    s.add_argument("--encryption", choices=sorted(ENCRYPTION), default="default")
    s.add_argument("--first-byte", action="store_true",
                   help="print FIRST_BYTE <monotonic seconds> when the first payload byte is sent")
    l = sub.add_parser("leech", help="download a torrent, print DONE <seconds> <bytes>")
    l.add_argument("--torrent", required=True)
    l.add_argument("--save-path", required=True)
    l.add_argument("--port", type=int, required=True)
    l.add_argument("--peer", action="append", default=[], help="IP:PORT to connect to")
    l.add_argument("--timeout", type=float, default=600)
    l.add_argument("--keep-seeding", action="store_true")
    l.add_argument("--verbose", action="store_true")
    l.add_argument("--encryption", choices=sorted(ENCRYPTION), default="default")
    args = ap.parse_args(argv)
    return {"seed": _cmd_seed, "leech": _cmd_leech}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
