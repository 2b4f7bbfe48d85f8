"""`--compress auto`: per packet, compress when the wire is the bottleneck, not when we are.

The source channel knows how full its send window is: packets sent and not yet
acknowledged. When the window is at least half full the wire (or the far end) is what we
wait for, so CPU spent compressing the next packet is free and saves wire time: it is
compressed, and when the window is full, with the stronger level (zstd:3 sends 14% fewer
bytes than zstd:1 on a mixed image at 60% of its speed: worth it only while the wire is the
bottleneck). When the window is emptier, the channel is waiting on this worker, so the next
packet goes as it is. On a slow link the window stays full and every packet is compressed;
on a fast link it stays empty and nothing is; in between (a link about as fast as the
compressor) the choice alternates so that the link and the CPU are both kept busy, which is
how auto beats both fixed choices there (BENCHMARKS.md, "link").
"""
from __future__ import annotations

from typing import Callable, Sequence

from workers.codecs.base import Codec

# Window fill from which the next packet is compressed.
CONGESTED = 0.5


class AdaptiveChoice:
    def __init__(self, codecs: Sequence[Codec], congestion: Callable[[], float]) -> None:
        """`codecs`: fastest (no compression) first; `congestion()`: window fill, 0 to 1."""
        self.codecs = list(codecs)
        self.congestion = congestion

    def pick(self) -> Codec:
        fill = self.congestion()
        if fill < CONGESTED:
            return self.codecs[0]
        # Above the threshold, fuller windows earn stronger codecs (with two: the second).
        step = (fill - CONGESTED) / (1 - CONGESTED) * (len(self.codecs) - 1)
        return self.codecs[min(len(self.codecs) - 1, max(1, int(step + 0.5)))]
