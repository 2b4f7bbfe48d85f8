"""Messages between a coordinator and its own workers (over IPC): descriptors, never bytes.

The coordinator hands a worker *what* to send, in units of many packets (page runs, device
chunk references); the worker reads the bytes itself, cuts nothing and decides nothing but the
pace. The worker answers with credits (units the destination acknowledged), barrier arrivals, notices from handlers, scan answers, digests and
statistics.
"""
from __future__ import annotations

from typing import Any

from engine.wire.framing import message


@message("w.ready")
class Ready:
    pid: int


@message("w.bound")
class Bound:
    """A destination worker's data endpoint, to be announced to the source in WELCOME."""

    endpoint: str


@message("w.connect")
class Connect:
    """Dial the destination; the first packet to send is `first_seq` (re-sent ones follow)."""

    endpoint: str
    first_seq: int


@message("w.job")
class Job:
    """A unit of work for the handler named `kind`: one packet per spec (each spec is the
    handler's), numbered `seq`, `seq + 1`, ... on this channel. The worker sends them within
    its own window; the coordinator keeps the unit until its last packet is acknowledged, so
    that it can hand it whole to a replacement worker, and the destination drops the packets
    it had applied already."""

    seq: int
    kind: str
    specs: list[dict[str, Any]]


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
    """The destination applied every packet of this channel up to and including `acked`, the
    last packet of a unit (a worker reports whole units only); `bytes`: what the newly
    acknowledged packets took on the wire."""

    acked: int
    bytes: int = 0


@message("w.notice")
class Notice:
    """Something a destination handler wants its coordinator to know (a device chunk landed).
    `seq`: the packet's sequence number on its channel, added by the channel (not the handler)
    so that a packet re-sent after a reconnect can be told from a duplicate."""

    kind: str
    data: dict[str, Any]
    seq: int = -1


@message("w.hash")
class HashJob:
    segments: list[int]


@message("w.hashed")
class Hashed:
    """Digests of the segments asked for, and the worker's counters for the summary (its
    work is done by then: hashing is the last thing a worker does)."""

    segments: list[int]
    digests: list[bytes]
    counters: dict[str, float]


@message("w.scan")
class ScanJob:
    """Have the handler named `kind` inspect the source (e.g. hash pages to find dirty ones).

    `scan` and `index` come back in the answer so that the coordinator can place it.
    """

    scan: int
    index: int
    kind: str
    spec: dict[str, Any]


@message("w.scanned")
class Scanned:
    scan: int
    index: int
    data: dict[str, Any]


@message("w.stop")
class Stop:
    pass


@message("w.failure")
class Failure:
    """A worker stopped on an error; `error` names its engine exception class."""

    error: str
    message: str
