"""The conformance battery that every codec and every payload handler must pass.

Parametrised over the registries (CODECS.names(), HANDLERS.names()), so a new entry is tested
the moment it is registered: a codec needs nothing more, a handler needs a scenario below
(test_every_registered_handler_has_a_scenario fails until it has one). Each entry must:
round-trip (also empty input), refuse corrupt input with ProtocolError/CorruptPayload having
written nothing, refuse a size bomb without allocating it, and never raise anything else
whatever a hostile peer puts in a packet body or its frames.
No sockets, no processes: handlers are driven directly, their packets carried by a fake wire
that applies the real header encoding and ChannelRules checks.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import sys
import tracemalloc
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.storage.digest import chunk_hash
from engine.storage.journal import APPLIED, HOLDS_DATA
from engine.wire import jobs
from engine.coordinator.assembly import DeviceAssembler
from engine.errors import CorruptPayload, ProtocolError, UsageError
from engine.wire.framing import decode, encode
from engine.storage.image import map_file
from engine.coordinator.partition import chunk_spans, list_packets, range_packets
from engine.wire.protocol import ChannelRules, Packet, checksum
from engine.settings import PAGE_SIZE, TransferSettings
from workers.codecs import CODECS, Codec, make_codec
from workers.handlers import HANDLERS, Encoded, HandlerContext, PayloadHandler
from engine.storage.device_files import MAX_DEVICE_BYTES, device_key, staging_path

KiB, MiB = 1 << 10, 1 << 20
# names it, so that the test cannot pass as 'expected failure' for any other reason.
CODEC_NAMES = CODECS.names()
HANDLER_NAMES = HANDLERS.names()
SESSION = b"conformance-test"
BOMB_BYTES = 64 * MiB  # what a bomb expands to; decoding must stay far below it
MEMORY_LIMIT = 16 * MiB


def _random(n: int, seed: int = 1) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def _compressible(n: int) -> bytes:
    text = b"".join(b"page %06d of a fairly compressible guest image\n" % i
                    for i in range(n // 40 + 1))
    return text[:n]


def _is_identity(codec: Codec) -> bool:
    """The codec sends bytes as they are: corruption is the channel checksum's job."""
    sample = b"identity probe " * 10
    return bytes(codec.compress(sample)) == sample


_BOMBS: dict[str, bytes] = {}


def bomb_for(codec: Codec) -> bytes:
    """A frame that expands to BOMB_BYTES zeros (small for any real compressor)."""
    if codec.spec not in _BOMBS:
        _BOMBS[codec.spec] = bytes(codec.compress(bytes(BOMB_BYTES)))
    return _BOMBS[codec.spec]


def peak_memory_of(call: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# =========================================================================================
# Codecs
# =========================================================================================

def _codec_specs() -> list[str]:
    """Every registered codec at its default level and at both ends of its level range."""
    specs = []
    for name in CODEC_NAMES:
        cls = CODECS.load(name)
        specs.append(name)
        if cls.levels is not None:
            specs += [f"{name}:{level}" for level in sorted({cls.levels.start,
                                                             cls.levels.stop - 1})]
    return specs


CODEC_SPECS = _codec_specs()
PAYLOADS = {
    "empty": b"",
    "one-byte": b"\x7f",
    "4KiB-random": _random(4 * KiB),
    "4KiB-compressible": _compressible(4 * KiB),
    "512KiB-random": _random(512 * KiB, seed=2),
    "512KiB-compressible": _compressible(512 * KiB),
    "512KiB-zero": bytes(512 * KiB),
}
NONEMPTY = [name for name, data in PAYLOADS.items() if data]


def test_the_registries_hold_the_built_in_entries():
    assert {"none", "zlib", "zstd"} <= set(CODEC_NAMES)
    assert {"ram", "device"} <= set(HANDLER_NAMES)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_is_registered_under_its_own_name(name):
    cls = CODECS.load(name)
    assert issubclass(cls, Codec) and cls.name == name
    codec = make_codec(name)
    assert codec.spec == (name if codec.level is None else f"{name}:{codec.level}")
    assert make_codec(codec.spec).spec == codec.spec  # the spec a header carries reloads


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_refuses_levels_it_does_not_have(name):
    cls = CODECS.load(name)
    bad = ["1"] if cls.levels is None else [str(cls.levels.stop), str(cls.levels.start - 1)]
    for level in bad + ["fast"]:
        with pytest.raises(UsageError):
            make_codec(f"{name}:{level}")


def test_an_unknown_codec_name_lists_the_known_ones():
    with pytest.raises(UsageError, match="known: " + ", ".join(CODEC_NAMES)):
        make_codec("no-such-codec")


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_round_trip_restores_the_input_exactly(spec, payload):
    codec, data = make_codec(spec), PAYLOADS[payload]
    frame = bytes(codec.compress(memoryview(data)))  # handlers pass views of the image
    out = codec.decompress(memoryview(frame), len(data))  # zmq hands over buffers
    assert len(out) == len(data) and bytes(out) == data


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_refuses_a_truncated_frame(spec, payload):
    codec, data = make_codec(spec), PAYLOADS[payload]
    frame = bytes(codec.compress(data))
    if not frame:
        pytest.skip("an empty frame cannot be truncated")
    for cut in sorted({len(frame) - 1, len(frame) // 2, 0}):
        with pytest.raises(CorruptPayload):
            codec.decompress(frame[:cut], len(data))


@pytest.mark.parametrize("payload", list(PAYLOADS))
@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_refuses_a_size_other_than_the_frames(spec, payload):
    codec, data = make_codec(spec), PAYLOADS[payload]
    frame = bytes(codec.compress(data))
    for size in sorted({len(data) + 1, max(len(data) - 1, 0), 2 * len(data) + 10} - {len(data)}):
        with pytest.raises(CorruptPayload):
            codec.decompress(frame, size)


@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_refuses_garbage(spec):
    codec = make_codec(spec)
    for garbage, size in [(_random(1000, seed=9), 4096), (b"\xff" * 64, 4096), (b"", 4096),
                          (b"\x00" * 10, 0)]:
        with pytest.raises(CorruptPayload):
            codec.decompress(garbage, size)


@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_output_for_a_flipped_byte_is_refused_or_exactly_the_size(spec):
    """Without its own checksum a codec may not notice every flip, but it must never return
    another size nor raise anything but CorruptPayload (the channel checksum does the rest)."""
    codec = make_codec(spec)
    data = _compressible(4 * KiB) + _random(512, seed=3)
    frame = bytes(codec.compress(data))
    step = max(1, len(frame) // 400)
    for position in range(0, len(frame), step):
        damaged = bytearray(frame)
        damaged[position] ^= 0x5A
        try:
            out = codec.decompress(bytes(damaged), len(data))
        except CorruptPayload:
            continue
        assert len(out) == len(data)


@pytest.mark.parametrize("spec", CODEC_SPECS)
def test_codec_refuses_a_frame_with_a_damaged_header(spec):
    codec = make_codec(spec)
    if _is_identity(codec):
        pytest.skip("an identity codec has no header")
    data = _compressible(4 * KiB)
    frame = bytearray(codec.compress(data))
    frame[0] ^= 0xFF
    with pytest.raises(CorruptPayload):
        codec.decompress(bytes(frame), len(data))


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_refuses_trailing_bytes_after_its_frame(name):
    codec = make_codec(name)
    data = _compressible(4 * KiB)
    frame = bytes(codec.compress(data))
    for tail in (b"\x00", b"trailing garbage", frame):
        with pytest.raises(CorruptPayload):
            codec.decompress(frame + tail, len(data))


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_refuses_a_size_bomb_without_allocating_it(name):
    codec = make_codec(name)
    bomb = bomb_for(codec)

    def expand() -> None:
        with pytest.raises(CorruptPayload):
            codec.decompress(bomb, 4096)

    assert peak_memory_of(expand) < MEMORY_LIMIT


# -- zstd frames that lie about their size ----------------------------------------------------

def _zstd_with_content_size(frame: bytes, size: int) -> bytes:
    """The frame with its header's Frame_Content_Size field rewritten to `size` (RFC 8878)."""
    descriptor = frame[4]
    size_flag, single_segment, dict_flag = descriptor >> 6, (descriptor >> 5) & 1, descriptor & 3
    offset = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single_segment else 0, 2, 4, 8)[size_flag]
    assert width, "frame has no content size field"
    value = size - 256 if width == 2 else size
    patched = bytearray(frame)
    patched[offset:offset + width] = value.to_bytes(width, "little")
    assert zstandard.frame_content_size(bytes(patched)) == size
    return bytes(patched)


needs_zstd = pytest.mark.skipif("zstd" not in CODEC_NAMES, reason="no zstd codec registered")


@needs_zstd
def test_zstd_frame_whose_header_understates_its_content_is_refused_within_bounds():
    codec = make_codec("zstd")
    liar = _zstd_with_content_size(bytes(codec.compress(bytes(BOMB_BYTES))), 4096)

    def expand() -> None:
        with pytest.raises(CorruptPayload):
            codec.decompress(liar, 4096)

    assert peak_memory_of(expand) < MEMORY_LIMIT


@needs_zstd
def test_zstd_frame_whose_header_overstates_its_content_is_refused():
    codec = make_codec("zstd")
    data = _random(4096, seed=4)
    liar = _zstd_with_content_size(bytes(codec.compress(data)), 8192)
    with pytest.raises(CorruptPayload):
        codec.decompress(liar, 8192)


@needs_zstd
def test_zstd_frame_that_states_no_size_is_refused():
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(4096))
    with pytest.raises(CorruptPayload):
        make_codec("zstd").decompress(frame, 4096)


@pytest.mark.skipif("zlib" not in CODEC_NAMES, reason="no zlib codec registered")
def test_zlib_raw_deflate_without_its_checksum_is_refused():
    data = _compressible(4096)
    frame = zlib.compress(data)[:-4]  # the adler32 trailer cut off
    with pytest.raises(CorruptPayload):
        make_codec("zlib").decompress(frame, len(data))


# =========================================================================================
# Payload handlers
# =========================================================================================

CHUNK = 16 * KiB  # device chunk size in these tests (small: many chunks, fast)
PACKET_PAGES = 8


def transfer_settings(codec: str, **changes: Any) -> TransferSettings:
    fields = dict(compress=codec, device_compress=codec, packet_pages=PACKET_PAGES,
                  chunk_size=CHUNK)
    fields.update(changes)
    return TransferSettings(**fields)


class Wire:
    """What lies between encode() and apply(): header encoding and the channel's checks."""

    def __init__(self, kind: str, handler: PayloadHandler, settings: TransferSettings) -> None:
        self.kind = kind
        self.rules = ChannelRules(SESSION, 0, settings, [kind], handler.max_payload())
        self.seq = 0

    def carry(self, encoded: Encoded) -> tuple[dict[str, Any], list[memoryview]]:
        frames = [bytes(f) for f in encoded.frames]
        header = encode(Packet(session=SESSION, channel=0, seq=self.seq, kind=self.kind,
                               sizes=[len(f) for f in frames], checksum=checksum(frames),
                               body=encoded.body))
        self.seq += 1
        msg = self.rules.check_message([memoryview(header), *map(memoryview, frames)])
        return msg.body, [memoryview(f) for f in frames]


def _snapshot_dir(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# -- RAM ----------------------------------------------------------------------------------

def ram_image(pages: int, tail: int = 0, seed: int = 0) -> bytes:
    """Pages of every flavour: zero, random, compressible, and zero but for one last byte."""
    rng = np.random.default_rng(seed)
    out = []
    for page in range(pages):
        flavour = page % 4
        if flavour == 0:
            out.append(bytes(PAGE_SIZE))
        elif flavour == 1:
            out.append(rng.bytes(PAGE_SIZE))
        elif flavour == 2:
            out.append(_compressible(PAGE_SIZE))
        else:
            out.append(bytes(PAGE_SIZE - 1) + b"\x01")
    return b"".join(out) + rng.integers(1, 256, tail, dtype=np.uint8).tobytes()


def page_is_nonzero(image: bytes) -> np.ndarray:
    pages = -(-len(image) // PAGE_SIZE)
    return np.array([any(image[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]) for p in range(pages)])


def tampered(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`body` with fields replaced (or, for _DELETE, removed) as a hostile source would."""
    for key, value in changes.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return body


class Ram:
    """A source and a destination RAM handler over two image files."""

    def __init__(self, folder: Path, codec: str, source: bytes, destination: bytes | None = None,
                 fresh: bool = True, track_written: bool = True,
                 packet_pages: int = PACKET_PAGES) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.settings = transfer_settings(codec, packet_pages=packet_pages)
        self.size = len(source)
        self.pages = -(-self.size // PAGE_SIZE)
        self.path = folder / "destination.img"
        if destination is None:
            with open(self.path, "wb") as f:
                f.truncate(self.size)
        else:
            assert len(destination) == self.size
            self.path.write_bytes(destination)
        self.image = map_file(self.path, writable=True)
        self.written = np.zeros(self.pages, np.uint8) if track_written else None
        cls = HANDLERS.load("ram")
        self.destination = cls(HandlerContext(settings=self.settings, image_size=self.size,
                                              image=self.image, image_path=str(self.path),
                                              fresh=fresh, written=self.written,
                                              device_dir=folder))
        self.source = self.new_source(source)
        self.wire = Wire("ram", self.destination, self.settings)
        (self.codec,) = self.destination.codecs.values()  # a fixed --compress: one codec

    def new_source(self, source: bytes) -> PayloadHandler:
        """A source handler over `source` (the image as it is in a later round)."""
        assert len(source) == self.size
        path = self.folder / f"source-{os.urandom(4).hex()}.img"
        path.write_bytes(source)
        image = map_file(path, writable=False)
        return HANDLERS.load("ram")(HandlerContext(settings=self.settings, image_size=self.size,
                                                   image=image, image_path=str(path),
                                                   device_dir=self.folder))

    def send(self, runs: list[list[int]], source: PayloadHandler | None = None) -> Encoded:
        encoded = (source or self.source).encode({"runs": runs})
        assert self.destination.apply(*self.wire.carry(encoded)) is None
        return encoded

    def send_all(self, source: PayloadHandler | None = None) -> None:
        for runs in range_packets(0, self.pages, self.settings.packet_pages):
            self.send(runs, source)

    def content(self) -> bytes:
        return self.path.read_bytes()

    def state(self) -> tuple[bytes, int, bytes | None]:
        written = None if self.written is None else self.written.tobytes()
        return self.content(), os.path.getsize(self.path), written

    def packet(self, page_runs: Any, zero_flags: list[bool], payload: bytes, **changes: Any
               ) -> tuple[dict[str, Any], list[bytes]]:
        """A packet as a source would send it; `changes` then tamper with its body."""
        body = {"runs": page_runs,
                "zero": np.packbits(np.array(zero_flags, dtype=bool)).tobytes(),
                "codec": self.codec.spec, "raw": len(payload)}
        frames = [] if not payload else [bytes(self.codec.compress(payload))]
        return tampered(body, changes), frames


_DELETE = object()
PATTERN = bytes(range(1, 256)) * 17  # non-zero bytes, so a stray write shows


def _pages(n: int) -> bytes:
    return (PATTERN * (n * PAGE_SIZE // len(PATTERN) + 1))[:n * PAGE_SIZE]


# Tampered RAM packets over an image of 12 pages and a 100-byte last page (13 pages), 8 pages
# per packet. Each returns (body, frames, expected error) or None if it does not apply.
TamperCase = Callable[[Any], "tuple[dict, list, type[Exception]] | None"]
RAM_SIZE = 12 * PAGE_SIZE + 100


def _ram_case(page_runs, zero_flags, payload, frames=None, error=ProtocolError,
              **changes) -> TamperCase:
    """A valid packet for these pages, then `changes` to its body and `frames` to its frames;
    `error` may depend on the pair (a function of it)."""
    def build(s: Ram):
        body, built = s.packet(page_runs, zero_flags, payload, **changes)
        expected = error if isinstance(error, type) else error(s)
        return body, built if frames is None else frames(s, built), expected
    return build


def _corrupt_unless_identity(s: Any) -> type[Exception]:
    """Bad payload bytes: a decoding codec says CorruptPayload; the identity RAM path sees
    frames that do not add up to `raw`, a plain ProtocolError."""
    return ProtocolError if _is_identity(s.codec) else CorruptPayload


RAM_TAMPERED: dict[str, TamperCase] = {
    "run-past-the-image-end": _ram_case([[12, 2]], [False] * 2, _pages(2)),
    "run-starting-at-the-image-end": _ram_case([[13, 1]], [False], _pages(1)),
    "run-far-outside": _ram_case([[1 << 40, 1]], [False], _pages(1)),
    "run-with-negative-start": _ram_case([[-1, 2]], [False] * 2, _pages(2)),
    "run-of-no-pages": _ram_case([[0, 0]], [], b""),
    "run-of-negative-count": _ram_case([[3, -1]], [], b""),
    "overlapping-runs": _ram_case([[0, 4], [2, 2]], [False] * 6, _pages(6)),
    "out-of-order-runs": _ram_case([[6, 2], [0, 2]], [False] * 4, _pages(4)),
    "repeated-run": _ram_case([[0, 2], [0, 2]], [False] * 4, _pages(4)),
    "more-pages-than-a-packet": _ram_case([[0, 9]], [False] * 9, _pages(9)),
    "more-pages-than-a-packet-over-runs": _ram_case([[0, 5], [6, 4]], [False] * 9, _pages(9)),
    "no-runs": _ram_case([], [], b""),
    "runs-not-a-list": _ram_case("0-2", [False] * 2, _pages(2)),
    "runs-missing": _ram_case([[0, 2]], [False] * 2, _pages(2), runs=_DELETE),
    "run-not-a-pair": _ram_case([[0, 2, 1]], [False] * 2, _pages(2)),
    "run-as-a-map": _ram_case([{"start": 0, "count": 2}], [False] * 2, _pages(2)),
    "run-with-a-bool": _ram_case([[False, 2]], [False] * 2, _pages(2)),
    "run-with-a-string": _ram_case([[0, "2"]], [False] * 2, _pages(2)),
    "run-with-a-float": _ram_case([[0, 2.0]], [False] * 2, _pages(2)),
    "zero-flags-too-short": _ram_case([[0, 2]], [False] * 2, _pages(2), zero=b""),
    "zero-flags-too-long": _ram_case([[0, 2]], [False] * 2, _pages(2), zero=b"\x00\x00"),
    "zero-flags-not-bytes": _ram_case([[0, 2]], [False] * 2, _pages(2), zero=[0, 0]),
    "zero-flags-as-text": _ram_case([[0, 2]], [False] * 2, _pages(2), zero="\x00"),
    "zero-flags-missing": _ram_case([[0, 2]], [False] * 2, _pages(2), zero=_DELETE),
    "unknown-codec": _ram_case([[0, 2]], [False] * 2, _pages(2), codec="bogus"),
    "another-sessions-codec": _ram_case([[0, 2]], [False] * 2, _pages(2), codec="zlib:9"),
    "identity-codec-claimed": lambda s: None if _is_identity(s.codec) else _ram_case(
        [[0, 2]], [False] * 2, _pages(2), codec="none")(s),
    "codec-missing": _ram_case([[0, 2]], [False] * 2, _pages(2), codec=_DELETE),
    "codec-not-text": _ram_case([[0, 2]], [False] * 2, _pages(2), codec=["none"]),
    "raw-one-too-big": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=2 * PAGE_SIZE + 1),
    "raw-one-too-small": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=2 * PAGE_SIZE - 1),
    "raw-negative": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=-1),
    "raw-as-text": _ram_case([[0, 2]], [False] * 2, _pages(2), raw="8192"),
    "raw-as-float": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=8192.0),
    "raw-missing": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=_DELETE),
    "raw-of-a-full-last-page": _ram_case([[12, 1]], [False], _pages(1)),
    "payload-frame-missing": _ram_case([[0, 2]], [False] * 2, _pages(2),
                                       frames=lambda s, f: []),
    "payload-frame-extra": _ram_case([[0, 2]], [False] * 2, _pages(2),
                                     frames=lambda s, f: f + [b"x" * 16]),
    "payload-for-zero-pages": _ram_case([[0, 2]], [True] * 2, b"",
                                        frames=lambda s, f: [bytes(s.codec.compress(_pages(2)))]),
    "payload-one-byte-short": _ram_case([[0, 2]], [False] * 2, _pages(2),
                                        error=_corrupt_unless_identity,
                                        frames=lambda s, f: [bytes(s.codec.compress(
                                            _pages(2)[:-1]))]),
    "payload-truncated": _ram_case([[0, 2]], [False] * 2, _pages(2),
                                   error=_corrupt_unless_identity,
                                   frames=lambda s, f: [f[0][:-1]]),
    "payload-damaged-header": lambda s: None if _is_identity(s.codec) else _ram_case(
        [[0, 2]], [False] * 2, _pages(2), error=CorruptPayload,
        frames=lambda s, f: [b"\xff" + f[0][1:]])(s),
}


# -- device -------------------------------------------------------------------------------

class Device:
    """A source and a destination device handler; the destination stages into `staging`."""

    def __init__(self, folder: Path, codec: str, chunk_size: int = CHUNK) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.staging = folder / "staging"
        self.staging.mkdir(exist_ok=True)
        self.settings = transfer_settings(codec, chunk_size=chunk_size)
        cls = HANDLERS.load("device")
        self.source = cls(HandlerContext(settings=self.settings, image_size=0,
                                         device_dir=folder))
        self.destination = cls(HandlerContext(settings=self.settings, image_size=0,
                                              device_dir=self.staging))
        self.wire = Wire("device", self.destination, self.settings)
        self.codec = self.destination.codec
        self.chunk_size = chunk_size

    def blob(self, name: str, data: bytes) -> Path:
        path = self.folder / f"{name}.state"
        path.write_bytes(data)
        return path

    def specs(self, name: str, path: Path, instance: int = 0) -> list[dict[str, Any]]:
        size = path.stat().st_size
        return [{"name": name, "instance": instance, "index": index, "last": last,
                 "path": str(path), "offset": offset, "length": length}
                for index, offset, length, last in chunk_spans(size, self.chunk_size)]

    def send(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.destination.apply(*self.wire.carry(self.source.encode(spec)))

    def staged(self, key: str) -> bytes:
        return staging_path(self.staging, key).read_bytes()

    def state(self) -> dict[str, bytes]:
        return _snapshot_dir(self.staging)

    def packet(self, data: bytes, **changes: Any) -> tuple[dict[str, Any], list[bytes]]:
        body = {"name": "cpu", "instance": 0, "index": 0, "last": len(data) < self.chunk_size,
                "codec": self.codec.spec, "raw": len(data)}
        frames = [bytes(self.codec.compress(data))] if data else []
        return tampered(body, changes), frames

    def close(self) -> None:
        self.source.close()
        self.destination.close()


def _device_case(data: bytes | None = None, frames=None, error=ProtocolError,
                 **changes) -> TamperCase:
    def build(s: Device):
        body, built = s.packet(_pages(4)[:CHUNK] if data is None else data, **changes)
        return body, built if frames is None else frames(s, built), error
    return build


DEVICE_TAMPERED: dict[str, TamperCase] = {
    **{f"name-{label}": _device_case(name=value) for label, value in [
        ("empty", ""), ("hidden", ".hidden"), ("parent", ".."), ("escaping", "../escape"),
        ("with-slash", "a/b"), ("absolute", "/etc/passwd"), ("too-long", "x" * 129),
        ("non-ascii", "naïve"), ("leading-dash", "-rf"), ("with-nul", "a\x00b"),
        ("int", 7), ("none", None), ("bytes", b"cpu"), ("missing", _DELETE)]},
    **{f"instance-{label}": _device_case(instance=value) for label, value in [
        ("negative", -1), ("huge", 65536), ("bool", True), ("text", "0"), ("float", 0.0),
        ("none", None), ("missing", _DELETE)]},
    **{f"index-{label}": _device_case(index=value) for label, value in [
        ("negative", -1), ("past-the-device-limit", MAX_DEVICE_BYTES // CHUNK),
        ("huge", 1 << 64), ("bool", False), ("float", 0.0), ("text", "0"), ("none", None),
        ("missing", _DELETE)]},
    **{f"last-{label}": _device_case(last=value) for label, value in [
        ("int", 1), ("text", "yes"), ("none", None), ("missing", _DELETE)]},
    "raw-over-the-chunk-size": _device_case(data=_pages(5)[:CHUNK + 1], last=True),
    "raw-negative": _device_case(raw=-1),
    "raw-bool": _device_case(raw=True),
    "raw-text": _device_case(raw=str(CHUNK)),
    "raw-missing": _device_case(raw=_DELETE),
    "short-chunk-not-last": _device_case(data=_pages(4)[:CHUNK - 1], last=False),
    "empty-chunk-not-last": _device_case(data=b"", last=False),
    "unknown-codec": _device_case(codec="bogus"),
    "another-sessions-codec": _device_case(codec="zstd:19"),
    "codec-missing": _device_case(codec=_DELETE),
    "payload-frame-missing": _device_case(frames=lambda s, f: []),
    "payload-in-two-frames": _device_case(frames=lambda s, f: f + [b"x"]),
    "payload-for-an-empty-chunk": _device_case(data=b"", last=True,
                                               frames=lambda s, f: [b"x"]),
    "payload-decodes-one-byte-short": _device_case(
        raw=CHUNK, error=CorruptPayload,
        frames=lambda s, f: [bytes(s.codec.compress(_pages(4)[:CHUNK - 1]))]),
    "payload-truncated": _device_case(frames=lambda s, f: [f[0][:-1]], error=CorruptPayload),
    "payload-damaged-header": lambda s: None if _is_identity(s.codec) else _device_case(
        frames=lambda s, f: [b"\xff" + f[0][1:]], error=CorruptPayload)(s),
}


# -- the scenarios that drive each registered handler through the battery ------------------

@dataclasses.dataclass
class Scenario:
    """How the battery drives one handler kind; every registered handler needs one."""

    make: Callable[[Path, str], Any]  # (folder, codec) -> a source/destination pair
    round_trip: Callable[[Path, str], None]
    empty: Callable[[Path, str], None]
    worst_case: Callable[[Path, str], None]  # a full incompressible packet fits max_payload
    tampered: dict[str, TamperCase]
    bomb: Callable[[Any], tuple[dict, list]]
    fuzz: Callable[[Any, Any], None]  # (pair, hypothesis data) -> one hostile packet applied


def holds_data(s: "Ram") -> np.ndarray:
    """Which destination pages the journal says may hold data (engine/storage/journal.py)."""
    return (s.written & HOLDS_DATA) // HOLDS_DATA


def ram_round_trip(folder: Path, codec: str) -> None:
    image = ram_image(21, tail=1000)
    s = Ram(folder, codec, image)
    s.send_all()
    assert s.content() == image
    assert holds_data(s).tolist() == page_is_nonzero(image).astype(int).tolist()
    assert (s.written & APPLIED).all()


def ram_empty(folder: Path, codec: str) -> None:
    s = Ram(folder, codec, bytes(PACKET_PAGES * PAGE_SIZE))
    encoded = s.send([[0, PACKET_PAGES]])
    assert encoded.frames == [] and encoded.body["raw"] == 0  # zero pages: indices only
    assert s.content() == bytes(PACKET_PAGES * PAGE_SIZE)
    assert not holds_data(s).any() and (s.written & APPLIED).all()


def ram_worst_case(folder: Path, codec: str) -> None:
    pages = 128
    image = _random(pages * PAGE_SIZE, seed=7)
    s = Ram(folder, codec, image, packet_pages=pages)
    s.send([[0, pages]])
    assert s.content() == image


def ram_bomb(s: Ram) -> tuple[dict, list]:
    body, _ = s.packet([[0, 1]], [False], _pages(1))
    return body, [bomb_for(s.codec)]


def ram_fuzz(s: Ram, data: Any) -> None:
    near = st.integers(-2, s.pages + 2)
    run = st.lists(near, min_size=2, max_size=2) | ANY_VALUE
    body = data.draw(st.fixed_dictionaries({}, optional={
        "runs": st.lists(run, max_size=4) | ANY_VALUE,
        "zero": st.binary(max_size=3) | ANY_VALUE,
        "codec": st.sampled_from([s.codec.spec, *CODEC_SPECS, "bogus"]) | ANY_VALUE,
        "raw": st.sampled_from([0, 100, PAGE_SIZE, PAGE_SIZE + 100, 2 * PAGE_SIZE])
        | st.integers(-1, 10 * PAGE_SIZE) | ANY_VALUE,
        "extra": ANY_VALUE}), label="body")
    if data.draw(st.booleans(), label="start from a valid packet"):
        start = data.draw(st.integers(0, s.pages - 1))
        count = data.draw(st.integers(1, min(PACKET_PAGES, s.pages - start)))
        zero = data.draw(st.lists(st.booleans(), min_size=count, max_size=count))
        raw = sum(min((start + i + 1) * PAGE_SIZE, s.size) - (start + i) * PAGE_SIZE
                  for i in range(count) if not zero[i])
        valid, valid_frames = s.packet([[start, count]], zero, b"\x05" * raw)
        body = {**valid, **data.draw(st.dictionaries(st.sampled_from(list(valid)), ANY_VALUE,
                                                     max_size=1))}
        frames = data.draw(st.just(valid_frames) | fuzz_frames(s.codec), label="frames")
    else:
        frames = data.draw(fuzz_frames(s.codec), label="frames")
    try:
        s.destination.apply(body, frames)
    except ProtocolError:
        pass


def device_round_trip(folder: Path, codec: str) -> None:
    s = Device(folder, codec)
    blob = _random(CHUNK, seed=5) + _compressible(CHUNK) + b"\x00" * 1000
    specs = s.specs("cpu", s.blob("cpu", blob))
    assert len(specs) == 3
    notices = [s.send(spec) for spec in reversed(specs)]  # chunks may arrive in any order
    assert s.staged("cpu") == blob
    assert [n["index"] for n in notices] == [2, 1, 0]
    assert notices[0] == {"name": "cpu", "instance": 0, "index": 2, "last": True, "size": 1000,
                          "hash": chunk_hash(blob[2 * CHUNK:])}
    assert notices[2] == {"name": "cpu", "instance": 0, "index": 0, "last": False, "size": CHUNK,
                          "hash": chunk_hash(blob[:CHUNK])}
    s.close()


def device_empty(folder: Path, codec: str) -> None:
    s = Device(folder, codec)
    specs = s.specs("empty", s.blob("empty", b""))
    assert [(spec["index"], spec["length"], spec["last"]) for spec in specs] == [(0, 0, True)]
    encoded = s.source.encode(specs[0])
    assert encoded.frames == [] and encoded.body["raw"] == 0
    notice = s.destination.apply(*s.wire.carry(encoded))
    assert notice == {"name": "empty", "instance": 0, "index": 0, "last": True, "size": 0,
                      "hash": chunk_hash(b"")}
    assert staging_path(s.staging, "empty").exists() and s.staged("empty") == b""
    s.close()


def device_worst_case(folder: Path, codec: str) -> None:
    s = Device(folder, codec, chunk_size=1 * MiB)
    blob = _random(1 * MiB, seed=8)
    for spec in s.specs("ram-block", s.blob("ram-block", blob)):
        s.send(spec)
    assert s.staged("ram-block") == blob
    s.close()


def device_bomb(s: Device) -> tuple[dict, list]:
    body, _ = s.packet(_pages(4)[:CHUNK], last=True)
    return body, [bomb_for(s.codec)]


def device_fuzz(s: Device, data: Any) -> None:
    body = data.draw(st.fixed_dictionaries({}, optional={
        "name": st.sampled_from(["cpu", "disk0", "a.b_c-d"]) | st.text(max_size=10)
        | ANY_VALUE,
        "instance": st.integers(-2, 3) | st.sampled_from([65535, 65536]) | ANY_VALUE,
        "index": st.integers(-2, 4) | ANY_VALUE,
        "last": st.booleans() | ANY_VALUE,
        "codec": st.sampled_from([s.codec.spec, *CODEC_SPECS, "bogus"]) | ANY_VALUE,
        "raw": st.sampled_from([0, 1, CHUNK - 1, CHUNK, CHUNK + 1]) | st.integers()
        | ANY_VALUE,
        "extra": ANY_VALUE}), label="body")
    frames = data.draw(fuzz_frames(s.codec), label="frames")
    try:
        s.destination.apply(body, frames)
    except ProtocolError:
        pass


SCENARIOS: dict[str, Scenario] = {
    "ram": Scenario(make=lambda folder, codec: Ram(folder, codec, ram_image(12, tail=100)),
                    round_trip=ram_round_trip, empty=ram_empty, worst_case=ram_worst_case,
                    tampered=RAM_TAMPERED, bomb=ram_bomb, fuzz=ram_fuzz),
    "device": Scenario(make=Device, round_trip=device_round_trip, empty=device_empty,
                       worst_case=device_worst_case, tampered=DEVICE_TAMPERED,
                       bomb=device_bomb, fuzz=device_fuzz),
}

_LEAF = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
         | st.text(max_size=8) | st.binary(max_size=8))
ANY_VALUE = st.recursive(_LEAF, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                         max_leaves=4)


def fuzz_frames(codec: Codec) -> st.SearchStrategy:
    """Random frames, or a real frame of a plausible size (to get past the size checks)."""
    sizes = [0, 1, 100, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 100, 2 * PAGE_SIZE, CHUNK - 1,
             CHUNK, CHUNK + 1]
    real = st.sampled_from(sizes).map(lambda n: [bytes(codec.compress(b"\x05" * n))])
    return st.lists(st.binary(max_size=3 * PAGE_SIZE), max_size=3) | real


# -- the battery ------------------------------------------------------------------------------

def scenario(kind: str) -> Scenario:
    if kind not in SCENARIOS:
        pytest.fail(f"handler {kind!r} is registered but has no conformance scenario here")
    return SCENARIOS[kind]


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_every_registered_handler_has_a_scenario(kind):
    assert kind in SCENARIOS, f"add a Scenario for handler {kind!r} to test_conformance.py"


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_is_registered_under_its_own_kind(kind):
    cls = HANDLERS.load(kind)
    assert issubclass(cls, PayloadHandler) and cls.kind == kind


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_round_trip_delivers_the_source_bytes(tmp_path, kind, codec):
    scenario(kind).round_trip(tmp_path, codec)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_round_trip_of_empty_input(tmp_path, kind, codec):
    scenario(kind).empty(tmp_path, codec)


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_worst_case_packet_fits_its_max_payload(tmp_path, kind, codec):
    scenario(kind).worst_case(tmp_path, codec)


_TAMPERED = [(kind, label) for kind in HANDLER_NAMES if kind in SCENARIOS
             for label in SCENARIOS[kind].tampered]


_PAIRS: dict[tuple[str, str], Any] = {}


def shared_pair(factory: pytest.TempPathFactory, kind: str, codec: str) -> Any:
    """One source/destination pair per handler and codec for the tests that must leave it
    unchanged (each checks that it did: a leak would fail that test, not a later one)."""
    if (kind, codec) not in _PAIRS:
        _PAIRS[kind, codec] = scenario(kind).make(factory.mktemp(f"{kind}-{codec}"), codec)
    return _PAIRS[kind, codec]


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("kind,label", _TAMPERED, ids=[f"{k}-{lb}" for k, lb in _TAMPERED])
def test_handler_refuses_a_tampered_packet_and_writes_nothing(tmp_path_factory, kind, label,
                                                              codec):
    pair = shared_pair(tmp_path_factory, kind, codec)
    case = scenario(kind).tampered[label](pair)
    if case is None:
        pytest.skip("does not apply to an identity codec")
    body, frames, error = case
    before = pair.state()
    with pytest.raises(error):
        pair.destination.apply(body, [memoryview(f) for f in frames])
    assert pair.state() == before


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_the_tampered_packet_builders_make_valid_packets_when_untampered(tmp_path, kind):
    """Guards the test above: its packets differ from valid ones only where they say."""
    for codec in CODEC_NAMES:
        pair = scenario(kind).make(tmp_path / codec, codec)
        if kind == "ram":
            body, frames = pair.packet([[0, 2], [5, 1], [12, 1]], [False, True, False, False],
                                       _pages(2) + _pages(1)[:100])
            pair.destination.apply(body, frames)
            assert pair.content()[:PAGE_SIZE] == _pages(1)
        else:
            pair.destination.apply(*pair.packet(_pages(4)[:CHUNK], last=False))
            pair.destination.apply(*pair.packet(b"", index=1, last=True))
            assert pair.staged("cpu") == _pages(4)[:CHUNK]


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_refuses_a_size_bomb_without_allocating_it(tmp_path_factory, kind, codec):
    pair = shared_pair(tmp_path_factory, kind, codec)
    body, frames = scenario(kind).bomb(pair)
    before = pair.state()
    expected = _corrupt_unless_identity(pair) if kind == "ram" else CorruptPayload

    def apply() -> None:
        with pytest.raises(expected):
            pair.destination.apply(body, frames)

    assert peak_memory_of(apply) < MEMORY_LIMIT
    assert pair.state() == before


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_apply_raises_only_protocol_errors_on_hostile_packets(tmp_path_factory, kind):
    pairs = {codec: scenario(kind).make(tmp_path_factory.mktemp(f"fuzz-{kind}-{codec}"), codec)
             for codec in CODEC_NAMES}
    sizes = {codec: os.path.getsize(pair.path) for codec, pair in pairs.items()
             if hasattr(pair, "path")}

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.data())
    def hostile(data):
        codec = data.draw(st.sampled_from(CODEC_NAMES), label="codec")
        scenario(kind).fuzz(pairs[codec], data)
        if codec in sizes:  # nothing written outside the image
            assert os.path.getsize(pairs[codec].path) == sizes[codec]

    hostile()


# -- RAM specifics ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_image_with_a_short_last_page_arrives_whole(tmp_path, codec):
    for tail_pages, tail in [(5, 100), (0, 1), (0, PAGE_SIZE - 1), (3, PAGE_SIZE - 1)]:
        image = ram_image(tail_pages, tail=tail, seed=tail)
        s = Ram(tmp_path / f"{tail_pages}-{tail}", codec, image)
        s.send_all()
        assert s.content() == image and holds_data(s)[-1] == 1


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_sends_only_the_listed_pages(tmp_path, codec):
    image = bytes(b"\xaa") * (30 * PAGE_SIZE)
    s = Ram(tmp_path, codec, image)
    chosen = [1, 2, 3, 7, 9, 10, 29]
    for runs in list_packets(np.array(chosen), 4):
        s.send(runs)
    content = s.content()
    for page in range(30):
        expected = b"\xaa" if page in chosen else b"\x00"
        assert content[page * PAGE_SIZE:(page + 1) * PAGE_SIZE] == expected * PAGE_SIZE, page


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_zero_page_of_a_later_round_overwrites_the_earlier_copy(tmp_path, codec):
    first = bytes(b"\x11") * (6 * PAGE_SIZE + 200)  # short last page too
    s = Ram(tmp_path, codec, first)
    s.send_all()
    assert s.content() == first and holds_data(s).all()
    second = bytearray(first)
    for page in (1, 4):
        second[page * PAGE_SIZE:(page + 1) * PAGE_SIZE] = bytes(PAGE_SIZE)
    second[6 * PAGE_SIZE:] = bytes(200)
    later = s.new_source(bytes(second))
    for runs in list_packets(np.array([1, 4, 6]), PACKET_PAGES):
        s.send(runs, later)
    assert s.content() == bytes(second)
    assert holds_data(s).tolist() == [1, 0, 1, 1, 0, 1, 0]
    third = s.new_source(first)  # and back again in a third round
    s.send([[1, 1]], third)
    assert s.content()[PAGE_SIZE:2 * PAGE_SIZE] == first[:PAGE_SIZE] and holds_data(s)[1] == 1


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_fresh_destination_leaves_never_written_zero_pages_alone(tmp_path, codec):
    """A fresh destination is all zero, so zero pages need no write (it stays sparse). The
    sentinel shows that the handler trusts `fresh` and `written` rather than writing."""
    image = ram_image(8)
    s = Ram(tmp_path, codec, image, destination=b"\xee" * len(image))
    s.send([[0, 8]])
    for page in range(8):
        got = s.content()[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]
        if page % 4 == 0:  # zero pages
            assert got == b"\xee" * PAGE_SIZE and holds_data(s)[page] == 0
        else:
            assert got == image[page * PAGE_SIZE:(page + 1) * PAGE_SIZE]


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("track_written", [True, False])
def test_ram_reused_destination_writes_zero_pages(tmp_path, codec, track_written):
    image = ram_image(8, tail=10)
    s = Ram(tmp_path, codec, image, destination=b"\xee" * len(image), fresh=False,
            track_written=track_written)
    s.send_all()
    assert s.content() == image


def test_ram_handler_on_an_empty_image_refuses_every_page(tmp_path):
    settings = transfer_settings("none")
    handler = HANDLERS.load("ram")(HandlerContext(settings=settings, image_size=0, image=None,
                                                  written=None, device_dir=tmp_path))
    for runs in ([[0, 1]], [], [[0, 0]]):
        with pytest.raises(ProtocolError):
            handler.apply({"runs": runs, "zero": b"\x80", "codec": "none", "raw": 0}, [])


# -- device specifics ---------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_device_chunk_lands_at_its_index_whatever_the_arrival_order(tmp_path, codec):
    s = Device(tmp_path, codec)
    blob = _random(2 * CHUNK + 77, seed=11)
    specs = s.specs("disk", s.blob("disk", blob), instance=2)
    key = device_key("disk", 2)
    assert key == "disk.2"
    s.send(specs[1])
    staged = s.staged(key)
    assert len(staged) == 2 * CHUNK
    assert staged[:CHUNK] == bytes(CHUNK) and staged[CHUNK:] == blob[CHUNK:2 * CHUNK]
    s.send(specs[2])
    s.send(specs[0])
    assert s.staged(key) == blob
    s.close()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_device_of_exactly_whole_chunks_ends_with_a_full_last_chunk(tmp_path, codec):
    s = Device(tmp_path, codec)
    blob = _compressible(2 * CHUNK)
    specs = s.specs("nic", s.blob("nic", blob))
    notices = [s.send(spec) for spec in specs]
    assert [(n["index"], n["last"], n["size"]) for n in notices] == [(0, False, CHUNK),
                                                                     (1, True, CHUNK)]
    assert s.staged("nic") == blob
    s.close()


def test_device_notice_is_what_the_assembler_takes_and_survives_ipc(tmp_path):
    s = Device(tmp_path, "zstd" if "zstd" in CODEC_NAMES else CODEC_NAMES[0])
    notice = s.send(s.specs("cpu", s.blob("cpu", b"state"))[0])
    inspect.signature(DeviceAssembler.add).bind(None, **notice)
    carried = decode(encode(jobs.Notice(kind="device", data=notice)), jobs.Notice)
    assert carried.data == notice
    s.close()


def test_device_name_with_a_trailing_newline_is_refused(tmp_path):
    s = Device(tmp_path, "none")
    body, frames = s.packet(b"state", name="cpu\n", last=True)
    with pytest.raises(ProtocolError):
        s.destination.apply(body, frames)
    assert s.state() == {}


# -- packaging --------------------------------------------------------------------------------

@pytest.mark.parametrize("module", ["workers.codecs", "workers.handlers",
                                    "workers.handlers.ram"])
def test_workers_packages_import_on_their_own(module):
    """A third-party handler or codec starts with `from workers.handlers import ...`."""
    ours = [name for name in sys.modules if name.split(".")[0] in ("engine", "workers")]
    saved = {name: sys.modules.pop(name) for name in ours}
    try:
        importlib.import_module(module)
    finally:
        for name in [n for n in sys.modules if n.split(".")[0] in ("engine", "workers")]:
            del sys.modules[name]
        sys.modules.update(saved)
