"""What a finished transfer reports: the figures behind `--json` and the summary table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.settings import PAGE_SIZE, TransferSettings


@dataclass(frozen=True)
class ChannelStats:
    bytes: int
    packets: int
    busy_s: float


@dataclass(frozen=True)
class TransferResult:
    """What one verified transfer did, as `--json` prints it (README, "Command line").

    `bytes` is the image's size, `wire_bytes` what its channels carried (after zero pages
    and compression), `seconds` from connecting to the verdict. `resumed_pages`: pages a
    resumed transfer found already at the destination and did not send; the rates count
    only what this transfer moved.
    """

    ok: bool
    bytes: int
    seconds: float
    wire_bytes: int
    normal_pages: int
    zero_pages: int
    channels: int
    compress: str
    rounds: int
    digest: str
    devices: dict[str, int] = field(default_factory=dict)
    per_channel: list[ChannelStats] = field(default_factory=list)
    resumed_pages: int = 0

    @property
    def moved_bytes(self) -> int:
        """The part of the image this transfer covered (all of it unless resumed)."""
        return max(0, self.bytes - self.resumed_pages * PAGE_SIZE)

    @property
    def image_rate(self) -> float:
        """Bytes per second of the image this transfer covered, zero pages included."""
        return self.moved_bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def wire_rate(self) -> float:
        """Bytes per second the channels carried (no zero pages, after compression)."""
        return self.wire_bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def gib_per_s(self) -> float:
        return self.image_rate / (1 << 30)

    @property
    def wire_gib_per_s(self) -> float:
        return self.wire_rate / (1 << 30)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["gib_per_s"] = round(self.gib_per_s, 3)
        out["wire_gib_per_s"] = round(self.wire_gib_per_s, 3)
        out["seconds"] = round(self.seconds, 4)
        for channel in out["per_channel"]:
            channel["busy_s"] = round(channel["busy_s"], 4)
        return out


def transfer_result(counters: list[dict[str, float]], *, settings: TransferSettings,
                    **figures: Any) -> TransferResult:
    """A TransferResult from each channel's worker counters and the transfer's own figures
    (ok, bytes, seconds, rounds, digest, devices): what both ends report alike."""

    def total(key: str) -> int:
        return int(sum(c.get(key, 0) for c in counters))

    return TransferResult(
        wire_bytes=total("bytes"), normal_pages=total("normal_pages"),
        zero_pages=total("zero_pages"), channels=settings.channels, compress=settings.compress,
        per_channel=[ChannelStats(bytes=int(c.get("bytes", 0)), packets=int(c.get("packets", 0)),
                                  busy_s=float(c.get("busy_s", 0.0))) for c in counters],
        **figures)


@dataclass(frozen=True)
class LiveResult:
    """A live migration: the verified transfer, its rounds, and the stop it cost the source.

    Rates are in bytes per second: `rate` as measured in the last round sent while the
    source ran, `dirty_rate` as the source dirtied pages when the engine decided to stop it.
    The downtime runs from asking for the pause to the destination's verdict; its parts are
    pause, look (the last dirty-page look), copy (last pages, device state, barrier) and
    verify (digests on both ends).
    """

    transfer: TransferResult
    dirty: str
    pages_per_round: list[int]
    seconds_per_round: list[float]
    rate: float
    dirty_rate: float
    downtime_limit_ms: int
    expected_downtime_ms: float
    downtime_ms: float
    downtime_parts_ms: dict[str, float]
    converged: bool

    def to_json(self) -> dict[str, Any]:
        out = self.transfer.to_json()
        live = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "transfer"}
        live["seconds_per_round"] = [round(s, 4) for s in self.seconds_per_round]
        live["downtime_parts_ms"] = {k: round(v, 2) for k, v in self.downtime_parts_ms.items()}
        for key in ("rate", "dirty_rate"):
            live[key] = round(live[key])
        for key in ("expected_downtime_ms", "downtime_ms"):
            live[key] = round(live[key], 2)
        out.update(live)
        return out


@dataclass(frozen=True)
class VmResult:
    """A migrated VM: the verified transfer (a live migration's, with --live), the downtime
    from the pause to the destination guest running, and the states both QEMUs reported."""

    migration: TransferResult | LiveResult
    downtime_ms: float
    vm: dict[str, str]

    def to_json(self) -> dict[str, Any]:
        out = self.migration.to_json()
        out.update(downtime_ms=round(self.downtime_ms, 2), vm=self.vm)
        return out
