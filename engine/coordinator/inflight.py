"""What one channel was given and the destination has not confirmed yet, in order.

The source coordinator numbers each channel's packets and keeps them here until acknowledged
(and each SYNC until its round is confirmed). If the channel's worker or connection fails, a
replacement worker gets exactly this replayed, in the original order; the destination drops
what it had applied already. Plain state, no sockets.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

from engine.wire.jobs import Job, SyncJob


class InFlight:
    def __init__(self) -> None:
        self.next_seq = 0
        self.jobs: OrderedDict[int, tuple[Job, int]] = OrderedDict()
        self.syncs: list[tuple[int, int]] = []  # (seq of the next packet after it, round)

    def __len__(self) -> int:
        """Packets not yet acknowledged (what the credit window counts)."""
        return len(self.jobs)

    def add_job(self, kind: str, spec: dict[str, Any], nbytes: int) -> Job:
        job = Job(seq=self.next_seq, kind=kind, spec=spec)
        self.jobs[job.seq] = (job, nbytes)
        self.next_seq += 1
        return job

    def add_sync(self, round_: int) -> SyncJob:
        self.syncs.append((self.next_seq, round_))
        return SyncJob(round=round_)

    def acked(self, upto: int) -> int:
        """Forget packets up to `upto` (acks are cumulative); returns their image bytes."""
        done = 0
        while self.jobs and next(iter(self.jobs)) <= upto:
            _, (_, nbytes) = self.jobs.popitem(last=False)
            done += nbytes
        return done

    def synced(self, round_: int) -> None:
        self.syncs = [(after, r) for after, r in self.syncs if r > round_]

    @property
    def first_unacked(self) -> int:
        return next(iter(self.jobs), self.next_seq)

    def replay(self) -> list[Job | SyncJob]:
        """Everything unconfirmed, in the order it was first given."""
        out: list[Job | SyncJob] = []
        syncs = iter(self.syncs)
        pending = next(syncs, None)
        for seq, (job, _) in self.jobs.items():
            while pending is not None and pending[0] <= seq:
                out.append(SyncJob(round=pending[1]))
                pending = next(syncs, None)
            out.append(job)
        while pending is not None:
            out.append(SyncJob(round=pending[1]))
            pending = next(syncs, None)
        return out
