"""Transfer settings: every knob in one frozen dataclass, with the reason for its default."""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UsageError

PAGE_SIZE = 4096

# 512 pages = 2 MiB per packet (QEMU's multifd uses 512 KiB). Chosen by BENCHMARKS.md, run
# "packet and window" (`bench --channels 2 --compress none,zstd:1 --packet-pages
# 256,512,1024 --window 4,8,16`): the per-packet Python work (header, dispatch, ack, wake-ups)
# is what larger packets amortise; from 128 to 512 pages CPU per GiB fell 20% (none) and
# 19% (zstd:1), and 1024 saved little more while peak memory grew by a quarter.
DEFAULT_PACKET_PAGES = 512
# Packets a channel may have unacknowledged on the wire. Same run: 8 x 2 MiB keeps the pipe
# full (4 was slower, 16 no faster and 20% more memory) while bounding memory to channels x
# window x packet.
DEFAULT_WINDOW = 8
# Device state travels in 1 MiB chunks (design.md, Wire).
DEFAULT_CHUNK_SIZE = 1 << 20
DEFAULT_CHANNELS = 2
MAX_CHANNELS = 64
MAX_PACKET_PAGES = 1024
MAX_CHUNK_SIZE = 16 << 20
MAX_WINDOW = 256


@dataclass(frozen=True)
class TransferSettings:
    """What both ends agree on for one transfer; sent in HELLO and checked by the receiver."""

    channels: int = DEFAULT_CHANNELS
    compress: str = "none"
    device_compress: str = "none"
    packet_pages: int = DEFAULT_PACKET_PAGES
    window: int = DEFAULT_WINDOW
    chunk_size: int = DEFAULT_CHUNK_SIZE

    def __post_init__(self) -> None:
        _check_range("channels", self.channels, 1, MAX_CHANNELS)
        _check_range("packet pages", self.packet_pages, 1, MAX_PACKET_PAGES)
        _check_range("window", self.window, 1, MAX_WINDOW)
        _check_range("chunk size", self.chunk_size, 1, MAX_CHUNK_SIZE)

    @property
    def packet_bytes(self) -> int:
        return self.packet_pages * PAGE_SIZE


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{what} must be a whole number from {low} to {high}, not {value!r}")
