"""Pacing for --max-bandwidth: each source worker holds its channel to an equal share of the cap.

The cap is shared by splitting it: with C channels each worker sends at most cap / C bytes per
second on the wire, charged with the exact size of each packet after compression (only the
worker knows it). An earlier design held one bucket in the coordinator and gave each packet
to the channel with the most room; under a cap, the channel that got the first tokens kept
getting them (one channel carried 303 MiB, the other 9.5). A share per channel cannot starve
one, and needs no message per packet.
"""
from __future__ import annotations

import time
from typing import Callable

# Tokens saved up while idle are capped at this much time's worth, so that a pause does not
# buy a burst above the cap afterwards.
BURST_S = 0.05


class TokenBucket:
    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0:
            raise ValueError("a rate must be above zero")
        self.rate = float(rate)
        self.clock = clock
        self.tokens = 0.0
        self.stamp = clock()

    def charge(self, nbytes: int) -> None:
        """Bytes that went out; the bucket may go into debt (a packet is never split)."""
        self._refill()
        self.tokens -= nbytes

    def delay_s(self) -> float:
        """How long to hold the next packet back: 0 when the bucket is not in debt."""
        self._refill()
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.rate * BURST_S, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
