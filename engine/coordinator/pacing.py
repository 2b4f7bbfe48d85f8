"""Pacing: one byte rate shared by all channels of a transfer, as QEMU's max-bandwidth.

The Sender's dispatcher holds one Pacer. A packet is dispatched only while its token bucket is
not in debt, and is charged at once with an estimate of its bytes on the wire (its image
bytes times the wire/image ratio seen so far; only the source worker knows the size after
compression and zero pages). When the destination acknowledges it, the worker reports the
true size and the estimate is settled. So nothing passes uncharged, not even the first
window of every channel (channels x window x 2 MiB, a quarter of a second at 1 Gbit/s), and
over any stretch longer than a fraction of a second the rate on the wire stays at the cap
whatever the channel count.
"""
from __future__ import annotations

import time
from collections import deque
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


class Pacer:
    """The token bucket, charged per packet in dispatch order and settled per channel."""

    def __init__(self, rate: float, channels: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bucket = TokenBucket(rate, clock)
        self.estimates: list[deque[float]] = [deque() for _ in range(channels)]
        self.image_bytes = 0
        self.wire_bytes = 0

    def delay_s(self) -> float:
        return self.bucket.delay_s()

    def dispatched(self, channel: int, image_bytes: int) -> None:
        ratio = self.wire_bytes / self.image_bytes if self.image_bytes else 1.0
        estimate = image_bytes * ratio
        self.estimates[channel].append(estimate)
        self.bucket.charge(estimate)

    def acknowledged(self, channel: int, packets: int, image_bytes: int,
                     wire_bytes: int) -> None:
        estimated = sum(self.estimates[channel].popleft() for _ in range(packets))
        self.bucket.charge(wire_bytes - estimated)
        self.image_bytes += image_bytes
        self.wire_bytes += wire_bytes
