"""The lean peer: the least a Python + numpy + pyzmq pipeline does to move an image, run by
`bench --peer lean` beside the engine to show what the machine gives Python today.

  python -m engine.tools.bench.lean SRC DST CHANNELS CODEC      (CODEC: none or zstd:LEVEL)

CHANNELS destination processes each bind a PULL socket; CHANNELS source processes map SRC
read-only and take every CHANNELS-th packet of PACKET_PAGES pages. A source finds the zero
pages with one OR-reduction per page and sends the runs of non-zero pages as zero-copy
frames from the mapping (compressed, with a codec) behind a msgpack header; a destination
pwrites each run where it belongs and folds its xxh3 into a digest. It prints one JSON line:
its own seconds and the bytes that travelled.

It is a measuring stick, not a design: no credits, recovery, rounds, device state,
verification, journal or validation of what arrives. The engine does all of that; this shows
how much of the engine's time is the price of it.
"""
from __future__ import annotations

import json
import mmap
import os
import sys
import time

import msgpack
import numpy as np
import xxhash
import zmq

from workers.codecs import make_codec

PAGE = 4096
PACKET_PAGES = 512  # the engine's default packet, so both cut the image alike
HIGH_WATER = 8  # packets queued per socket: enough to keep the wire busy
# A destination whose source died gives up after this much silence, not never.
SILENCE_MS = 30_000
_END = b""


def send_share(image: str, endpoint: str, share: int, shares: int, codec: str) -> int:
    """Send packets share, share + shares, ... of `image` to `endpoint`; the wire bytes."""
    compress = make_codec(codec).compress
    fd = os.open(image, os.O_RDONLY)
    size = os.fstat(fd).st_size
    mapped = mmap.mmap(fd, size, prot=mmap.PROT_READ)
    os.close(fd)
    pages = np.frombuffer(mapped, np.uint64).reshape(-1, PAGE // 8)
    view = memoryview(mapped)
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.sndhwm = HIGH_WATER
    socket.connect(endpoint)
    sent = 0
    for first in range(share * PACKET_PAGES, len(pages), shares * PACKET_PAGES):
        packet = pages[first:first + PACKET_PAGES]
        edges = np.flatnonzero(np.diff(np.bitwise_or.reduce(packet, axis=1) != 0,
                                       prepend=False, append=False)).tolist()
        runs = list(zip(edges[::2], edges[1::2]))
        frames = [view[(first + a) * PAGE:(first + b) * PAGE] for a, b in runs]
        if codec != "none":
            frames = [compress(frame) for frame in frames]
        header = msgpack.packb([first, runs])
        socket.send_multipart([header, *frames], copy=False)
        sent += len(header) + sum(len(frame) for frame in frames)
        # the sent pages are read only once: leave them to the page cache, not to our RSS
        mapped.madvise(mmap.MADV_DONTNEED, first * PAGE, len(packet) * PAGE)
    socket.send(_END)
    socket.close(linger=-1)
    context.term()
    return sent


def receive_share(destination: str, socket: zmq.Socket, codec: str) -> int:
    """Write what arrives on `socket` into `destination` until the end mark; the digest."""
    decompress = make_codec(codec).decompress
    fd = os.open(destination, os.O_WRONLY)
    digest = 0
    while True:
        frames = socket.recv_multipart(copy=False)
        if not len(frames[0]):
            break
        first, runs = msgpack.unpackb(frames[0].bytes)
        for (a, b), frame in zip(runs, frames[1:]):
            data = frame.buffer if codec == "none" else decompress(frame.buffer,
                                                                    (b - a) * PAGE)
            os.pwrite(fd, data, (first + a) * PAGE)
            digest ^= xxhash.xxh3_64_intdigest(data, seed=first + a)
    os.close(fd)
    return digest


def move(image: str, destination: str, channels: int, codec: str) -> dict:
    """Move `image` to `destination` over `channels` pairs of processes; the figures."""
    started = time.perf_counter()
    with open(destination, "wb") as out:
        out.truncate(os.path.getsize(image))
    endpoints, report = os.pipe(), os.pipe()
    children = []
    for _ in range(channels):
        children.append(_fork(lambda: _destination(destination, codec, endpoints[1])))
    os.close(endpoints[1])
    with os.fdopen(endpoints[0]) as ports:
        found = [ports.readline().strip() for _ in range(channels)]
    for share, endpoint in enumerate(found):
        children.append(_fork(lambda: _source(image, endpoint, share, channels, codec,
                                              report[1])))
    failed = sum(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0 for pid in children)
    os.close(report[1])
    with os.fdopen(report[0]) as counts:
        wire = sum(int(line) for line in counts)
    return {"ok": not failed, "seconds": time.perf_counter() - started, "wire_bytes": wire,
            **({"error": f"{failed} of the lean pipeline's processes failed"} if failed else {})}


def _source(image: str, endpoint: str, share: int, shares: int, codec: str,
            report: int) -> None:
    os.write(report, b"%d\n" % send_share(image, endpoint, share, shares, codec))


def _destination(destination: str, codec: str, ports: int) -> None:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.rcvhwm = HIGH_WATER
    socket.rcvtimeo = SILENCE_MS
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    os.write(ports, b"tcp://127.0.0.1:%d\n" % port)
    receive_share(destination, socket, codec)
    socket.close()
    context.term()


def _fork(work) -> int:
    """Run `work` in a child process (fork: the imports are paid once, by the parent)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


if __name__ == "__main__":
    source, target, count, spec = sys.argv[1:5]
    print(json.dumps(move(source, target, int(count), spec)), flush=True)
