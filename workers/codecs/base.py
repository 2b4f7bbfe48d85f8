"""The Codec interface: bytes in, bytes out, under the RAM (and optionally device) handler."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from engine.errors import UsageError


class Codec(ABC):
    """A compressor, configured once per worker and used for every packet.

    Contract:
    - `compress(data)` accepts any bytes-like object (also empty) and returns a bytes-like
      object; it never blocks on anything but the CPU and does not keep `data`.
    - `decompress(data, size)` returns exactly `size` bytes or raises CorruptPayload. It must
      never produce, or allocate for, more than `size` bytes whatever `data` claims: `size`
      comes from a validated header, `data` from the network.
    """

    name: ClassVar[str]
    levels: ClassVar[range | None] = None
    default_level: ClassVar[int | None] = None

    def __init__(self, level: int | None = None) -> None:
        if level is None:
            level = self.default_level
        elif self.levels is None:
            raise UsageError(f"codec {self.name!r} takes no level")
        elif level not in self.levels:
            raise UsageError(f"{self.name} level must be from {self.levels.start} to "
                             f"{self.levels.stop - 1}, not {level}")
        self.level = level

    @property
    def spec(self) -> str:
        return self.name if self.level is None else f"{self.name}:{self.level}"

    @abstractmethod
    def compress(self, data) -> bytes:
        ...

    @abstractmethod
    def decompress(self, data, size: int) -> bytes:
        ...
