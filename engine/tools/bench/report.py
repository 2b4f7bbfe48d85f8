"""The benchmark's figures per cell: medians and spreads, the peers (peers.py) each engine
cell is compared with and the ratios engine/peer, and the JSON for machines. The table for
people is table.py."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from engine.tools.bench.matrix import Cell
from engine.tools.bench.runner import Sample

GiB, MiB = 1 << 30, 1 << 20
ENGINE = "engine"


@dataclass(frozen=True)
class Figure:
    median: float
    spread: float  # (max - min) / median: how much the repeats disagreed
    count: int = 0  # how many values: one value has no spread to show

    @classmethod
    def of(cls, values: list[float]) -> "Figure":
        if not values:
            return cls(float("nan"), float("nan"))
        median = statistics.median(values)
        return cls(median, (max(values) - min(values)) / median if median else 0.0,
                   len(values))

    def show(self, fmt: str, spread: bool = True) -> str:
        """The median, and ±half the range in percent when there are values to disagree."""
        if math.isnan(self.median):
            return "-"
        text = f"{self.median:{fmt}}"
        return f"{text} ±{self.spread * 50:.0f}%" if spread and self.count > 1 else text


@dataclass(frozen=True)
class CellSummary:
    cell: Cell
    samples: list[Sample]
    gib_per_s: Figure  # image per second of wall time, start-up included
    engine_gib_per_s: Figure  # image per second of the engine's own transfer time
    cpu_s: Figure  # CPU seconds of every process of the run
    cpu_per_gib: Figure
    wire_ratio: Figure  # nan where the runner does not know its wire bytes (QEMU, cp)
    peak_anon_mib: Figure
    wall_s: Figure
    wire_mib_per_s: Figure  # wire bytes over the data phase (API runs): --max-bandwidth's
    failures: int
    run: str = ENGINE  # who moved the image: the engine or a peer

    @classmethod
    def of(cls, cell: Cell, samples: list[Sample]) -> "CellSummary":
        good = [s for s in samples if s.ok]

        def figure(value: Callable[[Sample], float]) -> Figure:
            return Figure.of([value(s) for s in good])

        return cls(cell=cell, samples=samples, run=samples[0].run,
                   gib_per_s=figure(lambda s: s.image_bytes / GiB / s.wall_s),
                   engine_gib_per_s=figure(lambda s: s.image_bytes / GiB / s.seconds),
                   cpu_s=figure(lambda s: s.cpu_s),
                   cpu_per_gib=figure(lambda s: s.cpu_s / (s.image_bytes / GiB)),
                   wire_ratio=Figure.of([s.wire_bytes / s.image_bytes
                                         for s in good if s.wire_bytes]),
                   peak_anon_mib=figure(lambda s: s.peak_anon / MiB),
                   wall_s=figure(lambda s: s.wall_s),
                   wire_mib_per_s=Figure.of([s.wire_bytes / MiB / s.data_seconds
                                             for s in good if s.data_seconds > 0]),
                   failures=len(samples) - len(good))

    def contains(self, other: "CellSummary") -> bool:
        """Whether `other` (a peer's cell, cut to the axes it knows) is part of this cell."""
        return set(other.cell.values) <= set(self.cell.values)

    def over(self, peer: "CellSummary") -> dict[str, float]:
        """This run's medians over the peer's: below 1, this one took less."""
        return {name: _ratio(getattr(self, name).median, getattr(peer, name).median)
                for name in ("wall_s", "cpu_s")}


def summarise(samples: list[Sample]) -> list[CellSummary]:
    by_run: dict[tuple[str, Cell], list[Sample]] = {}
    for sample in samples:
        by_run.setdefault((sample.run, sample.cell), []).append(sample)
    return [CellSummary.of(cell, group) for (_, cell), group in by_run.items()]


def peers_of(summary: CellSummary, summaries: list[CellSummary]) -> list[CellSummary]:
    """The peers' summaries that stand beside an engine cell, in the order they came."""
    return [s for s in summaries if s.run != ENGINE and summary.contains(s)]


@dataclass(frozen=True)
class Ceilings:
    """Bytes per second of the raw stream (one figure per repeat), CPU s/GiB of the floor by
    (kind, size, compress)."""

    wire: list[float]
    floors: dict[tuple[str, int, str], float]

    def wire_figure(self) -> Figure:
        return Figure.of(self.wire)

    def floor(self, cell: Cell) -> float | None:
        return self.floors.get((cell["kind"], cell["size"], cell["compress"]))


def to_json(summaries: list[CellSummary], ceilings: Ceilings, where: str,
            runner: str, machine: dict[str, Any]) -> dict[str, Any]:
    """`cells` are the engine's, each with its ratios to the peers beside it
    (`engine_over_peer`); `peer_cells` are the peers' own figures."""
    engine = [s for s in summaries if s.run == ENGINE]
    return {
        "machine": machine, "where": where, "runner": runner,
        "wire_ceiling_bytes_per_s": ceilings.wire,
        "work_floor_cpu_s_per_gib": [
            {"kind": k, "size": size, "compress": c, "cpu_s_per_gib": v}
            for (k, size, c), v in ceilings.floors.items()],
        "cells": [{**_figures(s), "engine_over_peer": {
                       p.run: {k: _number(v) for k, v in s.over(p).items()}
                       for p in peers_of(s, summaries)}} for s in engine],
        "peer_cells": [{"run": s.run, **_figures(s)} for s in summaries if s.run != ENGINE],
    }


_FIGURES = ("gib_per_s", "engine_gib_per_s", "cpu_s", "cpu_per_gib", "wire_ratio",
            "peak_anon_mib", "wall_s", "wire_mib_per_s")


def _figures(s: CellSummary) -> dict[str, Any]:
    return {"cell": dict(s.cell.values),
            "median": {name: _number(getattr(s, name).median) for name in _FIGURES},
            "spread": {name: _number(getattr(s, name).spread) for name in _FIGURES},
            "failures": s.failures, "samples": [x.to_json() for x in s.samples]}


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def _number(value: float) -> float | None:
    """JSON has no NaN: a figure nobody measured is null."""
    return None if math.isnan(value) else value
