"""Which source pages changed since the last look: the two dirty trackers of live migration.

- "log" (cooperative): the writer keeps a *dirty log* beside the region, SOURCE.dirty
  (shm:NAME -> /dev/shm/NAME.dirty): one little-endian uint32 write counter per page. The
  writer adds 1 to a page's counter before it writes the page and 1 after (a seqlock: an odd
  counter means a write is in progress). The engine only ever reads the log: a page is dirty
  when its counter differs from the previous look, or is odd.
  Why counters and not a bitmap that the engine clears: clearing races with the writer (a
  mark set between the engine's read and its clear is lost; numpy has no atomic exchange),
  and a writer stopped by SIGSTOP between a write and its mark would lose that write. With
  counters the engine never writes, and a write cut short by the pause shows as odd.
- "hash" (content based, for writers that cannot cooperate): each look, the source workers
  hash every page (xxh3-64, blocks of 16 pages first) in parallel, each over the same stripe
  of pages every time, and answer which pages' hashes changed since their previous look
  (RamHandler.scan). The workers keep their stripes mapped until they stop. Only a
  bitmap of changed pages travels back: 1 bit per page. Limit: a page changed and then
  changed back to the content hashed at the previous look (between that look and the send
  that read it) is not seen again; write-tracking (the log) has no such blind spot.

The rule both rely on: a look happens before the pages it reports are read for sending, so
a write that lands after a page was read is reported by a later look, at the latest by the
one after the pause.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from engine.errors import UsageError
from engine.storage.image import Location, map_file
from engine.settings import DIRTY_TRACKERS

if TYPE_CHECKING:
    from engine.coordinator.sender import Sender

LOG_ENTRY = np.dtype("<u4")
LOG_SUFFIX = ".dirty"
# A scan answer carries 1 bit per page: 2^20 pages (4 GiB) make a 128 KiB message, within
# the 256 KiB limit of one IPC message.
MAX_SCAN_PAGES = 1 << 20


class DirtyTracker(ABC):
    """Reports the pages of a running source that changed since its previous look.

    Contract: `begin()` takes the first look; call it before round 0 reads any page. Each
    `collect()` returns the pages (sorted indices, no duplicates) that changed since the
    previous look; send them after it returns. Call collect() once more after the source is
    paused: its answer is then exactly what the destination still lacks.
    """

    kind: ClassVar[str]

    @abstractmethod
    def begin(self) -> None:
        ...

    @abstractmethod
    def collect(self) -> np.ndarray:
        ...

    def close(self) -> None:
        """Release the tracker's mapping or state."""


class LogTracker(DirtyTracker):
    """Reads the writer's dirty log (see the module docstring for the writer's protocol)."""

    kind = "log"

    def __init__(self, path: Path, pages: int) -> None:
        size = path.stat().st_size if path.is_file() else None
        if size != pages * LOG_ENTRY.itemsize:
            found = "is missing" if size is None else f"has {size} bytes"
            raise UsageError(f"dirty log {path} {found}; the region's {pages} pages need "
                             f"{pages * LOG_ENTRY.itemsize} bytes (one uint32 per page)")
        self._map = map_file(path, writable=False)
        self._counters = (np.frombuffer(self._map, dtype=LOG_ENTRY) if self._map is not None
                          else np.zeros(0, LOG_ENTRY))
        self._seen: np.ndarray | None = None

    def begin(self) -> None:
        self._seen = self._counters.copy()

    def collect(self) -> np.ndarray:
        now = self._counters.copy()
        dirty = np.flatnonzero((now != self._seen) | (now & 1 == 1))
        self._seen = now
        return dirty

    def close(self) -> None:
        self._counters = self._seen = None
        if self._map is not None:
            self._map.close()


class HashTracker(DirtyTracker):
    """Has the source workers hash every page and report the pages whose hash changed."""

    kind = "hash"

    def __init__(self, sender: "Sender") -> None:
        self.sender = sender
        pages, channels = sender.pages, sender.settings.channels
        # Stripes small enough for one answer, and at least one per worker so all hash.
        stripe = max(1, min(MAX_SCAN_PAGES, -(-pages // channels)))
        self.requests = [(i % channels, {"start": start, "count": min(stripe, pages - start)})
                         for i, start in enumerate(range(0, pages, stripe))]

    def begin(self) -> None:
        self.collect()  # the first look reports every page; it only sets the baseline

    def collect(self) -> np.ndarray:
        answers = self.sender.scan("ram", self.requests)
        parts = [answer["start"] + np.flatnonzero(np.unpackbits(
                    np.frombuffer(answer["changed"], dtype=np.uint8), count=answer["count"]))
                 for answer in answers]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def dirty_log_path(location: Location) -> Path:
    """Where the dirty log of a source lives: beside it, with the suffix .dirty."""
    return location.path.with_name(location.path.name + LOG_SUFFIX)


def create_dirty_log(path: str | os.PathLike, pages: int) -> None:
    """Create (or reset) a dirty log of `pages` zero counters, for a writer to keep."""
    with open(path, "wb") as f:
        f.truncate(pages * LOG_ENTRY.itemsize)


def make_tracker(kind: str, sender: "Sender") -> DirtyTracker:
    """The tracker named `kind` for the source that `sender` sends."""
    if kind == "log":
        return LogTracker(dirty_log_path(sender.location), sender.pages)
    if kind == "hash":
        return HashTracker(sender)
    raise UsageError(f"unknown dirty tracking {kind!r}; known: {', '.join(DIRTY_TRACKERS)}")
