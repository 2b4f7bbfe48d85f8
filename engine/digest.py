"""The transfer's digest: xxh3-128 over fixed segments, combined, so workers hash in parallel.

The image digest is xxh3-128 of (image size, then the xxh3-128 of each 64 MiB segment in
order). Any process that maps the image can hash any segment, so both ends split the work
across their workers instead of reading gigabytes through one coordinator; the result is
independent of the channel count.

Holes (ranges of a sparse file that were never written) are hashed as zeros without being
read: reading a hole of a shared-memory file through a mapping makes the kernel allocate
memory for it, which made hashing a fresh 1 GiB destination 7x slower and un-sparse.
"""
from __future__ import annotations

import os
import struct
from typing import Iterable

import xxhash

from engine.image import map_file

SEGMENT_BYTES = 64 << 20
_ZEROS = bytes(1 << 20)


def segment_count(size: int) -> int:
    return (size + SEGMENT_BYTES - 1) // SEGMENT_BYTES


def plan(size: int, channels: int) -> dict[int, list[int]]:
    """Which segments each channel's worker hashes (round robin; some may get none)."""
    segments = segment_count(size)
    return {channel: list(range(channel, segments, channels)) for channel in range(channels)}


class Extents:
    """Where a file's data and holes are (SEEK_DATA / SEEK_HOLE), with answers remembered.

    On tmpfs each lseek walks the page cache up to its answer, so asking afresh for every
    64 MiB segment of a dense file walked to the end of the file each time: quadratic in the
    image size (~0.2 s of a 1 GiB verification). An answer stays valid for any later position
    up to it, and workers hash their segments in increasing order.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self._known = {os.SEEK_DATA: (0, -1), os.SEEK_HOLE: (0, -1)}  # (asked at, answer)

    def next(self, position: int, whence: int) -> int:
        """The first data (SEEK_DATA) or hole (SEEK_HOLE) offset at or after `position`."""
        asked, answer = self._known[whence]
        if asked <= position <= answer:
            return answer
        try:
            answer = os.lseek(self.fd, position, whence)
        except OSError:  # ENXIO: no data after `position`
            answer = self.size
        self._known[whence] = (position, answer)
        return answer


def hash_segment(image, extents: Extents, index: int) -> bytes:
    """xxh3-128 of segment `index` of a file mapped as `image`, its extents in `extents`."""
    view = memoryview(image)
    end = min((index + 1) * SEGMENT_BYTES, len(view))
    h = xxhash.xxh3_128()
    position = index * SEGMENT_BYTES
    while position < end:
        data = min(extents.next(position, os.SEEK_DATA), end)
        while position < data:  # a hole: zeros, fed from a small buffer in cache
            n = min(len(_ZEROS), data - position)
            h.update(memoryview(_ZEROS)[:n])
            position += n
        if position < end:
            hole = min(extents.next(position, os.SEEK_HOLE), end)
            h.update(view[position:hole])
            position = hole
    return h.digest()


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
        image = map_file(path, writable=False)
        extents = Extents(fd)
        return combine(size, (hash_segment(image, extents, i) for i in range(segment_count(size))))
    finally:
        os.close(fd)
