"""The "ram" handler: runs of 4 KiB pages, zero pages as indices only, the rest through a codec.

On the source, zero pages are found with one vectorised numpy pass over the packet's pages
(a uint64 view, any() per row): the bytes are touched only by C code. Non-zero pages travel
as one frame: a copy of them when the codec is "none", else compressed. Not views of the
mapping: the checksum must cover exactly the bytes that go on the wire, and a live source
keeps changing until ZeroMQ has sent them.
On the destination, a zero page is written only over a page that was written before (a fresh
destination starts zeroed), which keeps the destination sparse.
For live migration without a cooperating writer, `scan` hashes a range of source pages (xxh3-64
each) and answers which changed since its previous scan of that range.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import xxhash

from engine.errors import ProtocolError
from engine.journal import APPLIED, HOLDS_DATA
from engine.settings import PAGE_SIZE
from workers.codecs import make_codec
from workers.handlers.base import Encoded, HandlerContext, PayloadHandler

_WORDS = PAGE_SIZE // 8


class RamHandler(PayloadHandler):
    kind = "ram"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        self.codec = make_codec(context.settings.compress)
        size = context.image_size
        self.pages = (size + PAGE_SIZE - 1) // PAGE_SIZE
        self.full_pages = size // PAGE_SIZE
        self.tail = size % PAGE_SIZE  # length of a short last page, 0 if none
        self.view = memoryview(context.image) if context.image is not None else None
        self.words = (np.frombuffer(context.image, dtype=np.uint64,
                                    count=self.full_pages * _WORDS).reshape(-1, _WORDS)
                      if context.image is not None else None)
        self.scanned: dict[tuple[int, int], np.ndarray] = {}  # page hashes by (start, count)

    # -- source ---------------------------------------------------------------------------

    def encode(self, spec: dict[str, Any]) -> Encoded:
        runs = spec["runs"]
        flags = [self._nonzero(start, count) for start, count in runs]
        slices = [self._span(start + first, start + end)
                  for (start, _), run_flags in zip(runs, flags)
                  for first, end in _stretches(run_flags)]
        raw = sum(len(s) for s in slices)
        if raw == 0:
            frames = []
        elif self.codec.name == "none":
            frames = [b"".join(slices)]
        else:
            frames = [self.codec.compress(slices[0] if len(slices) == 1 else b"".join(slices))]
        nonzero = np.concatenate(flags)
        normal = int(nonzero.sum())
        body = {"runs": runs, "zero": np.packbits(~nonzero).tobytes(),
                "codec": self.codec.spec, "raw": raw}
        self._count(normal, len(nonzero) - normal, raw)
        return Encoded(body, frames)

    def _count(self, normal: int, zero: int, raw: int) -> None:
        self.counters.update(normal_pages=normal, zero_pages=zero, raw_bytes=raw)

    def _nonzero(self, start: int, count: int) -> np.ndarray:
        full = max(0, min(start + count, self.full_pages) - start)
        flags = self.words[start:start + full].any(axis=1) if full else np.zeros(0, bool)
        if full < count:  # the run ends with the short last page
            tail = self.view[self.full_pages * PAGE_SIZE:]
            flags = np.append(flags, bool(np.frombuffer(tail, dtype=np.uint8).any()))
        return flags

    def _span(self, first_page: int, end_page: int) -> memoryview:
        return self.view[first_page * PAGE_SIZE:min(end_page * PAGE_SIZE, self.context.image_size)]

    def scan(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Hash pages [start, start + count); answer which differ from this range's last scan.

        The answer is a bitmap (1 bit per page, packed), so it is small and of known size;
        the first scan of a range reports every page. Memory: 8 bytes per scanned page.
        """
        start, count = spec.get("start"), spec.get("count")
        if not (isinstance(start, int) and isinstance(count, int)
                and 0 <= start and 0 < count and start + count <= self.pages):
            raise ProtocolError(f"scan of pages {start}+{count} outside the image of "
                                f"{self.pages} pages")
        # One C call per page; measured ~0.35 us per 4 KiB page (about 12 GB/s), close to
        # hashing the whole range at once, so the Python loop is not what limits the scan.
        offsets = range(start * PAGE_SIZE, (start + count) * PAGE_SIZE, PAGE_SIZE)
        hashes = np.fromiter(map(xxhash.xxh3_64_intdigest,
                                 (self.view[o:o + PAGE_SIZE] for o in offsets)),
                             dtype=np.uint64, count=count)
        previous = self.scanned.get((start, count))
        self.scanned[(start, count)] = hashes
        changed = np.ones(count, bool) if previous is None else hashes != previous
        return {"start": start, "count": count, "changed": np.packbits(changed).tobytes()}

    # -- destination ----------------------------------------------------------------------

    def max_payload(self) -> int:
        # Compressed data may be slightly larger than its input (incompressible pages).
        packet = self.context.settings.packet_bytes
        return packet + packet // 64 + 4096

    def apply(self, body: dict[str, Any], frames: list[Any]) -> None:
        pages, zero = self._check_body(body)
        normal = pages[~zero]
        raw = len(normal) * PAGE_SIZE
        if self.tail and len(normal) and normal[-1] == self.pages - 1:
            raw -= PAGE_SIZE - self.tail
        if body["raw"] != raw:
            raise ProtocolError(f"RAM packet announces {body['raw']} payload bytes, its pages "
                                f"need {raw}")
        if self.codec.name == "none":
            if sum(len(f) for f in frames) != raw:
                raise ProtocolError("RAM payload frames do not add up to the announced size")
        elif raw == 0 and frames:
            raise ProtocolError("RAM packet of zero pages carries payload")
        elif raw:
            if len(frames) != 1:
                raise ProtocolError("compressed RAM payload must be one frame")
            frames = [self.codec.decompress(frames[0], raw)]
        targets = [(first * PAGE_SIZE, min(end * PAGE_SIZE, self.context.image_size))
                   for first, end in _page_stretches(normal)]
        written = self.context.written
        if written is not None:  # before the copy: a copy cut short still counts as data
            written[normal] |= HOLDS_DATA
        _scatter(frames, targets, self.view)
        self._zero(pages[zero])
        if written is not None:
            written[normal] = HOLDS_DATA | APPLIED
        self._count(len(normal), len(pages) - len(normal), raw)

    def _check_body(self, body: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Validate runs, zero flags and codec; return page indices and their zero flags."""
        runs, zero, codec = body.get("runs"), body.get("zero"), body.get("codec")
        if codec != self.codec.spec:
            raise ProtocolError(f"RAM packet uses codec {str(codec)[:40]!r}, the session "
                                f"announced {self.codec.spec!r}")
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
        pages = np.concatenate([np.arange(start, start + count) for start, count in runs])
        flags = np.unpackbits(np.frombuffer(zero, dtype=np.uint8), count=total).astype(bool)
        return pages, flags

    def _zero(self, pages: np.ndarray) -> None:
        """Zero pages: written only where the page may hold data (a fresh destination's other
        pages are holes, already zero, and stay unallocated)."""
        if not len(pages):
            return
        written = self.context.written
        targets = pages
        if self.context.fresh and written is not None:
            targets = pages[(written[pages] & HOLDS_DATA) != 0]
        full = targets[targets < self.full_pages]
        if len(full):
            self.words[full] = 0
        if len(full) < len(targets):
            self.view[self.full_pages * PAGE_SIZE:] = bytes(self.tail)
        if written is not None:
            written[pages] = APPLIED


def _stretches(flags: np.ndarray) -> list[tuple[int, int]]:
    """[first, end) index pairs of the runs of True in a boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.view(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


def _page_stretches(pages: np.ndarray) -> list[tuple[int, int]]:
    """[first, end) page ranges of consecutive indices in a sorted index array."""
    if not len(pages):
        return []
    breaks = np.flatnonzero(np.diff(pages) != 1) + 1
    firsts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(pages)]))
    return list(zip(pages[firsts].tolist(), (pages[ends - 1] + 1).tolist()))


def _scatter(frames: list[Any], targets: list[tuple[int, int]], image) -> None:
    """Copy the concatenated frames into the [start, end) byte ranges of the image in order.

    The frames' total equals the targets' total (checked by the caller); frame boundaries
    need not match target boundaries.
    """
    pending = iter(frames)
    current = memoryview(b"")
    for start, end in targets:
        while start < end:
            if not len(current):
                current = memoryview(next(pending)).cast("B")
            n = min(len(current), end - start)
            image[start:start + n] = current[:n]
            current = current[n:]
            start += n
