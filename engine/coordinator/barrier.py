"""The per-round SYNC barrier on the destination, as plain state with no sockets.

Each channel parks at its SYNC(round) until every channel has reached the same SYNC; only
then are they all released. A page re-sent in round k+1 on another channel therefore can
never be overwritten by its older copy from round k still queued on a slower channel.
"""
from __future__ import annotations

from engine.errors import ProtocolError


class SyncBarrier:
    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.round = 0
        self.arrived: set[int] = set()

    def arrive(self, channel: int, round_: int) -> bool:
        """Record a channel at the barrier; True when it was the last one (release them all)."""
        if not 0 <= channel < self.channels:
            raise ProtocolError(f"channel {channel} reached SYNC, but there are only "
                                f"{self.channels} channels")
        if round_ != self.round:
            raise ProtocolError(f"channel {channel} reached SYNC of round {round_} during "
                                f"round {self.round}")
        if channel in self.arrived:
            raise ProtocolError(f"channel {channel} reached SYNC of round {round_} twice")
        self.arrived.add(channel)
        if len(self.arrived) < self.channels:
            return False
        self.arrived.clear()
        self.round += 1
        return True

    @property
    def idle(self) -> bool:
        """No channel is parked: every completed round has been released."""
        return not self.arrived

    def forget(self, channel: int) -> None:
        """A replaced channel arrives again (its SYNC is re-sent to the replacement)."""
        self.arrived.discard(channel)
