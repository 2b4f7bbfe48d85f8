"""`bench --soak SECONDS`: transfers back to back, each reported, failures counted, and
whether the engine's memory grew from the first transfers to the last.

Memory is the peak anonymous memory of the engine's processes during each transfer. It "grew" when the
least of the last quarter of the transfers is more than GROWTH above the least of the first
quarter: a leak raises every transfer's peak, so it shows within a minute. The least, not
the median: a sampled peak catches a worker's buffers in some transfers and not in others
(1 MiB transfers measured 55 or 80 MiB, back and forth, for minutes), and a median of two
such samples flapped.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.tools.bench.matrix import Cell
from engine.tools.bench.runner import Sample

GROWTH = 0.10
GROWTH_FLOOR = 8 << 20  # and at least this much, so that small images do not flap
MiB = 1 << 20


@dataclass(frozen=True)
class SoakReport:
    samples: list[Sample]
    grew: bool
    first_anon: float
    last_anon: float

    @property
    def failures(self) -> int:
        return sum(not s.ok for s in self.samples)

    def to_json(self) -> dict[str, Any]:
        return {"transfers": len(self.samples), "failures": self.failures,
                "memory_grew": self.grew, "first_peak_anon": self.first_anon,
                "last_peak_anon": self.last_anon, "samples": [s.to_json() for s in self.samples]}


def soak(runner, cell: Cell, image: Path, destination: Path, seconds: float) -> SoakReport:
    """Transfers of `cell` back to back for `seconds` (at least one), each reported on
    stderr as it ends."""
    samples: list[Sample] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or not samples:
        sample = runner.run(cell, len(samples), image, destination)
        samples.append(sample)
        verdict = "ok" if sample.ok else f"FAILED: {sample.error}"
        print(f"transfer {len(samples):4d}: {sample.wall_s:6.2f} s, "
              f"{sample.image_bytes / (1 << 30) / sample.wall_s:5.2f} GiB/s, peak anonymous "
              f"{sample.peak_anon / MiB:6.1f} MiB, {verdict}", file=sys.stderr, flush=True)
    quarter = max(1, len(samples) // 4)
    first = min(s.peak_anon for s in samples[:quarter])
    last = min(s.peak_anon for s in samples[-quarter:])
    grew = len(samples) >= 4 and last > first * (1 + GROWTH) and last - first > GROWTH_FLOOR
    return SoakReport(samples=samples, grew=grew, first_anon=first, last_anon=last)
