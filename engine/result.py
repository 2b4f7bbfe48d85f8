"""What a finished transfer reports: the figures behind `--json` and the summary table."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


def per_channel(stats: list[dict[str, float]]) -> list[ChannelStats]:
    return [ChannelStats(bytes=int(s.get("bytes", 0)), packets=int(s.get("packets", 0)),
                         busy_s=float(s.get("busy_s", 0.0))) for s in stats]


def total(stats: list[dict[str, float]], key: str) -> int:
    return int(sum(s.get(key, 0) for s in stats))
