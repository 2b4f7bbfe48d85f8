"""`bench --plot FILE.png`: throughput against channels, one line per codec (matplotlib, the
optional `plot` extra), one panel per image kind and size, the peers that run with channels
as dashed lines, and the wire ceiling: the line an image's rate crosses only where zero
pages or compression leave bytes out."""
from __future__ import annotations

import importlib
import math
from pathlib import Path

from engine.tools.bench.matrix import show_value
from engine.tools.bench.report import ENGINE, GiB, CellSummary
from engine.errors import UsageError


def check_can_plot() -> None:
    """UsageError unless matplotlib is there: said before the run, not after it."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'multifd-engine[plot]'") from None


def plot(summaries: list[CellSummary], path: Path, title: str, wire: float) -> None:
    """`wire`: the wire ceiling in bytes per second (nan if it was not measured)."""
    check_can_plot()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels: dict[tuple, dict[tuple[str, str], list[tuple[int, float, float]]]] = {}
    for s in sorted(summaries, key=lambda s: s.run != ENGINE):  # the panels are the engine's
        if "channels" not in dict(s.cell.values):
            continue  # cp: no channels to draw it against
        rest = s.cell.without("channels", "compress").values
        if s.run != ENGINE:
            rest = next((panel for panel in panels if set(rest) <= set(panel)), rest)
        line = panels.setdefault(rest, {}).setdefault((s.run, s.cell["compress"]), [])
        spread = s.gib_per_s.median * s.gib_per_s.spread / 2
        line.append((s.cell["channels"], s.gib_per_s.median, spread))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (rest, lines) in zip(axes[0], panels.items()):
        for (run, codec), points in sorted(lines.items(), key=lambda item: item[0][0] != ENGINE):
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[p[2] for p in points], marker="o", capsize=3,
                        label=f"{run} {codec}", linestyle="-" if run == ENGINE else "--")
        if not math.isnan(wire):
            ax.axhline(wire / GiB, color="grey", linestyle=":", label="wire ceiling")
        ax.set_title(" ".join(f"{k}={show_value(v)}" for k, v in rest) or title)
        ax.set_xlabel("channels")
        ax.set_ylabel("GiB/s of image (wall time)")
        ax.set_xticks(sorted({p[0] for points in lines.values() for p in points}))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
