"""`--compress auto`: per packet, the codec with which this channel's CPU and its share of
the link finish together, as early as possible.

A channel that sends `n` non-zero bytes with codec `l` needs `n / s_l` seconds of its own
time to compress them (s_l: what this worker measured of that codec, in wall time, so that
the other channels, the far end and the machine's other load, which take cores from it,
count) and `n * r_l / R` seconds of wire (r_l: the codec's ratio on recent packets; R: the
rate at which the channel's send window drains while full, workers/gauge.py). Sending and
compressing overlap, so a packet costs max(n / s_l, n * r_l / R): the codec with the least
of that is picked, and compression only if it beats sending the bytes as they are
(n / R_raw) by a tenth, because the CPU it takes is not free when the far end shares the
machine.

R is kept apart for raw and for compressed packets (the gauge says which packets a rate
was measured on): a wire drains both alike, a far end short of CPU drains compressed
packets slower, since it decompresses them and our compressing takes cores from it. With
one rate for both, compressing on a fast link lowered the rate, which made compressing
look better still (BENCHMARKS.md, "link"). Until R is known (the first window's worth of
packets), packets go as they are, which is also how R_raw gets measured.

So on a slow link (1 Gbit/s here, R about 60 MB/s per channel) the level goes up until the
CPU term catches up with the wire term (zstd:1 to zstd:3 on this machine), whatever the
window's fill (after a run of zero pages, which drain at once, it has room on a slow link
too, and raw packets then cost wire time); on a link that the far end cannot keep up with
anyway (10 Gbit/s on 2 cores), or with data that does not shrink, nothing is compressed
(BENCHMARKS.md, "slow links").

The fastest codec is measured on the first packets once the pace is known (the first
packet only warms a codec up: a fresh compression context faults its tables in and ran 2-5x
slower than the next packet); every few packets one goes with a neighbour of the codec in
use, so the level climbs (or falls) one step at a time and the figures follow the
data.
"""
from __future__ import annotations

from typing import Callable, Sequence

from workers.codecs.base import Codec
from workers.gauge import LinkState

# Packets between two probes: while compressing, often enough that the level climbs to where
# a 1 Gbit/s link wants it early in a transfer; while sending raw, where every probe is CPU
# the link did not ask for (10 Gbit/s here), rarely.
PROBE_EVERY = 8
PROBE_RAW_EVERY = 32
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
        self.warm: set[str] = set()  # codecs whose first packet has been compressed
        self.picks = 0
        self.current = self.codecs[0]  # what the figures chose last
        self.chosen: dict[int, bool] = {}  # packet number -> compressed?, probes left out
        self.drain: dict[bool, float] = {}  # the drain rate of raw / of compressed packets

    @property
    def plain(self) -> Codec:
        """The codec for a packet with nothing to compress (all of its pages are zero)."""
        return self.codecs[0]

    def pick(self) -> Codec:
        """The codec for the next packet that carries data."""
        if len(self.codecs) == 1:  # a fixed codec: nothing to choose, no gauge to read
            return self.codecs[0]
        state = self.link()
        self._note_drain(state)
        if not state.drain_rate:  # the link's pace is not known yet: send as it is
            codec = self.codecs[0]
        else:
            self.picks += 1
            probe = self._probe()
            if probe is not None:
                return probe
            codec = self.current = self._best(state.drain_rate)
        self.chosen[state.sent] = codec is not self.codecs[0]
        return codec

    def _probe(self) -> Codec | None:
        """The fastest compressing codec until it is measured; then every PROBE_EVERY
        packets (PROBE_RAW_EVERY while sending raw) a neighbour of the codec in use, the one
        above and the one below in turn (the levels far from it cost more to try than they
        tell)."""
        if self.codecs[1].spec not in self.ratio:
            return self.codecs[1]
        every = PROBE_RAW_EVERY if self.current is self.codecs[0] else PROBE_EVERY
        if self.picks % every:
            return None
        at = self.codecs.index(self.current)
        neighbours = [i for i in (at + 1, at - 1) if 1 <= i < len(self.codecs)]
        return self.codecs[neighbours[self.picks // every % len(neighbours)]]

    def _best(self, drain_rate: float) -> Codec:
        # Until both were seen, what we saw is all we know: the same for both.
        raw_rate = self.drain.get(False) or self.drain.get(True) or drain_rate
        compressed_rate = self.drain.get(True) or raw_rate
        measured = [codec for codec in self.codecs[1:] if codec.spec in self.ratio]
        best = min(measured, key=lambda codec: self._seconds(codec, compressed_rate))
        if self._seconds(best, compressed_rate) * (1 + MARGIN) < 1 / raw_rate:
            return best
        return self.codecs[0]

    def _note_drain(self, state: LinkState) -> None:
        """Keep the drain rate as that of raw or of compressed packets when the packets it
        was measured on were all one or the other (packets of zero pages, probes and other
        handlers' packets do not count): a far end short of CPU drains compressed packets
        slower (it decompresses them, and our compressing takes cores from it), a wire
        drains both alike."""
        kinds = {self.chosen[n] for n in state.drained if n in self.chosen}
        if state.drain_rate and len(kinds) == 1:
            self.drain[kinds.pop()] = state.drain_rate
        for number in [n for n in self.chosen if n < state.drained.start]:
            del self.chosen[number]  # acknowledged before any later measurement

    def record(self, codec: Codec, raw: int, compressed: int, seconds: float) -> None:
        """What a compressed packet came to, and how long (wall time) compressing it took."""
        if not raw or seconds <= 0:
            return
        if codec.spec not in self.warm:
            self.warm.add(codec.spec)
            return
        for figures, value in ((self.ratio, compressed / raw), (self.speed, raw / seconds)):
            old = figures.get(codec.spec)
            figures[codec.spec] = value if old is None else old + _WEIGHT * (value - old)

    def _seconds(self, codec: Codec, drain_rate: float) -> float:
        """Seconds per raw byte with this compressing codec: its own time or the wire's,
        whichever is longer (they overlap)."""
        return max(1 / self.speed[codec.spec], self.ratio[codec.spec] / drain_rate)
