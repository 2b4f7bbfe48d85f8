"""The transfer's digest: xxh3-128 over fixed segments, combined, so workers hash in parallel.

The image digest is xxh3-128 of (image size, then the xxh3-128 of each 64 MiB segment in
order). Any process that maps the image can hash any segment, so both ends split the work
across their workers instead of reading gigabytes through one coordinator; the result is
independent of the channel count.
"""
from __future__ import annotations

import os
import struct
from typing import Iterable

import xxhash

SEGMENT_BYTES = 64 << 20


def segment_count(size: int) -> int:
    return (size + SEGMENT_BYTES - 1) // SEGMENT_BYTES


def hash_segment(buffer, index: int) -> bytes:
    """xxh3-128 of segment `index` of a mapped buffer (no copy: xxhash reads the mapping)."""
    start = index * SEGMENT_BYTES
    return xxhash.xxh3_128_digest(memoryview(buffer)[start:start + SEGMENT_BYTES])


def combine(size: int, segment_digests: Iterable[bytes]) -> str:
    h = xxhash.xxh3_128(struct.pack("<Q", size))
    for digest in segment_digests:
        h.update(digest)
    return h.hexdigest()


def digest_of_buffer(buffer) -> str:
    size = len(memoryview(buffer))
    return combine(size, (hash_segment(buffer, i) for i in range(segment_count(size))))


def digest_of_file(path: str | os.PathLike) -> str:
    """Same digest as digest_of_buffer, streamed from a file in segment-sized reads."""
    size = os.path.getsize(path)
    digests = []
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(min(SEGMENT_BYTES, max(size, 1)))
        view = memoryview(buf)
        for _ in range(segment_count(size)):
            n = f.readinto(buf)
            digests.append(xxhash.xxh3_128_digest(view[:n]))
    return combine(size, digests)
