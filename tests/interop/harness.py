"""Process bookkeeping, opentracker, and the zigtorrent binary as seen from outside.

Every process started here is recorded by PID and killed at exit (normal, exception, SIGINT or
SIGTERM): SIGTERM first, SIGKILL after a grace period. Nothing is killed by name.
"""

import atexit
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request

# Every zigtorrent these scripts start talks to loopback only: no public DHT routers, no LAN
# multicast (`--dht-bootstrap` turns the DHT on for a scenario that wants it).
os.environ.setdefault("ZIGTORRENT_DHT", "false")
os.environ.setdefault("ZIGTORRENT_LSD", "false")

_PROCS = []  # (Popen, label, persistent) still to be reaped


class CheckFailed(Exception):
    """A scenario check failed; the message is the reason printed with FAIL."""


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------------------------
# Processes


def spawn(argv, label, stdout_path=None, cwd=None, env=None, persistent=False):
    """Start a process, recording it for cleanup. Output goes to `stdout_path` (stderr too).
    A `persistent` one (a suite-wide service) survives `cleanup(everything=False)`."""
    out = open(stdout_path, "ab") if stdout_path else subprocess.DEVNULL
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         cwd=cwd, env=env)
    if stdout_path:
        out.close()
    _PROCS.append((p, label, persistent))
    log(f"started {label} pid {p.pid}: {' '.join(map(str, argv))}")
    return p


def stop(p, sig=signal.SIGTERM, grace=5.0):
    """Send `sig` to `p`, wait up to `grace` s, then SIGKILL. Returns (exit code, seconds taken,
    rusage) where exit code is negative for death by signal, and None when it had to be killed."""
    t0 = time.time()
    if p.poll() is None:
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
    rc, ru = _wait(p, grace)
    killed = False
    if rc is None:
        p.kill()
        rc, ru = _wait(p, 5.0)
        killed = True
    _forget(p)
    return (None if killed else rc), time.time() - t0, ru


def _wait(p, timeout):
    """Reap `p` within `timeout` s using wait4 so its rusage is kept. (None, None) if still alive."""
    if p.returncode is not None:
        return p.returncode, getattr(p, "rusage", None)
    deadline = time.time() + timeout
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            p.rusage = ru
            return p.returncode, ru
        if time.time() > deadline:
            return None, None
        time.sleep(0.02)


def reap_if_exited(p):
    """Non-blocking: the exit code if `p` has exited (reaping it with rusage), else None."""
    rc, _ = _wait(p, 0)
    return rc


def _forget(p):
    _PROCS[:] = [e for e in _PROCS if e[0] is not p]


def cleanup(everything=True):
    """Kill every process still recorded (but persistent ones only if `everything`), by PID."""
    for p, label, persistent in list(_PROCS):
        if persistent and not everything:
            continue
        if p.returncode is None and p.poll() is None:
            log(f"cleanup: stopping {label} pid {p.pid}")
            stop(p, signal.SIGTERM, 3.0)
        else:
            _wait(p, 0)
        _forget(p)


def _on_signal(signum, _frame):
    cleanup()
    sys.exit(128 + signum)


atexit.register(cleanup)
signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def free_port():
    """A TCP+UDP port on 127.0.0.1 that was free a moment ago."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue


def tail(path, n=30):
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join("    | " + l for l in lines[-n:])
    except OSError:
        return "    | (no output file)"


# --------------------------------------------------------------------------------------------
# opentracker


class OpenTracker:
    """opentracker on 127.0.0.1:`port` (TCP for HTTP announces, UDP for BEP 15, same number).

    Debian builds opentracker with WANT_ACCESSLIST_WHITE: only info-hashes listed in the whitelist
    file are tracked, others get "Requested download is not authorized". So hashes are written
    before use; `allow` adds more and sends SIGHUP, on which opentracker reloads the list.
    Run as root, it drops to user `nobody`, hence world-readable files in a 0755 folder.

    Use one instance for a whole run: libtorrent caches UDP tracker connection ids per tracker IP
    (not port) process-wide, so a second opentracker on 127.0.0.1 within a minute would be sent a
    connection id it never issued, and ignore every UDP announce.
    """

    def __init__(self, port, info_hashes=()):
        self.port = port
        # Its own folder straight under the temp dir: a caller's mkdtemp folder is 0700.
        self.dir = tempfile.mkdtemp(prefix="zt-opentracker-")
        os.chmod(self.dir, 0o755)
        self.whitelist = os.path.join(self.dir, "whitelist.txt")
        self.hashes = []
        self._write_whitelist(info_hashes)
        self.conf = os.path.join(self.dir, "opentracker.conf")
        with open(self.conf, "w") as f:
            f.write(f"listen.tcp_udp 127.0.0.1:{port}\n")
            f.write(f"access.whitelist {self.whitelist}\n")
        os.chmod(self.conf, 0o644)
        self.log = os.path.join(self.dir, "opentracker.log")
        self.proc = spawn(["opentracker", "-f", self.conf], "opentracker", self.log, cwd=self.dir,
                          persistent=True)
        self._wait_ready()

    def _write_whitelist(self, more):
        for h in more:
            if not re.fullmatch(r"[0-9a-f]{40}", h):
                raise ValueError(f"not a 40-hex info-hash: {h}")
            if h not in self.hashes:
                self.hashes.append(h)
        tmp = self.whitelist + ".tmp"
        with open(tmp, "w") as f:
            f.write("".join(h + "\n" for h in self.hashes))
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.whitelist)

    def allow(self, info_hashes):
        """Whitelist more info-hashes (reload by SIGHUP) and wait until they are accepted."""
        if all(h in self.hashes for h in info_hashes):
            return
        self._write_whitelist(info_hashes)
        self.proc.send_signal(signal.SIGHUP)
        self._wait_ready()

    @property
    def http(self):
        return f"http://127.0.0.1:{self.port}/announce"

    @property
    def udp(self):
        return f"udp://127.0.0.1:{self.port}/announce"

    def _wait_ready(self, timeout=10):
        """Wait until it answers HTTP and has loaded the whitelist (it loads it in a thread).

        The probe is a `stopped` announce, which adds no peer: a whitelisted hash gets a normal
        reply, an unknown one (or a whitelist not yet loaded) a failure reason.
        """
        deadline = time.time() + timeout
        last = ""
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise CheckFailed(f"opentracker exited ({self.proc.returncode}):\n{tail(self.log)}")
            try:
                if not self.hashes:
                    self._get("/")  # any HTTP answer (even 404) means it is up
                    return
                for h in self.hashes:
                    body = self._probe(bytes.fromhex(h))
                    if b"failure reason" in body or b"interval" not in body:
                        raise OSError(body.decode("latin-1"))
                return
            except OSError as e:
                last = str(e)
            time.sleep(0.1)
        raise CheckFailed(f"opentracker not ready on {self.port}: {last}")

    def _get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            return e.read()

    def _probe(self, info_hash_bytes):
        """Announce a dummy peer (port 9) and withdraw it at once; returns the first reply.
        (A `stopped` announce alone is answered even for hashes not on the whitelist.)"""
        q = urllib.request.quote(info_hash_bytes, safe="")
        base = (f"/announce?info_hash={q}&peer_id=-ZTPROBE-00000000000&port=9"
                "&uploaded=0&downloaded=0&left=0&compact=1&numwant=0")
        body = self._get(base)
        self._get(base + "&event=stopped")
        return body

    def scrape_raw(self, info_hash_bytes):
        q = urllib.request.quote(info_hash_bytes, safe="")
        return self._get(f"/scrape?info_hash={q}")

    def scrape(self, info_hash_hex):
        """(complete, incomplete) counts the tracker holds for this info-hash."""
        body = self.scrape_raw(bytes.fromhex(info_hash_hex))
        c = re.search(rb"8:completei(\d+)e", body)
        i = re.search(rb"10:incompletei(\d+)e", body)
        return (int(c.group(1)) if c else 0, int(i.group(1)) if i else 0)

    def wait_seeders(self, info_hash_hex, n=1, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.scrape(info_hash_hex)[0] >= n:
                return
            time.sleep(0.2)
        raise CheckFailed(f"tracker has no seeder for {info_hash_hex} after {timeout}s")

    def wait_peers(self, info_hash_hex, n=1, timeout=20):
        """Until the tracker holds `n` peers (seeders or not) for this info-hash. A client that
        announces before it has checked its data counts as incomplete until its next announce,
        so `wait_seeders` would wait for that."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(self.scrape(info_hash_hex)) >= n:
                return
            time.sleep(0.2)
        raise CheckFailed(f"tracker has no peer for {info_hash_hex} after {timeout}s")

    def stop(self):
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# zigtorrent, seen from outside

# Status lines: `<name> <progress>% down <rate> up <rate> peers <n> <state>`; parsed loosely since
# the exact format may still move. Only used for diagnostics, never to decide completion.
_STATUS = re.compile(
    r"^(?P<name>.+?)\s+(?P<progress>\d+(?:\.\d+)?)\s*%.*?peers\D*(?P<peers>\d+).*?"
    r"(?P<state>metadata|checking|downloading|seeding|paused|queued|done|error)", re.IGNORECASE)


def parse_status(line):
    m = _STATUS.search(line.strip())
    if not m:
        return None
    return {"name": m.group("name"), "progress": float(m.group("progress")),
            "peers": int(m.group("peers")), "state": m.group("state").lower()}


def last_status(path):
    """The last parsed status line per torrent name in a log file."""
    out = {}
    try:
        with open(path, "rb") as f:
            for line in f.read().decode("utf-8", "replace").splitlines():
                s = parse_status(line)
                if s:
                    out[s["name"]] = s
    except OSError:
        pass
    return out


class Zig:
    """One `zigtorrent` binary."""

    def __init__(self, binary):
        self.bin = os.path.abspath(binary)

    def check_exists(self):
        if not (os.path.isfile(self.bin) and os.access(self.bin, os.X_OK)):
            raise CheckFailed(f"zigtorrent binary not found or not executable: {self.bin}")

    def cmd(self, *args, timeout=120):
        """Run a one-shot subcommand; returns (exit code, stdout, stderr)."""
        p = subprocess.run([self.bin, *map(str, args)], capture_output=True, timeout=timeout,
                           stdin=subprocess.DEVNULL)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def run(self, torrents, downloads, state, log_path, listen=None, peers=(), extra=(),
            transport="tcp", log_level=None):
        """`zigtorrent run --headless`. `transport=None` leaves the binary's default in force."""
        argv = [self.bin, "run", "--headless", "--torrents", torrents, "--downloads", downloads,
                "--state", state, "--storage", "fs"]
        if transport:
            argv += ["--transport", transport]
        if log_level:
            argv += ["--log-level", log_level]
        if listen:
            argv += ["--listen", str(listen)]
        for p in peers:
            argv += ["--peer", p]
        argv += list(extra)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        return spawn(argv, "zigtorrent run", log_path, env=env)

    def info_hash(self, torrent_file):
        rc, out, err = self.cmd("info", torrent_file)
        if rc != 0:
            raise CheckFailed(f"zigtorrent info exited {rc}: {err.strip()[:500]}")
        m = re.search(r"info[-_ ]?hash\W*([0-9a-fA-F]{40})", out, re.IGNORECASE)
        if not m:
            raise CheckFailed(f"no 'info-hash: <40 hex>' in zigtorrent info output:\n{out[:1000]}")
        return m.group(1).lower(), out


def graceful_stop(p, sig=signal.SIGINT, limit=5.0):
    """Stop zigtorrent with `sig`; raise unless it exits 0 within `limit` seconds."""
    rc, secs, ru = stop(p, sig, grace=limit)
    if rc is None:
        raise CheckFailed(f"did not exit within {limit}s of {signal.Signals(sig).name} (killed)")
    if rc != 0:
        raise CheckFailed(f"exit code {rc} after {signal.Signals(sig).name} (want 0)")
    return secs, ru


def default_bin():
    """$ZIGTORRENT_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/zigtorrent."""
    if os.environ.get("ZIGTORRENT_BIN"):
        return os.environ["ZIGTORRENT_BIN"]
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo, "target")
    return os.path.join(target, "release", "zigtorrent")


# At `--log-level info`: `peer connected addr=IP:PORT outgoing=BOOL transport=tcp client=-XX1234-`
_PEER_CONNECTED = re.compile(r"peer connected\s+(?P<kv>.*)$")


def peer_connections(log_path):
    """Every `peer connected` line zigtorrent logged (needs `--log-level info` or finer), as dicts
    of its key=value fields (addr, outgoing, transport, client)."""
    out = []
    try:
        with open(log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = _PEER_CONNECTED.search(line)
        if m:
            out.append(dict(re.findall(r"(\w+)=(\S+)", m.group("kv"))))
    return out


# --------------------------------------------------------------------------------------------
# Completion by the files themselves


def expected_files(src, name):
    """{path relative to the downloads dir: size} for payload `src` downloaded as torrent `name`."""
    if os.path.isfile(src):
        return {name: os.path.getsize(src)}
    out = {}
    for dirpath, _d, names in os.walk(src):
        for n in names:
            full = os.path.join(dirpath, n)
            out[os.path.join(name, os.path.relpath(full, src))] = os.path.getsize(full)
    return out


def sizes_complete(downloads, expected):
    """True when every expected file is at its final path with its final size and no `.part`
    file remains for any of them."""
    for rel, size in expected.items():
        final = os.path.join(downloads, rel)
        if os.path.exists(final + ".part"):
            return False
        try:
            if os.path.getsize(final) != size:
                return False
        except OSError:
            return False
    return True


def wait_files(downloads, expected, timeout, proc=None, what="zigtorrent", log_path=None):
    """Poll until `sizes_complete`; raise with a reason on timeout or if `proc` dies."""
    t0 = time.time()
    while not sizes_complete(downloads, expected):
        if proc is not None:
            rc = reap_if_exited(proc)
            if rc is not None:
                raise CheckFailed(f"{what} exited early with {rc}:\n{tail(log_path) if log_path else ''}")
        if time.time() - t0 > timeout:
            have = sum(1 for r in expected if os.path.exists(os.path.join(downloads, r)))
            parts = sum(1 for r in expected if os.path.exists(os.path.join(downloads, r) + ".part"))
            st = last_status(log_path) if log_path else {}
            raise CheckFailed(
                f"{what}: not complete after {timeout}s: {have}/{len(expected)} final files, "
                f"{parts} .part files; last status {st}\n{tail(log_path) if log_path else ''}")
        time.sleep(0.1)
    return time.time() - t0


# --------------------------------------------------------------------------------------------
# Other real clients: Transmission and aria2, each driven through its own JSON-RPC interface


def _post_json(url, payload, headers=None, timeout=5):
    req = urllib.request.Request(url, json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def _wait_rpc(name, proc, log_path, probe, timeout=20):
    deadline = time.time() + timeout
    last = ""
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CheckFailed(f"{name} exited ({proc.returncode}) on start:\n{tail(log_path)}")
        try:
            probe()
            return
        except (OSError, ValueError, CheckFailed) as e:
            last = str(e)
        time.sleep(0.1)
    raise CheckFailed(f"{name} RPC not answering after {timeout}s: {last}\n{tail(log_path)}")


class Transmission:
    """transmission-daemon (3.00 in Debian 12) on 127.0.0.1, driven through its RPC.

    What it takes to use it on loopback:
    - Transmission 3.00 drops peers on 127.x that a tracker hands out (only a peer it is told
      about directly, or one that dials in, is used), so tests make zigtorrent dial it (`--peer`).
    - `encryption` 0 prefers plaintext (the suites that test the wire protocol itself), 1 prefers
      MSE/PE (Transmission's own default), 2 requires it (tests/interop/encryption.py).
    - `utp` decides whether it speaks uTP besides TCP on `peer_port` (TCP and UDP, same number).
    - It decides whom to unchoke, and which peers it is interested in, on a 10 s pulse
      (peer-mgr.c RECHOKE_PERIOD_MSEC), so in either direction the first bytes flow ~10 s
      after the connection (10-11 s measured here): time transfers from the first byte.
    - Before 4.1 it never creates zero-length files of a torrent (transmission#417).
    """

    STATUS_SEEDING = 6  # tr_torrent_activity TR_STATUS_SEED

    def __init__(self, workdir, download_dir, utp, label="transmission-daemon", encryption=0):
        self.dir = workdir
        self.peer_port, self.rpc_port = free_port(), free_port()
        self._session_id = ""
        conf = os.path.join(workdir, "tr-config")
        os.makedirs(conf, exist_ok=True)
        settings = {
            "bind-address-ipv4": "127.0.0.1",
            "bind-address-ipv6": "::1",
            "rpc-bind-address": "127.0.0.1",
            "rpc-port": self.rpc_port,
            "rpc-authentication-required": False,
            "rpc-whitelist-enabled": False,
            "peer-port": self.peer_port,
            "peer-port-random-on-start": False,
            "port-forwarding-enabled": False,
            "dht-enabled": False,
            "lpd-enabled": False,
            "pex-enabled": False,
            "utp-enabled": bool(utp),
            # 0 prefers plaintext, 1 prefers encryption, 2 requires it (tr_encryption_mode).
            "encryption": encryption,
            "download-dir": download_dir,
            "incomplete-dir-enabled": False,
            "speed-limit-up-enabled": False,
            "speed-limit-down-enabled": False,
            "ratio-limit-enabled": False,
            "idle-seeding-limit-enabled": False,
            "message-level": 2,
        }
        with open(os.path.join(conf, "settings.json"), "w") as f:
            json.dump(settings, f, indent=1)
        self.log = os.path.join(workdir, "transmission.log")
        self.proc = spawn(["transmission-daemon", "-f", "-g", conf], label, self.log)
        _wait_rpc("transmission-daemon", self.proc, self.log, lambda: self.rpc("session-get"))

    def rpc(self, method, **arguments):
        """One RPC call; returns its `arguments`. Handles the X-Transmission-Session-Id dance
        (the first call, and any after a restart of the session, is answered 409 with the id)."""
        url = f"http://127.0.0.1:{self.rpc_port}/transmission/rpc"
        for _ in range(3):
            try:
                reply = _post_json(url, {"method": method, "arguments": arguments},
                                   {"X-Transmission-Session-Id": self._session_id})
            except urllib.error.HTTPError as e:
                if e.code == 409:
                    self._session_id = e.headers.get("X-Transmission-Session-Id", "")
                    continue
                raise
            if reply.get("result") != "success":
                raise CheckFailed(f"transmission {method}: {reply.get('result')}")
            return reply.get("arguments", {})
        raise CheckFailed(f"transmission {method}: no session id accepted")

    def add(self, torrent_file, download_dir):
        """Add a .torrent (data already in `download_dir` is verified first); returns its id."""
        a = self.rpc("torrent-add", filename=os.path.abspath(torrent_file),
                     **{"download-dir": download_dir, "paused": False})
        t = a.get("torrent-added") or a.get("torrent-duplicate")
        return t["id"]

    FIELDS = ["id", "name", "status", "percentDone", "haveValid", "totalSize", "uploadedEver",
              "downloadedEver", "corruptEver", "error", "errorString", "peers"]

    def torrent(self, tid, fields=None):
        ts = self.rpc("torrent-get", ids=[tid], fields=fields or self.FIELDS)["torrents"]
        if not ts:
            raise CheckFailed(f"transmission has no torrent {tid}")
        t = ts[0]
        if t.get("error"):
            raise CheckFailed(f"transmission torrent error {t['error']}: {t.get('errorString')}")
        return t

    def wait_seeding(self, tid, timeout=60):
        """Until it has verified every piece and seeds; raises otherwise."""
        deadline = time.time() + timeout
        while True:
            t = self.torrent(tid)
            if t["status"] == self.STATUS_SEEDING and t["percentDone"] == 1:
                return t
            if time.time() > deadline:
                raise CheckFailed(f"transmission not seeding after {timeout}s: status "
                                  f"{t['status']}, {t['percentDone'] * 100:.1f}% verified")
            time.sleep(0.1)

    def stop(self):
        stop(self.proc)


class Aria2:
    """aria2c (1.36 in Debian 12) on 127.0.0.1 in RPC mode: downloads are added over JSON-RPC.

    What it takes to use it on loopback:
    - aria2 cannot be told about a peer: it learns peers from trackers (or DHT, PEX, LPD, all
      off here). A tracker on 127.0.0.1 is fine: aria2 uses 127.x peers as given, and other
      peers find it there too, so no `--bt-external-ip` is needed.
    - It opens outgoing connections with an MSE/PE handshake and falls back to plaintext only
      while `bt-require-crypto` is false and `bt-min-crypto-level` is `plain` (its defaults, set
      explicitly because a user's aria2.conf could change them; `--no-conf` keeps that file out).
      `require_crypto=True` makes it insist on RC4 both ways (tests/interop/encryption.py).
    - As a leecher it announces new pieces with a whole BITFIELD message, mid-connection,
      whenever that is no longer than the HAVEs it replaces: 5 + bitfield bytes <= 9 x new
      pieces (DefaultBtInteractive::checkHave). On a torrent of up to ~32 pieces that is its
      very first piece; on 1536 pieces, any 22 finished between two of its checks. BEP 3 says a
      bitfield comes first or not at all, but libtorrent takes a later one as a replacement.
    - `--stop-with-process` ties it to this driver, so it cannot outlive a killed test.
    """

    def __init__(self, workdir, label="aria2c", require_crypto=False):
        self.dir = workdir
        self.port, self.rpc_port = free_port(), free_port()
        self.secret = os.urandom(8).hex()
        self.log = os.path.join(workdir, "aria2.log")
        argv = ["aria2c", "--no-conf", "--enable-rpc", "--rpc-listen-all=false",
                f"--rpc-listen-port={self.rpc_port}", f"--rpc-secret={self.secret}",
                f"--listen-port={self.port}", "--enable-dht=false", "--enable-dht6=false",
                "--bt-enable-lpd=false", "--enable-peer-exchange=false", "--disable-ipv6=true",
                *(["--bt-require-crypto=true", "--bt-min-crypto-level=arc4"] if require_crypto
                  else ["--bt-require-crypto=false", "--bt-min-crypto-level=plain"]),
                "--file-allocation=none", "--auto-file-renaming=false",
                "--summary-interval=0", "--console-log-level=warn",
                f"--log={self.log}", "--log-level=info",
                f"--stop-with-process={os.getpid()}"]
        self.proc = spawn(argv, label, os.path.join(workdir, "aria2.out"))
        _wait_rpc("aria2c", self.proc, self.log, lambda: self.rpc("aria2.getVersion"))

    def rpc(self, method, *params):
        url = f"http://127.0.0.1:{self.rpc_port}/jsonrpc"
        payload = {"jsonrpc": "2.0", "id": "zt", "method": method,
                   "params": [f"token:{self.secret}", *params]}
        try:
            reply = _post_json(url, payload)
        except urllib.error.HTTPError as e:
            reply = json.loads(e.read() or b"{}")  # aria2 answers errors with a 4xx and a body
        if "error" in reply:
            raise CheckFailed(f"aria2 {method}: {reply['error'].get('message')}")
        return reply["result"]

    def add_torrent(self, torrent_file, **options):
        """Add a .torrent with per-download options (aria2 option names, `_` for `-`, values
        as strings); returns the GID."""
        with open(torrent_file, "rb") as f:
            b64 = base64.b64encode(f.read()).decode()
        opts = {k.replace("_", "-"): str(v) for k, v in options.items()}
        return self.rpc("aria2.addTorrent", b64, [], opts)

    def status(self, gid):
        return self.rpc("aria2.tellStatus", gid)

    def peers(self, gid):
        """The download's peers ([] once it stopped: aria2 only lists peers of active ones)."""
        try:
            return self.rpc("aria2.getPeers", gid)
        except CheckFailed:
            return []

    _RPC_NOISE = ("RPC", "HttpServer", "rpc_helper", "HttpListenCommand")

    def excerpt(self, n=20):
        """The last `n` lines of its log about BitTorrent, without its log of our RPC calls."""
        try:
            with open(self.log, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "    | (no log)"
        keep = [l for l in lines if re.match(r"\d{4}-\d\d-\d\d ", l)
                and not any(w in l for w in self._RPC_NOISE)]
        return "\n".join("    | " + l[:300] for l in keep[-n:])

    def shutdown(self, timeout=10):
        """Ask it to exit (aria2.shutdown); returns its exit code, None if it had to be killed."""
        self.rpc("aria2.shutdown")
        rc, _ru = _wait(self.proc, timeout)
        if rc is None:
            stop(self.proc)
            return None
        _forget(self.proc)
        return rc

    def stop(self):
        stop(self.proc)


# ------------------------------------------------------------------------------------------
# scenario suites (interop.py, clients.py)


class Ctx:
    """What a scenario gets: a fresh folder, the shared payloads and binary, the run's tracker."""

    def __init__(self, root, name, payloads, zig, suite):
        self.name = name
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir)
        self.payloads = payloads
        self.zig = zig
        self._suite = suite

    def sub(self, *parts):
        p = os.path.join(self.dir, *parts)
        os.makedirs(p, exist_ok=True)
        return p

    def tracker(self, info_hashes=()):
        """The run's one opentracker (started on first use), with these hashes whitelisted."""
        if self._suite.get("tracker") is None:
            self._suite["tracker"] = OpenTracker(free_port())
        t = self._suite["tracker"]
        if info_hashes:
            t.allow(info_hashes)
        return t


def run_scenarios(scenarios, ctx_for, root, suite, keep=False, expected=(CheckFailed,)):
    """Runs each scenario with `ctx_for(name)`, printing PASS/FAIL and a summary; returns the
    exit status (1 if any failed). An exception of an `expected` type is a FAIL with its
    message; any other is a FAIL with its traceback. Processes a scenario left are stopped
    after it, and everything at the end."""
    results = []
    for fn in scenarios:
        log(f"--- {fn.__name__}")
        t0 = time.time()
        try:
            detail = fn(ctx_for(fn.__name__))
            results.append((fn.__name__, True, detail or ""))
        except expected as e:
            results.append((fn.__name__, False, str(e)))
        except Exception:  # a bug in the harness or an unexpected error: still a FAIL with a reason
            results.append((fn.__name__, False, traceback.format_exc()))
        finally:
            cleanup(everything=False)
        ok, detail = results[-1][1], results[-1][2]
        print(f"{'PASS' if ok else 'FAIL'} {fn.__name__} ({time.time() - t0:.1f}s): {detail}",
              flush=True)

    cleanup()
    if suite.get("tracker"):
        shutil.rmtree(suite["tracker"].dir, ignore_errors=True)
    print("\nSummary:")
    for name, ok, detail in results:
        print(f"  {'PASS' if ok else 'FAIL'} {name}: {detail.splitlines()[0] if detail else ''}")
    failed = [n for n, ok, _ in results if not ok]
    if keep or failed:
        print(f"work folder kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"{len(failed)} of {len(results)} scenario(s) FAILED: {', '.join(failed)}")
        return 1
    print(f"all {len(results)} scenario(s) passed")
    return 0
