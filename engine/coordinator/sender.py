"""The source coordinator: the `Sender` API that producers submit pages and device state to.

Producers on any thread call send_range / send_pages / send_device / sync / scan; those calls
only queue descriptors. One dispatcher thread (engine/coordinator/dispatcher.py) owns every
socket: it hands units of work to the channels, broadcasts SYNC at the end of a round, and
runs the end of the transfer (digests, COMPLETE, verdict).
"""
from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import zmq
import zstandard

from engine.storage import digest
from engine.wire import jobs
from workers.config import WorkerConfig
from engine.coordinator.control import ControlLink
from engine.coordinator.dispatcher import (Acked, Dispatcher, FinishMarker, JobStream, Marker,
                                           ScanMarker, SyncMarker)
from engine.errors import EngineError, ProtocolError, TransferError, UsageError
from engine.storage.aliases import FileId
from engine.storage.image import parse_location, source_size, stored_bytes
from engine.storage.names import name_problem
from engine.coordinator.partition import chunk_spans, list_packets, range_packets, runs_bytes
from engine.coordinator.processes import WorkerGroup
from engine.wire.protocol import SESSION_BYTES, Fault, Welcome, new_hello
from engine.coordinator.result import TransferResult, transfer_result
from engine.security import ClientKeys
from engine.settings import CONNECT_TIMEOUT_S, PAGE_SIZE, TransferSettings, check_bandwidth
from engine.storage.device_files import check_device_name, device_key



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
                 progress: Callable[[Acked], None] | None = None,
                 keys: ClientKeys | None = None, resume: bool = False,
                 max_bandwidth: int | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT_S, name: str = "") -> None:
        """`progress(acked)`, on the dispatcher thread as units are acknowledged: the image
        bytes they covered (an int) and, as `acked.wire`, what they took on the wire;
        `max_bandwidth`: cap in bytes per second on the wire, shared by all channels;
        `connect_timeout`: how long to wait for the receiver to answer, in seconds;
        `name`: the transfer's name, after which a serving receiver names the destination
        (engine/storage/names.py says which names are good)."""
        problem = name_problem(name) if name else None
        if problem is not None:
            raise UsageError(problem)
        self.name = name
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
        self._lock = threading.Lock()
        self._devices: dict[str, tuple[Path, int, str]] = {}  # key -> path, size, digest
        self._endpoints: list[str] = []
        self._spilled: list[Path] = []
        self._hashes_fd = -1
        self._unsynced = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._dispatcher: Dispatcher | None = None
        self._zmq = zmq.Context()
        self._workers: WorkerGroup | None = None
        self._control: ControlLink | None = None
        self._started = 0.0
        self._closed = False

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
        self._dispatcher = Dispatcher(self._workers, self._control, self._endpoints,
                                      self.settings, self.image_size, self.page_hashes,
                                      self.progress)
        self._thread = threading.Thread(target=self._run, name="multifd-dispatch", daemon=True)
        self._thread.start()

    def _connect(self) -> None:
        self._hashes = self._hash_file()
        template = WorkerConfig(
            side="source", channel=0, control="", coordinator_pid=os.getpid(),
            session=self.session, settings=self.settings, image_path=str(self.location.path),
            image_size=self.image_size, handlers=("ram", "device"), keys=self.keys,
            hashes_path=str(self._hashes),
            pace=self.max_bandwidth / self.settings.channels if self.max_bandwidth else 0.0)
        self._workers = WorkerGroup(self._zmq, template, self.settings.channels)
        self._control = ControlLink.dial(self._zmq, self.endpoint, self.keys,
                                         self.connect_timeout, routing_id=self.session)
        self._control.send(new_hello(self.session, self.image_size, self.settings,
                                     ["ram", "device"], resume=self.resume,
                                     source=FileId.of(self.location.path),
                                     stored_bytes=stored_bytes(self.location.path),
                                     name=self.name))
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
        sent) at first. An anonymous memory file that the workers open by its /proc path:
        it goes away with the last process that has it, so even a killed sender leaves none
        behind (a file in /dev/shm did)."""
        self._hashes_fd = os.memfd_create("multifd-hashes", os.MFD_CLOEXEC)
        os.ftruncate(self._hashes_fd, 8 * self.pages)
        return Path(f"/proc/{os.getpid()}/fd/{self._hashes_fd}")

    def page_hashes(self) -> np.ndarray:
        """The hash of the last copy sent of every page (0: never sent)."""
        data = os.pread(self._hashes_fd, 8 * self.pages, 0)
        return np.frombuffer(data, dtype="<u8", count=self.pages)

    def close(self) -> None:
        """Stop everything; safe to call at any point, also after an error, and twice."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            self._error = self._error or TransferError("the sender stopped before the "
                                                       "transfer completed")
            self._dispatcher.stop(self._error)
            self._thread.join()
        if self._workers is not None:
            self._workers.close()
        if self._control is not None:
            self._control.close()
        self._zmq.destroy(linger=0)
        for path in self._spilled:
            path.unlink(missing_ok=True)
        if self._hashes_fd >= 0:
            os.close(self._hashes_fd)
            self._hashes_fd = -1
        if self._dispatcher is not None:
            self._dispatcher.close()

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
            self._submit(self._ram_jobs(len(wanted),
                                        list_packets(wanted, self.settings.packet_pages)))
        else:
            self._submit(self._ram_jobs(count,
                                        range_packets(start, count, self.settings.packet_pages)))

    def send_pages(self, pages: Iterable[int] | np.ndarray) -> None:
        """Queue a set of page indices (any order, duplicates ignored) for this round."""
        array = np.unique(np.asarray(pages, dtype=np.int64))
        if len(array) and (array[0] < 0 or array[-1] >= self.pages):
            raise UsageError(f"page indices must be from 0 to {self.pages - 1}")
        self._submit(self._ram_jobs(len(array), list_packets(array, self.settings.packet_pages)))

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
        marker = SyncMarker()
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
        marker = ScanMarker(kind=kind, requests=list(requests))
        self._submit(marker)
        self._wait(marker)
        return marker.result

    def finish(self) -> TransferResult:
        """Complete the transfer: final sync, digests, the destination's verdict, stats."""
        if self._missing is not None:
            self._fold_present()
        if self._unsynced or self.rounds == 0:
            self.sync()
        marker = FinishMarker(devices={key: value for key, (_, _, value)
                                        in self._devices.items()})
        self._submit(marker)
        self._wait(marker)
        verdict, counters, image_digest = marker.result
        return transfer_result(
            counters, ok=verdict.ok, bytes=self.image_size,
            seconds=time.perf_counter() - self._started, settings=self.settings,
            rounds=self.rounds, digest=image_digest,
            devices={key: size for key, (_, size, _) in self._devices.items()},
            resumed_pages=self.resumed_pages)

    @property
    def rounds(self) -> int:
        """Rounds the destination has confirmed."""
        return self._dispatcher.rounds_confirmed if self._dispatcher is not None else 0

    @property
    def verified_at(self) -> float | None:
        """When the destination's verdict arrived (perf_counter), before our workers stopped:
        the end of a live migration's downtime."""
        return self._dispatcher.verified_at if self._dispatcher is not None else None

    @property
    def destination_vm(self) -> str:
        """The destination QEMU's run state in the verdict ("" without one: receive --qemu)."""
        verdict = self._dispatcher.verdict if self._dispatcher is not None else None
        return verdict.vm if verdict is not None else ""

    # -- helpers for the submitting threads -----------------------------------------------

    def _ram_jobs(self, pages: int, packets: Iterator[list[list[int]]]) -> JobStream:
        """The stream of RAM packets covering `pages` pages."""
        jobs = (("ram", {"runs": runs}, runs_bytes(runs, self.image_size)) for runs in packets)
        return JobStream(-(-pages // self.settings.packet_pages), jobs)

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

    def _device_jobs(self, name: str, instance: int, path: Path, size: int) -> JobStream:
        """The stream of a device's chunks (those a resumed receiver lacks), one per packet."""
        present = set(self._chunks_present.get(device_key(name, instance), ()))
        chunks = [(index, offset, length, last) for index, offset, length, last
                  in chunk_spans(size, self.settings.chunk_size) if index not in present]
        return JobStream(len(chunks), (
            ("device", {"name": name, "instance": instance, "index": index, "last": last,
                        "path": str(path), "offset": offset, "length": length}, 0)
            for index, offset, length, last in chunks))

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
            if isinstance(item, SyncMarker):
                self._unsynced = False
            elif not isinstance(item, Marker):
                self._unsynced = True
            self._dispatcher.submit(item)

    def _wait(self, marker: Marker) -> None:
        """Until the dispatcher is done with `marker`, or has failed (seen within 50 ms)."""
        while not marker.done.wait(0.05) and self._error is None:
            pass
        if self._error is not None:
            raise self._error

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
