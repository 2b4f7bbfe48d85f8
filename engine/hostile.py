"""Hostile and broken input for a receiver: a catalogue of named cases over raw ZeroMQ.

    python -m engine.hostile --target tcp://HOST:PORT [--case NAME]... [--json]

Point it at a receiver of your own (`multifd receive ... --listen tcp://HOST:PORT`) to see
how it treats a peer that breaks the wire rules. Cases come in three kinds, by who attacks:

- "waiting": a stranger talks to the control endpoint of a receiver that still waits for its
  sender. The receiver answers FAULT (or ignores the message) and keeps waiting.
- "stranger": we open a legitimate transfer of a one-page image ourselves (HELLO, INIT on
  every channel), then other identities attack its control endpoint and data ports. Each is
  refused; afterwards our transfer must still be served to the end and verify.
- "sender": we are the receiver's sender and send something broken ourselves. The receiver
  refuses it and fails the transfer cleanly (a FAULT back, exit code 1): it serves one
  sender, and a sender that breaks the rules has nothing left worth finishing.

A "sender" case ends the receiver's transfer, so it runs alone; otherwise the "waiting"
cases run first, then the "stranger" cases inside one legitimate transfer.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import msgpack
import xxhash
import zmq
import zstandard

from engine import digest
from engine.endpoint import parse_endpoint
from engine.errors import EngineError, ProtocolError, UsageError
from engine.framing import MAX_HEADER_BYTES, decode, encode
from engine.protocol import (MAGIC, SESSION_BYTES, VERSION, Ack, Complete, Fault, Heartbeat,
                             Hello, Init, Packet, Sync, Verdict, Welcome, checksum, new_hello)
from engine.settings import PAGE_SIZE, TransferSettings
from workers.codecs import make_codec

REPLY_TIMEOUT_S = 1.5
FAIL_TIMEOUT_S = 10.0
HEARTBEAT_S = 0.5
BOMB_BYTES = 64 << 20  # what a decompression bomb would expand to
PAGE = bytes(range(256)) * (PAGE_SIZE // 256)  # the one page our legitimate transfers send

Frames = list[bytes]


@dataclass(frozen=True)
class Outcome:
    """What the receiver did with one case. `verdict` is "refused", "ignored", "failed
    cleanly" (as hoped for the case's kind) or "unexpected"."""

    case: str
    kind: str
    verdict: str
    detail: str

    @property
    def ok(self) -> bool:
        return self.verdict != "unexpected"


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "waiting", "stranger" or "sender"
    what: str
    build: Callable[..., Any]
    session: dict[str, Any] = field(default_factory=dict)  # HELLO options for "sender"


CASES: dict[str, Case] = {}


def case(name: str, kind: str, what: str, **session: Any):
    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        CASES[name] = Case(name, kind, what, build, session)
        return build
    return register


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


def _decoded(frames: Frames) -> Any:
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
                    msg = _decoded(ready.recv_multipart())
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


# -- running cases ----------------------------------------------------------------------------

def run_waiting(wire: Wire, case_: Case) -> Outcome:
    stranger = wire.dealer()
    try:
        stranger.send_multipart(case_.build())
        reply = _decoded(stranger.recv_multipart()) if stranger.poll(REPLY_TIMEOUT_S * 1000) \
            else None
    finally:
        stranger.close()
    return _refusal(case_, reply)


def _refusal(case_: Case, reply: Any) -> Outcome:
    """A stranger's outcome: a FAULT back (refused), or silence (ignored)."""
    if isinstance(reply, Fault):
        return Outcome(case_.name, case_.kind, "refused", reply.message)
    if reply is None:
        return Outcome(case_.name, case_.kind, "ignored", "no answer")
    return Outcome(case_.name, case_.kind, "unexpected", f"answered {reply!r:.80}")


def run_strangers(wire: Wire, cases: Sequence[Case]) -> list[Outcome]:
    """Our legitimate two-channel transfer, attacked by each case, then finished: every
    refusal counts only if the transfer still verifies."""
    session = Session(wire, channels=2)
    welcome = session.open()
    if not isinstance(welcome, Welcome):
        raise EngineError(f"the receiver did not accept our legitimate transfer: {welcome!r:.80}")
    outcomes = []
    for case_ in cases:
        where, frames = case_.build(session)
        stranger = wire.dealer(None if where == "control" else welcome.ports[where])
        stranger.send_multipart(frames)
        reply = session.wait(stranger, REPLY_TIMEOUT_S)
        stranger.close()
        outcomes.append(_refusal(case_, reply))
    problem = _finish_legitimately(session)
    if problem:
        outcomes = [Outcome(o.case, o.kind, "unexpected", f"{o.detail}; but then {problem}")
                    for o in outcomes]
    return outcomes


def _finish_legitimately(session: Session) -> str:
    """Send our page and COMPLETE; '' if the receiver verified, else what went wrong."""
    session.data[0].send_multipart(session.page_packet())
    ack = session.wait(session.data[0], FAIL_TIMEOUT_S)
    if not isinstance(ack, Ack):
        return f"our packet got {ack!r:.80} instead of an ACK"
    page_digest = digest.combine(PAGE_SIZE, [xxhash.xxh3_128(PAGE).digest()])
    session.control.send(encode(Complete(digest=page_digest, devices={}, rounds=0)))
    verdict = session.wait(session.control, FAIL_TIMEOUT_S)
    if not (isinstance(verdict, Verdict) and verdict.ok):
        return f"our transfer ended with {verdict!r:.120}"
    return ""


def run_sender(wire: Wire, case_: Case) -> Outcome:
    """We are the sender and send the case's messages on channel 0: the receiver should
    fail the transfer with a FAULT on control."""
    session = Session(wire, **case_.session)
    try:
        reply = session.open()
        if isinstance(reply, Welcome):
            for frames in case_.build(session):
                session.data[0].send_multipart(frames)
            session.wait(session.data[0], FAIL_TIMEOUT_S, skip=(Heartbeat, Ack))
            if session.control_fault is None:
                session.wait(session.control, FAIL_TIMEOUT_S)
            reply = session.control_fault
        if isinstance(reply, Fault):
            return Outcome(case_.name, case_.kind, "failed cleanly", reply.message)
        return Outcome(case_.name, case_.kind, "unexpected", f"answered {reply!r:.80}")
    finally:
        session.close()


def run(target: str, names: Sequence[str]) -> list[Outcome]:
    """Run the named cases against the receiver at `target` (see the module docstring)."""
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise UsageError(f"unknown case {unknown[0]!r}; known: {', '.join(CASES)}")
    chosen = [CASES[n] for n in names]
    senders = [c for c in chosen if c.kind == "sender"]
    if senders and len(chosen) > 1:
        raise UsageError("a 'sender' case ends the receiver's transfer: run it alone, one per "
                         "receiver")
    wire = Wire(target)
    try:
        outcomes = [run_waiting(wire, c) for c in chosen if c.kind == "waiting"]
        strangers = [c for c in chosen if c.kind == "stranger"]
        if strangers:
            outcomes += run_strangers(wire, strangers)
        outcomes += [run_sender(wire, c) for c in senders]
        return outcomes
    finally:
        wire.close()


def names_of(kind: str) -> list[str]:
    return [c.name for c in CASES.values() if c.kind == kind]


# -- the catalogue: a stranger at the control endpoint of a waiting receiver -------------------

def _hello(**change: Any) -> Frames:
    fields = new_hello(os.urandom(SESSION_BYTES), PAGE_SIZE, TransferSettings(), ["ram"]).__dict__
    return [msgpack.packb([Hello.TAG, {**fields, **change}], use_bin_type=True)]


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]


@case("control-random-bytes", "waiting", "random bytes instead of HELLO")
def _(): return [os.urandom(200)]


@case("control-multipart", "waiting", "a HELLO followed by two more frames")
def _(): return [*_hello(), b"x", b"y"]


@case("hello-wrong-magic", "waiting", "HELLO of another protocol")
def _(): return _hello(magic="not-multifd")


@case("hello-wrong-version", "waiting", "HELLO of protocol version 99")
def _(): return _hello(version=99)


@case("hello-short-session", "waiting", "HELLO with a 3-byte session id")
def _(): return _hello(session=b"abc")


@case("hello-wrong-types", "waiting", "HELLO whose channel count is a string")
def _(): return _hello(channels="2")


@case("hello-thousands-of-keys", "waiting", "HELLO with 5000 extra fields")
def _(): return _hello(**{f"k{i}": i for i in range(5000)})


@case("hello-deep-nesting", "waiting", "HELLO whose handler list is nested 100000 deep")
def _():
    return [b"\x92\xa5hello\x81\xa8handlers" + _nested(100_000)]


@case("hello-image-too-large", "waiting", "HELLO of a 1 PiB image")
def _(): return _hello(image_size=1 << 50)


@case("hello-negative-image", "waiting", "HELLO of an image of -4096 bytes")
def _(): return _hello(image_size=-PAGE_SIZE)


@case("hello-absurd-settings", "waiting", "HELLO of 65 channels and 1 GiB device chunks")
def _(): return _hello(channels=65, chunk_size=1 << 30)


@case("hello-unknown-handler", "waiting", "HELLO announcing a payload handler we lack")
def _(): return _hello(handlers=["ram", "evil"])


# -- the catalogue: strangers during a transfer ---------------------------------------------------

@case("busy-hello", "stranger", "a valid HELLO from another identity during a transfer")
def _(s: Session): return "control", _hello()


@case("busy-control-garbage", "stranger", "random bytes on control from another identity")
def _(s: Session): return "control", [os.urandom(64)]


@case("data-random-bytes", "stranger", "random bytes on a data port")
def _(s: Session): return 0, [os.urandom(300)]


@case("init-wrong-session", "stranger", "INIT of channel 0 with another session id")
def _(s: Session): return 0, [encode(s.init(0, session=os.urandom(SESSION_BYTES)))]


@case("init-wrong-magic", "stranger", "INIT of another protocol and version")
def _(s: Session): return 0, [encode(s.init(0, magic="nope", version=7))]


# The next two know the session id, the worst case: with it, an INIT of the right channel
# would take the channel over (that is how a replacement source worker reconnects).
@case("init-channel-out-of-range", "stranger", "INIT of channel 2 of 2 (ids are 0 and 1)")
def _(s: Session): return 1, [encode(s.init(2))]


@case("init-duplicate-channel", "stranger", "INIT of channel 1 on the port of channel 0")
def _(s: Session): return 0, [encode(s.init(1))]


@case("init-multipart", "stranger", "INIT with an extra frame")
def _(s: Session): return 0, [encode(s.init(0)), b"extra"]


@case("packet-without-init", "stranger", "a well-formed PACKET from an identity with no INIT")
def _(s: Session):
    frames = s.page_packet(session=os.urandom(SESSION_BYTES))
    s.next_seq[0] -= 1  # it was not ours
    return 0, frames


@case("data-oversized-message", "stranger", "one 8 MiB frame, past the port's size limit")
def _(s: Session): return 0, [bytes(8 << 20)]


# -- the catalogue: a malicious sender ---------------------------------------------------

def _raw_packet(s: Session, **change: Any) -> Frames:
    """A PACKET header built without our dataclass, so fields may have any type."""
    frames = s.page_packet()
    fields = {**decode(frames[0], Packet).__dict__, **change}
    return [msgpack.packb([Packet.TAG, fields], use_bin_type=True), *frames[1:]]


def _body(s: Session, body: dict[str, Any], frames: Frames | None = None) -> Frames:
    return s.packet("ram", body, [PAGE] if frames is None else frames)


def _device(s: Session, index: int = 0, last: bool = True, name: str = "cpu",
            data: bytes = b"state", raw: int | None = None) -> Frames:
    body = {"name": name, "instance": 0, "index": index, "last": last,
            "codec": s.device_codec, "raw": len(data) if raw is None else raw}
    return s.packet("device", body, [data] if data else [])


def _bomb(codec: str) -> bytes:
    data = bytes(BOMB_BYTES)
    if codec == "zlib":
        return zlib.compress(data, 9)
    return zstandard.ZstdCompressor(write_content_size=True).compress(data)


def _lying_zstd_frame() -> bytes:
    """A zstd frame of 64 MiB whose header states 4096 bytes (its 4-byte content size field
    follows the frame header descriptor and the window descriptor)."""
    frame = bytearray(_bomb("zstd"))
    assert frame[4] >> 6 == 2 and not frame[4] & 0x20, "unexpected zstd frame header"
    frame[6:10] = struct.pack("<I", PAGE_SIZE)
    return bytes(frame)


@case("hello-64-tib-image", "sender", "HELLO of a 64 TiB image on 64 channels (the limits), "
      "then garbage", image_size=1 << 46, hello={"channels": 64, "chunk_size": 16 << 20})
def _(s: Session): return [[os.urandom(300)]]


@case("hello-8-tib-image", "sender", "HELLO of an 8 TiB image on 4 channels, then garbage",
      image_size=1 << 43, channels=4)
def _(s: Session): return [[os.urandom(300)]]


@case("packet-random-bytes", "sender", "random bytes after our INIT")
def _(s: Session): return [[os.urandom(300)]]


@case("packet-wrong-session", "sender", "a PACKET with another session id")
def _(s: Session): return [s.page_packet(session=os.urandom(SESSION_BYTES))]


@case("packet-channel-out-of-range", "sender", "a PACKET of channel 7 of 1")
def _(s: Session): return [s.page_packet(channel=7)]


@case("packet-pages-outside-image", "sender", "a PACKET of page 1 of a one-page image")
def _(s: Session):
    return [_body(s, {"runs": [[1, 1]], "zero": b"\x00", "codec": "none", "raw": PAGE_SIZE})]


@case("packet-negative-sizes", "sender", "a PACKET of frame size -1 and run [-5, 1]")
def _(s: Session):
    return [s.page_packet(sizes=[-1]),
            _body(s, {"runs": [[-5, 1]], "zero": b"\x00", "codec": "none", "raw": -1})]


@case("packet-huge-counts", "sender", "a PACKET of a run of 2**62 pages and raw 2**62")
def _(s: Session):
    return [_body(s, {"runs": [[0, 1 << 62]], "zero": b"\x00", "codec": "none",
                      "raw": 1 << 62})]


@case("packet-huge-seq", "sender", "a PACKET numbered 2**63 (packets must come in order)")
def _(s: Session): return [s.page_packet(seq=1 << 63)]


@case("packet-truncated", "sender", "a PACKET header announcing two frames, one sent")
def _(s: Session): return [s.page_packet(sizes=[PAGE_SIZE, PAGE_SIZE])]


@case("packet-missing-payload", "sender", "a PACKET header with its payload frame missing")
def _(s: Session): return [s.page_packet()[:1]]


@case("packet-checksum-mismatch", "sender", "a PACKET whose checksum is one bit off")
def _(s: Session): return [s.page_packet(checksum=checksum([PAGE]) ^ 1)]


@case("packet-zstd-bomb", "sender", "a zstd frame of 64 MiB zeros for a one-page packet",
      compress="zstd")
def _(s: Session):
    return [_body(s, {"runs": [[0, 1]], "zero": b"\x00", "codec": s.codec, "raw": PAGE_SIZE},
                  [_bomb("zstd")])]


@case("packet-zstd-lying-header", "sender", "a zstd frame of 64 MiB whose header says 4096",
      compress="zstd")
def _(s: Session):
    return [_body(s, {"runs": [[0, 1]], "zero": b"\x00", "codec": s.codec, "raw": PAGE_SIZE},
                  [_lying_zstd_frame()])]


@case("packet-zlib-bomb", "sender", "a zlib stream of 64 MiB zeros for a one-page packet",
      compress="zlib")
def _(s: Session):
    return [_body(s, {"runs": [[0, 1]], "zero": b"\x00", "codec": s.codec, "raw": PAGE_SIZE},
                  [_bomb("zlib")])]


@case("packet-wrong-types", "sender", "a PACKET header whose seq is a string")
def _(s: Session): return [_raw_packet(s, seq="0")]


@case("body-wrong-types", "sender", "a RAM body whose runs are a string and raw a float")
def _(s: Session):
    return [_body(s, {"runs": "0-1", "zero": 0, "codec": "none", "raw": 4096.0})]


@case("body-thousands-of-keys", "sender", "a RAM body with 5000 keys")
def _(s: Session): return [_body(s, {f"k{i}": i for i in range(5000)})]


@case("body-deep-nesting", "sender", "a PACKET header nested 100000 deep")
def _(s: Session): return [[b"\x92\xa3pkt\x81\xa4body" + _nested(100_000), PAGE]]


@case("header-oversized", "sender", f"a PACKET header over {MAX_HEADER_BYTES >> 10} KiB")
def _(s: Session): return [_raw_packet(s, kind="ram" + "x" * MAX_HEADER_BYTES)]


@case("sync-wrong-round", "sender", "a SYNC of round 5 during round 0")
def _(s: Session): return [[encode(Sync(session=s.session, channel=0, round=5))]]


@case("device-duplicate-chunk", "sender", "the same device chunk twice")
def _(s: Session):
    return [_device(s, data=bytes(1 << 20), last=False), _device(s, data=bytes(1 << 20),
                                                                last=False)]


@case("device-huge-index", "sender", "a device chunk of index 2**40")
def _(s: Session): return [_device(s, index=1 << 40)]


@case("device-out-of-order-after-last", "sender", "device chunk 3 (last), then chunk 5")
def _(s: Session): return [_device(s, index=3), _device(s, index=5)]


@case("device-path-in-name", "sender", "a device named ../../escape")
def _(s: Session): return [_device(s, name="../../escape")]


@case("device-size-lies", "sender", "a device chunk announcing 5 bytes, carrying 9")
def _(s: Session): return [_device(s, data=b"123456789", raw=5)]


@case("device-zstd-bomb", "sender", "a device chunk of a zstd frame of 64 MiB zeros",
      device_compress="zstd")
def _(s: Session): return [_device(s, data=_bomb("zstd"), raw=100)]


# -- command line -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engine.hostile", description=__doc__.split("\n\n")[0],
        epilog="cases: " + ", ".join(f"{c.name} ({c.kind})" for c in CASES.values()))
    parser.add_argument("--target", required=True, metavar="tcp://HOST:PORT",
                        help="the receiver's --listen endpoint")
    parser.add_argument("--case", action="append", metavar="NAME",
                        help="a case to run (repeatable; default: every waiting and stranger "
                        "case)")
    parser.add_argument("--json", action="store_true", help="one JSON line per case")
    args = parser.parse_args(argv)
    try:
        outcomes = run(args.target, args.case or names_of("waiting") + names_of("stranger"))
    except EngineError as exc:
        print(f"multifd hostile: error: {exc}", file=sys.stderr)
        return exc.exit_code
    for outcome in outcomes:
        if args.json:
            print(json.dumps(outcome.__dict__))
        else:
            print(f"{outcome.case:32} {outcome.verdict:15} {outcome.detail}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
