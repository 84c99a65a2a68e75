#!/usr/bin/python3
"""uTP interop: zigtorrent against uTP-only libtorrent, Transmission, and over a lossy link.

Run with /usr/bin/python3 (Debian's python3-libtorrent is built for it):

    tests/interop/utp_interop.py BIN [--only NAME,...] [--size BYTES] [--keep]

Scenarios (each asserts byte-identical data; libtorrent ones also that libtorrent itself saw the
connection as uTP, from its peer_info flags):

  lt_seeds_utp        uTP-only libtorrent seeds; `zigtorrent run --transport utp` dials it
  zig_seeds_utp       zigtorrent seeds over uTP; a uTP-only libtorrent leecher dials it
  both_prefers_utp    libtorrent with TCP and uTP seeds; `--transport both` must end on uTP
  both_falls_back     TCP-only libtorrent seeds; `--transport both` must fall back to TCP
  transmission_seeds  transmission-daemon seeds; zigtorrent (uTP only) dials it with --peer
  transmission_leeches zigtorrent seeds over uTP and dials a transmission-daemon leecher
  lossy_link          (root, iproute2) two network namespaces joined by a veth pair losing
                      1 % and delaying 20 ms each way (`tc netem`, or where the kernel has no
                      sch_netem, iptables `statistic` + nfq_delay.py); the link is measured
                      first; a uTP-only libtorrent seeds in one namespace, zigtorrent
                      --transport utp downloads in the other
  lossy_relay         the same through a userspace UDP relay on 127.0.0.1 (1 % loss and
                      20 ms delay each way); runs anywhere

Everything is on 127.0.0.1 or inside namespaces this script creates and deletes. Every process
started is killed by its PID on the way out.
"""

import argparse
import hashlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import libtorrent as lt

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402  (Transmission; its processes are stopped by harness.cleanup)

# libtorrent 2.0 peer_info::utp_socket is 17_bit; the Python binding does not export it.
LT_UTP_SOCKET = 1 << 17

PIECE = 256 * 1024
DEFAULT_SIZE = 24 * 1024 * 1024

_procs = []  # every Popen we started, killed in reverse order by cleanup()
_netns = []  # namespaces we created


# harness raises CheckFailed (from harness.Transmission); one exception type for both.
Failed = H.CheckFailed


# ------------------------------------------------------------------------------------------
# processes, ports, payloads


def spawn(cmd, log, **kw):
    f = open(log, "wb")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **kw)
    _procs.append(p)
    return p


def stop(p, grace=5.0):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _procs:
        _procs.remove(p)


def cleanup():
    for p in reversed(list(_procs)):
        stop(p, 3.0)
    H.cleanup()
    for ns in reversed(list(_netns)):
        subprocess.run(["ip", "netns", "del", ns], check=False)
        _netns.remove(ns)


def free_port():
    """A port number free for both TCP and UDP on 127.0.0.1."""
    for _ in range(50):
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        t.bind(("127.0.0.1", 0))
        port = t.getsockname()[1]
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            u.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        return port
    raise Failed("no free port")


def write_payload(path, size, seed):
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(rng.randbytes(n))
            left -= n


def sha1_file(path):
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_torrent(bin_, data, out):
    subprocess.run([bin_, "create", data, "--piece-length", str(PIECE), "-o", out],
                   check=True, stdout=subprocess.DEVNULL)


# ------------------------------------------------------------------------------------------
# libtorrent


def lt_session(port, tcp, utp, iface="127.0.0.1"):
    s = lt.session({
        "listen_interfaces": f"{iface}:{port}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        "enable_outgoing_tcp": tcp,
        "enable_incoming_tcp": tcp,
        "enable_outgoing_utp": utp,
        "enable_incoming_utp": utp,
        "allow_multiple_connections_per_ip": True,
        # Loopback peers are "local"; keep libtorrent from rate limiting them or us.
        "rate_limit_utp": False,
        "alert_mask": lt.alert.category_t.error_notification
        | lt.alert.category_t.peer_notification
        | lt.alert.category_t.connect_notification,
    })
    return s


def lt_add(ses, torrent, save_path, seed):
    atp = lt.add_torrent_params()
    atp.ti = lt.torrent_info(torrent)
    atp.save_path = save_path
    if seed:
        atp.flags |= lt.torrent_flags.seed_mode
    # Added torrents start paused under the auto manager, which starts them ~0.5 s later;
    # until then libtorrent rejects every incoming peer ("no active torrents").
    atp.flags &= ~(lt.torrent_flags.auto_managed | lt.torrent_flags.paused)
    return ses.add_torrent(atp)


class PeerWatch:
    """Remembers every peer libtorrent reported and whether it was uTP.

    Two sources, since libtorrent drops a seed-to-seed connection as soon as the download ends:
    the peer table (`peer_info.flags & utp_socket`) and the connection alerts
    (`incoming_connection_alert.socket_type`, `peer_connect_alert` text).
    """

    def __init__(self, ses):
        self.ses = ses
        self.seen = {}
        self.alerts = []

    def poll(self, handle):
        for p in handle.get_peer_info():
            key = f"{p.ip[0]}:{p.ip[1]}"
            self.seen[key] = (bool(p.flags & LT_UTP_SOCKET), p.client)
        for a in self.ses.pop_alerts():
            if isinstance(a, lt.incoming_connection_alert):
                key = f"{a.endpoint[0]}:{a.endpoint[1]}"
                utp = a.socket_type == lt.socket_type_t.utp
                self.seen.setdefault(key, (utp, "incoming"))
            elif isinstance(a, lt.peer_connect_alert):
                self.alerts.append(a.message())

    def utp(self):
        return [k for k, (u, _) in self.seen.items() if u]

    def tcp(self):
        return [k for k, (u, _) in self.seen.items() if not u]


# ------------------------------------------------------------------------------------------
# zigtorrent


def zig_run(bin_, work, transport, port, peers=(), bind="127.0.0.1", netns=None):
    torrents = os.path.join(work, "torrents")
    downloads = os.path.join(work, "downloads")
    os.makedirs(torrents, exist_ok=True)
    os.makedirs(downloads, exist_ok=True)
    cmd = [bin_, "run", "--headless", "--torrents", torrents, "--downloads", downloads,
           "--transport", transport, "--listen", str(port), "--bind", bind,
           "--status-interval", "1", "--log-level", os.environ.get("ZT_LOG", "info")]
    for p in peers:
        cmd += ["--peer", p]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    return spawn(cmd, os.path.join(work, "zig.log"))


def wait_for(what, pred, timeout, tick=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if tick:
            tick()
        if pred():
            return
        time.sleep(0.05)
    raise Failed(f"timed out after {timeout:.0f}s waiting for {what}")


def file_done(path, want_sha1):
    return os.path.isfile(path) and sha1_file(path) == want_sha1


def log_tail(path, n=15):
    try:
        with open(path, "rb") as f:
            return b"".join(f.readlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------
# scenarios


class Env:
    def __init__(self, bin_, root, size):
        self.bin = os.path.abspath(bin_)
        self.root = root
        self.size = size
        self.data = os.path.join(root, "src", "payload.bin")
        write_payload(self.data, size, "utp-interop")
        self.sha1 = sha1_file(self.data)
        self.torrent = os.path.join(root, "payload.torrent")
        make_torrent(self.bin, self.data, self.torrent)

    def dir(self, name):
        d = os.path.join(self.root, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d


def lt_seeds(env, name, lt_tcp, lt_utp, zig_transport, expect_utp, timeout=120):
    work = env.dir(name)
    lport, zport = free_port(), free_port()
    ses = lt_session(lport, tcp=lt_tcp, utp=lt_utp)
    h = lt_add(ses, env.torrent, os.path.dirname(env.data), seed=True)
    # add_torrent is asynchronous: a peer arriving before the torrent is in is turned away.
    wait_for("libtorrent to seed", lambda: h.status().is_seeding, 30)
    shutil.copy(env.torrent, _mk(work, "torrents"))
    zig = zig_run(env.bin, work, zig_transport, zport, peers=[f"127.0.0.1:{lport}"])
    out = os.path.join(work, "downloads", "payload.bin")
    watch = PeerWatch(ses)
    t0 = time.monotonic()
    try:
        wait_for("zigtorrent to finish", lambda: file_done(out, env.sha1), timeout,
                 tick=lambda: watch.poll(h))
    except Failed as e:
        raise Failed(f"{e}; zig log:\n{log_tail(os.path.join(work, 'zig.log'))}")
    took = time.monotonic() - t0
    watch.poll(h)
    stop(zig)
    del ses
    return check_transport(watch, expect_utp, f"{env.size / took / 1e6:.1f} MB/s in {took:.1f}s")


def _mk(work, sub):
    d = os.path.join(work, sub)
    os.makedirs(d, exist_ok=True)
    return d


def check_transport(watch, expect_utp, detail):
    if expect_utp and not watch.utp():
        raise Failed(f"libtorrent saw no uTP peer (peers: {watch.seen})")
    if not expect_utp and (watch.utp() or not watch.tcp()):
        raise Failed(f"expected only TCP peers in libtorrent, saw {watch.seen}")
    kind = "uTP" if expect_utp else "TCP"
    return f"{detail}; libtorrent saw {kind} peers {sorted(watch.seen)}"


def zig_seeds_utp(env, timeout=120):
    work = env.dir("zig_seeds_utp")
    zport, lport = free_port(), free_port()
    shutil.copy(env.torrent, _mk(work, "torrents"))
    shutil.copy(env.data, _mk(work, "downloads"))
    zig = zig_run(env.bin, work, "utp", zport)
    wait_for("zigtorrent to seed", lambda: "seeding" in log_tail(os.path.join(work, "zig.log"), 5),
             60)
    ses = lt_session(lport, tcp=False, utp=True)
    save = _mk(work, "lt")
    h = lt_add(ses, env.torrent, save, seed=False)
    h.connect_peer(("127.0.0.1", zport))
    watch = PeerWatch(ses)
    t0 = time.monotonic()
    try:
        wait_for("libtorrent to finish", lambda: h.status().is_seeding, timeout,
                 tick=lambda: watch.poll(h))
    except Failed as e:
        raise Failed(f"{e}; lt progress {h.status().progress:.3f}; zig log:\n"
                     f"{log_tail(os.path.join(work, 'zig.log'))}")
    took = time.monotonic() - t0
    stop(zig)
    del ses
    got = os.path.join(save, "payload.bin")
    if sha1_file(got) != env.sha1:
        raise Failed("libtorrent's copy differs")
    return check_transport(watch, True, f"{env.size / took / 1e6:.1f} MB/s in {took:.1f}s")


# --- Transmission (harness.Transmission: settings, RPC, and why we dial it)


def _tr_sampler(trn, tid, seen):
    def tick():
        for p in trn.torrent(tid, ["peers"])["peers"]:
            seen.add((p["clientName"], "uTP" if p["isUTP"] else "TCP"))
    return tick


def transmission(env, tr_seeds, timeout=120):
    """transmission-daemon with uTP against `zigtorrent --transport utp`, which dials it (a 3.00
    daemon ignores 127.x peers from a tracker). `tr_seeds`: Transmission seeds, else leeches."""
    name = "transmission_seeds" if tr_seeds else "transmission_leeches"
    work = env.dir(name)
    zport = free_port()
    tdata = _mk(work, "tr-data")
    if tr_seeds:
        shutil.copy(env.data, tdata)
    trn = H.Transmission(work, tdata, utp=True)
    tid = trn.add(env.torrent, tdata)
    if tr_seeds:
        trn.wait_seeding(tid)
        done = os.path.join(work, "downloads", "payload.bin")
    else:
        shutil.copy(env.data, _mk(work, "downloads"))
        done = os.path.join(tdata, "payload.bin")
    shutil.copy(env.torrent, _mk(work, "torrents"))
    zig = zig_run(env.bin, work, "utp", zport, peers=[f"127.0.0.1:{trn.peer_port}"])
    seen = set()
    t0 = time.monotonic()
    try:
        wait_for(f"{name} to finish", lambda: file_done(done, env.sha1), timeout,
                 tick=_tr_sampler(trn, tid, seen))
    except Failed as e:
        raise Failed(f"{e}; zig log:\n{log_tail(os.path.join(work, 'zig.log'))}\n"
                     f"tr log:\n{log_tail(trn.log)}")
    took = time.monotonic() - t0
    stop(zig)
    trn.stop()
    # zigtorrent ran uTP only, so the connection was uTP by construction; Transmission's own
    # view is reported when it was sampled in time.
    return (f"{env.size / took / 1e6:.1f} MB/s in {took:.1f}s; "
            f"transmission listed peers {sorted(seen)}")


# --- lossy link


def sh(*cmd):
    subprocess.run(cmd, check=True)


def netns_pair(tag, loss, delay):
    """Two namespaces joined by a veth pair whose every packet, each way, is lost with
    probability `loss` (a fraction) and delayed by `delay` seconds. Returns (a, b, how).

    `tc netem` on each end when the kernel has sch_netem. Otherwise the same link from parts
    this kernel does have: each namespace drops `loss` of what arrives on its veth with the
    iptables `statistic` match (on input, so senders see no EPERM, as with netem) and holds the
    rest for `delay` in an NFQUEUE read by nfq_delay.py. Either way the link is then measured
    (`probe_link`) before it is used."""
    a, b = f"zt-{tag}-a", f"zt-{tag}-b"
    for ns in (a, b):
        subprocess.run(["ip", "netns", "del", ns], check=False, stderr=subprocess.DEVNULL)
        sh("ip", "netns", "add", ns)
        _netns.append(ns)
    sh("ip", "link", "add", f"zt{tag}a", "netns", a, "type", "veth", "peer", "name",
       f"zt{tag}b", "netns", b)
    ends = ((a, f"zt{tag}a", "10.77.0.1"), (b, f"zt{tag}b", "10.77.0.2"))
    for ns, dev, ip in ends:
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    netem = [["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem",
              "loss", f"{loss * 100:g}%", "delay", f"{delay * 1000:g}ms"] for ns, dev, _ in ends]
    first = subprocess.run(netem[0], capture_output=True, text=True)
    if first.returncode == 0:
        sh(*netem[1])
        return a, b, "tc netem"
    if not shutil.which("iptables"):
        raise Failed(f"no sch_netem ({first.stderr.strip()}) and no iptables for the fallback: "
                     "apt-get install iptables")
    delayer = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nfq_delay.py")
    for ns, dev, _ in ends:
        ipt = ["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", dev]
        sh(*ipt, "-m", "statistic", "--mode", "random", "--probability", f"{loss:g}", "-j",
           "DROP")
        sh(*ipt, "-j", "NFQUEUE", "--queue-num", "0")
        log = os.path.join(tempfile.gettempdir(), f"zt-nfq-{ns}.log")
        p = spawn(["ip", "netns", "exec", ns, sys.executable, delayer, "0",
                   f"{delay * 1000:g}"], log)
        wait_for(f"nfq_delay in {ns}", lambda: "ready" in log_tail(log, 5) or p.poll() is not None,
                 10)
        if p.poll() is not None:
            raise Failed(f"nfq_delay in {ns} exited: {log_tail(log)}")
    return a, b, "iptables statistic + NFQUEUE delay (no sch_netem in this kernel)"


PROBE_CHILD = r"""
import socket, sys, time
mode, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if mode == "echo":
    s.bind((host, 9)); s.settimeout(5); print("listening", flush=True)
    try:
        while True:
            d, a = s.recvfrom(64); s.sendto(d, a)
    except socket.timeout:
        pass
else:
    s.settimeout(0.3); rtts = []
    for i in range(n):
        t = time.monotonic(); s.sendto(b"%d" % i, (host, 9))
        try:
            while s.recv(64) != b"%d" % i:
                pass
            rtts.append(time.monotonic() - t)
        except socket.timeout:
            pass
    rtts.sort()
    print(len(rtts), rtts[len(rtts) // 2] if rtts else -1)
"""


def probe_link(a, b, n=500):
    """UDP echoes from namespace a to b: (median round trip in seconds, fraction lost)."""
    log = os.path.join(tempfile.gettempdir(), "zt-probe-echo.log")
    echo = spawn(["ip", "netns", "exec", b, sys.executable, "-c", PROBE_CHILD, "echo",
                  "10.77.0.2", "0"], log)
    wait_for("the echo server", lambda: "listening" in log_tail(log, 2), 10)
    out = subprocess.run(["ip", "netns", "exec", a, sys.executable, "-c", PROBE_CHILD, "ping",
                          "10.77.0.2", str(n)], capture_output=True, text=True, timeout=120)
    stop(echo)
    try:
        got, median = out.stdout.split()
        return float(median), 1 - int(got) / n
    except ValueError:
        raise Failed(f"link probe failed: {out.stdout!r} {out.stderr[-500:]!r}")


LT_SEED_CHILD = r"""
import sys, time, libtorrent as lt
sys.path.insert(0, sys.argv[1])
import utp_interop as u
ses = u.lt_session(int(sys.argv[2]), tcp=False, utp=True, iface=sys.argv[3])
h = u.lt_add(ses, sys.argv[4], sys.argv[5], seed=True)
while True:
    flags = [bool(p.flags & u.LT_UTP_SOCKET) for p in h.get_peer_info()]
    print("peers utp=%s" % flags, flush=True)
    time.sleep(1)
"""


def lossy_link(env, timeout=300, loss=0.01, delay=0.020):
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise Failed("needs root and iproute2 to build the namespace pair")
    work = env.dir("lossy_link")
    a, b, how = netns_pair("l", loss, delay)
    rtt, lost = probe_link(a, b)
    # Round trip = two one-way delays; a loss of 1 % each way loses ~2 % of echoes.
    if not (2 * delay <= rtt < 2 * delay + 0.030) or not (0 < lost < 10 * loss):
        raise Failed(f"the emulated link is wrong: rtt {rtt * 1000:.1f} ms, echo loss "
                     f"{lost:.1%} ({how})")
    port = 6881
    seeder = spawn(["ip", "netns", "exec", a, sys.executable, "-c", LT_SEED_CHILD,
                    os.path.dirname(os.path.abspath(__file__)), str(port), "10.77.0.1",
                    env.torrent, os.path.dirname(env.data)], os.path.join(work, "lt.log"))
    shutil.copy(env.torrent, _mk(work, "torrents"))
    zig = zig_run(env.bin, work, "utp", port, peers=[f"10.77.0.1:{port}"], bind="10.77.0.2",
                  netns=b)
    out = os.path.join(work, "downloads", "payload.bin")
    t0 = time.monotonic()
    try:
        wait_for("zigtorrent to finish over the lossy link", lambda: file_done(out, env.sha1),
                 timeout)
    except Failed as e:
        raise Failed(f"{e}; zig log:\n{log_tail(os.path.join(work, 'zig.log'))}\n"
                     f"lt log:\n{log_tail(os.path.join(work, 'lt.log'), 3)}")
    took = time.monotonic() - t0
    lt_saw = "utp=[True" in log_tail(os.path.join(work, "lt.log"), 200)
    stop(zig)
    stop(seeder)
    cleanup()
    if not lt_saw:
        raise Failed("libtorrent did not report a uTP peer")
    return (f"{how}, loss {loss:.0%} and delay {delay * 1000:.0f} ms each way (measured: rtt "
            f"{rtt * 1000:.1f} ms, echo loss {lost:.1%}): {env.size / took / 1e6:.2f} MB/s in "
            f"{took:.1f}s; libtorrent saw uTP")


class LossyRelay:
    """A UDP relay on 127.0.0.1 that drops `loss` of datagrams and delays the rest by `delay`
    seconds, each way. One client: whoever sends to the front port first. Stands in for
    `tc netem` where the kernel lacks it."""

    def __init__(self, upstream, loss, delay, seed=1):
        import threading
        self.upstream = upstream
        self.loss, self.delay = loss, delay
        self.rng = random.Random(seed)
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind(("127.0.0.1", 0))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.bind(("127.0.0.1", 0))
        for sk in (self.front, self.back):
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.front.getsockname()[1]
        self.client = None
        self.running = True
        self.dropped = self.passed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        import collections
        import select
        queue = collections.deque()  # (due, sock, data, addr): constant delay keeps it sorted
        while self.running:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, sk, data, addr = queue.popleft()
                try:
                    sk.sendto(data, addr)
                except OSError:
                    pass
            wait = max(0.0, queue[0][0] - now) if queue else 0.1
            ready, _, _ = select.select([self.front, self.back], [], [], min(wait, 0.1))
            for sk in ready:
                data, addr = sk.recvfrom(65536)
                if sk is self.front:
                    self.client = addr
                    out, dest = self.back, self.upstream
                else:
                    if self.client is None:
                        continue
                    out, dest = self.front, self.client
                if self.rng.random() < self.loss:
                    self.dropped += 1
                    continue
                self.passed += 1
                queue.append((time.monotonic() + self.delay, out, data, dest))

    def close(self):
        self.running = False
        self.thread.join()
        self.front.close()
        self.back.close()


def lossy_relay(env, timeout=300, loss=0.01, delay=0.020):
    """lt seeds over uTP behind a lossy relay (1 % loss, 20 ms each way); zigtorrent downloads."""
    work = env.dir("lossy_relay")
    lport, zport = free_port(), free_port()
    ses = lt_session(lport, tcp=False, utp=True)
    h = lt_add(ses, env.torrent, os.path.dirname(env.data), seed=True)
    wait_for("libtorrent to seed", lambda: h.status().is_seeding, 30)
    relay = LossyRelay(("127.0.0.1", lport), loss, delay)
    try:
        shutil.copy(env.torrent, _mk(work, "torrents"))
        zig = zig_run(env.bin, work, "utp", zport, peers=[f"127.0.0.1:{relay.port}"])
        out = os.path.join(work, "downloads", "payload.bin")
        watch = PeerWatch(ses)
        t0 = time.monotonic()
        try:
            wait_for("zigtorrent to finish through the lossy relay",
                     lambda: file_done(out, env.sha1), timeout, tick=lambda: watch.poll(h))
        except Failed as e:
            raise Failed(f"{e}; zig log:\n{log_tail(os.path.join(work, 'zig.log'))}")
        took = time.monotonic() - t0
        stop(zig)
    finally:
        relay.close()
    del ses
    detail = (f"relay loss {loss:.0%} delay {delay * 1000:.0f}ms each way, dropped "
              f"{relay.dropped} of {relay.dropped + relay.passed} datagrams: "
              f"{env.size / took / 1e6:.2f} MB/s in {took:.1f}s")
    return check_transport(watch, True, detail)


SCENARIOS = {
    "lt_seeds_utp": lambda env: lt_seeds(env, "lt_seeds_utp", False, True, "utp", True),
    "zig_seeds_utp": zig_seeds_utp,
    "both_prefers_utp": lambda env: lt_seeds(env, "both_prefers_utp", True, True, "both", True),
    "both_falls_back": lambda env: lt_seeds(env, "both_falls_back", True, False, "both", False),
    "transmission_seeds": lambda env: transmission(env, True),
    "transmission_leeches": lambda env: transmission(env, False),
    "lossy_link": lossy_link,
    "lossy_relay": lossy_relay,
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bin", help="zigtorrent binary")
    ap.add_argument("--only", help="comma-separated scenario names")
    ap.add_argument("--size", type=int, default=DEFAULT_SIZE, help="payload bytes")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(SCENARIOS)
    for n in names:
        if n not in SCENARIOS:
            ap.error(f"unknown scenario {n}; have {', '.join(SCENARIOS)}")
    if "transmission_seeds" in names or "transmission_leeches" in names:
        if not shutil.which("transmission-daemon"):
            ap.error("transmission-daemon not found: apt-get install transmission-daemon "
                     "transmission-cli")
    root = tempfile.mkdtemp(prefix="zt-utp-")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failures = 0
    try:
        env = Env(args.bin, root, args.size)
        for n in names:
            t0 = time.monotonic()
            try:
                detail = SCENARIOS[n](env)
                print(f"PASS {n} ({time.monotonic() - t0:.1f}s): {detail}", flush=True)
            except Failed as e:
                failures += 1
                print(f"FAIL {n} ({time.monotonic() - t0:.1f}s): {e}", flush=True)
            finally:
                cleanup()
    finally:
        cleanup()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
