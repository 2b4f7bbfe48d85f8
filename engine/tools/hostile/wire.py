"""The hostile tool's raw end of the wire: sockets to a receiver and a sender of our own that
speaks the protocol by hand, so a case can break any rule of it."""
from __future__ import annotations

import os
import time
from typing import Any

import msgpack
import zmq

from engine.errors import ProtocolError
from engine.settings import PAGE_SIZE, TransferSettings
from engine.wire.endpoint import parse_endpoint
from engine.wire.framing import decode, encode
from engine.wire.protocol import (HEARTBEAT_S, MAGIC, SESSION_BYTES, VERSION, Fault, Heartbeat,
                                  Hello, Init, Packet, Welcome, checksum, new_hello)
from workers.codecs import make_codec

REPLY_TIMEOUT_S = 1.5
FAIL_TIMEOUT_S = 10.0
PAGE = bytes(range(256)) * (PAGE_SIZE // 256)  # the one page our legitimate transfers send

Frames = list[bytes]


# -- raw sockets ----------------------------------------------------------------------------

class Wire:
    """Raw DEALER sockets to one receiver: its control endpoint and its data ports."""

    def __init__(self, target: str) -> None:
        self.endpoint = parse_endpoint(target)
        self.context = zmq.Context()

    def dealer(self, port: int | None = None) -> zmq.Socket:
        socket = self.context.socket(zmq.DEALER)
        socket.linger = 0
        socket.ipv6 = self.endpoint.ipv6
        socket.connect(str(self.endpoint if port is None else self.endpoint.with_port(port)))
        return socket

    def close(self) -> None:
        self.context.destroy(linger=0)


def decoded(frames: Frames) -> Any:
    try:
        return decode(frames[-1])
    except ProtocolError:
        return f"{len(frames)} undecodable frame(s)"


class Session:
    """A sender of our own at the wire level: HELLO, WELCOME, INIT on every channel, with
    heartbeats kept up while we wait for anything."""

    def __init__(self, wire: Wire, image_size: int = PAGE_SIZE, channels: int = 1,
                 compress: str = "none", device_compress: str = "none",
                 hello: dict[str, Any] | None = None) -> None:
        self.wire = wire
        self.session = os.urandom(SESSION_BYTES)
        settings = TransferSettings(channels=channels, compress=compress,
                                    device_compress=device_compress)
        self.hello = new_hello(self.session, image_size, settings, ["ram", "device"])
        self.codec = make_codec(compress).spec
        self.device_codec = make_codec(device_compress).spec
        self.hello_fields = {**self.hello.__dict__, **(hello or {})}
        self.control = wire.dealer()
        self.data: list[zmq.Socket] = []
        self.next_seq: list[int] = []
        self.control_fault: Fault | None = None
        self.last_beat = 0.0

    def open(self) -> Welcome | Fault | None:
        """Send HELLO; on WELCOME, connect to every data port and INIT it."""
        self.control.send(msgpack.packb([Hello.TAG, self.hello_fields], use_bin_type=True))
        reply = self.wait(self.control, FAIL_TIMEOUT_S)
        if isinstance(reply, Welcome):
            self.data = [self.wire.dealer(port) for port in reply.ports]
            self.next_seq = [0] * len(reply.ports)
            for channel, socket in enumerate(self.data):
                socket.send(encode(self.init(channel)))
        return reply

    def init(self, channel: int, **change: Any) -> Init:
        fields = dict(magic=MAGIC, version=VERSION, session=self.session, channel=channel,
                      first_seq=0)
        return Init(**{**fields, **change})

    def packet(self, kind: str, body: dict[str, Any], frames: Frames, **change: Any) -> Frames:
        """A PACKET for channel 0, with a correct header (sizes, checksum, next seq) unless
        `change`d."""
        fields = dict(session=self.session, channel=0, seq=self.next_seq[0], kind=kind,
                      sizes=[len(f) for f in frames], checksum=checksum(frames), body=body)
        self.next_seq[0] += 1
        return [encode(Packet(**{**fields, **change})), *frames]

    def page_packet(self, **change: Any) -> Frames:
        body = {"runs": [[0, 1]], "zero": b"\x00", "codec": self.codec,
                "raw": PAGE_SIZE}
        return self.packet("ram", body, [PAGE], **change)

    def wait(self, socket: zmq.Socket, timeout_s: float,
             skip: tuple[type, ...] = (Heartbeat,)) -> Any:
        """The next message on `socket` that is not of a `skip` type, or None after
        `timeout_s`. Our heartbeats go out meanwhile; a FAULT on control is kept."""
        deadline = time.monotonic() + timeout_s
        poller = zmq.Poller()
        poller.register(self.control, zmq.POLLIN)
        poller.register(socket, zmq.POLLIN)
        while (remaining := deadline - time.monotonic()) > 0:
            if time.monotonic() - self.last_beat >= HEARTBEAT_S and self.data:
                self.control.send(encode(Heartbeat()))
                self.last_beat = time.monotonic()
            events = dict(poller.poll(min(remaining, HEARTBEAT_S / 2) * 1000))
            for ready in (self.control, socket) if socket is not self.control else (socket,):
                while ready in events and ready.poll(0):
                    msg = decoded(ready.recv_multipart())
                    if ready is self.control and isinstance(msg, Fault):
                        self.control_fault = msg  # the transfer is over
                        return msg if ready is socket else None
                    if ready is socket and not isinstance(msg, skip):
                        return msg
        return None

    def close(self) -> None:
        if self.data and self.control_fault is None:
            try:  # the receiver may be gone: never block on it
                self.control.send(encode(Fault(message="hostile-input test finished")),
                                  zmq.NOBLOCK)
            except zmq.ZMQError:
                pass


