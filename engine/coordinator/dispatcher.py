"""The source coordinator's one thread that owns every socket: it hands out units of work,
broadcasts SYNC at the end of a round, replaces lost workers, and runs the end of the transfer.

A unit is many packets' worth of work (UNIT_BYTES of pages, or that many device chunks) given
to one channel's worker, which sends its packets within its own window and reports the unit
done once the destination acknowledged its last packet. So the coordinator does nothing per
packet: at 2 MiB packets a coordinator round trip per packet cost more CPU than the bytes
themselves. Each channel holds at most UNITS_AHEAD units, and the next unit goes to the
channel with the fewest packets outstanding, so a slow channel is simply given less.

Producers talk to it only through the submission queue: job streams and markers (end of
round, scan, finish) that they wait on.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from engine.coordinator.control import HEARTBEAT_S, ControlLink
from engine.coordinator.final_round import FinalRound
from engine.coordinator.inflight import InFlight
from engine.coordinator.processes import ChannelLost, Recovery, WorkerGroup
from engine.errors import EngineError, ProtocolError, VerificationFailed, peer_error
from engine.settings import TransferSettings
from engine.storage import digest
from engine.wire import jobs
from engine.wire.protocol import Complete, Fault, Heartbeat, Synced, Verdict

# Work per unit: enough packets that per-unit messages cost nothing beside the bytes, few
# enough that the last units of a round still spread over every channel.
UNIT_BYTES = 16 << 20
# Units a channel holds at once: one being sent while the one before it is acknowledged.
UNITS_AHEAD = 2
# How long a sender that gives up on a channel waits for the receiver's reason.
PEER_WORD_S = 1.0


@dataclass
class JobStream:
    """`packets` packets of work, as (kind, spec, image bytes) per packet. A short stream is
    cut into as many units as there are channels, so that every channel takes part."""

    packets: int
    jobs: Iterator[tuple[str, dict[str, Any], int]]


@dataclass
class Marker:
    """A point in the submission queue that a producer waits on."""

    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None


class SyncMarker(Marker):
    """The end of a round; its result is the round's number once the destination applied it."""


@dataclass
class FinishMarker(Marker):
    """The end of the transfer; `devices`: each device's digest. Result: (verdict, counters
    per channel, the image digest)."""

    devices: dict[str, str] = field(default_factory=dict)


@dataclass
class ScanMarker(Marker):
    """Requests (channel, spec) for handler `kind`'s scan; result: the answers in order."""

    kind: str = ""
    requests: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


class Acked(int):
    """The image bytes of the units just acknowledged, as the int a progress callback has
    always been given, carrying `wire`: the bytes their packets took on the wire (no zero
    pages, compressed, device chunks included), so that a display can show both rates."""

    wire: int

    def __new__(cls, image: int, wire: int) -> "Acked":
        acked = super().__new__(cls, image)
        acked.wire = wire
        return acked


class Dispatcher:
    def __init__(self, workers: WorkerGroup, control: ControlLink, endpoints: list[str],
                 settings: TransferSettings, image_size: int,
                 page_hashes: Callable[[], np.ndarray],
                 progress: Callable[[Acked], None] | None) -> None:
        """`endpoints`: each channel's destination; `page_hashes()`: what the source workers
        folded; `progress(acked)` is called as units are acknowledged."""
        self.workers = workers
        self.control = control
        self.endpoints = endpoints
        self.settings = settings
        self.image_size = image_size
        self.page_hashes = page_hashes
        self.progress = progress
        self.submitted: queue.Queue = queue.Queue()
        self.wake_r, self.wake_w = os.pipe()
        self.stopped: BaseException | None = None  # set from another thread: stop now
        channels = settings.channels
        self.unit_packets = max(1, UNIT_BYTES // settings.packet_bytes)
        self.in_flight = [InFlight() for _ in range(channels)]
        self.recovery = Recovery(channels, "source")
        self.final = FinalRound(image_size, channels, settings.verify)
        self.current: JobStream | None = None
        self.round = 0
        self.rounds_confirmed = 0
        self.waiting_sync: dict[int, SyncMarker] = {}
        self.scans: dict[int, ScanMarker] = {}
        self.next_scan = 0
        self.finishing: FinishMarker | None = None
        self.image_digest = ""
        self.complete: Complete | None = None
        self.complete_sent = 0.0
        self.verdict: Verdict | None = None
        # When the destination's verdict arrived (perf_counter): a live migration's downtime
        # ends there, before our workers stopped.
        self.verified_at: float | None = None

    # -- from other threads ---------------------------------------------------------------

    def submit(self, item: Any) -> None:
        self.submitted.put(item)
        self.wake()

    def stop(self, error: BaseException) -> None:
        self.stopped = error
        self.wake()

    def wake(self) -> None:
        os.write(self.wake_w, b"x")

    def close(self) -> None:
        for fd in (self.wake_r, self.wake_w):
            os.close(fd)

    # -- the thread -----------------------------------------------------------------------

    def run(self) -> None:
        """Until the destination's verdict (the finish marker is done then) or an error."""
        while self.stopped is None:
            events = dict(self.workers.poller(self.wake_r, self.control.socket)
                          .poll(self.control.poll_interval_ms()))
            if self.wake_r in events:
                os.read(self.wake_r, 65536)
            try:
                self.control.handle(events, self.on_control)
                self.workers.handle(events, self.on_worker)
                self.dispatch()
            except ChannelLost as lost:
                self.recover(lost)
            self.resend_complete()
            if self.verdict is not None:
                self.workers.close()
                self.finishing.result = (self.verdict, self.final.counters, self.image_digest)
                self.finishing.done.set()
                return
        raise self.stopped

    def recover(self, lost: ChannelLost) -> None:
        if self.finishing is not None and self.final.done:
            return  # COMPLETE is out: the channels have done their part, only the verdict is due
        try:
            self.recovery.handle(lost, self.restart)
        except EngineError:
            # Giving up: a receiver that failed (its disk full) closes our connections as it
            # says why on the control link; its word is the one the user needs.
            self.hear_out(PEER_WORD_S)
            raise

    def hear_out(self, timeout_s: float) -> None:
        """Take what the receiver says within `timeout_s` (a FAULT raises its error)."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0 and self.control.socket.poll(left * 1000):
            self.on_control(self.control.receive())

    def restart(self, channel: int) -> None:
        """A new worker for `channel`, given everything not acknowledged, in order."""
        self.workers.replace(channel)
        self.workers.gather(jobs.Ready, [channel])
        flight = self.in_flight[channel]
        self.workers.send(channel, jobs.Connect(endpoint=self.endpoints[channel],
                                                first_seq=flight.first_unacked))
        for msg in flight.replay():
            self.workers.send(channel, msg)
        self.final.ask_again(channel, self.workers.send)
        for key, marker in self.scans.items():  # a new worker reports its whole range changed
            self.send_scans(key, marker, channel)

    def dispatch(self) -> None:
        """Hand out units while some channel has room; act on markers in queue order."""
        while self.finishing is None:
            if self.current is None:
                try:
                    item = self.submitted.get_nowait()
                except queue.Empty:
                    return
                if isinstance(item, SyncMarker):
                    for channel, flight in enumerate(self.in_flight):
                        self.workers.send(channel, flight.add_sync(self.round))
                    self.waiting_sync[self.round] = item
                    self.round += 1
                elif isinstance(item, FinishMarker):
                    self.finishing = item
                    self.final.start(self.workers.send)
                elif isinstance(item, ScanMarker):
                    self.start_scan(item)
                else:
                    self.current = item
                continue
            open_channels = [c for c, flight in enumerate(self.in_flight)
                             if len(flight) < UNITS_AHEAD]
            if not open_channels:
                return
            size = min(self.unit_packets, -(-self.current.packets // len(self.in_flight)))
            unit = [job for _, job in zip(range(max(1, size)), self.current.jobs)]
            if not unit:
                self.current = None
                continue
            channel = min(open_channels, key=lambda c: self.in_flight[c].packets)
            job = self.in_flight[channel].add_unit(unit[0][0], [spec for _, spec, _ in unit],
                                                   sum(nbytes for _, _, nbytes in unit))
            self.workers.send(channel, job)

    def on_worker(self, channel: int, msg: Any) -> None:
        if isinstance(msg, jobs.Credit):
            done = self.in_flight[channel].acked(msg.acked)
            if self.progress is not None and (done or msg.bytes):
                self.progress(Acked(done, msg.bytes))
        elif isinstance(msg, jobs.Hashed):
            self.final.answered(channel, msg)
            if self.final.done:
                self.send_complete()
        elif isinstance(msg, jobs.Scanned):
            marker = self.scans.get(msg.scan)
            if marker is None or not 0 <= msg.index < len(marker.result) \
                    or marker.result[msg.index] is not None:
                raise ProtocolError(f"source worker {channel} answered a scan it was not given")
            marker.result[msg.index] = msg.data
            if None not in marker.result:
                del self.scans[msg.scan]
                marker.done.set()
        else:
            raise ProtocolError(f"unexpected {msg.TAG} from source worker {channel}")

    def on_control(self, msg: Any) -> None:
        if msg is None or self.verdict is not None:  # a stray's message; or all is said
            return
        if isinstance(msg, Heartbeat):  # covers a SYNCED lost in a broken connection
            for round_ in sorted(r for r in self.waiting_sync if r < msg.released):
                self.synced(round_)
        elif isinstance(msg, Synced):
            if msg.round not in self.waiting_sync:
                if msg.round < self.rounds_confirmed:
                    return  # already confirmed by a heartbeat
                raise ProtocolError(f"receiver confirmed round {msg.round} that was not synced")
            self.synced(msg.round)
        elif isinstance(msg, Verdict):
            if not msg.ok:
                raise VerificationFailed(f"destination did not verify: {msg.message}")
            self.verified_at = time.perf_counter()
            self.verdict = msg
        elif isinstance(msg, Fault):
            raise peer_error(msg.kind, f"receiver failed: {msg.message}")
        else:
            raise ProtocolError(f"unexpected {msg.TAG} from the receiver")

    def synced(self, round_: int) -> None:
        marker = self.waiting_sync.pop(round_)
        for flight in self.in_flight:
            flight.synced(round_)
        self.rounds_confirmed = round_ + 1
        marker.result = round_
        marker.done.set()

    def start_scan(self, marker: ScanMarker) -> None:
        key, self.next_scan = self.next_scan, self.next_scan + 1
        marker.result = [None] * len(marker.requests)
        self.scans[key] = marker
        self.send_scans(key, marker)

    def send_scans(self, key: int, marker: ScanMarker, only: int | None = None) -> None:
        """Send the unanswered requests of a scan (those for channel `only`, if given)."""
        for index, (channel, spec) in enumerate(marker.requests):
            if marker.result[index] is None and only in (None, channel):
                self.workers.send(channel, jobs.ScanJob(scan=key, index=index,
                                                        kind=marker.kind, spec=spec))

    def send_complete(self) -> None:
        hashes = self.page_hashes()
        unsent = digest.never_sent(hashes)
        if len(unsent):
            raise VerificationFailed(f"{len(unsent)} of {len(hashes)} pages were never sent (the "
                                     f"first: page {unsent[0]}); send every page before "
                                     "finish()")
        self.image_digest = digest.fold_digest(self.image_size, hashes)
        self.complete = Complete(digest=self.image_digest, devices=self.finishing.devices,
                                 rounds=self.rounds_confirmed,
                                 stored=self.final.stored_digest())
        self.resend_complete()

    def resend_complete(self) -> None:
        """(Re-)send COMPLETE: until the verdict comes, once a heartbeat interval, in case
        the control connection broke and lost it (the receiver ignores a repeat)."""
        if self.complete is not None and self.verdict is None:
            if time.monotonic() - self.complete_sent >= HEARTBEAT_S:
                self.control.send(self.complete)
                self.complete_sent = time.monotonic()
