"""The catalogue of hostile cases, each a named builder of the frames it sends.

A "waiting" case's builder returns frames for the control endpoint; a "stranger" case's
returns (where, frames) inside our legitimate transfer; a "sender" case's returns the list of
messages our own sender sends on channel 0 (engine/tools/hostile/__init__.py says what each
kind proves).
"""
from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import msgpack
import zstandard

from engine.settings import PAGE_SIZE, TransferSettings
from engine.wire.framing import MAX_HEADER_BYTES, decode, encode
from engine.wire.protocol import SESSION_BYTES, Hello, Packet, Sync, checksum, new_hello
from engine.tools.hostile.wire import PAGE, Frames, Session

BOMB_BYTES = 64 << 20  # what a decompression bomb would expand to


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
