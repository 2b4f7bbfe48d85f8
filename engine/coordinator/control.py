"""The control connection between the coordinators, with heartbeats.

Each side sends a HEARTBEAT twice a second when it has nothing else to say, and declares the
peer lost when it has heard nothing for PEER_TIMEOUT_S: a killed coordinator on the other
side is noticed within seconds instead of hanging the transfer.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import zmq

from engine.wire.endpoint import Endpoint, parse_endpoint
from engine.errors import EngineError, PeerLost, ProtocolError, UsageError, peer_error
from engine.wire.framing import decode, encode
from engine.wire.protocol import HEARTBEAT_S, Fault, Heartbeat
from engine.security import ClientKeys, ServerKeys, connect_checked

PEER_TIMEOUT_S = 3.0
MAX_CONTROL_BYTES = 1 << 20


class ControlLink:
    """One peer on a control socket: a DEALER that dialled, or a ROUTER and an identity."""

    def __init__(self, socket: zmq.Socket, endpoint: Endpoint, identity: bytes | None) -> None:
        self.socket = socket
        self.endpoint = endpoint
        self.identity = identity
        self.last_heard = self.last_sent = time.monotonic()
        self.released = 0  # what our heartbeats report (the receiver's released rounds)

    @classmethod
    def dial(cls, context: zmq.Context, text: str, keys: ClientKeys | None,
             timeout_s: float, routing_id: bytes) -> "ControlLink":
        """Connect, encrypted if `keys`, and wait until the receiver accepted the handshake."""
        endpoint = parse_endpoint(text)
        socket = context.socket(zmq.DEALER)
        socket.linger = 1000
        socket.ipv6 = endpoint.ipv6
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        # A fixed identity lets the receiver recognise us again if the connection breaks and
        # ZeroMQ reconnects (the receiver's ROUTER hands the identity over to the new one).
        socket.routing_id = routing_id
        if keys is not None:
            keys.configure(socket)
        try:
            connect_checked(socket, str(endpoint), keys, timeout_s)
        except EngineError:
            socket.close(linger=0)
            raise
        return cls(socket, endpoint, None)

    @staticmethod
    def listen(context: zmq.Context, endpoint: Endpoint,
               keys: ServerKeys | None) -> tuple[zmq.Socket, Endpoint]:
        """The receiver's control socket, bound (encrypted if `keys`), and the endpoint it got
        (port 0 becomes the port the kernel chose). One ControlLink per sender shares it."""
        socket = context.socket(zmq.ROUTER)
        socket.linger = 1000
        socket.ipv6 = endpoint.ipv6
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
        # The sender reconnects under the same identity if its connection breaks.
        socket.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if keys is not None:
            keys.configure(socket)
        try:
            socket.bind(str(endpoint))
        except zmq.ZMQError as exc:
            socket.close(linger=0)
            raise UsageError(f"cannot listen on {endpoint}: {exc}") from None
        port = int(socket.getsockopt_string(zmq.LAST_ENDPOINT).rsplit(":", 1)[1])
        return socket, endpoint.with_port(port)

    def dial_port(self, port: int) -> str:
        """The endpoint of a data port on the host this link dialled."""
        return str(self.endpoint.with_port(port))

    def send(self, msg: Any) -> None:
        frames = [encode(msg)] if self.identity is None else [self.identity, encode(msg)]
        try:
            self.socket.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            raise PeerLost(f"control connection lost: {exc}") from None
        self.last_sent = time.monotonic()

    def receive(self) -> Any:
        """The next message from the peer (heartbeats included), or None for a stray's."""
        frames = self.socket.recv_multipart()
        if self.identity is not None:
            if frames[0] != self.identity:
                self._refuse(frames[0])
                return None
            frames = frames[1:]
        self.last_heard = time.monotonic()
        if len(frames) != 1:
            raise ProtocolError("control message must be a single frame")
        return decode(frames[0])

    def expect(self, kind: type, timeout_s: float) -> Any:
        """Wait for one message of `kind` (a FAULT from the peer raises)."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.socket.poll(remaining * 1000):
                raise PeerLost(f"no answer from {self.endpoint} within {timeout_s:.0f} s")
            msg = self.receive()
            if isinstance(msg, Fault):
                raise peer_error(msg.kind, f"receiver refused the transfer: {msg.message}")
            if isinstance(msg, kind):
                return msg
            if msg is not None and not isinstance(msg, Heartbeat):
                raise ProtocolError(f"expected {kind.TAG}, got {msg.TAG}")

    def handle(self, events: dict, on_message: Callable[[Any], None]) -> None:
        """Hand every message waiting on our socket (if `events` names it) to `on_message`,
        then keep the link alive."""
        while self.socket in events and self.socket.poll(0):
            on_message(self.receive())
        self.keep_alive()

    def keep_alive(self) -> None:
        """Send a heartbeat when due; raise PeerLost if the peer has been silent too long."""
        now = time.monotonic()
        if now - self.last_heard > PEER_TIMEOUT_S:
            raise PeerLost(f"the peer at {self.endpoint} has been silent for "
                           f"{PEER_TIMEOUT_S:.0f} s")
        if now - self.last_sent >= HEARTBEAT_S:
            self.send(Heartbeat(released=self.released))

    @staticmethod
    def poll_interval_ms() -> int:
        return int(HEARTBEAT_S * 1000 / 4)

    def _refuse(self, identity: bytes) -> None:
        try:
            self.socket.send_multipart([identity, encode(Fault(message="busy with another "
                                                                         "transfer"))],
                                       zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def close(self) -> None:
        self.socket.close(linger=0)
