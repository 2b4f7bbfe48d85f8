"""The "ram" handler: runs of 4 KiB pages, zero pages as indices only, the rest through a codec.

Bytes move with pread/pwrite, never through a mapping of the image: on the source a packet is
read into a pooled buffer, zero pages are found with one vectorised numpy pass over it (a
uint64 view, OR-reduced per row), and the non-zero pages leave as one frame, zero-copy when
the codec is "none". On the destination each stretch of pages is one pwrite. Measured on
tmpfs (BENCHMARKS.md, "hot path"): pwrite into fresh pages is about twice as fast as
assigning through a mapping, and neither side's memory (USS) grows with the image, which
it does when every page is faulted into a worker's mapping.
A zero page is written only over a page that may hold data (the page states in the
journal; a fresh destination starts zeroed), which keeps the destination sparse.
"""
from __future__ import annotations

import functools
import mmap
import os
import sys
import time
from typing import Any

import numpy as np
import xxhash

from engine.errors import ProtocolError, TransferError
from engine.storage.digest import ZERO_PAGE_HASH, fold_pages, page_hashes
from engine.storage.holes import next_data
from engine.storage.image import map_file
from engine.storage.journal import APPLIED, HOLDS_DATA
from engine.settings import PAGE_SIZE
from workers.codecs import session_codecs
from workers.codecs.adaptive import AdaptiveChoice
from workers.codecs.base import Codec
from workers.handlers.base import Encoded, HandlerContext, PayloadHandler

_WORDS = PAGE_SIZE // 8
# A dirty scan hashes blocks of this many pages first (64 KiB: hashing them costs half as much
# per byte as hashing pages one by one), then the pages of the blocks that changed.
SCAN_BLOCK_PAGES = 16
_SCAN_BLOCK = SCAN_BLOCK_PAGES * PAGE_SIZE


class RamHandler(PayloadHandler):
    kind = "ram"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        self.codecs = session_codecs(context.settings.compress)
        # Through the context at each call: the channel plugs its gauge in after we are made.
        self.choice = AdaptiveChoice(list(self.codecs.values()), lambda: self.context.link())
        size = context.image_size
        self.pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
        self.tail = size % PAGE_SIZE  # length of a short last page, 0 if none
        self._pool = _BufferPool(context.settings.packet_bytes)
        self._fd = -1
        self._zeros = b""
        # Per scanned range: the block hashes and the page hashes of its last scan.
        self.scanned: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._injected = False  # MULTIFD_FAULT is injected once per worker
        self._stale: tuple[dict, list[bytes], np.ndarray] | None = None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _file(self, flags: int) -> int:
        if self._fd < 0:
            if self.context.image_path is None:
                raise ProtocolError("RAM packet for an empty image")
            self._fd = os.open(self.context.image_path, flags)
        return self._fd

    # -- source ---------------------------------------------------------------------------

    def encode(self, spec: dict[str, Any]) -> Encoded:
        runs = spec["runs"]
        count = sum(n for _, n in runs)
        buffer = self._pool.take()
        rows = buffer[:count * PAGE_SIZE].view(np.uint64).reshape(count, _WORDS)
        if self._in_holes(runs):  # nothing stored there: zero pages, nothing to read
            nonzero = np.zeros(count, dtype=bool)
        else:
            self._read(runs, buffer)
            nonzero = np.bitwise_or.reduce(rows, axis=1) != 0
        self._fold_read(runs, buffer, nonzero)
        if self.context.fault and not self._injected:
            runs, count = self._inject_source_fault(runs, count, buffer, nonzero)
            rows, nonzero = rows[:count], nonzero[:count]
        normal = int(np.count_nonzero(nonzero))
        if 0 < normal < count:  # pack the non-zero pages together, in order
            packed = self._pool.take()
            np.compress(nonzero, rows, axis=0,
                        out=packed[:normal * PAGE_SIZE].view(np.uint64).reshape(normal, _WORDS))
            buffer = packed
        raw = normal * PAGE_SIZE
        if self.tail and normal and runs[-1][0] + runs[-1][1] == self.pages and nonzero[-1]:
            raw -= PAGE_SIZE - self.tail  # the short last page travels short
        codec = self.choice.pick() if raw else self.choice.plain
        # Wall time: what compressing costs this channel, the cores others took included.
        started = time.perf_counter()
        frames = [codec.compress(memoryview(buffer)[:raw])] if raw else []
        if raw and codec.name != "none":
            self.choice.record(codec, raw, len(frames[0]), time.perf_counter() - started)
        body = {"runs": runs, "zero": np.packbits(~nonzero).tobytes(),
                "codec": codec.spec, "raw": raw}
        self._count(normal, count - normal, raw)
        return Encoded(body, frames)

    def _fold_read(self, runs: list[list[int]], buffer: np.ndarray, nonzero: np.ndarray) -> None:
        """Record the hash of every page just read as what the destination must end with
        (a later round's read of the page overwrites it)."""
        hashes = self.context.hashes
        if hashes is None:
            return
        values = np.full(len(nonzero), ZERO_PAGE_HASH, dtype=np.uint64)
        data = np.flatnonzero(nonzero)
        values[data] = page_hashes(buffer, data.tolist())
        hashes[_pages_of(runs)] = values

    def _inject_source_fault(self, runs: list[list[int]], count: int, buffer: np.ndarray,
                             nonzero: np.ndarray) -> tuple[list[list[int]], int]:
        """MULTIFD_FAULT, once, after the pages were hashed: "ram-flip-byte" changes a byte of
        the first non-zero page, "ram-drop-page" leaves the packet's last page out."""
        fault = self.context.fault
        if fault == "ram-flip-byte" and nonzero.any():
            buffer[int(np.argmax(nonzero)) * PAGE_SIZE] ^= 0xFF
            self._injected = True
        elif fault == "ram-drop-page" and count > 1:
            start, n = runs[-1]
            runs = runs[:-1] + ([[start, n - 1]] if n > 1 else [])
            count -= 1
            self._injected = True
        return runs, count

    def _in_holes(self, runs: list[list[int]]) -> bool:
        """True if every run lies in a hole of the source file (one SEEK_DATA per run): a
        guest's RAM file is mostly holes, which need neither a read nor a zero scan."""
        fd = self._file(os.O_RDONLY)
        if os.fstat(fd).st_size < self.context.image_size:
            return False  # the source shrank: the read says so
        for start, count in runs:
            end = min((start + count) * PAGE_SIZE, self.context.image_size)
            if next_data(fd, start * PAGE_SIZE, end) < end:
                return False
        return True

    def _read(self, runs: list[list[int]], buffer: np.ndarray) -> None:
        """Read the runs' pages one after another into `buffer`; a short last page is padded
        with zeros so that it scans like a whole one."""
        fd = self._file(os.O_RDONLY)
        view, position = memoryview(buffer), 0
        for start, count in runs:
            want = min(count * PAGE_SIZE, self.context.image_size - start * PAGE_SIZE)
            got = os.preadv(fd, [view[position:position + want]], start * PAGE_SIZE)
            if got != want:
                raise TransferError(f"the source image shrank while being sent (page {start})")
            position += want
        padding = -position % PAGE_SIZE
        if padding:
            buffer[position:position + padding] = 0

    def scan(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Hash pages [start, start + count); answer which differ from this range's last scan.

        The answer is a bitmap (1 bit per page, packed), so it is small and of known size;
        the first scan of a range reports every page. Two levels: every scan hashes blocks of
        SCAN_BLOCK_PAGES pages, and only the pages of blocks whose hash changed are hashed one
        by one, which halves a look; a block changed for the first time reports all its pages.
        Memory: 8 bytes per scanned page and per block, no copy of any page. The pages read
        stay mapped from one scan to the next, until the worker stops with its transfer: they
        are the image's own page-cache pages (RSS, not anonymous memory), and faulting them in
        again for each look cost more than the hashing (BENCHMARKS.md, "dirty scan").
        With "fold" in the spec, the pages' hashes as stored now are recorded as their folded
        hashes instead (a resumed transfer: the destination has them already) and the answer
        is empty.
        """
        start, count = spec.get("start"), spec.get("count")
        if not (isinstance(start, int) and isinstance(count, int)
                and 0 <= start and 0 < count and start + count <= self.pages):
            raise ProtocolError(f"scan of pages {start}+{count} outside the image of "
                                f"{self.pages} pages")
        if spec.get("fold"):  # resuming: the destination has these pages from before
            self._fold_stored(start, count)
            return {"start": start, "count": count}
        view, first_byte = memoryview(self._mapping()), start * PAGE_SIZE
        blocks = self._block_hashes(view, first_byte, count)
        previous = self.scanned.get((start, count))
        if previous is None:  # page hashes 0: not taken yet
            self.scanned[(start, count)] = (blocks, np.zeros(count, np.uint64))
            return {"start": start, "count": count,
                    "changed": np.packbits(np.ones(count, bool)).tobytes()}
        old_blocks, pages = previous
        changed = np.zeros(count, bool)
        for block in np.flatnonzero(blocks != old_blocks).tolist():
            lo = block * SCAN_BLOCK_PAGES
            hi = min(lo + SCAN_BLOCK_PAGES, count)
            now = _xxh3_pages(view, first_byte + lo * PAGE_SIZE, hi - lo)
            # A block that changed for the first time has no page hashes yet: all its pages
            # count as changed (at most 15 pages sent that need not be).
            changed[lo:hi] = (now != pages[lo:hi]) | (pages[lo:hi] == 0)
            pages[lo:hi] = now
        self.scanned[(start, count)] = (blocks, pages)
        return {"start": start, "count": count, "changed": np.packbits(changed).tobytes()}

    def _block_hashes(self, view: memoryview, first_byte: int, count: int) -> np.ndarray:
        """xxh3-64 of each block of the range, read through the mapping, but for the blocks in
        a hole of the file: they are zero and hashed as such untouched. Reading a hole through
        a mapping allocates it, and a guest's RAM file is mostly holes: the first scan of a
        1 GiB guest that used 32 MiB filled all of it. One SEEK_DATA per block with data."""
        fd = self._file(os.O_RDONLY)
        end = min(first_byte + count * PAGE_SIZE, self.context.image_size)
        hashes = np.empty(-(-count // SCAN_BLOCK_PAGES), dtype=np.uint64)
        data = first_byte - 1  # where the next data starts, as the last SEEK_DATA said
        for index, offset in enumerate(range(first_byte, end, _SCAN_BLOCK)):
            length = min(_SCAN_BLOCK, end - offset)
            if data < offset:
                data = next_data(fd, offset, end)
            if data >= offset + length:
                hashes[index] = _zero_hash(length)
            else:
                hashes[index] = xxhash.xxh3_64_intdigest(view[offset:offset + length])
        return hashes

    def _fold_stored(self, start: int, count: int) -> None:
        """Record pages [start, start + count) as sent, hashed as they are stored now; read
        with pread, which leaves holes unallocated."""
        buffer = self._pool.take()
        block = len(buffer) // PAGE_SIZE
        for first in range(start, start + count, block):
            n = min(block, start + count - first)
            self._read([[first, n]], buffer)
            fold_pages(self.context.hashes, first, buffer[:n * PAGE_SIZE])

    def _mapping(self) -> mmap.mmap:
        """The source image, mapped read-only (the worker's mapping, or our own)."""
        if self.context.image is None:
            if self.context.image_path is None:
                raise ProtocolError("scan of an empty image")
            self.context.image = map_file(self.context.image_path, writable=False)
        return self.context.image

    def _count(self, normal: int, zero: int, raw: int) -> None:
        self.counters.update(normal_pages=normal, zero_pages=zero, raw_bytes=raw)

    # -- destination ----------------------------------------------------------------------

    def max_payload(self) -> int:
        # Compressed data may be slightly larger than its input (incompressible pages).
        packet = self.context.settings.packet_bytes
        return packet + packet // 64 + 4096

    def apply(self, body: dict[str, Any], frames: list[Any]) -> None:
        pages = self._apply(body, frames)
        if self.context.fault == "ram-stale-copy" and not self._injected:
            # Keep the first packet; apply it again over the first later copy of its pages.
            if self._stale is None:
                self._stale = (body, [bytes(f) for f in frames], pages)
            elif np.intersect1d(pages, self._stale[2]).size:
                self._injected = True
                self._apply(*self._stale[:2])

    def _apply(self, body: dict[str, Any], frames: list[Any]) -> np.ndarray:
        """Check and write one packet; returns its page indices."""
        pages, zero, codec = self._check_body(body)
        normal = pages[~zero]
        raw = len(normal) * PAGE_SIZE
        if self.tail and len(normal) and normal[-1] == self.pages - 1:
            raw -= PAGE_SIZE - self.tail
        if body["raw"] != raw:
            raise ProtocolError(f"RAM packet announces {body['raw']} payload bytes, its pages "
                                f"need {raw}")
        if codec.name == "none":
            if sum(len(f) for f in frames) != raw:
                raise ProtocolError("RAM payload frames do not add up to the announced size")
            data = frames[0] if len(frames) == 1 else b"".join(frames)
        elif raw == 0 and frames:
            raise ProtocolError("RAM packet of zero pages carries payload")
        elif raw:
            if len(frames) != 1:
                raise ProtocolError("compressed RAM payload must be one frame")
            data = codec.decompress(frames[0], raw)
        fd = self._file(os.O_RDWR)
        written = self.context.written
        if written is not None:  # before the copy: a copy cut short still counts as data
            written[normal] |= HOLDS_DATA
        if raw:
            self._write_pages(fd, memoryview(data).cast("B"), self._byte_ranges(normal))
        self._zero(pages[zero], fd)
        if written is not None:
            written[normal] = HOLDS_DATA | APPLIED
        self._count(len(normal), len(pages) - len(normal), raw)
        return pages

    def _write_pages(self, fd: int, data: memoryview, targets: list[tuple[int, int]]) -> None:
        """Write `data` to the [start, end) byte ranges in order, and record each page's hash
        at the offset it was written to (so a page written to the wrong place shows).
        Faults: "ram-wrong-offset" writes the first stretch a page further, "ram-lost-write"
        skips its write as storage that lost it would (only --verify reread sees that)."""
        hashes = self.context.hashes
        if self.context.fault == "ram-wrong-offset" and not self._injected:
            start, end = targets[0]
            if end + PAGE_SIZE <= self.context.image_size:
                targets = [(start + PAGE_SIZE, end + PAGE_SIZE), *targets[1:]]
                self._injected = True
        lost = self.context.fault == "ram-lost-write" and not self._injected
        self._injected |= lost
        position = 0
        for start, end in targets:
            part = data[position:position + end - start]
            if not lost:
                _write(fd, part, start)
            lost = False
            if hashes is not None:
                fold_pages(hashes, start // PAGE_SIZE, part)
            position += end - start

    def _byte_ranges(self, pages: np.ndarray) -> list[tuple[int, int]]:
        size = self.context.image_size
        return [(first * PAGE_SIZE, min(end * PAGE_SIZE, size))
                for first, end in _page_stretches(pages)]

    def _check_body(self, body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, Codec]:
        """Validate runs, zero flags and codec; return page indices, their zero flags and the
        packet's codec (one of those the session announced)."""
        runs, zero, codec = body.get("runs"), body.get("zero"), body.get("codec")
        if not isinstance(codec, str) or codec not in self.codecs:
            raise ProtocolError(f"RAM packet uses codec {str(codec)[:40]!r}, the session "
                                f"announced {', '.join(self.codecs)}")
        if not isinstance(body.get("raw"), int) or not isinstance(runs, list) or not runs:
            raise ProtocolError("RAM packet has no page runs or no payload size")
        total, previous_end = 0, 0
        for run in runs:
            if not (isinstance(run, list) and len(run) == 2
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in run)):
                raise ProtocolError("RAM packet has a malformed page run")
            start, count = run
            if count < 1 or start < previous_end or start + count > self.pages:
                raise ProtocolError(f"RAM page run [{start}, {count}] is outside the image of "
                                    f"{self.pages} pages or out of order")
            previous_end = start + count
            total += count
            if total > self.context.settings.packet_pages:
                raise ProtocolError("RAM packet carries more pages than the packet size")
        if not isinstance(zero, bytes) or len(zero) != (total + 7) // 8:
            raise ProtocolError("RAM packet's zero-page flags have the wrong length")
        pages = _pages_of(runs)
        flags = np.unpackbits(np.frombuffer(zero, dtype=np.uint8), count=total).astype(bool)
        return pages, flags, self.codecs[codec]

    def _zero(self, pages: np.ndarray, fd: int) -> None:
        """Zero pages: written only where the page may hold data (a fresh destination's other
        pages are holes, already zero, and stay unallocated)."""
        if not len(pages):
            return
        written = self.context.written
        targets = pages
        if self.context.fresh and written is not None:
            targets = pages[(written[pages] & HOLDS_DATA) != 0]
        for start, end in self._byte_ranges(targets):
            if len(self._zeros) < end - start:
                self._zeros = bytes(self.context.settings.packet_bytes)
            _write(fd, memoryview(self._zeros)[:end - start], start)
        if written is not None:
            written[pages] = APPLIED
        if self.context.hashes is not None:
            self.context.hashes[pages] = ZERO_PAGE_HASH


def _xxh3_pages(view: memoryview, first_byte: int, count: int) -> np.ndarray:
    """xxh3-64 of `count` consecutive pages from `first_byte` (a short last page as it is)."""
    return np.fromiter((xxhash.xxh3_64_intdigest(view[o:o + PAGE_SIZE])
                        for o in range(first_byte, first_byte + count * PAGE_SIZE, PAGE_SIZE)),
                       dtype=np.uint64, count=count)


@functools.lru_cache(maxsize=8)
def _zero_hash(length: int) -> int:
    return xxhash.xxh3_64_intdigest(bytes(length))


def _pages_of(runs: list[list[int]]) -> np.ndarray:
    """The page indices of [first, count] runs, in order."""
    return np.concatenate([np.arange(start, start + count) for start, count in runs])


def _page_stretches(pages: np.ndarray) -> list[tuple[int, int]]:
    """[first, end) page ranges of consecutive indices in a sorted index array."""
    if not len(pages):
        return []
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    firsts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(pages)]))
    return list(zip(pages[firsts].tolist(), (pages[ends - 1] + 1).tolist()))


def _write(fd: int, data: memoryview, offset: int) -> None:
    if os.pwrite(fd, data, offset) != len(data):
        raise TransferError("the destination is full (short write)")


class _BufferPool:
    """Packet-sized buffers, each reused once nothing refers to it any more.

    A frame sent zero-copy keeps its buffer alive until ZeroMQ has put it on the wire, so
    the pool grows to what is in flight (bounded by the channel's window) and no further.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffers: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        for buffer in self.buffers:
            if sys.getrefcount(buffer) == 3:  # the list, this loop and the call: free
                return buffer
        buffer = np.empty(self.size, np.uint8)
        self.buffers.append(buffer)
        return buffer
