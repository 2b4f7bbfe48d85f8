"""Messages between a coordinator and its own workers (over IPC): descriptors, never bytes.

The coordinator hands a worker *what* to send (a page run, a device chunk reference); the
worker reads the bytes from its own mapping. The worker answers with credits (packets the
destination acknowledged), barrier arrivals, notices from handlers, digests and statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.framing import message
from engine.settings import TransferSettings


@message("w.ready")
class Ready:
    pid: int


@message("w.bound")
class Bound:
    """A destination worker's data endpoint, to be announced to the source in WELCOME."""

    endpoint: str


@message("w.connect")
class Connect:
    endpoint: str


@message("w.job")
class Job:
    """One packet's worth of work for the handler named `kind`; `spec` is the handler's."""

    kind: str
    spec: dict[str, Any]


@message("w.sync")
class SyncJob:
    round: int


@message("w.reached")
class Reached:
    round: int


@message("w.release")
class Release:
    round: int


@message("w.credit")
class Credit:
    """`packets` more packets were acknowledged; `bytes`: what they took on the wire."""

    packets: int
    bytes: int = 0


@message("w.notice")
class Notice:
    """Something a destination handler wants its coordinator to know (a device chunk landed)."""

    kind: str
    data: dict[str, Any]


@message("w.hash")
class HashJob:
    segments: list[int]


@message("w.hashed")
class Hashed:
    segments: list[int]
    digests: list[bytes]


@message("w.stop")
class Stop:
    pass


@message("w.stats")
class Stats:
    """A worker's counters, sent once when it stops."""

    counters: dict[str, float]


@message("w.failure")
class Failure:
    """A worker stopped on an error; `error` names its engine exception class."""

    error: str
    message: str


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs to start (pickled to it by multiprocessing)."""

    side: str  # "source" or "destination"
    channel: int
    control: str
    coordinator_pid: int
    session: bytes
    settings: TransferSettings
    image_path: str
    image_size: int
    handlers: tuple[str, ...]
    listen_host: str = "127.0.0.1"
    fresh: bool = True
    written_path: str | None = None
    device_dir: str | None = None
