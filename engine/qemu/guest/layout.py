"""Reading the page-stamp guest's progress from its RAM file, on the host.

With -machine pc or q35 and a guest below ~2.75 GiB, guest physical address == offset in
the RAM file of the machine's memory backend. The guest (stamp.S) keeps a header at 1 MiB:

    offset 0x100000 + 0   8 bytes  b"LABGUEST" (written last at boot: the guest is up)
                    + 8   u32      layout version (1)
                    + 12  u32      first stamped page (physical address)
                    + 16  u32      number of stamped pages
                    + 20  u32      page size (4096)
                    + 24  u32      generation: the pass in progress (or just finished)

and writes the generation into the first u32 of every stamped page, in address order.
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path

HEADER = 0x100000
MAGIC = b"LABGUEST"
GENERATION_OFFSET = HEADER + 24  # the counter, u32 little-endian
_HEADER = struct.Struct("<8s5I")


class InconsistentMemory(AssertionError):
    """The stamps break the guest's rule: RAM is not one stopped guest's memory."""


@dataclass(frozen=True)
class Header:
    version: int
    stamp_start: int
    stamp_pages: int
    page_size: int
    generation: int


@dataclass(frozen=True)
class Snapshot:
    """A consistent view of a stopped guest: `fresh` pages carry `generation`, the rest
    `generation - 1` (the pass was `fresh` pages into the range)."""

    generation: int
    fresh: int
    pages: int


def read_header(ram: str | Path) -> Header | None:
    """The guest's header, or None while the guest has not booted into its loop yet."""
    with open(ram, "rb") as f:
        raw = os.pread(f.fileno(), _HEADER.size, HEADER)
    if len(raw) < _HEADER.size:
        return None
    magic, *fields = _HEADER.unpack(raw)
    return Header(*fields) if magic == MAGIC else None


def read_generation(ram: str | Path) -> int:
    """The guest's counter (an aligned u32: safe to read while the guest runs)."""
    with open(ram, "rb") as f:
        return struct.unpack("<I", os.pread(f.fileno(), 4, GENERATION_OFFSET))[0]


def read_stamps(ram: str | Path, header: Header) -> list[int]:
    """The generation stamped in each page, in address order."""
    length = header.stamp_pages * header.page_size
    with open(ram, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        words = memoryview(mapped)[header.stamp_start:header.stamp_start + length].cast("I")
        try:
            return words[::header.page_size // 4].tolist()
        finally:
            words.release()


def check_consistent(ram: str | Path) -> Snapshot:
    """Check a STOPPED guest's RAM against the stamp rule; raise InconsistentMemory.

    The rule (QEMU's migration-test rule with 32-bit counters): reading pages in order,
    each equals the one before except at one place, where it is exactly one less; and the
    first page carries the header's generation G or G - 1. A page from another moment
    (a torn copy, a lost round, a stale device state) breaks it.
    """
    header = read_header(ram)
    if header is None:
        raise InconsistentMemory(f"{ram}: no guest header (magic {MAGIC!r} at {HEADER:#x})")
    stamps = read_stamps(ram, header)
    g = header.generation
    fresh = 0
    while fresh < len(stamps) and stamps[fresh] == g:
        fresh += 1
    for index in range(fresh, len(stamps)):
        if stamps[index] != (g - 1 if g else 0):
            expected = f"{g - 1}" if fresh else f"{g} or {g - 1}"
            raise InconsistentMemory(
                f"{ram}: page {index} (at {header.stamp_start + index * header.page_size:#x}) "
                f"carries generation {stamps[index]}, expected {expected} "
                f"(header generation {g}, {fresh} pages already stamped)")
    return Snapshot(generation=g, fresh=fresh, pages=len(stamps))
