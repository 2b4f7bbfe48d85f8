"""The benchmark's figures per cell: medians and spreads, a table for people, JSON for
machines, and QEMU 7.2's own figures on this machine beside the matching cells."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

from engine.tools.bench.matrix import Cell
from engine.tools.bench.runner import Sample

GiB, MiB = 1 << 30, 1 << 20

# QEMU 7.2 multifd on this machine, 2 channels, a paused VM whose RAM is a mixed image
# (issue 6): seconds by (where, image size, codec); "loopback" is the whole migration.
QEMU_SECONDS: dict[tuple[str, int, str], float] = {
    ("loopback", GiB, "none"): 0.65, ("loopback", GiB, "zstd"): 1.55,
    ("loopback", 4 * GiB, "none"): 5.5, ("loopback", 4 * GiB, "zstd"): 9.6,
    ("1gbit", GiB, "none"): 5.6, ("1gbit", GiB, "zstd"): 2.9,
    ("10gbit", GiB, "none"): 1.1, ("10gbit", GiB, "zstd"): 1.7,
}


@dataclass(frozen=True)
class Figure:
    median: float
    spread: float  # (max - min) / median: how much the repeats disagreed

    @classmethod
    def of(cls, values: list[float]) -> "Figure":
        if not values:
            return cls(float("nan"), float("nan"))
        median = statistics.median(values)
        return cls(median, (max(values) - min(values)) / median if median else 0.0)

    def show(self, fmt: str) -> str:
        return f"{self.median:{fmt}} ±{self.spread * 50:.0f}%"


@dataclass(frozen=True)
class CellSummary:
    cell: Cell
    samples: list[Sample]
    gib_per_s: Figure  # image per second of wall time, start-up included
    engine_gib_per_s: Figure  # image per second of the engine's own transfer time
    cpu_per_gib: Figure
    wire_ratio: Figure
    peak_uss_mib: Figure
    wall_s: Figure
    wire_mib_per_s: Figure  # wire bytes over the data phase (API runs): --max-bandwidth's
    failures: int

    @classmethod
    def of(cls, cell: Cell, samples: list[Sample]) -> "CellSummary":
        good = [s for s in samples if s.ok]

        def figure(value: Callable[[Sample], float]) -> Figure:
            return Figure.of([value(s) for s in good])

        return cls(cell=cell, samples=samples,
                   gib_per_s=figure(lambda s: s.image_bytes / GiB / s.wall_s),
                   engine_gib_per_s=figure(lambda s: s.image_bytes / GiB / s.seconds),
                   cpu_per_gib=figure(lambda s: s.cpu_s / (s.image_bytes / GiB)),
                   wire_ratio=figure(lambda s: s.wire_bytes / s.image_bytes),
                   peak_uss_mib=figure(lambda s: s.peak_uss / MiB),
                   wall_s=figure(lambda s: s.wall_s),
                   wire_mib_per_s=Figure.of([s.wire_bytes / MiB / s.data_seconds
                                             for s in good if s.data_seconds > 0]),
                   failures=len(samples) - len(good))


def summarise(samples: list[Sample]) -> list[CellSummary]:
    by_cell: dict[Cell, list[Sample]] = {}
    for sample in samples:
        by_cell.setdefault(sample.cell, []).append(sample)
    return [CellSummary.of(cell, group) for cell, group in by_cell.items()]


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


def qemu_seconds(where: str, cell: Cell) -> float | None:
    if cell.get("channels") != 2 or cell.get("kind") != "mixed":
        return None
    return QEMU_SECONDS.get((where, cell["size"], cell["compress"].split(":")[0]))


def print_table(summaries: list[CellSummary], ceilings: Ceilings, where: str,
                runner: str, paced: bool = False, stderr: bool = False) -> None:
    """`paced`: a --max-bandwidth run, which adds the data phase's wire rate; `stderr`: print
    there (stdout carries the JSON)."""
    wire = ceilings.wire_figure()
    title = f"{where}, {runner} runs"
    if ceilings.wire:
        title += (f" — wire ceiling {wire.median / GiB:.2f} GiB/s ±{wire.spread * 50:.0f}% "
                  "(raw ZeroMQ, one stream)")
    table = Table(title=title)
    axes = [name for name, _ in summaries[0].cell.values] if summaries else []
    for name in axes:
        table.add_column(name)
    columns = ["GiB/s", "engine GiB/s", "x wire", "CPU s/GiB", "x floor", "wire/image",
               "peak USS MiB", "x 1 channel", "wall s", "QEMU s", "fails"]
    if paced:
        columns.insert(6, "wire MiB/s")
    for name in columns:
        table.add_column(name, justify="right")
    for row in rows(summaries, ceilings, where):
        table.add_row(*[show_value(row[name]) for name in axes],
                      *[row[name] for name in columns])
    console = Console(stderr=stderr)
    if not console.is_terminal:  # a file or a pipe: the whole table, not cut to 80 columns
        console = Console(stderr=stderr, width=220)
    console.print(table)


def rows(summaries: list[CellSummary], ceilings: Ceilings, where: str) -> list[dict[str, str]]:
    """The table's cells as text, in the matrix's order."""
    wire = ceilings.wire_figure().median
    single = {s.cell.without("channels"): s for s in summaries if s.cell.get("channels") == 1}
    out = []
    for s in sorted(summaries, key=lambda s: tuple(map(_sort_key, s.cell.values))):
        floor = ceilings.floor(s.cell)
        one = single.get(s.cell.without("channels"))
        qemu = qemu_seconds(where, s.cell)
        row = {name: value for name, value in s.cell.values}
        row.update({
            "GiB/s": s.gib_per_s.show(".2f"),
            "engine GiB/s": s.engine_gib_per_s.show(".2f"),
            "x wire": ("-" if math.isnan(wire)
                       else f"{s.engine_gib_per_s.median * GiB / wire:.2f}"),
            "CPU s/GiB": s.cpu_per_gib.show(".2f"),
            "x floor": f"{s.cpu_per_gib.median / floor:.2f}" if floor else "-",
            "wire/image": f"{s.wire_ratio.median:.3f}",
            "peak USS MiB": s.peak_uss_mib.show(".0f"),
            "x 1 channel": (f"{s.gib_per_s.median / one.gib_per_s.median:.2f}"
                            if one and one is not s else "-"),
            "wall s": s.wall_s.show(".2f"),
            "wire MiB/s": s.wire_mib_per_s.show(".1f"),
            "QEMU s": f"{qemu:.2f}" if qemu else "-",
            "fails": str(s.failures),
        })
        out.append(row)
    return out


def to_json(summaries: list[CellSummary], ceilings: Ceilings, where: str,
            runner: str, machine: dict[str, Any]) -> dict[str, Any]:
    return {
        "machine": machine, "where": where, "runner": runner,
        "wire_ceiling_bytes_per_s": ceilings.wire,
        "work_floor_cpu_s_per_gib": [
            {"kind": k, "size": size, "compress": c, "cpu_s_per_gib": v}
            for (k, size, c), v in ceilings.floors.items()],
        "cells": [{"cell": dict(s.cell.values),
                   "median": {name: getattr(s, name).median for name in _FIGURES},
                   "spread": {name: getattr(s, name).spread for name in _FIGURES},
                   "failures": s.failures,
                   "qemu_seconds": qemu_seconds(where, s.cell),
                   "samples": [x.to_json() for x in s.samples]} for s in summaries],
    }


_FIGURES = ("gib_per_s", "engine_gib_per_s", "cpu_per_gib", "wire_ratio", "peak_uss_mib",
            "wall_s", "wire_mib_per_s")


def show_value(value: Any) -> str:
    """An axis value as people read it: sizes as 1G or 256M."""
    if isinstance(value, int) and value >= MiB:
        return f"{value / GiB:g}G" if value % (GiB // 4) == 0 else f"{value / MiB:g}M"
    return str(value)


def _sort_key(item: tuple[str, Any]) -> tuple[str, str]:
    name, value = item
    return (name, f"{value:020d}" if isinstance(value, int) else str(value))
