"""`bench --plot FILE.png`: throughput against channels, one line per codec (matplotlib, the
optional `plot` extra), one panel per image kind and size."""
from __future__ import annotations

from pathlib import Path

from engine.tools.bench.report import CellSummary, show_value
from engine.errors import UsageError


def plot(summaries: list[CellSummary], path: Path, title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'multifd-engine[plot]'") from None
    panels: dict[tuple, dict[str, list[tuple[int, float, float]]]] = {}
    for s in summaries:
        rest = s.cell.without("channels", "compress")
        line = panels.setdefault(rest.values, {}).setdefault(s.cell["compress"], [])
        spread = s.gib_per_s.median * s.gib_per_s.spread / 2
        line.append((s.cell["channels"], s.gib_per_s.median, spread))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (rest, lines) in zip(axes[0], panels.items()):
        for codec, points in sorted(lines.items()):
            points.sort()
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[p[2] for p in points], marker="o", capsize=3, label=codec)
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
