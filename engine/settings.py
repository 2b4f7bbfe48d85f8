"""Transfer settings: every knob in one frozen dataclass, with the reason for its default."""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import UsageError
from engine.units import parse_rate

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
# A channel whose worker or connection fails this often fails the transfer: a killed worker
# or a cut connection is recovered, a channel that keeps breaking is not retried forever.
MAX_CHANNEL_FAILURES = 3
MAX_PACKET_PAGES = 1024
# Smaller device chunks cost a packet each: 1-byte chunks took an 8 MiB device 8 million
# packets. A page is the smallest chunk that still moves at a useful rate.
MIN_CHUNK_SIZE = PAGE_SIZE
MAX_CHUNK_SIZE = 16 << 20
MAX_WINDOW = 256
# How a transfer proves the destination holds the source (engine/storage/digest.py): "fold"
# hashes each page as it passes, "reread" also reads both images from storage at the end.
VERIFY_MODES = ("fold", "reread")


@dataclass(frozen=True)
class TransferSettings:
    """What both ends agree on for one transfer; sent in HELLO and checked by the receiver."""

    channels: int = DEFAULT_CHANNELS
    compress: str = "none"
    device_compress: str = "none"
    packet_pages: int = DEFAULT_PACKET_PAGES
    window: int = DEFAULT_WINDOW
    chunk_size: int = DEFAULT_CHUNK_SIZE
    verify: str = "fold"

    def __post_init__(self) -> None:
        _check_range("channels", self.channels, 1, MAX_CHANNELS)
        _check_range("packet pages", self.packet_pages, 1, MAX_PACKET_PAGES)
        _check_range("window", self.window, 1, MAX_WINDOW)
        _check_range("chunk size", self.chunk_size, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        _check_choice("verification", self.verify, VERIFY_MODES)

    @property
    def packet_bytes(self) -> int:
        return self.packet_pages * PAGE_SIZE


# How long a sender waits for the receiver to answer, and a local receiver for its sender.
CONNECT_TIMEOUT_S = 30.0

# A cap below this leaves a 2 MiB packet on the wire for seconds, longer than the peers wait
# for each other's heartbeats: 1K/s had an 8 MiB transfer still running after 90 s.
MIN_BANDWIDTH = 1 << 20


def check_bandwidth(rate: int | str) -> int:
    """`rate` in bytes per second if it is a cap a transfer can live with: a number, or text
    as the command line takes it ("100M", "500mbit"; engine/units.py)."""
    if isinstance(rate, str):
        rate = parse_rate(rate)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate < MIN_BANDWIDTH:
        raise UsageError(f"max bandwidth must be at least 1M (1 MiB/s, about 8.4mbit), not "
                         f"{rate!r} bytes per second")
    return rate


def _check_range(what: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"{what} must be a whole number from {low} to {high}, not {value!r}")


# Live migration (engine/live/rounds.py). QEMU's default downtime-limit is 300 ms.
DEFAULT_DOWNTIME_LIMIT_MS = 300
# Pre-copy rounds before the no-convergence policy decides. Xen's pre-copy gave up after 29
# iterations (max_iters in xc_domain_save); QEMU iterates without a bound. A writer that has
# not converged in 30 rounds is dirtying as fast as the link carries, so more rounds only
# cost time.
DEFAULT_MAX_ROUNDS = 30
DIRTY_TRACKERS = ("log", "hash")
NO_CONVERGENCE_POLICIES = ("switchover", "fail")


@dataclass(frozen=True)
class LiveSettings:
    """How a live migration finds dirty pages and decides when to stop the source.

    dirty: "log" (the writer keeps a dirty log beside the region) or "hash" (the workers
      compare page hashes); see engine/live/dirty.py.
    on_no_convergence: after max_rounds rounds that did not fit the downtime limit,
      "switchover" pauses the source anyway (longer downtime, reported as not converged) and
      "fail" gives up with NotConverged, leaving the source running.
    """

    dirty: str = "hash"
    downtime_limit_ms: int = DEFAULT_DOWNTIME_LIMIT_MS
    max_rounds: int = DEFAULT_MAX_ROUNDS
    on_no_convergence: str = "switchover"

    def __post_init__(self) -> None:
        _check_choice("dirty tracking", self.dirty, DIRTY_TRACKERS)
        _check_range("downtime limit (ms)", self.downtime_limit_ms, 1, 3_600_000)
        _check_range("max rounds", self.max_rounds, 1, 10_000)
        _check_choice("no-convergence policy", self.on_no_convergence,
                      NO_CONVERGENCE_POLICIES)


def _check_choice(what: str, value: str, known: tuple[str, ...]) -> None:
    if value not in known:
        raise UsageError(f"unknown {what} {value!r}; known: {', '.join(known)}")
