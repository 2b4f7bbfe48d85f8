"""The raw ZeroMQ stream behind the wire ceiling, as two small programs run as two processes.

`python -m engine.tools.bench.probe sink HOST COUNT` binds a PULL socket on HOST (any port),
prints the port, receives COUNT messages and prints one JSON line: the bytes received and
the seconds from the first message to the last. `... source ENDPOINT COUNT SIZE` sends COUNT
messages of SIZE bytes, zero-copy from one buffer. No engine code runs in either: this is
what the wire allows for that packet size, nothing else.
"""
from __future__ import annotations

import json
import sys
import time

import zmq


def sink(host: str, count: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.rcvhwm = 16
    port = socket.bind_to_random_port(f"tcp://{host}")
    print(port, flush=True)
    socket.recv(copy=False)
    first = time.perf_counter()
    received = 0
    for _ in range(count - 1):
        received += len(socket.recv(copy=False))
    seconds = time.perf_counter() - first
    print(json.dumps({"bytes": received, "seconds": seconds}), flush=True)
    context.destroy(linger=0)


def source(endpoint: str, count: int, size: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.sndhwm = 16
    socket.connect(endpoint)
    payload = memoryview(bytes(size))
    for _ in range(count):
        socket.send(payload, copy=False)
    context.destroy(linger=-1)  # until everything is out


if __name__ == "__main__":
    role, *rest = sys.argv[1:]
    if role == "sink":
        sink(rest[0], int(rest[1]))
    else:
        source(rest[0], int(rest[1]), int(rest[2]))
