#!/usr/bin/python3
"""Capture a real BEP 11 ut_pex message from a libtorrent seeder on loopback, as a test vector.

Seeds a small torrent with python3-libtorrent on 127.0.0.1 and connects four raw clients from
127.0.0.2-5 (libtorrent allows one connection per IP by default), each announcing ut_pex and a
listen port. Writes the longest first ut_pex payload (after the extension id byte) any of them
received to the file given. Runs up to 75 seconds and stops by itself. Flaky: libtorrent
2.0.8 sent a message in 2 of 6 runs (once within two seconds, to the first client, naming that
client itself: the committed vector) and none in the others; rerun until it does.

Usage: engine/testdata/capture_libtorrent_pex.py OUTFILE
"""

import os
import select
import socket
import struct
import sys
import tempfile
import time

import libtorrent as lt


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise EOFError("peer closed")
        out += chunk
    return out


def connect(port, info_hash, peer_id, ext_handshake, source_ip):
    s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source_ip, 0))
    s.sendall(b"\x13BitTorrent protocol" + b"\0\0\0\0\0\x10\0\0" + info_hash + peer_id)
    recv_exact(s, 68)
    s.sendall(struct.pack(">IBB", 2 + len(ext_handshake), 20, 0) + ext_handshake)
    return s


def main():
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "p.bin"), "wb") as f:
            f.write(b"x" * 100_000)
        fs = lt.file_storage()
        lt.add_files(fs, os.path.join(tmp, "p.bin"))
        ct = lt.create_torrent(fs, 16384, flags=lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, tmp)
        ti = lt.torrent_info(lt.bencode(ct.generate()))
        ses = lt.session({
            "listen_interfaces": "127.0.0.1:0",
            "enable_dht": False, "enable_lsd": False, "enable_upnp": False,
            "enable_natpmp": False, "alert_mask": 0,
        })
        h = ses.add_torrent({"ti": ti, "save_path": tmp})
        deadline = time.time() + 20
        while not h.status().is_seeding and time.time() < deadline:
            time.sleep(0.1)
        port = ses.listen_port()
        ih = ti.info_hash().to_bytes()
        socks = [connect(port, ih, b"-ZT0100-%012d" % i,
                         b"d1:md6:ut_pexi2ee1:pi%de" % (40001 + i), "127.0.0.%d" % (2 + i))
                 for i in range(4)]
        got = {}
        # libtorrent rebuilds its PEX message once a minute, so the first may take that long.
        deadline = time.time() + 75
        while time.time() < deadline and len(got) < len(socks):
            ready, _, _ = select.select(socks, [], [], 1)
            for s in ready:
                (n,) = struct.unpack(">I", recv_exact(s, 4))
                if n == 0:
                    continue
                body = recv_exact(s, n)
                if body[0] == 20 and body[1] == 2 and s not in got:
                    got[s] = body[2:]
        for s in socks:
            s.close()
        ses.pause()
        if not got:
            sys.exit("libtorrent sent no ut_pex message")
        best = max(got.values(), key=len)
        with open(sys.argv[1], "wb") as f:
            f.write(best)
        print("libtorrent", lt.__version__, "ut_pex messages:", len(got), best)


if __name__ == "__main__":
    main()
