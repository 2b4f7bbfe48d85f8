"""What a finished transfer reports: the figures behind `--json` and the summary table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine.settings import TransferSettings


@dataclass(frozen=True)
class ChannelStats:
    bytes: int
    packets: int
    busy_s: float


@dataclass(frozen=True)
class TransferResult:
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

    @property
    def gib_per_s(self) -> float:
        return self.bytes / (1 << 30) / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["gib_per_s"] = round(self.gib_per_s, 3)
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
