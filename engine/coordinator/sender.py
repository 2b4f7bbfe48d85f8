"""The source coordinator: the `Sender` API that producers submit pages and device state to.

Producers on any thread call send_range / send_pages / send_device / sync / scan; those calls
only queue descriptors. One dispatcher thread owns every socket: it hands each packet-sized
job to the channel with the most free credit (a slow channel is simply given less),
broadcasts SYNC at the end of a round, and runs the end of the transfer (digest, COMPLETE,
verdict).
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import zmq
import zstandard

from engine.storage import digest
from engine.wire import jobs
from workers.config import WorkerConfig
from engine.coordinator.control import HEARTBEAT_S, ControlLink
from engine.errors import EngineError, ProtocolError, TransferError, UsageError, \
    VerificationFailed, peer_error
from engine.storage.aliases import FileId
from engine.storage.image import parse_location, source_size, stored_bytes
from engine.coordinator.pacing import Pacer
from engine.coordinator.partition import chunk_spans, list_packets, range_packets, runs_bytes
from engine.coordinator.inflight import InFlight
from engine.coordinator.processes import ChannelLost, Recovery, WorkerGroup
from engine.wire.protocol import (SESSION_BYTES, Complete, Fault, Heartbeat, Synced, Verdict, Welcome,
                             new_hello)
from engine.coordinator.result import TransferResult, per_channel, total
from engine.security import ClientKeys
from engine.settings import CONNECT_TIMEOUT_S, PAGE_SIZE, TransferSettings, check_bandwidth
from engine.storage.device_files import check_device_name, device_key



@dataclass
class _Marker:
    """A point in the submission queue that the caller waits on (end of round, finish)."""

    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None


class _SyncMarker(_Marker):
    pass


@dataclass
class _FinishMarker(_Marker):
    devices: dict[str, str] = field(default_factory=dict)


@dataclass
class _ScanMarker(_Marker):
    kind: str = ""
    requests: list[tuple[int, dict[str, Any]]] = field(default_factory=list)


# Pages per request when a resumed sender hashes what the receiver has (64K pages: 256 MiB).
_FOLD_PAGES = 1 << 16


def check_device(name: str, state: Any) -> Path | None:
    """UsageError unless `state` can be sent as device `name`: a good name, and bytes or a
    readable file (whose path is returned; None for bytes)."""
    check_device_name(name)
    if isinstance(state, (bytes, bytearray, memoryview)):
        return None
    path = Path(state)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise UsageError(f"device {name}: {path} is not a readable file")
    return path


class Sender:
    """Sends one image (and device state) to a Receiver over `settings.channels` channels.

    Use as a context manager; `start()` connects, `finish()` verifies and returns the result.
    With `keys`, the control and every data channel are encrypted and authenticated (CURVE).
    Thread safety: every send_* method and sync() may be called from any thread; sync() and
    finish() wait for the destination, so call each from one thread at a time.

    Raises, all `engine.EngineError`s: UsageError from the constructor and the send_*
    methods for bad arguments (an unreadable source or device file, pages outside the
    image); from start(): PeerLost when no receiver answers within `connect_timeout`,
    AuthenticationFailed when keys do not match, DestinationRefused when the receiver
    refuses the destination (it exists, is full, holds an interrupted copy: pass `resume`);
    from any later call: the TransferError that ended the transfer (the first one, on every
    thread), VerificationFailed from finish() when the destination differs from the source.
    """

    def __init__(self, source: str, to: str, settings: TransferSettings = TransferSettings(),
                 progress: Callable[[int], None] | None = None,
                 keys: ClientKeys | None = None, resume: bool = False,
                 max_bandwidth: int | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        """`max_bandwidth`: cap in bytes per second on the wire, shared by all channels;
        `connect_timeout`: how long to wait for the receiver to answer, in seconds."""
        self.max_bandwidth = None if max_bandwidth is None else check_bandwidth(max_bandwidth)
        if not connect_timeout > 0:
            raise UsageError(f"the connect timeout must be above zero, not {connect_timeout}")
        self.connect_timeout = connect_timeout
        self.location = parse_location(source)
        # Resuming: the receiver says what it has (pages, device chunks); sends skip that.
        self.resume = resume
        self._missing: np.ndarray | None = None
        self._chunks_present: dict[str, list[int]] = {}
        self.resumed_pages = 0  # pages the receiver had already: not sent, not in the rates
        self.image_size = source_size(self.location)
        self.endpoint = to
        self.settings = settings
        self.progress = progress
        self.keys = keys
        self.pages = (self.image_size + PAGE_SIZE - 1) // PAGE_SIZE
        self.session = os.urandom(SESSION_BYTES)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._devices: dict[str, tuple[Path, int, str]] = {}  # key -> path, size, digest
        self._endpoints: list[str] = []
        self._spilled: list[Path] = []
        self._unsynced = False
        self._rounds = 0
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._dispatcher: _Dispatcher | None = None
        self._zmq = zmq.Context()
        self._workers: WorkerGroup | None = None
        self._control: ControlLink | None = None
        self._wake_r, self._wake_w = os.pipe()
        self._started = 0.0
        self._closed = False
        # When the destination's verdict arrived (perf_counter), before our workers stopped:
        # the end of a live migration's downtime.
        self.verified_at: float | None = None
        # The destination QEMU's run state in the verdict ("" without one: receive --qemu).
        self.destination_vm = ""

    # -- life cycle -----------------------------------------------------------------------

    def __enter__(self) -> "Sender":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        """Start the workers, greet the receiver, connect every channel."""
        self._started = time.perf_counter()
        try:
            self._connect()
        except BaseException as exc:
            if self._control is not None:  # tell the receiver rather than let it time out
                try:
                    self._control.send(Fault(message=f"sender failed to start: {exc}",
                                             kind=type(exc).__name__))
                except EngineError:
                    pass
            self.close()  # __exit__ does not run when __enter__ raises
            raise
        self._dispatcher = _Dispatcher(self)
        self._thread = threading.Thread(target=self._run, name="multifd-dispatch", daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        self._hashes = self._hash_file()
        template = WorkerConfig(
            side="source", channel=0, control="", coordinator_pid=os.getpid(),
            session=self.session, settings=self.settings, image_path=str(self.location.path),
            image_size=self.image_size, handlers=("ram", "device"), keys=self.keys,
            hashes_path=str(self._hashes))
        self._workers = WorkerGroup(self._zmq, template, self.settings.channels)
        self._control = ControlLink.dial(self._zmq, self.endpoint, self.keys,
                                         self.connect_timeout, routing_id=self.session)
        self._control.send(new_hello(self.session, self.image_size, self.settings,
                                     ["ram", "device"], resume=self.resume,
                                     source=FileId.of(self.location.path),
                                     stored_bytes=stored_bytes(self.location.path)))
        welcome = self._control.expect(Welcome, self.connect_timeout)
        if self.resume:
            self._take_inventory(welcome)
        if welcome.session != self.session or len(welcome.ports) != self.settings.channels:
            raise ProtocolError("receiver's WELCOME does not match our HELLO")
        self._workers.gather(jobs.Ready)
        for channel, port in enumerate(welcome.ports):
            if not 0 < port < 65536:
                raise ProtocolError(f"receiver announced port {port} for channel {channel}")
            self._endpoints.append(self._control.dial_port(port))
            self._workers.send(channel, jobs.Connect(endpoint=self._endpoints[channel],
                                                     first_seq=0))

    def _hash_file(self) -> Path:
        """The folded page hashes the source workers share: 8 bytes per page, all 0 (never
        sent) at first; in shared memory where there is some, removed on close."""
        folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
        fd, name = tempfile.mkstemp(prefix="multifd-hashes-", dir=folder)
        self._spilled.append(Path(name))
        try:
            os.ftruncate(fd, 8 * self.pages)
        finally:
            os.close(fd)
        return Path(name)

    def page_hashes(self) -> np.ndarray:
        """The hash of the last copy sent of every page (0: never sent)."""
        return np.fromfile(self._hashes, dtype="<u8", count=self.pages)

    def close(self) -> None:
        """Stop everything; safe to call at any point, also after an error, and twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._error = self._error or TransferError("the sender stopped before the "
                                                       "transfer completed")
            os.write(self._wake_w, b"x")
            self._thread.join()
        if self._workers is not None:
            self._workers.close()
        if self._control is not None:
            self._control.close()
        self._zmq.destroy(linger=0)
        for path in self._spilled:
            path.unlink(missing_ok=True)
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # -- submission (any thread) ----------------------------------------------------------

    def send_range(self, start: int = 0, count: int | None = None) -> None:
        """Queue pages [start, start + count) (default: the whole image) for this round;
        when resuming, only those the receiver does not have yet."""
        count = self.pages - start if count is None else count
        if start < 0 or count < 0 or start + count > self.pages:
            raise UsageError(f"pages [{start}, {start + count}) are outside the image of "
                             f"{self.pages} pages")
        if self._missing is not None:
            wanted = np.flatnonzero(self._missing[start:start + count]) + start
            self._submit(self._ram_jobs(list_packets(wanted, self.settings.packet_pages)))
        else:
            self._submit(self._ram_jobs(range_packets(start, count, self.settings.packet_pages)))

    def send_pages(self, pages: Iterable[int] | np.ndarray) -> None:
        """Queue a set of page indices (any order, duplicates ignored) for this round."""
        array = np.unique(np.asarray(pages, dtype=np.int64))
        if len(array) and (array[0] < 0 or array[-1] >= self.pages):
            raise UsageError(f"page indices must be from 0 to {self.pages - 1}")
        self._submit(self._ram_jobs(list_packets(array, self.settings.packet_pages)))

    def send_device(self, name: str, state: bytes | bytearray | memoryview | str | os.PathLike,
                    instance: int = 0) -> None:
        """Queue one device's state: bytes (spilled to a temporary file) or a file's path."""
        check_device(name, state)
        key = device_key(name, instance)
        path = self._device_file(key, state)
        size = path.stat().st_size
        with self._lock:
            if key in self._devices:
                raise UsageError(f"device {key} was already sent")
            self._devices[key] = (path, size,
                                  digest.device_digest_of_file(path, self.settings.chunk_size))
        self._submit(self._device_jobs(name, instance, path, size))

    def sync(self) -> int:
        """End the round: wait until the destination has applied everything queued before."""
        marker = _SyncMarker()
        self._submit(marker)
        self._wait(marker)
        return marker.result

    def scan(self, kind: str, requests: Sequence[tuple[int, dict[str, Any]]]
             ) -> list[dict[str, Any]]:
        """Have source workers inspect the image through handler `kind` (PayloadHandler.scan).

        Request i is a (channel, spec) pair; it runs on that channel's worker after everything
        queued before it. Returns the answers in request order. Live migration finds dirty
        pages this way (engine/live/dirty.py).
        """
        for channel, _ in requests:
            if not 0 <= channel < self.settings.channels:
                raise UsageError(f"channel {channel} does not exist")
        if not requests:
            return []
        marker = _ScanMarker(kind=kind, requests=list(requests))
        self._submit(marker)
        self._wait(marker)
        return marker.result

    def finish(self) -> TransferResult:
        """Complete the transfer: final sync, digests, the destination's verdict, stats."""
        if self._missing is not None:
            self._fold_present()
        if self._unsynced or self._rounds == 0:
            self.sync()
        marker = _FinishMarker(devices={key: value for key, (_, _, value)
                                        in self._devices.items()})
        self._submit(marker)
        self._wait(marker)
        verdict, stats, image_digest = marker.result
        return TransferResult(
            ok=verdict.ok, bytes=self.image_size, seconds=time.perf_counter() - self._started,
            wire_bytes=total(stats, "bytes"), normal_pages=total(stats, "normal_pages"),
            zero_pages=total(stats, "zero_pages"), channels=self.settings.channels,
            compress=self.settings.compress, rounds=self._rounds, digest=image_digest,
            devices={key: size for key, (_, size, _) in self._devices.items()},
            per_channel=per_channel(stats), resumed_pages=self.resumed_pages)

    # -- helpers for the submitting threads -----------------------------------------------

    def _ram_jobs(self, packets: Iterator[list[list[int]]]) -> Iterator[tuple]:
        for runs in packets:
            yield "ram", {"runs": runs}, runs_bytes(runs, self.image_size)

    def _take_inventory(self, welcome: Welcome) -> None:
        """What a resumed receiver already has: a zstd'ed bit per page, chunks per device."""
        try:
            bits = zstandard.ZstdDecompressor().decompress(welcome.missing,
                                                           max_output_size=self.pages // 8 + 1)
        except zstandard.ZstdError:
            raise ProtocolError("receiver's list of missing pages does not decode") from None
        if len(bits) != (self.pages + 7) // 8:
            raise ProtocolError("receiver's list of missing pages has the wrong length")
        self._missing = np.unpackbits(np.frombuffer(bits, np.uint8), count=self.pages) \
            .astype(bool)
        self.resumed_pages = self.pages - int(self._missing.sum())
        self._chunks_present = welcome.chunks or {}

    def _fold_present(self) -> None:
        """Hash the pages a resumed receiver already has, as if they had been sent now: if the
        source changed since the interrupted run, verification says so."""
        present = np.flatnonzero(~self._missing)
        stretches = np.split(present, np.flatnonzero(np.diff(present) != 1) + 1)
        requests = []
        for stretch in (s for s in stretches if len(s)):
            for first in range(int(stretch[0]), int(stretch[-1]) + 1, _FOLD_PAGES):
                count = min(_FOLD_PAGES, int(stretch[-1]) + 1 - first)
                requests.append((len(requests) % self.settings.channels,
                                 {"start": first, "count": count, "fold": True}))
        self.scan("ram", requests)
        self._missing = None

    def _device_jobs(self, name: str, instance: int, path: Path, size: int) -> Iterator[tuple]:
        present = set(self._chunks_present.get(device_key(name, instance), ()))
        for index, offset, length, last in chunk_spans(size, self.settings.chunk_size):
            if index in present:
                continue
            yield "device", {"name": name, "instance": instance, "index": index, "last": last,
                             "path": str(path), "offset": offset, "length": length}, 0

    def _device_file(self, key: str, state: Any) -> Path:
        if isinstance(state, (bytes, bytearray, memoryview)):
            fd, name = tempfile.mkstemp(prefix=f"multifd-{key}-",
                                        dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
            with os.fdopen(fd, "wb") as f:
                f.write(state)
            self._spilled.append(Path(name))
            return Path(name)
        return Path(state)

    def _submit(self, item: Any) -> None:
        """Queue a job stream or a marker; a job stream leaves the round unsynced."""
        if self._thread is None:
            raise UsageError("start() the Sender before submitting work")
        if self._error is not None:
            raise self._error
        with self._lock:
            if isinstance(item, _SyncMarker):
                self._unsynced = False
            elif not isinstance(item, _Marker):
                self._unsynced = True
            self._queue.put(item)
        os.write(self._wake_w, b"x")

    def _wait(self, marker: _Marker) -> None:
        """Until the dispatcher is done with `marker`, or has failed (seen within 50 ms)."""
        while not marker.done.wait(0.05) and self._error is None:
            pass
        if self._error is not None:
            raise self._error

    # -- the dispatcher thread ------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._dispatcher.run()
        except BaseException as exc:  # every error ends the transfer; waiters see the first
            if self._error is None:
                self._error = exc if isinstance(exc, EngineError) else TransferError(
                    f"internal error: {type(exc).__name__}: {exc}")
            try:
                self._control.send(Fault(message=str(self._error),
                                         kind=type(self._error).__name__))
            except EngineError:
                pass  # the receiver is gone already


class _Dispatcher:
    """The dispatcher thread's state: credits, what each channel has in flight, markers."""

    def __init__(self, sender: Sender) -> None:
        self.s = sender
        channels = sender.settings.channels
        self.in_flight = [InFlight() for _ in range(channels)]
        self.recovery = Recovery(channels, "source")
        self.current: Iterator[tuple] | None = None
        self.round = 0
        self.waiting_sync: dict[int, _SyncMarker] = {}
        self.scans: dict[int, _ScanMarker] = {}
        self.next_scan = 0
        self.finishing: _FinishMarker | None = None
        self.hash_plan: dict[int, list[int]] = {}
        self.hashes: dict[int, bytes] = {}
        self.counters: list[dict[str, float]] = [{} for _ in range(channels)]
        self.image_digest = ""
        self.verdict: Verdict | None = None
        self.complete: Complete | None = None
        self.complete_sent = 0.0
        self.pacer = Pacer(sender.max_bandwidth, channels) if sender.max_bandwidth else None

    def run(self) -> None:
        s = self.s
        while s._error is None:
            wait_ms = s._control.poll_interval_ms()
            if self.pacer is not None and self.current is not None:
                wait_ms = min(wait_ms, int(self.pacer.delay_s() * 1000) + 1)
            events = dict(s._workers.poller(s._wake_r, s._control.socket).poll(wait_ms))
            if s._wake_r in events:
                os.read(s._wake_r, 65536)
            try:
                self.on_events(events)
                self.dispatch()
            except ChannelLost as lost:
                self.recover(lost)
            self.resend_complete()
            if self.verdict is not None:
                s._workers.close()
                self.finishing.result = (self.verdict, self.counters, self.image_digest)
                self.finishing.done.set()
                return
        raise s._error

    def on_events(self, events: dict) -> None:
        self.s._control.handle(events, self.on_control)
        self.s._workers.handle(events, self.on_worker)

    def recover(self, lost: ChannelLost) -> None:
        if self.finishing is not None and all(self.counters):
            return  # COMPLETE is out: the channels have done their part, only the verdict is due
        self.recovery.handle(lost, self.restart)

    def restart(self, channel: int) -> None:
        """A new worker for `channel`, given everything not acknowledged, in order."""
        workers = self.s._workers
        workers.replace(channel)
        workers.gather(jobs.Ready, [channel])
        flight = self.in_flight[channel]
        workers.send(channel, jobs.Connect(endpoint=self.s._endpoints[channel],
                                           first_seq=flight.first_unacked))
        for msg in flight.replay():
            workers.send(channel, msg)
        if self.hash_plan and not self.counters[channel]:
            workers.send(channel, jobs.HashJob(segments=self.hash_plan[channel]))
        for key, marker in self.scans.items():  # a new worker reports its whole range changed
            self.send_scans(key, marker, channel)

    def dispatch(self) -> None:
        s = self.s
        window = s.settings.window
        while self.finishing is None:
            if self.current is None:
                try:
                    item = s._queue.get_nowait()
                except queue.Empty:
                    return
                if isinstance(item, _SyncMarker):
                    for channel, flight in enumerate(self.in_flight):
                        s._workers.send(channel, flight.add_sync(self.round))
                    self.waiting_sync[self.round] = item
                    self.round += 1
                elif isinstance(item, _FinishMarker):
                    self.start_finish(item)
                elif isinstance(item, _ScanMarker):
                    self.start_scan(item)
                else:
                    self.current = item
                continue
            channel = min(range(len(self.in_flight)), key=lambda c: len(self.in_flight[c]))
            if len(self.in_flight[channel]) >= window:
                return
            if self.pacer is not None and self.pacer.delay_s() > 0:
                return
            job = next(self.current, None)
            if job is None:
                self.current = None
                continue
            s._workers.send(channel, self.in_flight[channel].add_job(*job))
            if self.pacer is not None:
                self.pacer.dispatched(channel, job[2])

    def on_worker(self, channel: int, msg: Any) -> None:
        if isinstance(msg, jobs.Credit):
            flight = self.in_flight[channel]
            before = len(flight)
            done = flight.acked(msg.acked)
            if self.pacer is not None and len(flight) < before:
                self.pacer.acknowledged(channel, before - len(flight), done, msg.bytes)
            if self.s.progress is not None and done:
                self.s.progress(done)
        elif isinstance(msg, jobs.Hashed):
            self.hashes.update(zip(msg.segments, msg.digests))
            self.counters[channel] = msg.counters
            if all(self.counters):
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
                if msg.round < self.s._rounds:
                    return  # already confirmed by a heartbeat
                raise ProtocolError(f"receiver confirmed round {msg.round} that was not synced")
            self.synced(msg.round)
        elif isinstance(msg, Verdict):
            if not msg.ok:
                raise VerificationFailed(f"destination did not verify: {msg.message}")
            self.s.verified_at = time.perf_counter()
            self.s.destination_vm = msg.vm
            self.verdict = msg
        elif isinstance(msg, Fault):
            raise peer_error(msg.kind, f"receiver failed: {msg.message}")
        else:
            raise ProtocolError(f"unexpected {msg.TAG} from the receiver")

    def synced(self, round_: int) -> None:
        marker = self.waiting_sync.pop(round_)
        for flight in self.in_flight:
            flight.synced(round_)
        self.s._rounds = round_ + 1
        marker.result = round_
        marker.done.set()

    def start_scan(self, marker: _ScanMarker) -> None:
        key, self.next_scan = self.next_scan, self.next_scan + 1
        marker.result = [None] * len(marker.requests)
        self.scans[key] = marker
        self.send_scans(key, marker)

    def send_scans(self, key: int, marker: _ScanMarker, only: int | None = None) -> None:
        """Send the unanswered requests of a scan (those for channel `only`, if given)."""
        for index, (channel, spec) in enumerate(marker.requests):
            if marker.result[index] is None and only in (None, channel):
                self.s._workers.send(channel, jobs.ScanJob(scan=key, index=index,
                                                           kind=marker.kind, spec=spec))

    def start_finish(self, marker: _FinishMarker) -> None:
        self.finishing = marker
        channels = len(self.in_flight)
        self.hash_plan = digest.plan(self.s.image_size, channels) \
            if self.s.settings.verify == "reread" else {channel: [] for channel in range(channels)}
        for channel, segments in self.hash_plan.items():
            self.s._workers.send(channel, jobs.HashJob(segments=segments))

    def send_complete(self) -> None:
        hashes = self.s.page_hashes()
        unsent = digest.never_sent(hashes)
        if len(unsent):
            raise VerificationFailed(f"{len(unsent)} of {len(hashes)} pages were never sent (the "
                                     f"first: page {unsent[0]}); send every page before "
                                     "finish()")
        self.image_digest = digest.fold_digest(self.s.image_size, hashes)
        stored = digest.combine(self.s.image_size, (self.hashes[i] for i in sorted(self.hashes))) \
            if self.hashes else ""
        self.complete = Complete(digest=self.image_digest, devices=self.finishing.devices,
                                 rounds=self.s._rounds, stored=stored)
        self.resend_complete()

    def resend_complete(self) -> None:
        """(Re-)send COMPLETE: until the verdict comes, once a heartbeat interval, in case
        the control connection broke and lost it (the receiver ignores a repeat)."""
        if self.complete is not None and self.verdict is None:
            if time.monotonic() - self.complete_sent >= HEARTBEAT_S:
                self.s._control.send(self.complete)
                self.complete_sent = time.monotonic()
