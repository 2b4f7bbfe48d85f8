"""The PayloadHandler interface: how one kind of payload becomes packets and back.

A handler knows its payload (pages, device chunks) and nothing of channels: it never sees a
socket, a sequence number, a credit or a barrier. The channel loop validates the packet
header and checksum first and hands the handler only the body and the payload frames.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from engine.errors import ProtocolError
from engine.settings import TransferSettings
from workers.gauge import LinkState

IDLE_LINK = LinkState(fill=0.0, drain_rate=0.0)


@dataclass
class HandlerContext:
    """What a handler may use on its side of the transfer.

    image: the mapped image (read-only on the source, writable on the destination), or None
      for an empty image. image_path: the same image as a file, for handlers that move bytes
      with pread/pwrite instead of touching the mapping (pages touched through a mapping
      count in the worker's own memory, USS, and fault one by one). fresh: the destination
      started all zero, so zero pages need not be written unless `written` says the page was
      written before. device_dir: where the destination stages device state. link(): on the
      source, the channel's send window (how full, how fast it drains), for handlers that
      adapt their work to the link. hashes: the transfer's page hashes, one uint64 per page
      (engine/storage/digest.py, "folded"), which the RAM handler keeps up to date as pages
      pass. fault: the name of a fault to inject (MULTIFD_FAULT), so that tests prove the
      verification catches it through the real code path; "" in normal use.
    """

    settings: TransferSettings
    image_size: int
    image: Any = None
    image_path: str | None = None
    fresh: bool = True
    written: np.ndarray | None = None  # destination: page states, see engine/storage/journal.py
    device_dir: Path | None = None
    link: Callable[[], LinkState] = lambda: IDLE_LINK
    hashes: np.ndarray | None = None
    fault: str = ""


@dataclass
class Encoded:
    """A packet ready for the channel: the handler's header body and the payload frames."""

    body: dict[str, Any]
    frames: list[Any]


class PayloadHandler(ABC):
    """One payload type, loaded by name in every worker that the session says needs it.

    Contract:
    - `encode(spec)` runs on the source: it turns a job descriptor into an Encoded packet.
      It reads its bytes from the context (mapping, files); it may block on disk reads only.
      Frames must not change after encode returns (the checksum covers them, and ZeroMQ
      sends them later): never views of a source that may be written meanwhile. ZeroMQ holds
      a reference to each frame until it is on the wire, so a handler reuses its own buffer
      only once nothing else refers to it (see ram.py's buffer pool).
    - `apply(body, frames)` runs on the destination after the header and checksum were
      checked. It validates every body field against the context before touching anything,
      raises ProtocolError/CorruptPayload on bad input (having written nothing outside the
      image), and returns a dict for the coordinator (a Notice) or None.
    """

    kind: ClassVar[str]

    def __init__(self, context: HandlerContext) -> None:
        self.context = context
        # Figures for the summary (pages, bytes); the worker reports them when it stops.
        self.counters: Counter[str] = Counter()

    @abstractmethod
    def encode(self, spec: dict[str, Any]) -> Encoded:
        ...

    @abstractmethod
    def apply(self, body: dict[str, Any], frames: list[Any]) -> dict[str, Any] | None:
        ...

    def scan(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Inspect the source between packets and answer the coordinator (source side only).

        The RAM handler hashes a range of pages here to find the pages that changed since
        the previous scan of the same range (live migration, engine/live/dirty.py). A handler may
        keep state between scans; the coordinator sends a given spec to the same worker each
        time. The answer must be small (it travels as one IPC message, well under 256 KiB).
        Handlers that cannot scan refuse with ProtocolError.
        """
        raise ProtocolError(f"the {self.kind!r} handler cannot scan")

    def max_payload(self) -> int:
        """The largest payload one packet of this kind may carry, for the channel's check."""
        return 0

    def close(self) -> None:
        """Release files and buffers; called once when the worker stops."""
