"""The transfer's digests: folded in as pages and chunks pass, and, if asked, re-read from storage.

Folded (the default, "fold"): each end keeps one 64-bit hash per page in an array indexed by
page number, written as the page passes: the source as it reads a page to send it, the
destination as it writes it, at the offset it wrote it to. A later round's copy of a page
overwrites the earlier one's entry, so neither packet nor channel order matters; the barrier
keeps an older copy from being applied over a newer one, and if it were, the entry would show
it. The end compares xxh3-128 of (size, the array): 8 bytes per page, nothing of the image is
read again. Device state likewise: one hash per chunk, in index order. Entry 0 means "never
sent" (page hashes are odd), so a page the source never sent is seen too.

Re-read ("reread"): the image digest is xxh3-128 of (image size, then the xxh3-128 of each
64 MiB segment in order), which any process that maps the image can compute for any segment,
so both ends split the work across their workers. It proves what storage holds after the
transfer, at the price of reading both images once more.
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
from typing import Any, Iterable

import numpy as np
import xxhash

from engine.errors import TransferError
from engine.storage.holes import next_data
from engine.settings import PAGE_SIZE

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
        data = next_data(fd, position, end)
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


def combine(size: int, segment_digests: Iterable[bytes]) -> str:
    h = xxhash.xxh3_128(struct.pack("<Q", size))
    for digest in segment_digests:
        h.update(digest)
    return h.hexdigest()


# -- folded: one hash per page, one per device chunk -------------------------------------------

def page_hash(page: Any) -> int:
    """The fold's hash of one page: odd, so that 0 can mean "never sent". A short last page
    is hashed as if padded with zeros, on both ends."""
    if len(page) < PAGE_SIZE:
        page = bytes(page) + bytes(PAGE_SIZE - len(page))
    return xxhash.xxh3_64_intdigest(page) | 1


ZERO_PAGE_HASH = page_hash(bytes(PAGE_SIZE))


def page_hashes(data: Any, indices: Iterable[int]) -> np.ndarray:
    """page_hash of pages `indices` of `data` (whole pages, contiguous).

    One C call per page (~0.35 us per 4 KiB page); the Python loop around it is not what
    limits a transfer (BENCHMARKS.md, "verification").
    """
    view = memoryview(data).cast("B")
    indices = list(indices)
    hashes = np.fromiter((xxhash.xxh3_64_intdigest(view[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
                          for i in indices), dtype=np.uint64, count=len(indices))
    return hashes | np.uint64(1)


def fold_pages(hashes: np.ndarray, first: int, data: Any) -> None:
    """Record pages first, first + 1, ... as holding the consecutive pages of `data` (whose
    last page may be short: it is hashed as padded with zeros)."""
    view = memoryview(data).cast("B")
    whole = len(view) // PAGE_SIZE
    hashes[first:first + whole] = page_hashes(view, range(whole))
    if len(view) % PAGE_SIZE:
        hashes[first + whole] = page_hash(view[whole * PAGE_SIZE:])


def fold_digest(size: int, hashes: np.ndarray) -> str:
    """The image digest of a folded transfer: xxh3-128 of the size and every page's hash."""
    h = xxhash.xxh3_128(struct.pack("<Q", size))
    h.update(memoryview(np.ascontiguousarray(hashes, dtype="<u8")).cast("B"))
    return h.hexdigest()


def never_sent(hashes: np.ndarray) -> np.ndarray:
    """The pages whose entry is still 0: no copy of them passed."""
    return np.flatnonzero(hashes == 0)


def chunk_hash(data: Any) -> int:
    return xxhash.xxh3_64_intdigest(data)


def device_digest(size: int, chunk_hashes: Iterable[int]) -> str:
    """A device's digest: xxh3-128 of its size and its chunks' hashes in index order."""
    h = xxhash.xxh3_128(struct.pack("<Q", size))
    for value in chunk_hashes:
        h.update(struct.pack("<Q", value))
    return h.hexdigest()


def device_digest_of_file(path: str | os.PathLike, chunk_size: int) -> str:
    """What device_digest gives for a file sent in chunks of `chunk_size` (the source's side)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return device_digest(size, (chunk_hash(f.read(chunk_size))
                                    for _ in range(max(1, -(-size // chunk_size)))))
