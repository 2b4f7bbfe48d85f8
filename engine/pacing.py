"""Pacing: one byte rate shared by all channels of a transfer, as QEMU's max-bandwidth.

The Sender's dispatcher holds one TokenBucket. A packet is dispatched only while the bucket is
not in debt, and its bytes on the wire are charged when the destination acknowledges it (only
the source worker knows the size after compression). So at most the packets in flight pass
uncharged, a bounded burst, and over any stretch longer than a fraction of a second the rate
on the wire stays at the cap whatever the channel count.
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
        """Bytes that went out; the bucket may go into debt."""
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
