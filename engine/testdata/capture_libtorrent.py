#!/usr/bin/python3
"""Capture real BEP 10 / BEP 9 messages from a libtorrent seeder on loopback, as test vectors.

Seeds a small torrent with python3-libtorrent on 127.0.0.1, connects to it with a raw socket,
and writes the payloads (after the BEP 10 extension id byte) of: libtorrent's extended
handshake, a ut_metadata data message for piece 0, one for the last piece, and the reply to a
request for a piece that does not exist. Also writes the info dictionary they come from.
Runs about two seconds and stops by itself.

Usage: engine/testdata/capture_libtorrent.py OUTDIR
"""

import os
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


def frames(s):
    while True:
        (n,) = struct.unpack(">I", recv_exact(s, 4))
        if n:
            body = recv_exact(s, n)
            yield body[0], body[1:]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # 900 pieces of 16 KiB: 18,000 bytes of hashes, so the info dictionary spans two
        # metadata pieces.
        data = bytes(range(251)) * (900 * 16384 // 251 + 1)
        with open(os.path.join(tmp, "payload.bin"), "wb") as f:
            f.write(data)
        fs = lt.file_storage()
        lt.add_files(fs, os.path.join(tmp, "payload.bin"))
        ct = lt.create_torrent(fs, 16384, flags=lt.create_torrent.v1_only)
        lt.set_piece_hashes(ct, tmp)
        info = lt.bencode(ct.generate()[b"info"])
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
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        reserved = b"\0\0\0\0\0\x10\0\0"
        s.sendall(b"\x13BitTorrent protocol" + reserved + ti.info_hash().to_bytes()
                  + b"-ZT0100-capturecaptu")
        recv_exact(s, 68)
        # ExtendedHandshake::ours(None, 500, None, "capture"), byte for byte (checked there).
        ours = b"d1:md11:ut_metadatai1e6:ut_pexi2ee4:reqqi500e1:v7:capturee"
        s.sendall(struct.pack(">IBB", 2 + len(ours), 20, 0) + ours)
        wanted = {}
        pieces = -(-len(info) // 16384)
        asked = False
        for mid, payload in frames(s):
            if mid != 20:
                continue
            if payload[0] == 0:
                wanted["handshake"] = payload[1:]
                their_id = int(payload.split(b"11:ut_metadatai")[1].split(b"e")[0])
                for piece in (0, pieces - 1, pieces + 5):
                    req = b"d8:msg_typei0e5:piecei%de" % piece
                    s.sendall(struct.pack(">IBB", 2 + len(req), 20, their_id) + req)
                asked = True
            elif payload[0] == 1 and asked:
                body = payload[1:]
                if b"8:msg_typei2e" in body:
                    wanted["reject"] = body
                elif b"5:piecei0e" in body:
                    wanted["data-first"] = body
                else:
                    wanted["data-last"] = body
            if len(wanted) == 3 + (pieces > 1):
                break
        s.close()
        ses.pause()
        for name, body in list(wanted.items()) + [("info", info)]:
            with open(os.path.join(out, "libtorrent-%s.bin" % name), "wb") as f:
                f.write(body)
        print("libtorrent", lt.__version__, "port", port, {k: len(v) for k, v in wanted.items()},
              "info", len(info), "info-hash", ti.info_hash())


if __name__ == "__main__":
    main()
