#!/usr/bin/python3
"""Delay every packet of an NFQUEUE queue by a fixed time: `tc netem delay` for kernels without
sch_netem.

    ip netns exec NS nfq_delay.py QUEUE_NUM DELAY_MS

Packets reach the queue from an iptables rule such as
`iptables -A OUTPUT -o DEV -j NFQUEUE --queue-num 0`; this holds each one (in the kernel, only
its id comes up here) and accepts it DELAY_MS after it arrived. Loss is the iptables `statistic`
match's job, in the kernel, before the queue. The delay is constant, so packets leave in the
order they came, as with netem's `delay` without jitter.

It speaks nfnetlink_queue over a raw netlink socket (standard library only, no
libnetfilter_queue), prints `ready` once the queue is bound, and runs until killed or orphaned. The queue
belongs to the network namespace the process runs in.
"""

import os
import select
import socket
import struct
import sys
import time
from collections import deque

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2

NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3

NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3

NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_ACCEPT = 1

# Packets the kernel may hold for us at once; past it, it drops (like a full netem queue).
QUEUE_MAXLEN = 8192


def attr(kind, payload):
    head = struct.pack("=HH", 4 + len(payload), kind)
    pad = b"\0" * (-len(payload) % 4)
    return head + payload + pad


def message(queue, msg, flags, attrs, seq=0):
    # nfgenmsg: family, version, res_id (the queue number, big-endian).
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + b"".join(attrs)
    kind = (NFNL_SUBSYS_QUEUE << 8) | msg
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def parse(buf):
    """Yields (type, payload-after-nlmsghdr) for each netlink message in `buf`."""
    off = 0
    while off + 16 <= len(buf):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if length < 16 or off + length > len(buf):
            return
        yield kind, buf[off + 16:off + length]
        off += (length + 3) & ~3


def packet_id(payload):
    off = 4  # nfgenmsg
    while off + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, off)
        if length < 4:
            return None
        if kind & 0x7FFF == NFQA_PACKET_HDR:
            return struct.unpack_from(">I", payload, off + 4)[0]
        off += (length + 3) & ~3
    return None


def configure(sock, queue):
    """Binds the queue and asks for metadata only; raises on a kernel error."""
    requests = [
        [attr(NFQA_CFG_CMD, struct.pack("=BBH", NFQNL_CFG_CMD_BIND, 0, 0))],
        [attr(NFQA_CFG_PARAMS, struct.pack(">IB", 0, NFQNL_COPY_META))],
        [attr(NFQA_CFG_QUEUE_MAXLEN, struct.pack(">I", QUEUE_MAXLEN))],
    ]
    for seq, attrs in enumerate(requests, 1):
        sock.send(message(queue, NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, attrs, seq))
        for kind, payload in parse(sock.recv(65536)):
            if kind == NLMSG_ERROR:
                (err,) = struct.unpack_from("=i", payload, 0)
                if err != 0:
                    raise OSError(-err, f"nfqueue config step {seq}: {os.strerror(-err)}")


def run(queue, delay):
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    sock.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE (root)
    sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
    configure(sock, queue)
    parent = os.getppid()
    print("ready", flush=True)
    held = deque()  # (due, packet id); constant delay keeps it sorted
    while True:
        now = time.monotonic()
        last_due = None
        while held and held[0][0] <= now:
            last_due = held.popleft()[1]
        if last_due is not None:
            # One batch verdict accepts every queued id up to and including this one: exactly
            # the packets that are due, since ids grow in arrival order.
            verdict = attr(NFQA_VERDICT_HDR, struct.pack(">II", NF_ACCEPT, last_due))
            sock.send(message(queue, NFQNL_MSG_VERDICT_BATCH, NLM_F_REQUEST, [verdict]))
        if os.getppid() != parent:
            return  # whoever started us is gone (killed without cleaning up): so are we
        wait = held[0][0] - now if held else 1.0
        ready, _, _ = select.select([sock], [], [], max(0.0, wait))
        if not ready:
            continue
        while True:
            try:
                buf = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            arrived = time.monotonic()
            for kind, payload in parse(buf):
                if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET:
                    pid = packet_id(payload)
                    if pid is not None:
                        held.append((arrived + delay, pid))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    run(int(sys.argv[1]), float(sys.argv[2]) / 1000.0)


if __name__ == "__main__":
    main()
