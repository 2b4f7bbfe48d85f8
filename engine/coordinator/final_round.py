"""The last round both coordinators run before the verdict: each worker hands in its counters
and, with --verify reread, the digests of its share of the stored image.

Hashing is the last thing a worker does, so its answer carries its final statistics too. A
worker replaced before it answered is asked again.
"""
from __future__ import annotations

from typing import Callable

from engine.storage import digest
from engine.wire import jobs


class FinalRound:
    def __init__(self, image_size: int, channels: int, verify: str) -> None:
        self.image_size = image_size
        self.channels = channels
        self.verify = verify
        self.plan: dict[int, list[int]] = {}
        self.digests: dict[int, bytes] = {}
        self.counters: list[dict[str, float]] = [{} for _ in range(channels)]

    @property
    def started(self) -> bool:
        return bool(self.plan)

    @property
    def done(self) -> bool:
        return all(self.counters)

    def start(self, send: Callable[[int, jobs.HashJob], None]) -> None:
        """Ask every channel's worker; `send(channel, job)` delivers."""
        self.plan = digest.plan(self.image_size, self.channels) if self.verify == "reread" \
            else {channel: [] for channel in range(self.channels)}
        for channel in self.plan:
            self.ask_again(channel, send)

    def ask_again(self, channel: int, send: Callable[[int, jobs.HashJob], None]) -> None:
        """Ask `channel`'s (new) worker, if the round started and it has not answered."""
        if self.started and not self.counters[channel]:
            send(channel, jobs.HashJob(segments=self.plan[channel]))

    def answered(self, channel: int, msg: jobs.Hashed) -> None:
        self.digests.update(zip(msg.segments, msg.digests))
        self.counters[channel] = msg.counters

    def stored_digest(self) -> str:
        """The digest of the image as read back from storage ("" unless --verify reread)."""
        if not self.digests:
            return ""
        return digest.combine(self.image_size, (self.digests[i] for i in sorted(self.digests)))
