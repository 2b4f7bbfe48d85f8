"""The channel loops: one data socket, credits, sync and errors; no payload knowledge.

A source channel takes units of work from its coordinator (many packets each), sends their
packets through the handler each unit names within its own window of unacknowledged packets,
and tells its coordinator when a whole unit was acknowledged: nothing per packet passes
through a coordinator. Syncs, scans and the final hash request queue behind the units given
before them. If its connection drops it stops with PeerLost, and its coordinator replaces it
and hands the replacement every unit not acknowledged.
A destination channel validates everything that arrives on its socket, hands packet bodies to
handlers, acknowledges them, and parks at each SYNC until its coordinator releases it. A
packet re-sent after a reconnect that was already applied is acknowledged again and dropped.
Both hash segments of their image on request, for the end-of-transfer digest; a source
channel also runs a handler's scan on request and forwards its answer unread.
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Callable

import zmq

from engine.storage import digest
from engine.wire import jobs
from engine.errors import PeerLost, ProtocolError
from engine.wire.framing import decode, encode
from engine.log import warn
from engine.wire.protocol import MAGIC, VERSION, Ack, ChannelRules, Fault, Init, Packet, Sync, checksum
from engine.settings import TransferSettings
from workers.gauge import LinkState, SendGauge
from workers.pacing import TokenBucket
from workers.handlers import PayloadHandler

# How often an idle worker checks that its coordinator is still there.
WATCH_INTERVAL_MS = 500


class ChannelLoop:
    """What both sides share: the control link to the coordinator and the watch on it."""

    def __init__(self, channel: int, control: zmq.Socket, data: zmq.Socket,
                 coordinator_pid: int, handlers: dict[str, PayloadHandler], image: Any,
                 image_path: str) -> None:
        self.channel = channel
        self.control = control
        self.data = data
        self.coordinator_pid = coordinator_pid
        self.parent_pid = os.getppid()
        self.handlers = handlers
        self.image = image
        self.image_path = image_path
        self.counters: dict[str, float] = {"packets": 0, "bytes": 0, "busy_s": 0.0}
        self.running = True
        self.poller = zmq.Poller()
        self.readers: dict[zmq.Socket, Callable[[], None]] = {}
        self.watch(control, lambda: self.on_control(decode(control.recv())))
        self.watch(data, lambda: self.on_data(data.recv_multipart(copy=False)))
        # The kernel closes the coordinator's end when it dies, however it dies.
        self.watch(control.get_monitor_socket(zmq.EVENT_DISCONNECTED), self.on_orphaned)

    def watch(self, socket: zmq.Socket, reader: Callable[[], None]) -> None:
        self.poller.register(socket, zmq.POLLIN)
        self.readers[socket] = reader

    def count(self, wire_bytes: int, started: float) -> None:
        """One packet through this channel: its bytes and the time it took us."""
        self.counters["packets"] += 1
        self.counters["bytes"] += wire_bytes
        self.counters["busy_s"] += time.perf_counter() - started

    def tell(self, msg: Any) -> None:
        self.control.send(encode(msg))

    def on_orphaned(self) -> None:
        raise PeerLost(f"channel {self.channel}: coordinator went away")

    def coordinator_alive(self) -> bool:
        """The backstop to on_orphaned: our parent, or the coordinator, is gone (a killed
        coordinator stays a zombie until reaped, so its pid alone proves nothing)."""
        if os.getppid() != self.parent_pid:
            return False
        try:
            with open(f"/proc/{self.coordinator_pid}/stat") as stat:
                return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    def run(self) -> None:
        while self.running:
            self.poller.modify(self.data, zmq.POLLIN if self.reading() else 0)
            events = dict(self.poller.poll(self.wait_ms()))
            if not events and not self.coordinator_alive():
                self.on_orphaned()
            for socket, reader in list(self.readers.items()):
                if socket in events and (socket is not self.data or self.reading()):
                    reader()
            self.advance()

    def wait_ms(self) -> int:
        """How long to wait for the next message."""
        return WATCH_INTERVAL_MS

    def advance(self) -> None:
        """Whatever can go on after the messages that just arrived were read."""

    def on_control(self, msg: Any) -> None:
        if isinstance(msg, jobs.HashJob):
            fd = os.open(self.image_path, os.O_RDONLY)
            try:
                digests = [digest.hash_segment(fd, i) for i in msg.segments]
            finally:
                os.close(fd)
            counters = dict(self.counters)
            for handler in self.handlers.values():
                for key, value in handler.counters.items():
                    counters[key] = counters.get(key, 0) + value
            self.tell(jobs.Hashed(segments=msg.segments, digests=digests, counters=counters))
        elif isinstance(msg, jobs.Stop):
            self.running = False
        else:
            raise ProtocolError(f"worker got an unexpected {msg.TAG} from its coordinator")

    def reading(self) -> bool:
        return True

    def on_data(self, frames: list[zmq.Frame]) -> None:
        raise NotImplementedError


class SourceChannel(ChannelLoop):
    def __init__(self, *args, session: bytes, window: int, pace: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session = session
        self.window = window
        self.bucket = TokenBucket(pace) if pace else None
        self.last_sent = -1
        self.gauge = SendGauge(window)
        self.queue: deque[Any] = deque()  # units, syncs, scans, hash requests, in order
        self.next_spec = 0  # in the unit at the head of the queue
        self.unacked: deque[tuple[int, int]] = deque()  # (seq, wire bytes), oldest first
        self.unit_ends: deque[int] = deque()  # last seq of each unit sent, not acknowledged
        self.acked_wire = 0  # wire bytes acknowledged since the last credit

    def on_control(self, msg: Any) -> None:
        if isinstance(msg, jobs.Connect):
            self.connect(msg)
        elif isinstance(msg, (jobs.Job, jobs.SyncJob, jobs.ScanJob, jobs.HashJob)):
            self.queue.append(msg)
        else:
            super().on_control(msg)

    def advance(self) -> None:
        """Work through the queue as far as the window and the pace allow."""
        while self.queue and self.running:
            head = self.queue[0]
            if isinstance(head, jobs.Job):
                if not self.send_unit(head):
                    return
            elif isinstance(head, jobs.SyncJob):
                self.data.send(encode(Sync(session=self.session, channel=self.channel,
                                           round=head.round)))
            elif isinstance(head, jobs.ScanJob):
                answer = self.handlers[head.kind].scan(head.spec)
                self.tell(jobs.Scanned(scan=head.scan, index=head.index, data=answer))
            else:
                super().on_control(head)
            self.queue.popleft()

    def send_unit(self, job: jobs.Job) -> bool:
        """Send what the window and the pace allow of `job`; True once all of it is out."""
        while self.next_spec < len(job.specs):
            if len(self.unacked) >= self.window or self.held_back_s() > 0:
                return False
            self.send_packet(job.seq + self.next_spec, job.kind, job.specs[self.next_spec])
            self.next_spec += 1
        self.next_spec = 0
        self.unit_ends.append(job.seq + len(job.specs) - 1)
        return True

    def held_back_s(self) -> float:
        return self.bucket.delay_s() if self.bucket is not None else 0.0

    def wait_ms(self) -> int:
        """Until the pace lets the next packet go, if that is all that holds it back."""
        waiting = self.queue and len(self.unacked) < self.window
        delay = self.held_back_s() if waiting else 0.0
        return min(WATCH_INTERVAL_MS, int(delay * 1000) + 1) if delay > 0 else WATCH_INTERVAL_MS

    def connect(self, msg: jobs.Connect) -> None:
        # A dropped connection would silently lose queued packets (ZeroMQ reconnects by
        # itself but does not re-send), so it ends this worker: the coordinator replaces it.
        monitor = self.data.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.watch(monitor, self.on_disconnect)
        self.data.connect(msg.endpoint)
        self.last_sent = msg.first_seq - 1
        self.data.send(encode(Init(magic=MAGIC, version=VERSION, session=self.session,
                                   channel=self.channel, first_seq=msg.first_seq)))

    def on_disconnect(self) -> None:
        raise PeerLost(f"channel {self.channel}: connection to the destination lost")

    def link(self) -> LinkState:
        """The send window's state, counting acknowledgements that arrived meanwhile."""
        while self.data.poll(0):
            self.on_data(self.data.recv_multipart(copy=False))
        return self.gauge.state()

    def send_packet(self, seq: int, kind: str, spec: dict[str, Any]) -> None:
        started = time.perf_counter()
        encoded = self.handlers[kind].encode(spec)
        header = encode(Packet(session=self.session, channel=self.channel, seq=seq,
                               kind=kind, sizes=[len(f) for f in encoded.frames],
                               checksum=checksum(encoded.frames), body=encoded.body))
        self.data.send_multipart([header, *encoded.frames], copy=False)
        self.last_sent = seq
        wire = len(header) + sum(len(f) for f in encoded.frames)
        self.unacked.append((seq, wire))
        self.gauge.sent()
        if self.bucket is not None:
            self.bucket.charge(wire)
        self.count(wire, started)

    def on_data(self, frames: list[zmq.Frame]) -> None:
        msg = decode(frames[0].bytes, Ack, Fault)
        if isinstance(msg, Fault):
            raise ProtocolError(f"destination refused channel {self.channel}: {msg.message}")
        if msg.seq > self.last_sent:
            raise ProtocolError(f"channel {self.channel}: acknowledgement of packet {msg.seq} "
                                "that was never sent")
        packets = wire = 0
        while self.unacked and self.unacked[0][0] <= msg.seq:
            wire += self.unacked.popleft()[1]
            packets += 1
        if packets:
            self.gauge.acknowledged(packets, wire, time.perf_counter())
        self.acked_wire += wire
        done = None
        while self.unit_ends and self.unit_ends[0] <= msg.seq:
            done = self.unit_ends.popleft()
        if done is not None:
            self.tell(jobs.Credit(acked=done, bytes=self.acked_wire))
            self.acked_wire = 0


class DestinationChannel(ChannelLoop):
    def __init__(self, *args, session: bytes, settings: TransferSettings, round_: int,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        max_payload = max(h.max_payload() for h in self.handlers.values())
        self.rules = ChannelRules(session, self.channel, settings, list(self.handlers),
                                  max_payload)
        self.peer: bytes | None = None
        self.parked = False
        self.round = round_

    def reading(self) -> bool:
        return not self.parked

    def on_control(self, msg: Any) -> None:
        if isinstance(msg, jobs.Release):
            if not self.parked or msg.round != self.round:
                raise ProtocolError(f"channel {self.channel}: release of round {msg.round} "
                                    "it is not waiting for")
            self.parked = False
            self.round += 1
        else:
            super().on_control(msg)

    def on_data(self, frames: list[zmq.Frame]) -> None:
        identity, parts = frames[0].bytes, [f.buffer for f in frames[1:]]
        if identity != self.peer:
            # Only a valid INIT opens the channel; a later one comes from a replacement of
            # a failed source worker and takes the channel over.
            try:
                self.rules.check_init(parts)
            except ProtocolError as exc:
                self._refuse(identity, f"bad INIT: {exc}")
                return
            self.peer = identity
            return
        try:
            msg = self.rules.check_message(parts)
        except ProtocolError as exc:
            self._refuse(identity, str(exc))
            raise
        if isinstance(msg, Sync):
            self.on_sync(msg)
            return
        started = time.perf_counter()
        if self.rules.accept(msg):
            notice = self.handlers[msg.kind].apply(msg.body, parts[1:])
            if notice is not None:
                self.tell(jobs.Notice(kind=msg.kind, data=notice, seq=msg.seq))
        try:
            self.data.send_multipart([identity, encode(Ack(seq=msg.seq))])
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:
                raise
            # The sender's connection broke: its replacement re-sends, we ack again then.
        self.count(sum(len(p) for p in parts), started)

    def on_sync(self, msg: Sync) -> None:
        if msg.round < self.round or (msg.round == self.round and self.parked):
            return  # re-sent after a reconnect: this channel is past it already
        if msg.round != self.round:
            raise ProtocolError(f"channel {self.channel}: SYNC of round {msg.round} "
                                f"during round {self.round}")
        self.parked = True
        self.tell(jobs.Reached(round=msg.round))

    def _refuse(self, identity: bytes, reason: str) -> None:
        warn(f"channel {self.channel}: refused a message: {reason}")
        try:
            self.data.send_multipart([identity, encode(Fault(message=reason))], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the offender is gone already
