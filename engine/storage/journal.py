"""The destination's journal: what has arrived, kept beside the image so a transfer can resume.

DEST.journal holds a header (what transfer it belongs to), one state byte per page and one
8-byte hash per page (the folded digest's entries, engine/storage/digest.py), both shared by
the destination workers through mappings, and after them an append-only list of the device
chunks that landed (with their hashes). A page's state has two bits:
- HOLDS_DATA, set *before* a page's bytes are copied in: the page may be non-zero, so a
  later zero page must really be written (a page never marked is still a hole: zero);
- APPLIED, set *after* the copy completed: the page need not be sent again on resume.
A worker killed in the middle of a copy leaves HOLDS_DATA without APPLIED: the page is sent
again, and zeroed properly if it became a zero page.
The journal survives a failed or interrupted transfer (it is the "incomplete" mark next to
DEST.partial) and is removed once the destination verified.
"""
from __future__ import annotations

import os
from pathlib import Path

import msgpack
import numpy as np

from engine.errors import ProtocolError
from engine.settings import PAGE_SIZE
from engine.storage.holes import next_data, next_hole

HOLDS_DATA = 1
APPLIED = 2
MAGIC = "multifd-engine journal"
VERSION = 2
HEADER_BYTES = 4096  # the page map starts here; mmap offsets must be page aligned


class Journal:
    def __init__(self, path: Path, image_size: int, chunk_size: int, create: bool,
                 holds_data: Path | None = None) -> None:
        self.path = path
        self.pages = (image_size + PAGE_SIZE - 1) // PAGE_SIZE
        self.hashes_at = self.hashes_offset(image_size)
        self.records_at = self.bytes_for(image_size)
        header = {"magic": MAGIC, "version": VERSION, "image_size": image_size,
                  "chunk_size": chunk_size}
        if create:
            with open(path, "wb") as f:
                f.write(msgpack.packb(header))
                if holds_data is not None:
                    f.seek(HEADER_BYTES)
                    f.write(_pages_with_data(holds_data, self.pages).tobytes())
                f.truncate(self.records_at)
        else:
            self._check(header)

    @staticmethod
    def hashes_offset(image_size: int) -> int:
        """Where the page hashes start: after the page states, page aligned (for mmap)."""
        pages = (image_size + PAGE_SIZE - 1) // PAGE_SIZE
        return HEADER_BYTES + -(-pages // PAGE_SIZE) * PAGE_SIZE

    @classmethod
    def bytes_for(cls, image_size: int) -> int:
        """The journal's size before device records: a header, a byte and a hash per page."""
        return cls.hashes_offset(image_size) + 8 * ((image_size + PAGE_SIZE - 1) // PAGE_SIZE)

    @classmethod
    def create(cls, path: Path, image_size: int, chunk_size: int,
               holds_data: Path | None = None) -> "Journal":
        """A new journal; `holds_data`: the image, when it is not a fresh zeroed file (a
        destination written in place): its pages that are not holes may hold data, and a zero
        page is written over those only. A QEMU waiting for an incoming migration leaves its
        RAM file sparse, so its zero pages cost nothing; writing them all allocated the whole
        of guest RAM, a second per GiB here."""
        return cls(path, image_size, chunk_size, create=True, holds_data=holds_data)

    @classmethod
    def resume(cls, path: Path, image_size: int, chunk_size: int) -> "Journal":
        """The journal of an earlier, unfinished transfer of the same shape."""
        return cls(path, image_size, chunk_size, create=False)

    def _check(self, expected: dict) -> None:
        try:
            with open(self.path, "rb") as f:
                header = msgpack.Unpacker(f, max_buffer_size=HEADER_BYTES).unpack()
            size = os.path.getsize(self.path)
        except (OSError, ValueError, msgpack.OutOfData) as exc:
            raise ProtocolError(f"nothing to resume: {self.path} is missing or unreadable "
                                f"({type(exc).__name__})") from None
        if header != expected or size < self.records_at:
            raise ProtocolError(f"nothing to resume: {self.path} belongs to another transfer "
                                f"(image size or chunk size differ)")

    def missing_pages(self) -> np.ndarray:
        """Pages not applied yet (all of them in a new journal)."""
        states = np.fromfile(self.path, dtype=np.uint8, count=self.pages, offset=HEADER_BYTES)
        return np.flatnonzero((states & APPLIED) == 0)

    def applied_between(self, first: int, count: int) -> int:
        """How many of pages first..first+count-1 arrived whole."""
        states = np.fromfile(self.path, dtype=np.uint8, count=count,
                             offset=HEADER_BYTES + first)
        return int(np.count_nonzero(states & APPLIED))

    def page_hashes(self) -> np.ndarray:
        """The folded hash of every page as it was written (0: never written)."""
        return np.fromfile(self.path, dtype="<u8", count=self.pages, offset=self.hashes_at)

    def record_chunk(self, chunk: dict) -> None:
        """Note a device chunk that has landed in its staging file (the device handler's
        notice: name, instance, index, last, size, hash). Appended; a record cut short by a crash
        is simply not read back."""
        with open(self.path, "ab") as f:
            f.write(msgpack.packb(chunk))

    def chunks(self) -> list[dict]:
        with open(self.path, "rb") as f:
            f.seek(self.records_at)
            return [record for record in msgpack.Unpacker(f) if isinstance(record, dict)]


class AppliedCount:
    """The pages of a journal that arrived whole, for a receiver's progress: each look reads
    at most `budget` page states (one byte a page), the next stretch after the last look's,
    so a look costs the same whatever the image (64 MiB of states: 256 GiB of image, all
    of it each look; an 8 TiB image's count is refreshed over 32 looks)."""

    STRETCH = 1 << 20  # pages per stretch

    def __init__(self, journal: Journal, budget: int = 64 << 20) -> None:
        self.journal = journal
        self.counts = np.zeros(-(-journal.pages // self.STRETCH), dtype=np.int64)
        self.per_look = max(1, min(len(self.counts), budget // self.STRETCH))
        self.next = 0

    def look(self) -> int:
        for _ in range(self.per_look if len(self.counts) else 0):
            first = self.next * self.STRETCH
            self.counts[self.next] = self.journal.applied_between(
                first, min(self.STRETCH, self.journal.pages - first))
            self.next = (self.next + 1) % len(self.counts)
        return int(self.counts.sum())


def _pages_with_data(image: Path, pages: int) -> np.ndarray:
    """A page state per page: HOLDS_DATA where the file may hold data, 0 in its holes (where
    the filesystem cannot tell holes, everywhere). One SEEK_DATA/SEEK_HOLE pair per extent."""
    states = np.zeros(pages, dtype=np.uint8)
    fd = os.open(image, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        position = 0
        while (start := next_data(fd, position, size)) < size:
            position = max(next_hole(fd, start, size), start + 1)
            states[start // PAGE_SIZE:-(-position // PAGE_SIZE)] = HOLDS_DATA
    finally:
        os.close(fd)
    return states
