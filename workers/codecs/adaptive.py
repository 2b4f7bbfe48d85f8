"""`--compress auto`: per packet, compress when, and as hard as, the link makes it pay.

The source channel reports its send window (workers/gauge.py): how full it is, and how fast
it drains while full. When the window is less than half full, the channel is waiting on
this worker, not on the link: the next packet goes as it is. When it is fuller, the link
(or the far end) is the bottleneck, and each codec would move image bytes at
min(its compression speed, drain rate / its ratio), against the drain rate uncompressed;
the fastest of these is picked if it beats sending uncompressed by a tenth (the CPU it
takes is not free when the far end shares the machine). Ratios and speeds are what this
worker measured on recent packets, per codec.

So on a slow link (1 Gbit/s) every packet is compressed, with zstd:3 if it keeps up; on a
link the far end cannot keep up with anyway (10 Gbit/s on this 2-core machine), or with
data that does not shrink (random pages), nothing is; a codec not yet measured is tried on
a congested packet, and every PROBE_EVERY congested packets one goes with the next codec in
turn, so that the figures follow the data (BENCHMARKS.md, "link").
"""
from __future__ import annotations

from typing import Callable, Sequence

from workers.codecs.base import Codec
from workers.gauge import LinkState

# Window fill from which the link, not this worker, is the bottleneck.
CONGESTED = 0.5
PROBE_EVERY = 16
# How much faster than sending uncompressed a codec must promise to be to be used.
MARGIN = 0.1
_WEIGHT = 0.25  # of the newest packet in the running figures


class AdaptiveChoice:
    def __init__(self, codecs: Sequence[Codec], link: Callable[[], LinkState]) -> None:
        """`codecs`: no compression first, then the compressing ones; `link()`: the channel's
        send window now."""
        self.codecs = list(codecs)
        self.link = link
        self.ratio: dict[str, float] = {}  # compressed / raw
        self.speed: dict[str, float] = {}  # raw bytes per second of compression
        self.congested = 0

    def pick(self) -> Codec:
        if len(self.codecs) == 1:  # a fixed codec: nothing to choose, no gauge to read
            return self.codecs[0]
        state = self.link()
        if state.fill < CONGESTED:
            return self.codecs[0]
        self.congested += 1
        for codec in self.codecs[1:]:
            if codec.spec not in self.ratio:
                return codec  # not measured yet
        if self.congested % PROBE_EVERY == 0:
            return self.codecs[1 + self.congested // PROBE_EVERY % (len(self.codecs) - 1)]
        if not state.drain_rate:
            return self.codecs[1]
        best = max(self.codecs[1:], key=lambda codec: self._rate(codec, state.drain_rate))
        if self._rate(best, state.drain_rate) > state.drain_rate * (1 + MARGIN):
            return best
        return self.codecs[0]

    def record(self, codec: Codec, raw: int, compressed: int, seconds: float) -> None:
        """What a compressed packet came to, and how long compressing it took."""
        if not raw or seconds <= 0:
            return
        for figures, value in ((self.ratio, compressed / raw), (self.speed, raw / seconds)):
            old = figures.get(codec.spec)
            figures[codec.spec] = value if old is None else old + _WEIGHT * (value - old)

    def _rate(self, codec: Codec, drain_rate: float) -> float:
        """Image bytes per second this compressing codec would move through the bottleneck."""
        return min(self.speed[codec.spec], drain_rate / max(self.ratio[codec.spec], 1e-3))
