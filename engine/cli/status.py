"""Where a transfer stands, for anyone following it: the `--progress json` lines, the bar,
and the line `kill -USR1 PID` prints (as `dd` does).

A `Tracker` is fed by whoever knows: on the source, the dispatcher's acknowledged units
(image and wire bytes) and the live rounds' reports (dirty rate, expected downtime); on the
destination, the receiver's look at its journal once a second. Displays read `status()`
from their own thread or a signal handler, so the tracker takes no lock: each field is one
attribute write, and a look that mixes two updates is off by one unit at most.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from engine.units import format_rate, format_size

if TYPE_CHECKING:
    from engine.coordinator.dispatcher import Acked
    from engine.coordinator.receiver import Arrival
    from engine.live.rounds import RoundReport

# Rates are taken over about this many seconds: recent enough to follow a round, long
# enough not to jump with each 16 MiB unit.
RATE_WINDOW_S = 5.0


@dataclass(frozen=True)
class Status:
    """One look at a transfer. Rates are bytes per second; None: not known on this side
    (the destination learns the wire bytes only at the end) or not applicable."""

    side: str  # "source" or "destination"
    # The source: starting (until the first unit is acknowledged), copying, finishing (the
    # image is across; devices and the verdict are left); live: precopy, switchover.
    # The destination: listening, receiving, verifying.
    phase: str
    round: int
    image_bytes: int  # sent and acknowledged (a live source: every round's), or arrived
    image_size: int
    wire_bytes: int | None
    seconds: float
    image_rate: float
    wire_rate: float | None
    dirty_rate: float | None = None
    expected_downtime_ms: float | None = None
    seconds_left: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The `--progress json` line: these fields, plus both rates in MiB/s."""
        fields = asdict(self)
        mib = 1 << 20
        fields["image_mib_per_s"] = round(self.image_rate / mib, 1)
        fields["wire_mib_per_s"] = (None if self.wire_rate is None
                                    else round(self.wire_rate / mib, 1))
        for key in ("image_rate", "wire_rate", "dirty_rate"):  # bytes per second
            fields[key] = None if fields[key] is None else int(fields[key])
        return {key: round(value, 3) if isinstance(value, float) else value
                for key, value in fields.items()}

    def line(self) -> str:
        """One line for people, in the units of the summary."""
        if self.phase == "listening":
            return self.phase
        parts = [f"{self.phase}, round {self.round}: {format_size(self.image_bytes)} of "
                 f"{format_size(self.image_size)} image in {self.seconds:.1f} s"]
        rates = f"{format_rate(self.image_rate)} image"
        if self.wire_bytes is not None:
            parts.append(f"{format_size(self.wire_bytes)} on the wire")
            rates += f", {format_rate(self.wire_rate or 0.0)} wire"
        parts.append(rates)
        if self.dirty_rate is not None:
            parts.append(f"dirty {format_rate(self.dirty_rate)}, a stop would take "
                         f"~{self.expected_downtime_ms:.0f} ms")
        if self.seconds_left is not None:
            parts.append(f"{self.seconds_left:.0f} s left")
        return "; ".join(parts)


class Tracker:
    """The counters of one transfer, fed as it goes (see the module's docstring)."""

    def __init__(self, side: str, image_size: int, phase: str, live: bool = False) -> None:
        """`live`: a live source, whose rounds (precopy) send pages again."""
        self.side = side
        self.live = live
        self.image_size = image_size
        self.phase = phase
        self.round = 0
        self.image_bytes = 0
        self.wire_bytes: int | None = 0 if side == "source" else None
        self.dirty_rate: float | None = None
        self.expected_downtime_ms: float | None = None
        self.started = time.monotonic()
        self._base = 0  # image bytes there before this run: a resumed destination's
        self._looks: deque[tuple[float, int, int]] = deque()

    def acked(self, acked: "Acked") -> None:
        """The Sender's progress callback: units acknowledged."""
        self.image_bytes += acked
        self.wire_bytes = (self.wire_bytes or 0) + acked.wire
        if self.phase == "starting":
            self.phase = "precopy" if self.live else "copying"
        if self.phase == "copying" and self.image_bytes >= self.image_size:
            self.phase = "finishing"  # the devices and the verdict are what is left

    def on_round(self, report: "RoundReport") -> None:
        """A live round ended and the look after it measured the source's writes."""
        self.round = report.round + 1
        self.dirty_rate = report.dirty_rate
        self.expected_downtime_ms = report.expected_downtime_ms

    def arrived(self, arrival: "Arrival") -> None:
        """The Receiver's progress callback: what has arrived so far."""
        if self.phase == "listening":  # the transfer starts now, maybe on a resumed copy
            self.started, self._base = time.monotonic(), arrival.image_bytes
        self.phase, self.round = arrival.phase, arrival.round
        self.image_bytes, self.image_size = arrival.image_bytes, arrival.image_size

    def status(self) -> Status:
        now = time.monotonic()
        image, wire = self.image_bytes, self.wire_bytes
        self._looks.append((now, image, wire or 0))
        while len(self._looks) > 1 and now - self._looks[1][0] >= RATE_WINDOW_S:
            self._looks.popleft()
        then, image_then, wire_then = self._looks[0]
        if now - then < 0.5:  # too soon for a recent rate: the average since the start
            then, image_then, wire_then = self.started, self._base, 0
        elapsed = max(now - then, 1e-3)
        image_rate = max(0.0, (image - image_then) / elapsed)
        wire_rate = None if wire is None else max(0.0, (wire - wire_then) / elapsed)
        left = None
        if 0 < image < self.image_size and image_rate > 0:
            left = (self.image_size - image) / image_rate
        return Status(side=self.side, phase=self.phase, round=self.round, image_bytes=image,
                      image_size=self.image_size, wire_bytes=wire,
                      seconds=now - self.started, image_rate=image_rate, wire_rate=wire_rate,
                      dirty_rate=self.dirty_rate,
                      expected_downtime_ms=self.expected_downtime_ms, seconds_left=left)
