"""What a source channel knows about its link, for handlers that adapt to it.

The channel counts packets sent and acknowledged. While its window is at least half full,
the wire (or the far end) is the bottleneck, and the rate at which acknowledged bytes come
back is what that bottleneck can take: the drain rate. `--compress auto` weighs it against
how fast each codec compresses (workers/codecs/adaptive.py).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Acknowledgements come in bursts (two back to back, then a pause), so the drain rate is
# taken over the last SPAN of them, not between two.
SPAN = 8


@dataclass(frozen=True)
class LinkState:
    fill: float  # unacknowledged packets / window, 0 to 1
    drain_rate: float  # bytes per second acknowledged while the window was full; 0: unknown


class SendGauge:
    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0
        self.drain_rate = 0.0
        self._acks: deque[tuple[float, int]] = deque(maxlen=SPAN + 1)  # (time, bytes)

    def sent(self) -> None:
        self.unacked += 1

    def acknowledged(self, packets: int, wire_bytes: int, now: float) -> None:
        congested = self.unacked * 2 >= self.window  # before these acknowledgements
        self.unacked -= packets
        if not congested:  # not the link's pace: start over
            self._acks.clear()
            return
        self._acks.append((now, wire_bytes))
        elapsed = now - self._acks[0][0]
        if len(self._acks) > 1 and elapsed > 0:
            self.drain_rate = sum(n for _, n in list(self._acks)[1:]) / elapsed

    def state(self) -> LinkState:
        return LinkState(fill=self.unacked / self.window, drain_rate=self.drain_rate)
