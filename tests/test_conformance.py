"""The conformance battery (workers/testing.py) run for every registered codec and handler.

Parametrised over the registries (CODECS.names(), HANDLERS.names()), so a new entry is tested
the moment it is registered: a codec needs nothing more, a handler needs a scenario below
(test_every_registered_handler_has_a_scenario fails until it has one). Each test runs one
property of the battery; the rest of this file is what the battery cannot know: the built-in
handlers' scenarios and hand-made tampered packets, their own behaviour (RAM's zero pages and
journal, device chunks and notices), the zstd and zlib formats' own liars, fuzzing that knows
the built-in bodies field by field, and proof that the battery catches a broken plugin.
No sockets, no processes: handlers are driven directly, their packets carried by the
battery's Wire, which applies the real header encoding and ChannelRules checks.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.coordinator.assembly import DeviceAssembler
from engine.coordinator.partition import chunk_spans, list_packets, range_packets
from engine.errors import CorruptPayload, ProtocolError, UsageError
from engine.settings import PAGE_SIZE, TransferSettings
from engine.storage.device_files import MAX_DEVICE_BYTES, NAME_PATTERN, device_key, staging_path
from engine.storage.image import map_file
from engine.storage.digest import chunk_hash
from engine.storage.journal import APPLIED, HOLDS_DATA
from engine.wire import jobs
from engine.wire.framing import decode, encode
from workers.codecs import CODECS, Codec, make_codec
from workers.codecs.plain import PlainCodec
from workers.codecs.zlib import ZlibCodec
from workers.handlers import HANDLERS, Encoded, HandlerContext, PayloadHandler
from workers.handlers.device import DeviceHandler
from workers.testing import (BOMB_BYTES, CHUNK_SIZE, MEMORY_LIMIT, PACKET_PAGES, SAMPLE_BYTES,
                             ConformanceError, HandlerScenario, Tampered, Wire, check_codec,
                             check_handler, compressible_bytes, is_identity, mixed_pages,
                             peak_memory, random_bytes, transfer_settings)

ROOT = Path(__file__).resolve().parent.parent
CODEC_NAMES = CODECS.names()
HANDLER_NAMES = HANDLERS.names()
CHUNK = CHUNK_SIZE


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


def test_the_registries_hold_the_built_in_entries():
    assert {"none", "zlib", "zstd"} <= set(CODEC_NAMES)
    assert {"ram", "device"} <= set(HANDLER_NAMES)


def _codec_test(prop: str, specs: list[str]) -> Callable[[str], None]:
    """A test running one property of the battery for each of these codec specs."""
    @pytest.mark.parametrize("spec", specs)
    def test(spec: str) -> None:
        check_codec(spec, [prop])
    return test


# Properties of the format run at every level's ends; of the name, at its default level.
test_codec_is_registered_under_its_own_name = _codec_test("registered", CODEC_NAMES)
test_codec_round_trip_restores_the_input_exactly = _codec_test("round trip", CODEC_SPECS)
test_codec_refuses_a_truncated_frame = _codec_test("truncated", CODEC_SPECS)
test_codec_refuses_a_size_other_than_the_frames = _codec_test("wrong size", CODEC_SPECS)
test_codec_refuses_garbage = _codec_test("garbage", CODEC_SPECS)
test_codec_output_for_a_flipped_byte_is_refused_or_exactly_the_size = _codec_test(
    "flipped byte", CODEC_SPECS)
test_codec_refuses_a_frame_with_a_damaged_header = _codec_test("damaged header", CODEC_SPECS)
test_codec_refuses_trailing_bytes_after_its_frame = _codec_test("trailing bytes", CODEC_NAMES)
test_codec_refuses_a_size_bomb_without_allocating_it = _codec_test("size bomb", CODEC_SPECS)


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_codec_refuses_levels_it_does_not_have(name):
    check_codec(name, ["levels"])
    with pytest.raises(UsageError):  # make_codec's own parsing, before any codec is built
        make_codec(f"{name}:fast")


def test_an_unknown_codec_name_lists_the_known_ones():
    with pytest.raises(UsageError, match="known: " + ", ".join(CODEC_NAMES)):
        make_codec("no-such-codec")


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

    assert peak_memory(expand) < MEMORY_LIMIT


@needs_zstd
def test_zstd_frame_whose_header_overstates_its_content_is_refused():
    codec = make_codec("zstd")
    data = random_bytes(4096, seed=4)
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
    data = compressible_bytes(4096)
    frame = zlib.compress(data)[:-4]  # the adler32 trailer cut off
    with pytest.raises(CorruptPayload):
        make_codec("zlib").decompress(frame, len(data))


# =========================================================================================
# Payload handlers
# =========================================================================================

_DELETE = object()
PATTERN = bytes(range(1, 256)) * 17  # non-zero bytes, so a stray write shows


def _pages(n: int) -> bytes:
    return (PATTERN * (n * PAGE_SIZE // len(PATTERN) + 1))[:n * PAGE_SIZE]


def _snapshot_dir(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def tampered(body: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`body` with fields replaced (or, for _DELETE, removed) as a hostile source would."""
    for key, value in changes.items():
        if value is _DELETE:
            del body[key]
        else:
            body[key] = value
    return body


def _corrupt_unless_identity(codec: Codec) -> type[Exception]:
    """Bad payload bytes: a decoding codec says CorruptPayload; the identity RAM path sees
    frames that do not add up to `raw`, a plain ProtocolError."""
    return ProtocolError if is_identity(codec) else CorruptPayload


# A tampered packet for the session's codec, or None if it does not apply to that codec.
TamperCase = Callable[[Codec], "Tampered | None"]


# -- RAM ----------------------------------------------------------------------------------

def ram_source(folder: Path, settings: TransferSettings, image: bytes
               ) -> tuple[HandlerContext, list[dict[str, Any]]]:
    """A source image file (mapped read-only, as a worker maps it) and the packets that send
    every page of it; a new file each call, for a later round over the same destination."""
    path = folder / f"source-{os.urandom(4).hex()}.img"
    path.write_bytes(image)
    context = HandlerContext(settings=settings, image_size=len(image),
                             image=map_file(path, writable=False), image_path=str(path),
                             device_dir=folder)
    pages = -(-len(image) // PAGE_SIZE)
    return context, [{"runs": runs} for runs in range_packets(0, pages, settings.packet_pages)]


def ram_destination(folder: Path, settings: TransferSettings, size: int,
                    content: bytes | None = None, fresh: bool = True,
                    track_written: bool = True) -> HandlerContext:
    """A destination image: sparse and all zero (fresh), or holding `content` already."""
    path = folder / "destination.img"
    if content is None:
        with open(path, "wb") as f:
            f.truncate(size)
    else:
        assert len(content) == size
        path.write_bytes(content)
    written = np.zeros(-(-size // PAGE_SIZE), np.uint8) if track_written else None
    return HandlerContext(settings=settings, image_size=size, image=map_file(path, writable=True),
                          image_path=str(path), fresh=fresh, written=written, device_dir=folder)


def ram_landed(context: HandlerContext) -> bytes:
    return Path(context.image_path).read_bytes()


def ram_packet(codec: Codec, page_runs: Any, zero_flags: list[bool], payload: bytes, /,
               **changes: Any) -> tuple[dict[str, Any], list[bytes]]:
    """A packet as a source would send it; `changes` then tamper with its body."""
    body = {"runs": page_runs,
            "zero": np.packbits(np.array(zero_flags, dtype=bool)).tobytes(),
            "codec": codec.spec, "raw": len(payload)}
    frames = [] if not payload else [bytes(codec.compress(payload))]
    return tampered(body, changes), frames


def page_is_nonzero(image: bytes) -> np.ndarray:
    pages = -(-len(image) // PAGE_SIZE)
    return np.array([any(image[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]) for p in range(pages)])


class Ram:
    """A source and a destination RAM handler over two image files."""

    def __init__(self, folder: Path, codec: str, source: bytes, destination: bytes | None = None,
                 fresh: bool = True, track_written: bool = True) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.settings = transfer_settings(codec)
        self.size = len(source)
        self.pages = -(-self.size // PAGE_SIZE)
        context = ram_destination(folder, self.settings, self.size, destination, fresh,
                                  track_written)
        self.path = Path(context.image_path)
        self.written = context.written
        self.destination = HANDLERS.load("ram")(context)
        self.source = self.new_source(source)
        self.wire = Wire(self.destination, self.settings)
        (self.codec,) = self.destination.codecs.values()  # a fixed --compress: one codec

    def new_source(self, source: bytes) -> PayloadHandler:
        """A source handler over `source` (the image as it is in a later round)."""
        assert len(source) == self.size
        return HANDLERS.load("ram")(ram_source(self.folder, self.settings, source)[0])

    def send(self, runs: list[list[int]], source: PayloadHandler | None = None) -> Encoded:
        encoded = (source or self.source).encode({"runs": runs})
        assert self.destination.apply(*self.wire.carry(encoded)) is None
        return encoded

    def send_all(self, source: PayloadHandler | None = None) -> None:
        for runs in range_packets(0, self.pages, self.settings.packet_pages):
            self.send(runs, source)

    def content(self) -> bytes:
        return self.path.read_bytes()

    def packet(self, page_runs: Any, zero_flags: list[bool], payload: bytes, **changes: Any
               ) -> tuple[dict[str, Any], list[bytes]]:
        return ram_packet(self.codec, page_runs, zero_flags, payload, **changes)


def holds_data(s: Ram) -> np.ndarray:
    """Which destination pages the journal says may hold data (engine/storage/journal.py)."""
    return (s.written & HOLDS_DATA) // HOLDS_DATA


def _ram_case(page_runs, zero_flags, payload, frames=None, error=ProtocolError,
              **changes) -> TamperCase:
    """A valid packet for these pages, then `changes` to its body and `frames` to its frames;
    `error` may depend on the codec (a function of it)."""
    def build(codec: Codec) -> Tampered:
        body, built = ram_packet(codec, page_runs, zero_flags, payload, **changes)
        return Tampered(body, built if frames is None else frames(codec, built),
                        error if isinstance(error, type) else error(codec))
    return build


# Against the battery's destination of SAMPLE_BYTES (12 pages and a 100-byte last page: 13
# pages), 8 pages per packet. The battery adds the frame cases (missing, extra, truncated,
# damaged header) itself.
assert SAMPLE_BYTES == 12 * PAGE_SIZE + 100 and PACKET_PAGES == 8
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
    "identity-codec-claimed": lambda codec: None if is_identity(codec) else _ram_case(
        [[0, 2]], [False] * 2, _pages(2), codec="none")(codec),
    "codec-missing": _ram_case([[0, 2]], [False] * 2, _pages(2), codec=_DELETE),
    "codec-not-text": _ram_case([[0, 2]], [False] * 2, _pages(2), codec=["none"]),
    "raw-one-too-big": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=2 * PAGE_SIZE + 1),
    "raw-one-too-small": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=2 * PAGE_SIZE - 1),
    "raw-negative": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=-1),
    "raw-as-text": _ram_case([[0, 2]], [False] * 2, _pages(2), raw="8192"),
    "raw-as-float": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=8192.0),
    "raw-missing": _ram_case([[0, 2]], [False] * 2, _pages(2), raw=_DELETE),
    "raw-of-a-full-last-page": _ram_case([[12, 1]], [False], _pages(1)),
    "payload-for-zero-pages": _ram_case([[0, 2]], [True] * 2, b"",
                                        frames=lambda codec, f: [bytes(codec.compress(_pages(2)))]),
    "payload-one-byte-short": _ram_case([[0, 2]], [False] * 2, _pages(2),
                                        error=_corrupt_unless_identity,
                                        frames=lambda codec, f: [bytes(codec.compress(
                                            _pages(2)[:-1]))]),
}


# -- device -------------------------------------------------------------------------------

def device_context(folder: Path, settings: TransferSettings, size: int = 0) -> HandlerContext:
    """A device handler needs only its folder (an image size means nothing to it): the source
    reads the files its specs name, the destination stages chunks there."""
    return HandlerContext(settings=settings, image_size=0, device_dir=folder)


def device_specs(name: str, path: Path, chunk_size: int, instance: int = 0
                 ) -> list[dict[str, Any]]:
    """The job specs that send the device file at `path`, one per chunk."""
    return [{"name": name, "instance": instance, "index": index, "last": last,
             "path": str(path), "offset": offset, "length": length}
            for index, offset, length, last in chunk_spans(path.stat().st_size, chunk_size)]


def device_source(folder: Path, settings: TransferSettings, blob: bytes
                  ) -> tuple[HandlerContext, list[dict[str, Any]]]:
    path = folder / "cpu.state"
    path.write_bytes(blob)
    return device_context(folder, settings), device_specs("cpu", path, settings.chunk_size)


def device_landed(context: HandlerContext) -> bytes:
    return staging_path(context.device_dir, "cpu").read_bytes()


def device_packet(codec: Codec, data: bytes, /, **changes: Any
                  ) -> tuple[dict[str, Any], list[bytes]]:
    body = {"name": "cpu", "instance": 0, "index": 0, "last": len(data) < CHUNK,
            "codec": codec.spec, "raw": len(data)}
    frames = [bytes(codec.compress(data))] if data else []
    return tampered(body, changes), frames


class Device:
    """A source and a destination device handler; the destination stages into `staging`."""

    def __init__(self, folder: Path, codec: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.staging = folder / "staging"
        self.staging.mkdir(exist_ok=True)
        settings = transfer_settings(codec)
        cls = HANDLERS.load("device")
        self.source = cls(device_context(folder, settings))
        self.destination = cls(device_context(self.staging, settings))
        self.wire = Wire(self.destination, settings)
        self.codec = self.destination.codec

    def blob(self, name: str, data: bytes) -> Path:
        path = self.folder / f"{name}.state"
        path.write_bytes(data)
        return path

    def specs(self, name: str, path: Path, instance: int = 0) -> list[dict[str, Any]]:
        return device_specs(name, path, CHUNK, instance)

    def send(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self.destination.apply(*self.wire.carry(self.source.encode(spec)))

    def staged(self, key: str) -> bytes:
        return staging_path(self.staging, key).read_bytes()

    def state(self) -> dict[str, bytes]:
        return _snapshot_dir(self.staging)

    def packet(self, data: bytes, **changes: Any) -> tuple[dict[str, Any], list[bytes]]:
        return device_packet(self.codec, data, **changes)

    def close(self) -> None:
        self.source.close()
        self.destination.close()


def _device_case(data: bytes | None = None, frames=None, error=ProtocolError,
                 **changes) -> TamperCase:
    def build(codec: Codec) -> Tampered:
        body, built = device_packet(codec, _pages(4)[:CHUNK] if data is None else data, **changes)
        return Tampered(body, built if frames is None else frames(codec, built), error)
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
    "payload-for-an-empty-chunk": _device_case(data=b"", last=True,
                                               frames=lambda codec, f: [b"x"]),
    "payload-decodes-one-byte-short": _device_case(
        raw=CHUNK, error=CorruptPayload,
        frames=lambda codec, f: [bytes(codec.compress(_pages(4)[:CHUNK - 1]))]),
}


# -- the scenarios that drive each registered handler through the battery ------------------

SCENARIOS: dict[str, HandlerScenario] = {
    "ram": HandlerScenario(handler=HANDLERS.load("ram"), source=ram_source,
                           destination=ram_destination, landed=ram_landed,
                           tampered=RAM_TAMPERED),
    "device": HandlerScenario(handler=HANDLERS.load("device"), source=device_source,
                              destination=device_context, landed=device_landed,
                              tampered=DEVICE_TAMPERED),
}
# Source/destination pairs over the battery's destination, for the tests of this file.
PAIRS: dict[str, Callable[[Path, str], Any]] = {
    "ram": lambda folder, codec: Ram(folder, codec, mixed_pages(12, tail=100)),
    "device": Device,
}


def scenario(kind: str) -> HandlerScenario:
    if kind not in SCENARIOS:
        pytest.fail(f"handler {kind!r} is registered but has no conformance scenario here")
    return SCENARIOS[kind]


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_every_registered_handler_has_a_scenario(kind):
    assert kind in SCENARIOS, f"add a HandlerScenario for handler {kind!r} to test_conformance.py"


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_handler_is_registered_under_its_own_kind(kind):
    check_handler(scenario(kind), properties=["registered"])


def _handler_test(prop: str) -> Callable[[str, str], None]:
    """A test running one property of the battery for each handler under each codec."""
    @pytest.mark.parametrize("codec", CODEC_NAMES)
    @pytest.mark.parametrize("kind", HANDLER_NAMES)
    def test(kind: str, codec: str) -> None:
        check_handler(scenario(kind), [codec], [prop])
    return test


test_handler_round_trip_delivers_the_source_bytes = _handler_test("round trip")
test_handler_round_trip_of_empty_input = _handler_test("empty input")
test_handler_worst_case_packet_fits_its_max_payload = _handler_test("worst case")
test_handler_refuses_a_tampered_packet_and_writes_nothing = _handler_test("tampered")
test_handler_refuses_a_size_bomb_without_allocating_it = _handler_test("size bomb")
test_handler_apply_raises_only_protocol_errors_on_hostile_packets = _handler_test("hostile")


@pytest.mark.parametrize("kind", HANDLER_NAMES)
def test_the_tampered_packet_builders_make_valid_packets_when_untampered(tmp_path, kind):
    """Guards the tampered-packet test: the hand-made packets differ from valid ones only
    where they say."""
    for codec in CODEC_NAMES:
        pair = PAIRS[kind](tmp_path / codec, codec)
        if kind == "ram":
            body, frames = pair.packet([[0, 2], [5, 1], [12, 1]], [False, True, False, False],
                                       _pages(2) + _pages(1)[:100])
            pair.destination.apply(body, frames)
            assert pair.content()[:PAGE_SIZE] == _pages(1)
        else:
            pair.destination.apply(*pair.packet(_pages(4)[:CHUNK], last=False))
            pair.destination.apply(*pair.packet(b"", index=1, last=True))
            assert pair.staged("cpu") == _pages(4)[:CHUNK]


# -- fuzzing that knows the built-in bodies field by field -------------------------------------

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


FUZZERS: dict[str, Callable[[Any, Any], None]] = {"ram": ram_fuzz, "device": device_fuzz}


@pytest.mark.parametrize("kind", list(FUZZERS))
def test_builtin_handler_fuzzed_field_by_field_raises_only_protocol_errors(tmp_path_factory,
                                                                          kind):
    """Beyond the battery's changes to valid packets: strategies that know each field's valid
    range, so that hostile packets get past the first checks and reach the later ones."""
    pairs = {codec: PAIRS[kind](tmp_path_factory.mktemp(f"fuzz-{kind}-{codec}"), codec)
             for codec in CODEC_NAMES}
    sizes = {codec: os.path.getsize(pair.path) for codec, pair in pairs.items()
             if hasattr(pair, "path")}

    @settings(max_examples=300, deadline=None, database=None)
    @given(st.data())
    def hostile(data):
        codec = data.draw(st.sampled_from(CODEC_NAMES), label="codec")
        FUZZERS[kind](pairs[codec], data)
        if codec in sizes:  # nothing written outside the image
            assert os.path.getsize(pairs[codec].path) == sizes[codec]

    hostile()


# -- the battery catches broken plugins ---------------------------------------------------------

class UnboundedZlib(ZlibCodec):
    """Inflates the whole frame before it compares it with the size it was promised."""

    def decompress(self, data, size: int) -> bytes:
        try:
            zlib.decompressobj().decompress(data)
        except zlib.error:
            pass
        return super().decompress(data, size)


class ReversingCodec(PlainCodec):
    """Returns as many bytes as it was promised, but not in the order they were sent."""

    def decompress(self, data, size: int):
        return bytes(super().decompress(data, size))[::-1]


@pytest.mark.parametrize("codec,broken", [(UnboundedZlib(), {"size bomb"}),
                                          (ReversingCodec(), {"round trip"})],
                         ids=["ignores-its-size-bound", "returns-wrong-bytes"])
def test_the_battery_catches_a_broken_codec(codec, broken):
    with pytest.raises(ConformanceError) as caught:
        check_codec(codec)
    # Not registered either: its name loads the built-in codec it imitates.
    assert {prop for prop, _ in caught.value.failures} == broken | {"registered"}


class TrustingDevice(DeviceHandler):
    """Checks every field of a chunk but its device's name, and stages under it as given."""

    def _check_body(self, body: dict[str, Any]) -> tuple[str, int, int, bool, int]:
        _, *checked = super()._check_body({**body, "name": "cpu"})
        return (body.get("name"), *checked)


class HastyDevice(DeviceHandler):
    """Creates a chunk's staging file before it has checked the chunk."""

    def apply(self, body: dict[str, Any], frames: list[Any]) -> dict[str, Any]:
        name = body.get("name")
        if isinstance(name, str) and NAME_PATTERN.fullmatch(name):
            staging_path(self.context.device_dir, name).touch()
        return super().apply(body, frames)


@pytest.mark.parametrize("handler,broken", [(TrustingDevice, {"tampered", "hostile"}),
                                            (HastyDevice, {"tampered", "size bomb"})],
                         ids=["writes-where-it-did-not-check", "writes-before-it-checks"])
def test_the_battery_catches_a_broken_handler(handler, broken):
    with pytest.raises(ConformanceError) as caught:
        check_handler(dataclasses.replace(SCENARIOS["device"], handler=handler), ["none"])
    assert {prop for prop, _ in caught.value.failures} == broken | {"registered"}


def test_the_battery_runs_without_pytest():
    """A plugin's own tests may use another runner: the battery imports no test framework."""
    code = ("import sys; from workers.testing import check_codec; "
            "check_codec('zlib', ['round trip']); "
            "assert not {'pytest', 'hypothesis'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})


# -- RAM specifics ------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_journal_marks_every_page_applied_and_those_that_hold_data(tmp_path, codec):
    image = mixed_pages(21, tail=1000)
    s = Ram(tmp_path, codec, image)
    s.send_all()
    assert s.content() == image
    assert holds_data(s).tolist() == page_is_nonzero(image).astype(int).tolist()
    assert (s.written & APPLIED).all()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_zero_pages_travel_as_indices_only(tmp_path, codec):
    s = Ram(tmp_path, codec, bytes(PACKET_PAGES * PAGE_SIZE))
    encoded = s.send([[0, PACKET_PAGES]])
    assert encoded.frames == [] and encoded.body["raw"] == 0
    assert s.content() == bytes(PACKET_PAGES * PAGE_SIZE)
    assert not holds_data(s).any() and (s.written & APPLIED).all()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_ram_image_with_a_short_last_page_arrives_whole(tmp_path, codec):
    for tail_pages, tail in [(5, 100), (0, 1), (0, PAGE_SIZE - 1), (3, PAGE_SIZE - 1)]:
        image = mixed_pages(tail_pages, tail=tail, seed=tail)
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
    image = mixed_pages(8)
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
    image = mixed_pages(8, tail=10)
    s = Ram(tmp_path, codec, image, destination=b"\xee" * len(image), fresh=False,
            track_written=track_written)
    s.send_all()
    assert s.content() == image


def test_ram_handler_on_an_empty_image_refuses_every_page(tmp_path):
    handler = HANDLERS.load("ram")(HandlerContext(settings=transfer_settings("none"),
                                                  image_size=0, image=None, written=None,
                                                  device_dir=tmp_path))
    for runs in ([[0, 1]], [], [[0, 0]]):
        with pytest.raises(ProtocolError):
            handler.apply({"runs": runs, "zero": b"\x80", "codec": "none", "raw": 0}, [])


# -- device specifics ---------------------------------------------------------------------------

@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_device_notice_says_which_chunk_landed_whatever_the_arrival_order(tmp_path, codec):
    s = Device(tmp_path, codec)
    blob = random_bytes(CHUNK, seed=5) + compressible_bytes(CHUNK) + b"\x00" * 1000
    specs = s.specs("cpu", s.blob("cpu", blob))
    assert len(specs) == 3
    notices = [s.send(spec) for spec in reversed(specs)]
    assert s.staged("cpu") == blob
    chunks = [blob[2 * CHUNK:], blob[CHUNK:2 * CHUNK], blob[:CHUNK]]
    assert notices == [{"name": "cpu", "instance": 0, "index": 2 - i, "last": i == 0,
                        "size": len(chunk), "hash": chunk_hash(chunk)}
                       for i, chunk in enumerate(chunks)]
    s.close()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_device_empty_blob_is_one_chunk_without_payload(tmp_path, codec):
    s = Device(tmp_path, codec)
    specs = s.specs("empty", s.blob("empty", b""))
    assert [(spec["index"], spec["length"], spec["last"]) for spec in specs] == [(0, 0, True)]
    encoded = s.source.encode(specs[0])
    assert encoded.frames == [] and encoded.body["raw"] == 0
    notice = s.destination.apply(*s.wire.carry(encoded))
    assert notice == {"name": "empty", "instance": 0, "index": 0, "last": True, "size": 0,
                      "hash": chunk_hash(b"")}
    assert staging_path(s.staging, "empty").exists() and s.staged("empty") == b""
    s.close()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_device_chunk_lands_at_its_index_whatever_the_arrival_order(tmp_path, codec):
    s = Device(tmp_path, codec)
    blob = random_bytes(2 * CHUNK + 77, seed=11)
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
    blob = compressible_bytes(2 * CHUNK)
    notices = [s.send(spec) for spec in s.specs("nic", s.blob("nic", blob))]
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
                                    "workers.handlers.ram", "workers.testing"])
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
