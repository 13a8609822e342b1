"""A local client that abuses a worker's socket, run as its own process by the tests and benchmarks.

    python benchmarks/hostile_client.py flood SOCKET [--connections N] [--requests N]
        Each connection sends N `snapshot` requests at once and never reads a reply.
    python benchmarks/hostile_client.py hold SOCKET [--connections N] [--every S]
        Opens N connections and sends one byte of a request header on each every S seconds, so each
        always holds a partial request and never a whole one.

Both keep their connections open until killed (SIGTERM), and print one JSON line when set up:
`{"connections": opened, "refused": n}`.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import struct
import sys
import time

import msgpack


def connect(path: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def flood(path: str, connections: int, requests: int) -> None:
    body = msgpack.packb({"v": 1, "op": "snapshot"})
    frame = struct.pack(">I", len(body)) + body
    socks, pending = [], {}
    for _ in range(connections):
        sock = connect(path)
        if sock is not None:
            socks.append(sock)
            pending[sock] = memoryview(frame * requests)
    report(len(socks), connections - len(socks))
    while True:  # push what the kernel takes; never read
        for sock, data in list(pending.items()):
            try:
                sent = sock.send(data)
            except BlockingIOError:
                continue
            except OSError:
                del pending[sock]
                continue
            pending[sock] = data[sent:]
            if not pending[sock]:
                del pending[sock]
        time.sleep(0.05)


def hold(path: str, connections: int, every: float) -> None:
    socks = [s for s in (connect(path) for _ in range(connections)) if s is not None]
    report(len(socks), connections - len(socks))
    header = struct.pack(">I", 64)
    sent = 0
    while True:
        for sock in list(socks):
            try:
                sock.send(header[sent % 4 : sent % 4 + 1])
            except OSError:
                socks.remove(sock)  # the worker closed it: keep the others going
        sent += 1
        time.sleep(every)


def report(opened: int, refused: int) -> None:
    print(json.dumps({"connections": opened, "refused": refused}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["flood", "hold"])
    parser.add_argument("socket")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--every", type=float, default=20.0)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.mode == "flood":
        flood(args.socket, args.connections, args.requests)
    else:
        hold(args.socket, args.connections, args.every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
