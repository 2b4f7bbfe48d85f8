"""What a source channel knows about its link, for handlers that adapt to it.

The channel counts packets sent and acknowledged. While its window is at least half full,
the wire (or the far end) is the bottleneck, and the rate at which acknowledged bytes come
back is what that bottleneck can take: the drain rate. `--compress auto` weighs it against
how fast each codec compresses (workers/codecs/adaptive.py).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# Acknowledgements come in bursts (two back to back, then a pause; at the start a whole
# window, which the far end received while it was still opening its image), so the drain
# rate is taken over the last SPAN of them and over at least MIN_SPAN_S, not between two.
SPAN = 8
MIN_SPAN_S = 0.1


@dataclass(frozen=True)
class LinkState:
    fill: float  # unacknowledged packets / window, 0 to 1
    drain_rate: float  # bytes per second acknowledged while the window was full; 0: unknown
    sent: int = 0  # packets sent so far: the number the next packet will have, from 0
    drained: range = range(0)  # the packets whose acknowledgements drain_rate is made of


class SendGauge:
    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0
        self.sent_total = 0
        self.drain_rate = 0.0
        self.drained = range(0)
        # (time, bytes, packets acknowledged by then), the span measured
        self._acks: deque[tuple[float, int, int]] = deque()

    def sent(self) -> None:
        self.unacked += 1
        self.sent_total += 1

    def acknowledged(self, packets: int, wire_bytes: int, now: float) -> None:
        congested = self.unacked * 2 >= self.window  # before these acknowledgements
        self.unacked -= packets
        if not congested:  # not the link's pace: start over
            self._acks.clear()
            return
        acks = self._acks
        acks.append((now, wire_bytes, self.sent_total - self.unacked))
        while len(acks) > SPAN + 1 and now - acks[1][0] >= MIN_SPAN_S:
            acks.popleft()
        elapsed = now - acks[0][0]
        if len(acks) > 1 and elapsed >= MIN_SPAN_S:
            self.drain_rate = sum(n for _, n, _ in list(acks)[1:]) / elapsed
            self.drained = range(acks[0][2], acks[-1][2])

    def state(self) -> LinkState:
        return LinkState(fill=self.unacked / self.window, drain_rate=self.drain_rate,
                         sent=self.sent_total, drained=self.drained)
