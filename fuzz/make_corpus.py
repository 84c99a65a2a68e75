#!/usr/bin/env python3
"""Write the committed seed corpus (fuzz/corpus/<target>/) and the regression inputs
(fuzz/regressions/<target>/) for ZigTorrent's fuzz targets.

Deterministic: running it again rewrites the same files. Seeds are small valid (and a few
nearly valid) inputs, so the fuzzer starts from the shapes real peers, trackers and torrent
files have. With --zigtorrent PATH it also adds real .torrent files made by `zigtorrent create`.

Usage: fuzz/make_corpus.py [--zigtorrent target/debug/zigtorrent]
"""

import argparse
import hashlib
import os
import re
import struct
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def ben(v):
    """Bencode, dictionary keys in the order given (so unsorted seeds are possible)."""
    if isinstance(v, int):
        return b"i%de" % v
    if isinstance(v, str):
        v = v.encode()
    if isinstance(v, bytes):
        return b"%d:%s" % (len(v), v)
    if isinstance(v, list):
        return b"l" + b"".join(ben(x) for x in v) + b"e"
    if isinstance(v, dict):
        return b"d" + b"".join(ben(k) + ben(x) for k, x in v.items()) + b"e"
    if isinstance(v, tuple):  # a list of (key, value) pairs: a dictionary in this exact order
        return b"d" + b"".join(ben(k) + ben(x) for k, x in v) + b"e"
    raise TypeError(v)


def write(kind, target, name, data):
    d = os.path.join(HERE, kind, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def hashes(n):
    return b"".join(hashlib.sha1(b"%d" % i).digest() for i in range(n))


def single(name="a.bin", length=100, plen=32, **extra):
    info = {"length": length, "name": name, "piece length": plen,
            "pieces": hashes(-(-length // plen))}
    info.update(extra)
    return info


def multi(files, name="dir", plen=16, **extra):
    total = sum(f[0] for f in files)
    info = {"files": [{"length": l, "path": p} for l, p in files], "name": name,
            "piece length": plen, "pieces": hashes(max(1, -(-total // plen)))}
    info.update(extra)
    return info


def torrent(info, **top):
    d = {"announce": "http://tracker.example/announce"}
    d.update(top)
    d["info"] = info
    return ben(dict(sorted(d.items())))


def torrents():
    yield "single", torrent(single())
    yield "single-private", torrent(single(private=1))
    yield "multi", torrent(multi([(10, ["a.txt"]), (0, ["empty"]), (30, ["sub", "b.bin"])]))
    yield "multi-deep", torrent(multi([(5, ["a", "b", "c", "d", "e", "f.txt"]), (7, ["a", "x"])]))
    yield "utf8-variants", torrent(single(name=b"caf\xe9", **{"name.utf-8": "café"}),
                                   comment=b"\xff", **{"comment.utf-8": "ok"})
    yield "path-utf8", ben({"info": {
        "files": [{"length": 40, "path": [b"\xe9t\xe9"], "path.utf-8": ["été"]}],
        "name": "d", "piece length": 16, "pieces": hashes(3)}})
    yield "announce-list", torrent(single(), **{"announce-list": [
        ["http://a/1", "udp://b:2"], [], ["http://c/3"]]})
    yield "unsorted-keys", ben((("info", (("pieces", hashes(4)), ("name", "a"),
                                         ("piece length", 32), ("length", 100))),
                               ("comment", "x"), ("announce", "udp://t:1")))
    yield "padding-file", torrent(multi([(10, ["a"]), (6, [".pad", "6"]), (16, ["b"])],
                                        plen=16))
    yield "conflict-dup", torrent(multi([(20, ["a"]), (20, ["a"])]))
    yield "conflict-prefix", torrent(multi([(20, ["a"]), (20, ["a", "b"])]))
    yield "unsafe-dotdot", torrent(multi([(40, ["..", "etc", "passwd"])]))
    yield "bad-geometry", torrent(single(length=100, plen=32, pieces=hashes(3)))
    yield "empty-name", torrent(single(name=""))
    yield "trackerless", ben({"info": single()})
    yield "creation-fields", torrent(single(), **{"created by": "zt", "creation date": 1700000000})


def bencode_seeds():
    for name, v in [
        ("int", b"i42e"), ("neg", b"i-7e"), ("zero", b"i0e"), ("str", b"4:spam"),
        ("empty-str", b"0:"), ("list", b"l4:spami3ee"), ("dict", b"d3:cow3:moo4:spam4:eggse"),
        ("nested", b"d4:spaml1:a1:bee"), ("empty-list", b"le"), ("empty-dict", b"de"),
        ("info-span", b"d4:infod6:lengthi1eee"), ("unsorted", b"d1:bi1e1:ai2ee"),
        ("dup-key", b"d1:ai1e1:ai2ee"), ("leading-zero", b"i03e"), ("minus-zero", b"i-0e"),
        ("max-int", b"i9223372036854775807e"), ("min-int", b"i-9223372036854775808e"),
        ("long-claim", b"9999999999:x"), ("trailing", b"i1ei2e"), ("depth-64",
                                                                    b"l" * 64 + b"e" * 64),
        ("depth-65", b"l" * 65 + b"e" * 65), ("binary-key", b"d2:\xff\xfei1ee"),
    ]:
        yield name, v
    for name, t in list(torrents())[:6]:
        yield "torrent-" + name, t


def frame(mid, payload=b""):
    return struct.pack(">IB", 1 + len(payload), mid) + payload


def wire_messages():
    return {
        "keepalive": b"\0\0\0\0",
        "choke": frame(0), "unchoke": frame(1), "interested": frame(2),
        "not-interested": frame(3),
        "have": frame(4, struct.pack(">I", 7)),
        "bitfield": frame(5, b"\xff\x80"),
        "request": frame(6, struct.pack(">III", 1, 16384, 16384)),
        "piece": frame(7, struct.pack(">II", 3, 0) + bytes(range(64))),
        "cancel": frame(8, struct.pack(">III", 1, 0, 16384)),
        "port": frame(9, struct.pack(">H", 6881)),
        "extended": frame(20, b"\0d1:md11:ut_metadatai2ee4:reqqi500ee"),
        "unknown": frame(200, b"xyz"),
        # BEP 6 (fast extension).
        "suggest": frame(0x0D, struct.pack(">I", 5)),
        "have-all": frame(0x0E), "have-none": frame(0x0F),
        "reject-request": frame(0x10, struct.pack(">III", 1, 16384, 16384)),
        "allowed-fast": frame(0x11, struct.pack(">I", 9)),
    }


def wire_seeds():
    msgs = wire_messages()
    # First byte: where the stream is cut; second: the frame cap in units of 80 bytes.
    for i, (name, m) in enumerate(msgs.items()):
        yield name, bytes([i * 3 % 17, 255]) + m
    everything = b"".join(msgs.values())
    yield "stream", bytes([40, 255]) + everything
    yield "stream-small-cap", bytes([5, 1]) + everything
    yield "bad-have-length", bytes([0, 255]) + frame(4, b"\0\0\7") + msgs["choke"]
    yield "too-long", bytes([2, 1]) + struct.pack(">I", 1 << 20) + b"\7"
    yield "partial", bytes([3, 255]) + msgs["request"][:9]


def handshake(reserved=b"\0\0\0\0\0\x10\0\0", ih=b"\x11" * 20, pid=b"-ZT0100-abcdefghijkl"):
    return b"\x13BitTorrent protocol" + reserved + ih + pid


def handshake_seeds():
    yield "ours", handshake()
    yield "libtorrent-bits", handshake(b"\0\0\0\0\0\x10\0\x05", pid=b"-LT2080-abcdefghijkl")
    yield "no-extensions", handshake(b"\0" * 8, pid=b"-TR3000-abcdefghijkl")
    yield "with-bitfield-after", handshake() + frame(5, b"\xff")
    yield "wrong-length-byte", b"\x12" + handshake()[1:]
    yield "http", b"GET /announce HTTP/1.1\r\nHost: x\r\n\r\n" + b"\0" * 40
    yield "short", handshake()[:40]


def extended_seeds():
    """Handshakes first written for the old reqq-only parser; now part of `bep10_handshake`."""
    yield "ours", b"\0d1:mde4:reqqi1024e1:v16:ZigTorrent 0.1.0e"
    yield "libtorrent", (b"\0d12:complete_agoi-1e1:md11:upload_onlyi3e11:ut_metadatai2ee"
                         b"4:reqqi500e1:v16:libtorrent 2.0.8e")
    yield "transmission", b"\0d1:md6:ut_pexi1ee1:pi51413e4:reqqi512e1:v17:Transmission 3.00e"
    yield "no-reqq", b"\0de"
    yield "zero-reqq", b"\0d4:reqqi0ee"
    yield "huge-reqq", b"\0d4:reqqi99999999999ee"
    yield "string-reqq", b"\0d4:reqq3:abce"
    yield "other-extension", b"\x03d8:msg_typei0ee"
    yield "yourip", b"\0d6:yourip4:\x7f\0\0\x014:reqqi16ee"


HEX = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a"


def captured(name):
    """A message captured from libtorrent (engine/testdata/capture_libtorrent*.py)."""
    with open(os.path.join(HERE, "..", "engine", "testdata", "libtorrent-%s.bin" % name), "rb") as f:
        return f.read()


def magnet_seeds():
    yield "hex", ("magnet:?xt=urn:btih:%s" % HEX).encode()
    yield "base32", b"magnet:?xt=urn:btih:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK&dn=b32"
    yield "full", ("magnet:?xt=urn:btih:%s&dn=Big+Buck%%20Bunny&tr=udp%%3A%%2F%%2Ft.example%%3A1337"
                   "&tr.1=http://t2.example/announce?a=1&x.pe=10.0.0.1:6881&x.pe=[::1]:6881"
                   "&x.pe=peer.example:7000\n" % HEX).encode()
    yield "hybrid", ("magnet:?xt=urn:btmh:1220%s&xt=urn:btih:%s" % ("ab" * 32, HEX)).encode()
    yield "only-v2", ("magnet:?xt=urn:btmh:1220%s&dn=v2" % ("ab" * 32)).encode()
    yield "bad-hash", b"magnet:?xt=urn:btih:c12fe1c06bba254a9dc9f519b335aa7c1367a8"
    yield "two-hashes", ("magnet:?xt=urn:btih:%s&xt=urn:btih:%s" % (HEX, "0" * 40)).encode()
    yield "control-name", ("magnet:?xt=urn:btih:%s&dn=%%1B%%5B2J%%07x%%C3%%28" % HEX).encode()
    yield "skipped", ("magnet:?xt=urn:btih:%s&tr=wss://x&tr=%%FF&x.pe=1.2.3.4:0&x.pe=bad_host:1"
                      "&x.pe=::1:5&junk&=&&" % HEX).encode()
    yield "not-magnet", b"http://example.com/?xt=urn:btih:" + HEX.encode()


def ut_metadata_seeds():
    yield "request", b"d8:msg_typei0e5:piecei0ee"
    yield "reject", b"d8:msg_typei2e5:piecei3ee"
    yield "data", b"d8:msg_typei1e5:piecei0e10:total_sizei5ee\x00\xffabc"
    yield "unsorted-extra", b"d5:piecei2e8:msg_typei2e4:xtrali1eee"
    yield "unknown-type", b"d8:msg_typei7e5:piecei0ee"
    yield "no-total-size", b"d8:msg_typei1e5:piecei0eedata"
    yield "negative-piece", b"d8:msg_typei0e5:piecei-1ee"
    yield "not-a-dict", b"li0ee"
    yield "libtorrent-data-last", captured("data-last")
    yield "libtorrent-reject", captured("reject")


def ut_pex_seeds():
    v6 = bytes(range(16))
    yield "ipv4", ben((("added", b"\x0a\0\0\x01\x1a\xe1\x7f\0\0\x01\0\x50"), ("added.f", b"\x06\x10"),
                       ("dropped", b"\x0a\0\0\x02\x1a\xe2")))
    yield "ipv6", ben((("added6", v6 + b"\xc8\xd5"), ("added6.f", b"\x04"),
                       ("dropped6", v6[::-1] + b"\0\x01")))
    yield "all-keys-empty", ben((("added", b""), ("added.f", b""), ("added6", b""),
                                 ("added6.f", b""), ("dropped", b""), ("dropped6", b"")))
    yield "port-zero-and-repeats", ben((("added", b"\x01\x01\x01\x01\0\0" + b"\x02\x02\x02\x02\0\x02" * 2),))
    yield "bad-length", ben((("added", b"abcde"),))
    yield "many", ben((("added", b"".join(struct.pack(">IH", 0x0a000000 + i, 1000 + i)
                                         for i in range(80))),))
    yield "wrong-types", ben((("added", 5), ("dropped", ["x"])))
    yield "libtorrent", captured("pex")


def bep10_seeds():
    yield "qbittorrent", (b"\0d1:md11:ut_metadatai2e6:ut_pexi1ee13:metadata_sizei31235e1:pi6881e"
                          b"4:reqqi500e1:v13:qBittorrent/46:yourip4:\x7f\0\0\x01e")
    yield "ours", (b"\0d1:md11:ut_metadatai1e6:ut_pexi2ee13:metadata_sizei31235e1:pi6881e"
                   b"4:reqqi500e1:v16:ZigTorrent 0.1.0e")
    yield "disabled", b"\0d1:md11:ut_metadatai3e6:ut_pexi0ee1:pi51413e4:reqqi512ee"
    yield "odd-types", b"\0d1:ml6:ut_pexe13:metadata_size3:abc1:pi0e4:reqq2:xx1:vi5ee"
    yield "ranges", b"\0d1:md11:ut_metadatai256ee13:metadata_sizei99999999999e1:pi65536ee"
    yield "control-client", b"\0d1:v16:\x1b[31mred\x07\xff\nname!e"
    yield "yourip6", b"\0d6:yourip16:" + bytes(range(16)) + b"e"
    yield "other-id", b"\x02d1:ai1ee"
    yield "libtorrent", b"\0" + captured("handshake")
    yield from (("wire-" + name, data) for name, data in extended_seeds())


def tracker_http_seeds():
    def peers4(*addrs):
        return b"".join(bytes(a) + struct.pack(">H", p) for a, p in addrs)
    yield "compact", ben({"interval": 1800, "peers": peers4(([127, 0, 0, 1], 6881),
                                                            ([10, 0, 0, 2], 51413))})
    yield "compact6", ben({"interval": 900, "peers": b"",
                           "peers6": bytes(15) + b"\x01" + struct.pack(">H", 6881)})
    yield "dict-peers", ben({"interval": 60, "peers": [
        {"ip": "127.0.0.1", "peer id": b"x" * 20, "port": 6881},
        {"ip": "::1", "port": 7000}, {"ip": "host.example", "port": 1}]})
    yield "failure", ben({"failure reason": "unregistered torrent"})
    yield "warning", ben({"interval": 1800, "min interval": 60, "peers": b"",
                          "warning message": "slow down", "complete": 3, "incomplete": 4,
                          "tracker id": "abc"})
    yield "bad-compact", ben({"interval": 1800, "peers": b"12345"})
    yield "negative-interval", ben({"interval": -5, "peers": b""})
    yield "huge-interval", ben({"interval": 1 << 40, "peers": b""})
    yield "duplicates", ben({"peers": peers4(([1, 2, 3, 4], 5), ([1, 2, 3, 4], 5),
                                             ([0, 0, 0, 0], 1), ([1, 1, 1, 1], 0))})
    yield "not-a-dict", ben([1, 2, 3])
    yield "empty", b""


def udp_reply(action, tid, body=b""):
    return struct.pack(">II", action, tid) + body


def tracker_udp_seeds():
    tid = 0x01020304
    head = struct.pack(">I", tid)
    # Fifth byte: bit 1 = waiting for an announce (else a connect), bit 0 = IPv6 tracker.
    yield "connect", head + b"\0" + udp_reply(0, tid, struct.pack(">Q", 0x1122334455667788))
    yield "announce-v4", head + b"\2" + udp_reply(1, tid, struct.pack(">III", 1800, 3, 4)
                                                  + bytes([127, 0, 0, 1, 0x1a, 0xe1]))
    yield "announce-v6", head + b"\3" + udp_reply(1, tid, struct.pack(">III", 900, 0, 1)
                                                  + bytes(15) + b"\1" + b"\x1a\xe1")
    yield "error", head + b"\2" + udp_reply(3, tid, b"torrent not registered")
    yield "other-tid", head + b"\0" + udp_reply(0, tid + 1, bytes(8))
    yield "other-action", head + b"\2" + udp_reply(0, tid, bytes(8))
    yield "short", head + b"\0" + b"\0\0\0"
    yield "ragged-peers", head + b"\2" + udp_reply(1, tid, struct.pack(">III", 1, 1, 1) + b"12345")
    yield "many-peers", head + b"\2" + udp_reply(1, tid, struct.pack(">III", 1, 1, 1) + b"".join(
        bytes([10, 0, i // 256, i % 256]) + struct.pack(">H", 1000 + i) for i in range(64)))


def regressions():
    # Issue 9: one file 80,000 components deep (quadratic conflict check; now PathTooDeep).
    deep = multi([(1, ["a"] * 80_000)], name="x", plen=16384)
    yield "metainfo", "path-80000-deep.torrent", torrent(deep)
    # Issue 9: 15,000 nested lists must be refused by the scanner, not overflow a stack.
    nested = b"l" * 15_000 + b"e" * 15_000
    for target in ["bencode_scan", "metainfo", "tracker_http"]:
        yield target, "nested-lists-15000", nested
    yield "bencode_scan", "nested-info-15000", b"d4:info" + nested + b"e"
    yield "bep10_handshake", "nested-lists-15000", b"\0" + nested
    # Issue 9: wire::decode consumed a frame with a bad payload length before failing.
    msgs = wire_messages()
    yield "wire_frames", "bad-length-consumed", (bytes([0, 255]) + frame(4, b"\0\0\7")
                                                 + msgs["choke"])
    yield "wire_frames", "bad-length-after-good", (bytes([9, 255]) + msgs["have"]
                                                   + frame(6, bytes(11)))
    # Issue 9: a non-UTF-8 top-level key lost the peer's reqq; a list passed as a handshake.
    yield "bep10_handshake", "non-utf8-key", b"\0d2:\xff\xfei1e4:reqqi250ee"
    yield "bep10_handshake", "list-as-handshake", b"\0li5ee"


def krpc_seeds():
    """KRPC datagrams (BEP 5): every query and response kind, 2- and 4-byte transaction ids as
    libtorrent and others send them, BEP 43 `ro`, errors, and near misses."""
    nid = bytes(range(20))
    ih = bytes(range(100, 120))
    node = nid + bytes([127, 0, 0, 1, 0x1a, 0xe1])
    def q(tid, method, args, extra=b""):
        return (b"d1:ad" + args + b"e1:q" + ben(method) + extra + b"1:t" + ben(tid)
                + b"1:y1:qe")
    idarg = b"2:id20:" + nid
    yield "ping-tid2", q(b"\x8a\x03", b"ping", idarg)
    yield "ping-tid4", q(b"abcd", b"ping", idarg)
    yield "ping-ro", q(b"aa", b"ping", idarg, b"2:roi1e")
    yield "find-node", q(b"aa", b"find_node", idarg + b"6:target20:" + ih)
    yield "get-peers", q(b"\x00\x01", b"get_peers", idarg + b"9:info_hash20:" + ih)
    yield "announce", q(b"aa", b"announce_peer", idarg + b"9:info_hash20:" + ih
                        + b"4:porti6881e5:token4:\x01\x02\x03\x04")
    yield "announce-implied", q(b"aa", b"announce_peer", idarg + b"12:implied_porti1e9:info_hash20:"
                                + ih + b"4:porti0e5:token4:abcd")
    yield "unknown-method", q(b"aa", b"sample_infohashes", idarg + b"6:target20:" + ih)
    yield "resp-nodes", (b"d1:rd2:id20:" + nid + b"5:nodes" + ben(node * 8) + b"e1:t2:aa1:y1:re")
    values = b"l" + b"".join(ben(bytes([10, 0, 0, i, 0x1a, 0xe1])) for i in range(1, 20)) + b"e"
    yield "resp-values", (b"d1:rd2:id20:" + nid + b"5:token4:abcd6:values" + values
                          + b"e1:t2:aa1:y1:re")
    yield "resp-values6", (b"d1:rd2:id20:" + nid + b"5:token4:abcd6:valuesl18:" + bytes(18)
                           + b"ee1:t2:aa1:y1:re")
    yield "error", b"d1:eli203e9:bad tokene1:t2:aa1:y1:ee"
    yield "bad-nodes-len", (b"d1:rd2:id20:" + nid + b"5:nodes25:" + bytes(25) + b"e1:t2:aa1:y1:re")
    yield "bad-id-len", q(b"aa", b"ping", b"2:id19:" + nid[:19])
    yield "tid-17", q(b"a" * 17, b"ping", idarg)
    yield "no-args", b"d1:q4:ping1:t2:aa1:y1:qe"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zigtorrent", help="binary used to add real torrents made by `create`")
    args = ap.parse_args()
    groups = {
        "bencode_scan": bencode_seeds(),
        "metainfo": torrents(),
        "wire_frames": wire_seeds(),
        "handshake": handshake_seeds(),
        "tracker_http": tracker_http_seeds(),
        "tracker_udp": tracker_udp_seeds(),
        "magnet": magnet_seeds(),
        "ut_metadata": ut_metadata_seeds(),
        "ut_pex": ut_pex_seeds(),
        "bep10_handshake": bep10_seeds(),
        "krpc": krpc_seeds(),
    }
    for target, seeds in groups.items():
        for name, data in seeds:
            write("corpus", target, name, data)
    for target, name, data in regressions():
        write("regressions", target, name, data)
    if args.zigtorrent:
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "share")
            os.makedirs(os.path.join(src, "sub", "deeper"))
            for rel, size in [("a.txt", 1000), ("empty", 0), ("sub/b.bin", 40_000),
                              ("sub/deeper/c", 17), ("é ü.txt", 5)]:
                with open(os.path.join(src, rel), "wb") as f:
                    f.write(bytes(i % 251 for i in range(size)))
            for name, path, extra in [
                ("created-folder", src, ["--tracker", "http://127.0.0.1:6969/announce",
                                         "--tracker", "udp://127.0.0.1:6969"]),
                ("created-file", os.path.join(src, "sub", "b.bin"), ["--private"]),
                ("created-comment", src, ["--comment", "seed corpus", "--piece-length",
                                          "32768"]),
            ]:
                out = os.path.join(tmp, name + ".torrent")
                subprocess.run([args.zigtorrent, "create", path, *extra, "-o", out],
                               check=True, stdout=subprocess.DEVNULL)
                with open(out, "rb") as f:
                    data = f.read()
                # The creation date would change the file on every run; drop it (it lies
                # outside `info`, so the torrent stays valid).
                data = re.sub(rb"13:creation datei\d+e", b"", data)
                write("corpus", "metainfo", name, data)


if __name__ == "__main__":
    main()
