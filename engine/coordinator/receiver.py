"""The destination coordinator: the `Receiver` that serves one transfer.

It answers HELLO by creating the image beside its final name, starting one worker per
channel (each binds its own data port) and announcing the ports. During the transfer it
runs the SYNC barrier and loads device state in order. On COMPLETE it has its workers hash
the image, compares every digest with the source's, and only then renames the image to its
final name and answers with its verdict.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import zmq
import zstandard

from engine.storage import digest
from engine.wire import jobs
from workers.config import WorkerConfig
from engine.coordinator.barrier import SyncBarrier
from engine.coordinator.control import ControlLink
from engine.coordinator.assembly import CallbackSink, DeviceAssembler, DirectorySink
from engine.wire.endpoint import parse_endpoint
from engine.errors import (DestinationRefused, EngineError, PeerLost, ProtocolError,
                           TransferError, UsageError, VerificationFailed, peer_error)
from engine.wire.framing import decode
from engine.storage.aliases import destination_writes, refuse_aliases
from engine.storage.device_files import check_device_folder
from engine.storage.image import (check_destination, check_free_space, check_not_interrupted,
                                  create_partial, parse_location)
from engine.storage.journal import AppliedCount, Journal
from engine.storage.names import DestinationTemplate
from engine.log import detail, warn
from engine.coordinator.processes import (ChannelLost, Recovery, WorkerGroup, check_codecs,
                                          handler_names)
from engine.qemu.migration import QEMU_DEVICE, QemuSink, open_destination
from engine.wire.protocol import (Complete, Fault, Heartbeat, Hello, Synced, Verdict, Welcome,
                             check_hello)
from engine.coordinator.final_round import FinalRound
from engine.coordinator.result import TransferResult, transfer_result
from engine.security import ServerKeys
from engine.settings import MAX_CHANNELS, PAGE_SIZE

# How often a receiver reads its journal's page states for `progress`.
PROGRESS_S = 1.0
# The longest single wait for a HELLO: a signal (SIGTERM) that the kernel hands to one of
# zmq's threads does not interrupt the main thread's poll, so its handler runs only once
# that poll returns (a receiver waiting for ever ignored `systemctl stop` now and then).
WAIT_SLICE_S = 0.5


@dataclass(frozen=True)
class Arrival:
    """What the destination has so far: destination workers send their coordinator nothing
    per packet, so this is read from the journal's page states (pages applied, resumed ones
    included) and the barrier (rounds released). The wire bytes are only known at the end."""

    phase: str  # "receiving", then "verifying" once COMPLETE arrived
    round: int
    image_bytes: int
    image_size: int


@dataclass(frozen=True)
class Peer:
    """The sender of the transfer a Receiver serves (or served last), for its log."""

    name: str  # what it announced (send --name), "" if nothing
    destination: str  # where its image goes
    key: str  # its CURVE public key (Z85), "" without keys


class Receiver:
    """Receives one transfer into `destination` ("PATH" or "shm:NAME").

    Device state goes to `device_dir` (one file per device), or chunk by chunk, in order, to
    `on_device(key, index, data, last)`. Use as a context manager; `run()` blocks until the
    transfer verified (returns the result) or failed (raises).
    With `keys`, only senders holding an allowed key get in, and every channel is encrypted
    (CURVE); a refused sender is reported on stderr and `run()` keeps waiting for another.
    `data_ports` pins the data ports (channel i listens on data_ports + i) for firewalls.
    `qemu`: the QMP socket of a QEMU waiting with `-incoming defer` whose RAM file is
    `destination`; the image is written in place and, once verified, the device state the
    sender sent as device `qemu` is loaded there and the guest runs. A transfer that fails
    never starts it: that QEMU is left waiting, as it was.
    `progress(arrival)` is called on run()'s thread about once a second during a transfer.
    A `DestinationTemplate` as `destination` serves one transfer after another (call run()
    again): each goes to the template with the name its sender announced, and a sender
    without a good name is refused (run() waits on for another). `peer` names the sender of
    the current (or last) transfer; `on_refused(reason, key)` hears of each sender refused,
    its key too if it has one (a refused key: on the authenticator's thread).
    """

    def __init__(self, destination: str | DestinationTemplate,
                 listen: str = "tcp://127.0.0.1:0", *,
                 device_dir: str | os.PathLike | None = None,
                 on_device: Callable[[str, int, bytes, bool], None] | None = None,
                 force: bool = False, keys: ServerKeys | None = None,
                 data_ports: int = 0, qemu: str | None = None,
                 progress: Callable[[Arrival], None] | None = None,
                 on_refused: Callable[[str, str], None] | None = None) -> None:
        self.progress = progress
        self.on_refused = on_refused
        self.peer: Peer | None = None
        self.template = destination if isinstance(destination, DestinationTemplate) else None
        if self.template is not None and (qemu is not None or device_dir is not None):
            raise UsageError("a receiver that serves a destination template writes each "
                             "transfer's devices beside it (DEST.devices), and no QEMU")
        # Each transfer's own with a template: set as its HELLO arrives.
        self.location = None if self.template else parse_location(destination)
        # With a destination QEMU, DEST is its RAM file: written in place (QEMU has it
        # mapped: a renamed-over file would leave the guest on the old one).
        self.vm = None
        if qemu is not None:
            self.vm = open_destination(qemu, self.location.path)
        elif self.location is not None:
            check_destination(self.location, force)
        self.force = force
        self.device_dir = Path(device_dir) if device_dir else None
        self.on_device = on_device
        if self.location is not None and self._device_folder() is not None:
            check_device_folder(self._device_folder())
        endpoint = parse_endpoint(listen, allow_any_port=True)
        check_data_ports(data_ports, endpoint.port)
        self.keys = keys
        self.data_ports = data_ports
        self._zmq = zmq.Context()
        self._authenticator = None
        if keys is not None:  # before any socket binds
            self._authenticator = keys.start_authenticator(
                self._zmq, "refused a sender whose key is not allowed (--allow); still listening",
                lambda key: self._refused("its key is not allowed (--allow)", key))
        try:
            self._socket, self.endpoint = ControlLink.listen(self._zmq, endpoint, keys)
        except UsageError:
            self._close_zmq()
            raise
        self._workers: WorkerGroup | None = None
        self._temporary: list[Path] = []  # removed at the end, whatever happens
        self._partial: Path | None = None
        self._journal: Journal | None = None
        self._assembler: DeviceAssembler | None = None
        self._owned_device_dir: Path | None = None
        self._qemu_sink: QemuSink | None = None
        self.vm_state = ""  # the destination QEMU's run state once the transfer verified
        self.resumed_pages = 0  # pages a resumed transfer found here already

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def run(self, timeout_s: float | None = None) -> TransferResult:
        """Wait for one sender (up to `timeout_s`, forever if None) and serve its transfer."""
        try:
            return self._run(timeout_s)
        finally:
            self._end_transfer()  # a template's next transfer starts afresh

    def _run(self, timeout_s: float | None) -> TransferResult:
        self.peer = None
        hello, identity = self._wait_for_hello(timeout_s)
        link = ControlLink(self._socket, self.endpoint, identity)
        try:
            try:
                return self._serve(hello, link)
            except OSError as exc:  # the journal or a device file, on a full disk
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                where = exc.filename or self.location.path
                raise TransferError(f"the destination is full ({where})") from None
        except EngineError as exc:
            if self.vm is not None and not (self._qemu_sink and self._qemu_sink.loading):
                exc = type(exc)(f"{exc}; the destination QEMU was not started: it still "
                                "waits for an incoming migration, as it was")
            self._fault(link, exc)
            raise exc from None
        except BaseException as exc:
            self._fault(link, exc)
            raise

    @staticmethod
    def _fault(link: ControlLink, exc: BaseException) -> None:
        """Tell the sender why we stop (best effort: it may be gone)."""
        if isinstance(exc, EngineError):
            reason = str(exc)
        elif isinstance(exc, KeyboardInterrupt):
            reason = "receiver interrupted"
        else:
            reason = f"internal error: {type(exc).__name__}: {exc}"
        try:
            link.send(Fault(message=reason, kind=type(exc).__name__))
        except EngineError:
            pass

    def close(self) -> None:
        """Stop the workers and clean up. After a failure a file destination stays as
        NAME.partial (never under its final name); shared memory is removed."""
        self._end_transfer()
        if self.vm is not None:
            self.vm.close()  # QEMU runs on (or waits on), with its capabilities as they were
        self._close_zmq()

    def _end_transfer(self) -> None:
        """Stop the transfer's workers and clean up after it (safe to call again)."""
        if self._workers is not None:
            self._workers.close()
        for path in self._temporary:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        location = self.location
        if location is not None and location.shared_memory and self.vm is None:
            for path in (self._partial, self._journal and self._journal.path):
                if path is not None:  # not kept for a resume that may not come
                    path.unlink(missing_ok=True)
        if self._assembler is not None:
            self._assembler.discard()
        folder = self._owned_device_dir
        if folder is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        self._workers, self._temporary, self._partial, self._journal = None, [], None, None
        self._assembler, self._owned_device_dir, self._qemu_sink = None, None, None
        self.resumed_pages = 0
        if self.template is not None:
            self.location = None

    def _close_zmq(self) -> None:
        if self._authenticator is not None:  # its thread owns sockets of our context
            self._authenticator.stop()
        self._zmq.destroy(linger=0)

    # -- one transfer ---------------------------------------------------------------------

    def _wait_for_hello(self, timeout_s: float | None) -> tuple[Hello, bytes]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            left = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise PeerLost(f"no sender connected to {self.endpoint} within {timeout_s} s")
            if not self._socket.poll(1000 * min(left, WAIT_SLICE_S)):
                continue
            frames = self._socket.recv_multipart(copy=False)
            key = _user_id(frames[-1]) if self.keys is not None else ""
            try:
                if len(frames) != 2:
                    raise ProtocolError("HELLO must be a single frame")
                hello = decode(frames[1].bytes, Hello, Fault)
                if isinstance(hello, Fault):  # a sender we refused, saying it gives up
                    detail(f"a sender gave up: {hello.message[:200]}")
                    continue
                check_hello(hello, handler_names(), check_codecs)
                self._aim(hello)
                self.peer = Peer(name=hello.name, destination=self.location.text, key=key)
                return hello, frames[0].bytes
            except ProtocolError as exc:
                # A bad HELLO is refused without ending the wait: it may be a stranger's.
                warn(f"refused a sender's HELLO: {exc}; still listening")
                self._refused(str(exc), key)
                ControlLink(self._socket, self.endpoint, frames[0].bytes).send(
                    Fault(message=f"expected HELLO: {exc}"))

    def _aim(self, hello: Hello) -> None:
        """With a template: this transfer's destination, from the name its sender gave."""
        if self.template is None:
            return
        if not hello.name:
            raise ProtocolError("this receiver names each transfer's destination after the "
                                "sender's name: send with --name NAME")
        try:
            self.location = parse_location(self.template.resolve(hello.name))
        except (ValueError, UsageError) as exc:
            raise ProtocolError(str(exc)) from None

    def _refused(self, reason: str, key: str) -> None:
        if self.on_refused is not None:
            self.on_refused(reason, key)

    def _serve(self, hello: Hello, link: ControlLink) -> TransferResult:
        started = time.perf_counter()
        settings = hello.settings()  # checked by _wait_for_hello
        size = hello.image_size
        detail(f"a sender connected: {size:,} bytes over {settings.channels} channels, "
               f"compress {settings.compress}{', resuming' if hello.resume else ''}")
        # Nothing exists yet: refuse to write the source, or a place too small, first.
        sources = {"the sender's source image": hello.source_id()}
        refuse_aliases(sources, destination_writes(self.location, self._device_folder()))
        in_place = self.vm is not None
        if not in_place:  # again: the destination may have changed while we waited
            check_destination(self.location, self.force)
            check_not_interrupted(self.location, hello.resume, self.force,
                                  "send with --resume to continue it, or start this receiver "
                                  "with --force to start over")
        if self._device_folder() is not None:
            check_device_folder(self._device_folder())
        if in_place and size != self.vm.backend.size:
            raise DestinationRefused(f"the sender's image has {size} bytes, the destination "
                                     f"QEMU's RAM {self.vm.backend.size}")
        already = self.location.path if in_place else (
            self.location.partial_path if hello.resume else None)
        check_free_space(self.location, size, hello.stored_bytes, already)
        journal_path = self.location.journal_path
        if hello.resume:
            partial = self.location.path if in_place else self.location.partial_path
            if self.on_device is not None or not partial.is_file() \
                    or partial.stat().st_size != size:
                raise ProtocolError(self._nothing_to_resume(size))
            journal = Journal.resume(journal_path, size, settings.chunk_size)
            self.resumed_pages = journal.pages - len(journal.missing_pages())
        else:
            partial = self.location.path if in_place else create_partial(self.location, size)
            if not in_place:
                self._partial = partial
            try:
                journal = Journal.create(journal_path, size, settings.chunk_size,
                                         holds_data=partial if in_place else None)
            except OSError as exc:
                raise DestinationRefused(f"cannot create {exc.filename}: {exc.strerror}") \
                    from None
        self._journal = journal
        if not in_place:
            self._partial = partial
        staging = self._staging_dir()
        sink = CallbackSink(self.on_device) if self.on_device else DirectorySink(
            staging, self.force, sources)
        if in_place:
            sink = self._qemu_sink = QemuSink(self.vm, sink)
        self._assembler = assembler = DeviceAssembler(staging, settings.chunk_size, sink)
        welcome = Welcome(session=hello.session, ports=[])
        if hello.resume:
            for chunk in journal.chunks():
                assembler.add(**chunk)
            missing = np.zeros(journal.pages, dtype=bool)
            missing[journal.missing_pages()] = True
            welcome = Welcome(session=hello.session, ports=[],
                              missing=zstandard.compress(np.packbits(missing).tobytes()),
                              chunks=assembler.received())
        template = WorkerConfig(
            side="destination", channel=0, control="", coordinator_pid=os.getpid(),
            session=hello.session, settings=settings, image_path=str(partial), image_size=size,
            handlers=tuple(hello.handlers), listen_host=self.endpoint.host,
            journal_path=str(journal.path), device_dir=str(staging),
            hashes_path=str(journal.path), hashes_offset=journal.hashes_at,
            keys=self.keys, data_ports=self.data_ports)
        self._workers = workers = WorkerGroup(self._zmq, template, settings.channels)
        ports = [int(bound.endpoint.rsplit(":", 1)[1])
                 for _, bound in sorted(workers.gather(jobs.Bound).items())]
        for channel, port in enumerate(ports):
            detail(f"channel {channel}: destination worker listening on port {port}")
        link.send(replace(welcome, ports=ports))
        transfer = _Transfer(link, workers, assembler, journal, size, ports, settings.verify,
                             self.progress)
        complete, image_digest = transfer.run()
        if in_place:
            if QEMU_DEVICE not in assembler.sizes():
                raise TransferError(f"the sender sent no QEMU device state (device "
                                    f"{QEMU_DEVICE!r}: send with --qemu)")
        else:
            os.replace(partial, self.location.path)
            self._partial = None
        assembler.commit()  # with a destination QEMU: loads its state, the guest runs
        journal.path.unlink()
        self._journal = None
        self.vm_state = self.vm.state() if in_place else ""
        link.send(Verdict(ok=True, message="", digest=image_digest, devices=assembler.sizes(),
                          vm=self.vm_state))
        workers.close()
        return transfer_result(
            transfer.final.counters, ok=True, bytes=size, seconds=time.perf_counter() - started,
            settings=settings, rounds=complete.rounds, digest=image_digest,
            devices=assembler.sizes(), resumed_pages=self.resumed_pages)

    def _nothing_to_resume(self, size: int) -> str:
        if self.on_device is not None:
            return "a receiver that hands device state to a callback cannot resume"
        where = self.location
        return (f"nothing to resume at {where.text}: there is no {where.partial_path} of "
                f"{size} bytes; if the interrupted copy was moved, put its "
                f"{where.partial_path.name} and {where.journal_path.name} beside "
                f"{where.path.name} again (or start over without --resume)")

    def _device_folder(self) -> Path | None:
        """Where device files go (None: to the callback, through a private folder)."""
        if self.on_device is not None:
            return None
        return self.device_dir or self.location.default_device_dir

    def _staging_dir(self) -> Path:
        """Where device chunks land: the device folder itself (as hidden .NAME.partial files),
        or a private temporary folder when devices go to a callback."""
        try:
            if self.on_device is not None:
                path = Path(tempfile.mkdtemp(prefix=".multifd-devices-",
                                             dir=self.location.path.parent))
                self._temporary.append(path)
                return path
            folder = self._device_folder()
            if not folder.exists():
                folder.mkdir()
                self._owned_device_dir = folder
            elif not self.device_dir:  # ours by name: removed at the end if left empty
                self._owned_device_dir = folder
            return folder
        except OSError as exc:
            raise DestinationRefused(f"cannot create the device folder {exc.filename}: "
                                     f"{exc.strerror}") from None


def check_data_ports(first: int, listen_port: int) -> None:
    """Channel i listens on `first` + i (0: any free ports): refuse a start whose channels
    could run past the last port or onto the control port, before anything is created."""
    last = 65535 - (MAX_CHANNELS - 1)
    if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first <= last:
        raise UsageError(f"the first data port must be from 1 to {last}, so that the ports of "
                         f"up to {MAX_CHANNELS} channels exist (0: any free ports), not "
                         f"{first!r}")
    if first and first <= listen_port < first + MAX_CHANNELS:
        raise UsageError(f"data ports {first}-{first + MAX_CHANNELS - 1} (one per channel, up "
                         f"to {MAX_CHANNELS}) would include the listen port {listen_port}")


class _Transfer:
    """One transfer in progress on the destination: barrier, devices, recovery, digest."""

    def __init__(self, link: ControlLink, workers: WorkerGroup, assembler: DeviceAssembler,
                 journal: Journal, size: int, ports: list[int], verify: str,
                 progress: Callable[[Arrival], None] | None = None) -> None:
        self.link = link
        self.workers = workers
        self.assembler = assembler
        self.journal = journal
        self.size = size
        self.ports = ports
        self.barrier = SyncBarrier(len(ports))
        self.recovery = Recovery(len(ports), "destination")
        self.complete: Complete | None = None
        self.final = FinalRound(size, len(ports), verify)
        self.progress = progress
        self.applied = AppliedCount(journal)
        self.next_report = 0.0

    def run(self) -> tuple[Complete, str]:
        """Serve until COMPLETE arrived and the image is hashed; returns COMPLETE and the
        verified digest (raises VerificationFailed after telling the source)."""
        while self.complete is None or not self.final.done:
            events = dict(self.workers.poller(self.link.socket).poll(self.link.poll_interval_ms()))
            try:
                self.on_events(events)
            except ChannelLost as lost:
                self.recovery.handle(lost, self.restart)
            self.report()
        return self.complete, self.verify()

    def report(self) -> None:
        """Hand `progress` what has arrived, at most once every PROGRESS_S."""
        if self.progress is None or time.monotonic() < self.next_report:
            return
        self.next_report = time.monotonic() + PROGRESS_S
        done = min(self.size, self.applied.look() * PAGE_SIZE)
        self.progress(Arrival(phase="verifying" if self.complete else "receiving",
                              round=self.barrier.round, image_bytes=done, image_size=self.size))

    def on_events(self, events: dict) -> None:
        self.workers.handle(events, self.on_worker)
        self.link.handle(events, self.on_control)

    def on_worker(self, channel: int, msg: Any) -> None:
        if isinstance(msg, jobs.Reached):
            if self.barrier.arrive(channel, msg.round):
                detail(f"round {msg.round}: every channel reached the barrier; released")
                self.workers.broadcast(jobs.Release(round=msg.round))
                self.link.released = self.barrier.round
                self.link.send(Synced(round=msg.round))
        elif isinstance(msg, jobs.Notice) and msg.kind == "device":
            if self.assembler.add(**msg.data, origin=(channel, msg.seq)):
                self.journal.record_chunk(msg.data)
        elif isinstance(msg, jobs.Hashed):
            self.final.answered(channel, msg)
        else:
            raise ProtocolError(f"unexpected {msg.TAG} from destination worker {channel}")

    def on_control(self, msg: Any) -> None:
        if msg is None or isinstance(msg, Heartbeat) or msg == self.complete:
            return  # a stray's message, a heartbeat, or COMPLETE repeated
        if isinstance(msg, Complete) and self.complete is None:
            if not self.barrier.idle:
                raise ProtocolError("COMPLETE arrived in the middle of a round")
            self.complete = msg
            self.final.start(self.workers.send)
        elif isinstance(msg, Fault):
            raise peer_error(msg.kind, f"sender failed: {msg.message}")
        else:
            raise ProtocolError(f"unexpected {msg.TAG} from the sender")

    def restart(self, channel: int) -> None:
        """A new destination worker on the same port, in the current round; the source sees
        its connection drop and re-sends what was not acknowledged."""
        self.barrier.forget(channel)
        self.workers.replace(channel, listen_port=self.ports[channel], round=self.barrier.round)
        self.workers.gather(jobs.Bound, [channel])
        self.final.ask_again(channel, self.workers.send)

    def verify(self) -> str:
        """Compare our digests with the source's; the folded image digest if they match."""
        complete = self.complete
        self.assembler.check_complete(set(complete.devices))
        hashes = self.journal.page_hashes()
        image_digest = digest.fold_digest(self.size, hashes)
        problems = []
        if image_digest != complete.digest:
            unwritten = len(digest.never_sent(hashes))
            problems.append("the image's digest differs from the source's" + (
                f" ({_pages(unwritten)} never arrived)" if unwritten else ""))
        if complete.stored and complete.stored != self.final.stored_digest():
            problems.append("the stored image's digest differs from the source's (both read "
                            "back from storage)")
        for key, value in sorted(self.assembler.digests().items()):
            if value != complete.devices.get(key):
                problems.append(f"device {key}'s digest differs from the source's")
        if problems:
            message = "; ".join(problems)
            self.link.send(Verdict(ok=False, message=message, digest=image_digest, devices={}))
            raise VerificationFailed(f"verification failed: {message}")
        return image_digest


def _pages(count: int) -> str:
    return f"{count} page" if count == 1 else f"{count} pages"


def _user_id(frame: zmq.Frame) -> str:
    """The public key (Z85) the authenticator let this message's sender in with: zmq.auth
    makes a CURVE client's key its User-Id."""
    try:
        return frame.get("User-Id") or ""
    except zmq.ZMQError:
        return ""
