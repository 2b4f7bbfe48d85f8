"""What a source channel knows about its link, for handlers that adapt to it.

The channel counts packets sent and acknowledged. While its window is at least half full,
the wire (or the far end) is the bottleneck, and the rate at which acknowledged bytes come
back is what that bottleneck can take: the drain rate. `--compress auto` weighs it against
how fast each codec compresses (workers/codecs/adaptive.py).
"""
from __future__ import annotations

from dataclasses import dataclass

_WEIGHT = 0.25  # of the newest sample in the running drain rate


@dataclass(frozen=True)
class LinkState:
    fill: float  # unacknowledged packets / window, 0 to 1
    drain_rate: float  # bytes per second acknowledged while the window was full; 0: unknown


class SendGauge:
    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0
        self.drain_rate = 0.0
        self._last_ack: float | None = None

    def sent(self) -> None:
        self.unacked += 1

    def acknowledged(self, packets: int, wire_bytes: int, now: float) -> None:
        if self._last_ack is not None and self.unacked * 2 >= self.window and now > self._last_ack:
            sample = wire_bytes / (now - self._last_ack)
            self.drain_rate += (sample - self.drain_rate) * (_WEIGHT if self.drain_rate else 1)
        self._last_ack = now
        self.unacked -= packets

    def state(self) -> LinkState:
        return LinkState(fill=self.unacked / self.window, drain_rate=self.drain_rate)
