"""The benchmark's table for people: one row per engine cell, its peers' rows under it.

It fits 100 columns: an axis with one value goes into the title rather than a column, and
the figures a reader compares come first; the rest (the engine's own rate, CPU per GiB, the
work floor, the gain over one channel, spreads of every figure) are in `--wide` and in
`--json`. A spread shows only where there were repeats to disagree.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from rich import box
from rich.console import Console
from rich.table import Table

from engine.tools.bench.matrix import Cell, show_value
from engine.tools.bench.report import ENGINE, GiB, Ceilings, CellSummary, Figure, peers_of

WIDTH = 100  # the table's width when it does not go to a terminal (which sets its own)
WIDE_WIDTH = 250


@dataclass(frozen=True)
class Row:
    """One line of the table: a summary, and for a peer's row the engine cell it is under."""

    summary: CellSummary
    under: CellSummary | None
    wide: bool

    def figure(self, name: str, fmt: str, spread: bool = False) -> str:
        return getattr(self.summary, name).show(fmt, spread or self.wide)

    def engine_only(self, text: Callable[[], str]) -> str:
        return text() if self.under is None else ""

    def ratio(self, name: str) -> str:
        if self.under is None:
            return ""
        value = self.under.over(self.summary)[name]
        return "-" if math.isnan(value) else f"{value:.{2 if value < 10 else 1}f}"


@dataclass(frozen=True)
class Column:
    header: str
    text: Callable[[Row], str]
    wide: bool = False  # only in --wide


def print_table(summaries: list[CellSummary], ceilings: Ceilings, where: str, runner: str,
                paced: bool = False, wide: bool = False, stderr: bool = False) -> None:
    """`paced`: a --max-bandwidth run, which adds the data phase's wire rate; `stderr`: print
    there (stdout carries the JSON)."""
    engine = sorted((s for s in summaries if s.run == ENGINE),
                    key=lambda s: tuple(map(_sort_key, s.cell.values)))
    peers = [s for s in summaries if s.run != ENGINE]
    axes, fixed = _split_axes([s.cell for s in engine], wide)
    columns = _columns(ceilings, summaries, paced, wide)
    table = Table(title=_title(where, runner, peers, fixed, ceilings), box=box.SIMPLE_HEAD,
                  pad_edge=False, collapse_padding=True, title_justify="left",
                  caption_justify="left", caption=_caption(peers))
    for name in axes:
        table.add_column(name)
    for column in columns:
        table.add_column(column.header, justify="right")
    for s in engine:
        table.add_row(*[show_value(s.cell[name]) for name in axes],
                      *[c.text(Row(s, None, wide)) for c in columns])
        for peer in peers_of(s, summaries):
            table.add_row(*["" for _ in axes], *[c.text(Row(peer, s, wide)) for c in columns])
    console = Console(stderr=stderr)
    if not console.is_terminal:  # a file or a pipe: as wide as the view, never cut short
        console = Console(stderr=stderr, width=WIDE_WIDTH if wide else WIDTH)
    console.print(table)


def _columns(ceilings: Ceilings, summaries: list[CellSummary], paced: bool,
             wide: bool) -> list[Column]:
    wire = ceilings.wire_figure().median
    single = {s.cell.without("channels"): s for s in summaries
              if s.run == ENGINE and s.cell.get("channels") == 1}
    peers = any(s.run != ENGINE for s in summaries)

    def x_wire(row: Row) -> str:
        return f"{row.summary.engine_gib_per_s.median * GiB / wire:.2f}"

    def x_floor(row: Row) -> str:
        floor = ceilings.floor(row.summary.cell)
        return f"{row.summary.cpu_per_gib.median / floor:.2f}" if floor else "-"

    def x_one_channel(row: Row) -> str:
        one = single.get(row.summary.cell.without("channels"))
        return (f"{row.summary.gib_per_s.median / one.gib_per_s.median:.2f}"
                if one and one is not row.summary else "-")

    columns = [
        Column("run", lambda r: r.summary.run) if peers else None,
        Column("wall s", lambda r: r.figure("wall_s", ".2f", spread=True)),
        Column("GiB/s", lambda r: r.figure("gib_per_s", ".2f")),
        Column("engine\nGiB/s", lambda r: r.engine_only(
            lambda: r.figure("engine_gib_per_s", ".2f")), wide=True),
        Column("CPU s", lambda r: r.figure("cpu_s", ".2f", spread=True)),
        Column("CPU s/GiB", lambda r: r.figure("cpu_per_gib", ".2f"), wide=True),
        Column("x wire", lambda r: r.engine_only(lambda: x_wire(r)))
        if not math.isnan(wire) else None,
        Column("x floor", lambda r: r.engine_only(lambda: x_floor(r)), wide=True),
        Column("wire/\nimage", lambda r: r.figure("wire_ratio", ".3f")),
        Column("wire\nMiB/s", lambda r: r.figure("wire_mib_per_s", ".1f")) if paced else None,
        Column("anon\nMiB", lambda r: r.figure("peak_anon_mib", ".0f")),
        Column("x 1\nchannel", lambda r: r.engine_only(lambda: x_one_channel(r)), wide=True),
        Column("wall\nratio", lambda r: r.ratio("wall_s")) if peers else None,
        Column("CPU\nratio", lambda r: r.ratio("cpu_s")) if peers else None,
        Column("fails", lambda r: str(r.summary.failures),
               wide=not any(s.failures for s in summaries)),
    ]
    return [c for c in columns if c is not None and (wide or not c.wide)]


def _split_axes(matrix: list[Cell], wide: bool) -> tuple[list[str], Cell]:
    """The axes that get a column (all, in the wide view), and the values every cell shares
    (shown once, in the title)."""
    names = [name for name, _ in matrix[0].values] if matrix else []
    varying = [n for n in names if wide or len({c[n] for c in matrix}) > 1]
    return varying, matrix[0].without(*varying) if matrix else Cell(())


def _title(where: str, runner: str, peers: list[CellSummary], fixed: Cell,
           ceilings: Ceilings) -> str:
    title = f"{where}, {runner} runs"
    if peers:
        title += " beside " + ", ".join(dict.fromkeys(s.run for s in peers))
    if fixed.values:
        title += f": {fixed.label()}"
    if ceilings.wire:
        wire = Figure.of([rate / GiB for rate in ceilings.wire])
        title += f" — wire ceiling {wire.show('.2f')} GiB/s (raw ZeroMQ, one stream)"
    return title


def _caption(peers: list[CellSummary]) -> str | None:
    if not peers:
        return None
    caption = ("ratio: the engine's median over the peer's on that row (below 1: the engine "
               "took less).")
    if any(s.run == "qemu" for s in peers):
        caption += (" qemu's wall time runs from 'migrate' to completed (its start-up is not "
                    "in it); its CPU is both QEMUs' whole lives.")
    return caption


def _sort_key(item: tuple[str, object]) -> tuple[str, str]:
    name, value = item
    return (name, f"{value:020d}" if isinstance(value, int) else str(value))
