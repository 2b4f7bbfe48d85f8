"""The benchmark matrix: named axes, their cells, and an interleaved, shuffled schedule.

A cell is one combination of axis values (image kind and size, channels, codec, ...). An
axis whose name is a TransferSettings field (channels, compress, packet_pages, window, and
whatever field is added later, such as curve) goes into the settings of the run unchanged,
so a new axis is one more `Axis` in the list and nothing else.
"""
from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, TypeVar

from engine.settings import TransferSettings

SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(TransferSettings))
MiB, GiB = 1 << 20, 1 << 30
Item = TypeVar("Item", bound=Hashable)


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Cell:
    """One point of the matrix: (axis name, value) pairs in axis order."""

    values: tuple[tuple[str, Any], ...]

    def __getitem__(self, name: str) -> Any:
        return dict(self.values)[name]

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.values).get(name, default)

    def settings(self, base: TransferSettings = TransferSettings()) -> TransferSettings:
        return dataclasses.replace(base, **{k: v for k, v in self.values
                                            if k in SETTINGS_FIELDS})

    def without(self, *names: str) -> "Cell":
        return Cell(tuple((k, v) for k, v in self.values if k not in names))

    def label(self) -> str:
        """As the progress lines and the plot show it, sizes as the table writes them."""
        return " ".join(f"{k}={show_value(v)}" for k, v in self.values)


def cells(axes: Iterable[Axis]) -> list[Cell]:
    axes = list(axes)
    return [Cell(tuple(zip((a.name for a in axes), combo)))
            for combo in itertools.product(*(a.values for a in axes))]


def schedule(matrix: list[Item], repeat: int, seed: int = 0) -> list[tuple[int, Item]]:
    """(repeat number, item) for `repeat` rounds, each round every item (a cell, or a cell
    with the runner that runs it) once in a new random order: drift of the machine (other
    load, memory warming up) hits every item alike."""
    rng = random.Random(seed)
    order: list[tuple[int, Item]] = []
    for number in range(repeat):
        round_ = list(matrix)
        rng.shuffle(round_)
        order += [(number, cell) for cell in round_]
    return order


def show_value(value: Any) -> str:
    """An axis value as people read it: sizes as 1G or 256M."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= MiB:
        return f"{value / GiB:g}G" if value % (GiB // 4) == 0 else f"{value / MiB:g}M"
    return str(value)
