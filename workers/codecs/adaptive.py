"""`--compress auto`: per packet, the codec with which this channel's CPU and its share of
the link finish together, as early as possible.

A channel that sends `n` non-zero bytes with codec `l` needs `n / s_l` seconds of its own
time to compress them (s_l: what this worker measured of that codec, in wall time, so that
the other channels, the far end and the machine's other load, which take cores from it,
count) and `n * r_l / R` seconds of wire (r_l: the codec's ratio on recent packets; R: the
rate at which the channel's send window drains while full, workers/gauge.py). Sending and
compressing overlap, so a packet costs max(n / s_l, n * r_l / R): the codec with the least
of that is picked, and compression only if it beats sending the bytes as they are
(n / R, no compressing) by a tenth, because the CPU it takes is not free when the far end
shares the machine.

So on a slow link (1 Gbit/s here, R about 60 MB/s per channel) the level goes up until the
CPU term catches up with the wire term (zstd:2 or zstd:3 on this machine); on a link that
the far end cannot keep up with anyway (10 Gbit/s on 2 cores: R above what zstd:1
compresses), or with data that does not shrink, nothing is compressed. The window's fill
is what matters until R is known: a window with room means this worker, not the link, is
what the transfer waits on, so packets go as they are. Once R is known, it decides: after
a run of zero pages (which drain at once) the window has room on a slow link too, and
sending raw then would cost wire time (BENCHMARKS.md, "slow links").

A codec not yet measured is tried on the first packet that would compress, and every
PROBE_EVERY packets one goes with the next codec in turn, so that the figures follow the
data.
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
        """`codecs`: no compression first, then the compressing ones, fastest first;
        `link()`: the channel's send window now."""
        self.codecs = list(codecs)
        self.link = link
        self.ratio: dict[str, float] = {}  # compressed / raw
        self.speed: dict[str, float] = {}  # raw bytes per second of compression, wall time
        self.picks = 0

    @property
    def plain(self) -> Codec:
        """The codec for a packet with nothing to compress (all of its pages are zero)."""
        return self.codecs[0]

    def pick(self) -> Codec:
        """The codec for the next packet that carries data."""
        if len(self.codecs) == 1:  # a fixed codec: nothing to choose, no gauge to read
            return self.codecs[0]
        state = self.link()
        if not state.drain_rate and state.fill < CONGESTED:
            return self.codecs[0]  # as far as we know, the link waits on this worker
        self.picks += 1
        for codec in self.codecs[1:]:
            if codec.spec not in self.ratio:
                return codec  # not measured yet
        if self.picks % PROBE_EVERY == 0:
            return self.codecs[1 + self.picks // PROBE_EVERY % (len(self.codecs) - 1)]
        if not state.drain_rate:
            return self.codecs[1]
        best = min(self.codecs[1:], key=lambda codec: self._seconds(codec, state.drain_rate))
        if self._seconds(best, state.drain_rate) * (1 + MARGIN) < 1 / state.drain_rate:
            return best
        return self.codecs[0]

    def record(self, codec: Codec, raw: int, compressed: int, seconds: float) -> None:
        """What a compressed packet came to, and how long (wall time) compressing it took."""
        if not raw or seconds <= 0:
            return
        for figures, value in ((self.ratio, compressed / raw), (self.speed, raw / seconds)):
            old = figures.get(codec.spec)
            figures[codec.spec] = value if old is None else old + _WEIGHT * (value - old)

    def _seconds(self, codec: Codec, drain_rate: float) -> float:
        """Seconds per raw byte with this compressing codec: its own time or the wire's,
        whichever is longer (they overlap)."""
        return max(1 / self.speed[codec.spec], self.ratio[codec.spec] / drain_rate)
