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
from typing import Any, Iterable

from engine.settings import TransferSettings

SETTINGS_FIELDS = frozenset(f.name for f in dataclasses.fields(TransferSettings))


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
        return " ".join(f"{k}={v}" for k, v in self.values)


def cells(axes: Iterable[Axis]) -> list[Cell]:
    axes = list(axes)
    return [Cell(tuple(zip((a.name for a in axes), combo)))
            for combo in itertools.product(*(a.values for a in axes))]


def schedule(matrix: list[Cell], repeat: int, seed: int = 0) -> list[tuple[int, Cell]]:
    """(repeat number, cell) for `repeat` rounds, each round every cell once in a new random
    order: drift of the machine (other load, memory warming up) hits every cell alike."""
    rng = random.Random(seed)
    order: list[tuple[int, Cell]] = []
    for number in range(repeat):
        round_ = list(matrix)
        rng.shuffle(round_)
        order += [(number, cell) for cell in round_]
    return order
