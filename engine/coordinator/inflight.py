"""What one channel was given and the destination has not confirmed yet, in order.

The source coordinator numbers each channel's packets and hands them out in units (a Job of
many packets); it keeps each unit until the worker reports its last packet acknowledged (and
each SYNC until its round is confirmed). If the channel's worker or connection fails, a
replacement worker gets exactly this replayed, in the original order; the destination drops
the packets it had applied already. Plain state, no sockets.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from engine.wire.jobs import Job, SyncJob


class InFlight:
    def __init__(self) -> None:
        self.next_seq = 0
        self.units: OrderedDict[int, tuple[Job, int]] = OrderedDict()  # last seq -> job, bytes
        self.syncs: list[tuple[int, int]] = []  # (seq of the next packet after it, round)

    def __len__(self) -> int:
        """Units not yet acknowledged."""
        return len(self.units)

    @property
    def packets(self) -> int:
        """Packets given and not yet acknowledged (the newest unit's may be partly done)."""
        return self.next_seq - self.first_unacked

    def add_unit(self, kind: str, specs: list[dict[str, Any]], nbytes: int) -> Job:
        """Number a unit of packets; `nbytes`: the image bytes it covers (for progress)."""
        job = Job(seq=self.next_seq, kind=kind, specs=specs)
        self.next_seq += len(specs)
        self.units[self.next_seq - 1] = (job, nbytes)
        return job

    def add_sync(self, round_: int) -> SyncJob:
        self.syncs.append((self.next_seq, round_))
        return SyncJob(round=round_)

    def acked(self, upto: int) -> int:
        """Forget the units whose last packet is at most `upto` (acknowledgements are
        cumulative); returns the image bytes they covered."""
        done = 0
        while self.units and next(iter(self.units)) <= upto:
            _, (_, nbytes) = self.units.popitem(last=False)
            done += nbytes
        return done

    def synced(self, round_: int) -> None:
        self.syncs = [(after, r) for after, r in self.syncs if r > round_]

    @property
    def first_unacked(self) -> int:
        """The first packet of the oldest unit not acknowledged (what a replacement starts at)."""
        for job, _ in self.units.values():
            return job.seq
        return self.next_seq

    def replay(self) -> list[Job | SyncJob]:
        """Everything unconfirmed, in the order it was first given."""
        out: list[Job | SyncJob] = []
        syncs = iter(self.syncs)
        pending = next(syncs, None)
        for job, _ in self.units.values():
            while pending is not None and pending[0] <= job.seq:
                out.append(SyncJob(round=pending[1]))
                pending = next(syncs, None)
            out.append(job)
        while pending is not None:
            out.append(SyncJob(round=pending[1]))
            pending = next(syncs, None)
        return out
