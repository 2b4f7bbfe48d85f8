"""The channel loops: one data socket, credits, sync and errors; no payload knowledge.

A source channel turns jobs from its coordinator into packets (through the handler the job
names) and turns the destination's acknowledgements into credits for the coordinator.
A destination channel validates everything that arrives on its socket, hands packet bodies to
handlers, acknowledges them, and parks at each SYNC until its coordinator releases it.
Both hash segments of their image on request, for the end-of-transfer digest.
"""
from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any

import zmq

from engine import digest, jobs
from engine.errors import PeerLost, ProtocolError
from engine.framing import decode, encode
from engine.protocol import MAGIC, VERSION, Ack, ChannelRules, Fault, Init, Packet, Sync, checksum
from engine.settings import TransferSettings
from workers.gauge import LinkState, SendGauge
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

    def tell(self, msg: Any) -> None:
        self.control.send(encode(msg))

    def coordinator_alive(self) -> bool:
        if os.getppid() != self.parent_pid:
            return False
        try:
            os.kill(self.coordinator_pid, 0)
        except ProcessLookupError:
            return False
        return True

    def on_control(self, msg: Any) -> None:
        if isinstance(msg, jobs.HashJob):
            fd = os.open(self.image_path, os.O_RDONLY)
            try:
                digests = [digest.hash_segment(fd, i) for i in msg.segments]
            finally:
                os.close(fd)
            self.tell(jobs.Hashed(segments=msg.segments, digests=digests))
        elif isinstance(msg, jobs.Stop):
            self.running = False
        else:
            raise ProtocolError(f"worker got an unexpected {msg.TAG} from its coordinator")

    def run(self) -> None:
        data = self.data
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(data, zmq.POLLIN)
        while self.running:
            poller.modify(data, zmq.POLLIN if self.reading() else 0)
            events = dict(poller.poll(WATCH_INTERVAL_MS))
            if not events and not self.coordinator_alive():
                raise PeerLost(f"channel {self.channel}: coordinator went away")
            if self.control in events:
                self.on_control(decode(self.control.recv()))
            if data in events and self.reading():
                self.on_data(data.recv_multipart(copy=False))
        for handler in self.handlers.values():
            for key, value in handler.counters.items():
                self.counters[key] = self.counters.get(key, 0) + value
        self.tell(jobs.Stats(counters=self.counters))

    def reading(self) -> bool:
        return True

    def on_data(self, frames: list[zmq.Frame]) -> None:
        raise NotImplementedError


class SourceChannel(ChannelLoop):
    def __init__(self, *args, session: bytes, window: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.session = session
        self.gauge = SendGauge(window)
        self.seq = 0
        self.acked = -1
        self.unacked_bytes: deque[int] = deque()  # wire bytes of each unacknowledged packet

    def on_control(self, msg: Any) -> None:
        if isinstance(msg, jobs.Connect):
            self.data.connect(msg.endpoint)
            self.data.send(encode(Init(magic=MAGIC, version=VERSION, session=self.session,
                                       channel=self.channel)))
        elif isinstance(msg, jobs.Job):
            self.send_packet(msg)
        elif isinstance(msg, jobs.SyncJob):
            self.data.send(encode(Sync(session=self.session, channel=self.channel,
                                       round=msg.round)))
        else:
            super().on_control(msg)

    def link(self) -> LinkState:
        """The send window's state, counting acknowledgements that arrived meanwhile."""
        while self.data.poll(0):
            self.on_data(self.data.recv_multipart(copy=False))
        return self.gauge.state()

    def send_packet(self, job: jobs.Job) -> None:
        started = time.perf_counter()
        encoded = self.handlers[job.kind].encode(job.spec)
        header = encode(Packet(session=self.session, channel=self.channel, seq=self.seq,
                               kind=job.kind, sizes=[len(f) for f in encoded.frames],
                               checksum=checksum(encoded.frames), body=encoded.body))
        self.data.send_multipart([header, *encoded.frames], copy=False)
        self.seq += 1
        wire = len(header) + sum(len(f) for f in encoded.frames)
        self.unacked_bytes.append(wire)
        self.gauge.sent()
        self.counters["packets"] += 1
        self.counters["bytes"] += wire
        self.counters["busy_s"] += time.perf_counter() - started

    def on_data(self, frames: list[zmq.Frame]) -> None:
        msg = decode(frames[0].bytes, Ack, Fault)
        if isinstance(msg, Fault):
            raise ProtocolError(f"destination refused channel {self.channel}: {msg.message}")
        if not self.acked < msg.seq < self.seq:
            raise ProtocolError(f"channel {self.channel}: acknowledgement of packet {msg.seq} "
                                "that was never sent")
        packets = msg.seq - self.acked
        wire = sum(self.unacked_bytes.popleft() for _ in range(packets))
        self.gauge.acknowledged(packets, wire, time.perf_counter())
        self.tell(jobs.Credit(packets=packets, bytes=wire))
        self.acked = msg.seq


class DestinationChannel(ChannelLoop):
    def __init__(self, *args, session: bytes, settings: TransferSettings, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        max_payload = max(h.max_payload() for h in self.handlers.values())
        self.rules = ChannelRules(session, self.channel, settings, list(self.handlers),
                                  max_payload)
        self.peer: bytes | None = None
        self.parked = False
        self.round = 0

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
        if self.peer is None:
            try:
                self.rules.check_init(parts)
            except ProtocolError as exc:
                self._refuse(identity, f"bad INIT: {exc}")
                return
            self.peer = identity
            return
        if identity != self.peer:
            self._refuse(identity, f"channel {self.channel} already has a sender")
            return
        try:
            msg = self.rules.check_message(parts)
        except ProtocolError as exc:
            self._refuse(identity, str(exc))
            raise
        if isinstance(msg, Sync):
            if msg.round != self.round:
                raise ProtocolError(f"channel {self.channel}: SYNC of round {msg.round} "
                                    f"during round {self.round}")
            self.parked = True
            self.tell(jobs.Reached(round=msg.round))
            return
        started = time.perf_counter()
        notice = self.handlers[msg.kind].apply(msg.body, parts[1:])
        self.data.send_multipart([identity, encode(Ack(seq=msg.seq))])
        if notice is not None:
            self.tell(jobs.Notice(kind=msg.kind, data=notice))
        self.counters["packets"] += 1
        self.counters["bytes"] += sum(len(p) for p in parts)
        self.counters["busy_s"] += time.perf_counter() - started

    def _refuse(self, identity: bytes, reason: str) -> None:
        print(f"multifd: channel {self.channel}: refused a message: {reason}", file=sys.stderr)
        try:
            self.data.send_multipart([identity, encode(Fault(message=reason))], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the offender is gone already
