"""The two ceilings every cell is compared with, measured in the same run.

- wire ceiling: raw ZeroMQ TCP throughput between two processes with the engine's packet
  size (engine/tools/bench/probe.py), over loopback or across the shaped link;
- work floor: the CPU seconds per GiB that the same work costs in one tight loop in one
  process with no engine around it: read each packet, find its zero pages, pack the others,
  compress, checksum, decompress, write them into place in a fresh file beside the image.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import xxhash

from engine.errors import TransferError
from engine.tools.bench.runner import engine_root
from engine.settings import PAGE_SIZE
from workers.codecs import make_codec

GiB = 1 << 30
WIRE_BYTES = 1 << 30  # streamed per wire measurement: long enough to reach steady state
_PROBE_TIMEOUT_S = 120


def wire_ceiling(packet_bytes: int, host: str = "127.0.0.1", sink_prefix: Sequence[str] = (),
                 source_prefix: Sequence[str] = (), nbytes: int = WIRE_BYTES) -> float:
    """Bytes per second of a raw ZeroMQ stream of `packet_bytes` messages to `host`; the
    prefixes run each end elsewhere (`ip netns exec NS`)."""
    count = max(8, nbytes // packet_bytes)
    probe = [sys.executable, "-m", "engine.tools.bench.probe"]
    sink = subprocess.Popen([*sink_prefix, *probe, "sink", host, str(count)],
                            stdout=subprocess.PIPE, text=True, cwd=engine_root())
    try:
        port = int(sink.stdout.readline())
        subprocess.run([*source_prefix, *probe, "source", f"tcp://{host}:{port}", str(count),
                        str(packet_bytes)], check=True, timeout=_PROBE_TIMEOUT_S,
                       cwd=engine_root())
        report = json.loads(sink.stdout.readline())
        sink.wait(_PROBE_TIMEOUT_S)
    except (ValueError, subprocess.SubprocessError) as exc:
        raise TransferError(f"the wire ceiling probe failed: {exc}") from None
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()
    return report["bytes"] / report["seconds"]


def work_floor(image: Path, compress: str, packet_pages: int) -> float:
    """CPU seconds per GiB of image for the engine's work on `image` done in one loop."""
    codec = make_codec(compress)
    size = image.stat().st_size
    packet = packet_pages * PAGE_SIZE
    buffer = np.empty(packet, np.uint8)
    view = memoryview(buffer)
    target = image.with_name(image.name + ".floor")
    source_fd = os.open(image, os.O_RDONLY)
    target_fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(target_fd, size)
        started = time.process_time()
        for offset in range(0, size, packet):
            got = os.preadv(source_fd, [view], offset)
            pages = -(-got // PAGE_SIZE)
            buffer[got:pages * PAGE_SIZE] = 0
            rows = buffer[:pages * PAGE_SIZE].view(np.uint64).reshape(pages, -1)
            keep = np.bitwise_or.reduce(rows, axis=1) != 0
            data = rows[keep].tobytes()
            payload = codec.compress(data)
            xxhash.xxh3_64_intdigest(payload)
            data = codec.decompress(payload, len(data))
            edges = np.flatnonzero(np.diff(keep, prepend=False, append=False)).tolist()
            done = 0
            for start, end in zip(edges[::2], edges[1::2]):  # one pwrite per stretch
                length = min((end - start) * PAGE_SIZE, got - start * PAGE_SIZE)
                os.pwrite(target_fd, memoryview(data)[done:done + length],
                          offset + start * PAGE_SIZE)
                done += length
        cpu = time.process_time() - started
    finally:
        os.close(source_fd)
        os.close(target_fd)
        target.unlink(missing_ok=True)
    return cpu / (size / GiB)

