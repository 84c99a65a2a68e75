"""qBittorrent (`qbittorrent-nox`, 4.5 in Debian 12) on 127.0.0.1, driven through its Web API v2.

What it takes to use it on loopback, headless, in a test:
- The legal notice is accepted and Web UI authentication is off for localhost in a fresh
  profile's `qBittorrent.conf`, so nothing waits for a human; the Web UI listens on 127.0.0.1.
- DHT, PEX and LSD are off, so every peer comes from the test; several peers on 127.0.0.1 are
  allowed (`MultiConnectionsPerIp`).
- `encryption`: 0 allows MSE/PE (qBittorrent's default), 1 requires it, 2 disables it (the
  default here, for the suites that test the plain wire protocol; tests/interop/encryption.py
  sets 1).
Every process is recorded by PID in harness.py and killed at exit.
"""

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import harness as H


class QBittorrent:
    def __init__(self, workdir, label="qbittorrent-nox", encryption=2):
        self.dir = workdir
        self.peer_port, self.web_port = H.free_port(), H.free_port()
        conf_dir = os.path.join(workdir, "qBittorrent", "config")
        os.makedirs(conf_dir, exist_ok=True)
        conf = f"""[LegalNotice]
Accepted=true

[BitTorrent]
Session\\Port={self.peer_port}
Session\\DHTEnabled=false
Session\\PeXEnabled=false
Session\\LSDEnabled=false
Session\\Encryption={encryption}
Session\\MultiConnectionsPerIp=true
Session\\QueueingSystemEnabled=false
Session\\AnonymousModeEnabled=false
Session\\Interface=
Session\\InterfaceAddress=127.0.0.1

[Preferences]
Connection\\PortRangeMin={self.peer_port}
Connection\\UPnP=false
WebUI\\Address=127.0.0.1
WebUI\\Port={self.web_port}
WebUI\\LocalHostAuth=false
WebUI\\CSRFProtection=false
WebUI\\HostHeaderValidation=false
WebUI\\ClickjackingProtection=false
"""
        with open(os.path.join(conf_dir, "qBittorrent.conf"), "w") as f:
            f.write(conf)
        self.log = os.path.join(workdir, "qbittorrent.log")
        self.proc = H.spawn(["qbittorrent-nox", f"--profile={workdir}",
                             f"--webui-port={self.web_port}"], label, self.log)
        deadline = time.time() + 30
        while True:
            if H.reap_if_exited(self.proc) is not None:
                raise H.CheckFailed(f"qbittorrent-nox exited:\n{H.tail(self.log)}")
            try:
                self.version = self._get("/api/v2/app/version")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.time() > deadline:
                    raise H.CheckFailed(f"qbittorrent-nox Web API never answered:\n{H.tail(self.log)}")
                time.sleep(0.2)

    def _url(self, path):
        return f"http://127.0.0.1:{self.web_port}{path}"

    def _get(self, path, **query):
        url = self._url(path) + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode("utf-8", "replace")

    def _post_form(self, path, **fields):
        data = urllib.parse.urlencode(fields).encode()
        req = urllib.request.Request(self._url(path), data=data, method="POST")
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode("utf-8", "replace")

    def _post_multipart(self, path, fields, files):
        boundary = uuid.uuid4().hex
        body = b""
        for k, v in fields.items():
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n"
                     f"{v}\r\n").encode()
        for k, (name, content) in files.items():
            body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"; "
                     f"filename=\"{name}\"\r\nContent-Type: application/x-bittorrent\r\n\r\n").encode()
            body += content + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        req = urllib.request.Request(self._url(path), data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.read().decode("utf-8", "replace")

    def add_torrent_file(self, torrent_file, save_path):
        with open(torrent_file, "rb") as f:
            content = f.read()
        r = self._post_multipart("/api/v2/torrents/add",
                                 {"savepath": save_path, "paused": "false"},
                                 {"torrents": (os.path.basename(torrent_file), content)})
        if r.strip() != "Ok.":
            raise H.CheckFailed(f"qBittorrent refused {torrent_file}: {r!r}")

    def add_magnet(self, uri, save_path):
        r = self._post_multipart("/api/v2/torrents/add",
                                 {"urls": uri, "savepath": save_path, "paused": "false"}, {})
        if r.strip() != "Ok.":
            raise H.CheckFailed(f"qBittorrent refused the magnet: {r!r}")

    def add_peer(self, info_hash, addr):
        self._post_form("/api/v2/torrents/addPeers", hashes=info_hash, peers=addr)

    def info(self, info_hash):
        ts = json.loads(self._get("/api/v2/torrents/info", hashes=info_hash))
        return ts[0] if ts else None

    def wait_complete(self, info_hash, timeout, poke=None):
        """Until the torrent is complete (progress 1, seeding states); `poke()` runs every few
        seconds meanwhile (e.g. to add a peer again)."""
        deadline = time.time() + timeout
        last_poke = 0
        while True:
            t = self.info(info_hash)
            if t and t.get("progress") == 1 and t.get("state") in ("uploading", "stalledUP",
                                                                   "queuedUP", "forcedUP"):
                return t
            if t and t.get("state") in ("error", "missingFiles"):
                raise H.CheckFailed(f"qBittorrent torrent in state {t['state']}")
            if time.time() > deadline:
                raise H.CheckFailed(f"qBittorrent not complete after {timeout}s: {t}\n"
                                    f"{H.tail(self.log)}")
            if poke and time.time() - last_poke > 3:
                poke()
                last_poke = time.time()
            time.sleep(0.2)

    def stop(self):
        H.stop(self.proc)
