"""The transfer's digest: xxh3-128 over fixed segments, combined, so workers hash in parallel.

The image digest is xxh3-128 of (image size, then the xxh3-128 of each 64 MiB segment in
order). Any process that maps the image can hash any segment, so both ends split the work
across their workers instead of reading gigabytes through one coordinator; the result is
independent of the channel count.

Holes (ranges of a sparse file that were never written) are hashed as zeros without being
read: reading a hole of a shared-memory file through a mapping makes the kernel allocate
memory for it, which made hashing a fresh 1 GiB destination 7x slower and un-sparse.
Data is read with pread into one small buffer, not through a mapping: every page read
through a mapping stays in the hashing process's memory (USS) until it unmaps, which made a
4 GiB transfer's workers end up holding the whole image (BENCHMARKS.md, "memory").
"""
from __future__ import annotations

import os
import struct
from typing import Iterable

import xxhash

from engine.errors import TransferError

SEGMENT_BYTES = 64 << 20
_ZEROS = bytes(1 << 20)
_READ_BYTES = 4 << 20
_buffer = memoryview(bytearray(_READ_BYTES))  # one per process: workers hash one at a time


def segment_count(size: int) -> int:
    return (size + SEGMENT_BYTES - 1) // SEGMENT_BYTES


def plan(size: int, channels: int) -> dict[int, list[int]]:
    """Which segments each channel's worker hashes (round robin; some may get none)."""
    segments = segment_count(size)
    return {channel: list(range(channel, segments, channels)) for channel in range(channels)}


def hash_segment(fd: int, index: int) -> bytes:
    """xxh3-128 of segment `index` of the file open as `fd`.

    The segment is read in chunks; a chunk that starts in a hole that reaches its end is fed
    as zeros without a read, any other chunk is read whole (pread returns a hole's zeros
    without allocating). One SEEK_DATA per chunk: asking for the end of each data range
    with SEEK_HOLE instead made the kernel walk every page of a fully written image, a
    tenth of a second per GiB (BENCHMARKS.md, "profile").
    """
    end = min((index + 1) * SEGMENT_BYTES, os.fstat(fd).st_size)
    h = xxhash.xxh3_128()
    position = index * SEGMENT_BYTES
    while position < end:
        chunk_end = min(position + _READ_BYTES, end)
        data = _seek(fd, position, os.SEEK_DATA, end)
        if data >= chunk_end:  # a hole: zeros, fed from a small buffer in cache
            while position < data:
                n = min(len(_ZEROS), data - position)
                h.update(memoryview(_ZEROS)[:n])
                position += n
            continue
        n = os.preadv(fd, [_buffer[:chunk_end - position]], position)
        if n == 0:
            raise TransferError(f"the image shrank to {position} bytes while being hashed")
        h.update(_buffer[:n])
        position += n
    return h.digest()


def _seek(fd: int, position: int, whence: int, end: int) -> int:
    try:
        return min(os.lseek(fd, position, whence), end)
    except OSError:  # ENXIO: no more data after `position`
        return end


def combine(size: int, segment_digests: Iterable[bytes]) -> str:
    h = xxhash.xxh3_128(struct.pack("<Q", size))
    for digest in segment_digests:
        h.update(digest)
    return h.hexdigest()


def digest_of_file(path: str | os.PathLike) -> str:
    """The digest of a whole file, in this process (devices, tests)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        return combine(size, (hash_segment(fd, i) for i in range(segment_count(size))))
    finally:
        os.close(fd)
