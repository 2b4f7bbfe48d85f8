"""The conformance battery every codec and payload handler must pass, built-in or third-party.

A package that adds a codec (entry-point group `multifd_engine.codecs`) or a payload handler
(`multifd_engine.handlers`) runs the same checks the engine's own entries run
(tests/test_conformance.py), so that a peer can trust what it loads by name. The checks need
no pytest: each raises ConformanceError (an AssertionError) naming every property broken.

A codec needs nothing but its spec, once it is installed (`pip install -e .`), since one
property is that its registered name loads it; check each end of its level range too::

    from workers.testing import check_codec

    def test_lz4_conforms():
        for spec in ("lz4", "lz4:1", "lz4:12"):
            check_codec(spec)

A handler needs a HandlerScenario: where its source holds a payload and which job specs send
it, a destination ready for that many bytes, and how to read back what landed. The battery
makes the payloads (random, compressible, zero, empty, one byte, a packet's worth), carries
every packet through the real header encoding and channel checks (Wire), and derives hostile
packets from valid ones. Cases that only the author knows are wrong go in `tampered`, aimed
at a destination built for SAMPLE_BYTES under transfer_settings(codec)::

    from pathlib import Path
    from workers.handlers import HandlerContext
    from workers.testing import SAMPLE_BYTES, HandlerScenario, Tampered, check_handler
    from mypackage.pmem import PmemHandler

    def source(folder, settings, payload):
        (folder / "region").write_bytes(payload)
        context = HandlerContext(settings=settings, image_size=len(payload),
                                 image_path=str(folder / "region"))
        step = settings.packet_bytes
        return context, [{"offset": at, "length": min(step, len(payload) - at)}
                         for at in range(0, len(payload), step)]

    def destination(folder, settings, size):
        (folder / "region").write_bytes(bytes(size))
        return HandlerContext(settings=settings, image_size=size,
                              image_path=str(folder / "region"))

    PMEM = HandlerScenario(
        handler=PmemHandler, source=source, destination=destination,
        landed=lambda context: Path(context.image_path).read_bytes(),
        tampered={"offset-past-the-end": lambda codec: Tampered(
            {"offset": SAMPLE_BYTES, "length": 1, "codec": codec.spec}, [b"x"])})

    def test_pmem_conforms():
        check_handler(PMEM)  # under every registered codec

`properties=[...]` runs only some checks (CODEC_PROPERTIES, HANDLER_PROPERTIES name them);
`codecs=[...]` limits the codecs a handler is run with.
"""
from __future__ import annotations

import copy
import random
import tempfile
import tracemalloc
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Mapping

from engine.errors import CorruptPayload, ProtocolError, UsageError
from engine.settings import PAGE_SIZE, TransferSettings
from engine.wire import jobs
from engine.wire.framing import decode, encode
from engine.wire.protocol import ChannelRules, Packet, checksum
from workers.codecs import CODECS, Codec, make_codec
from workers.handlers import HANDLERS, Encoded, HandlerContext, PayloadHandler

KiB, MiB = 1 << 10, 1 << 20
# Small packets and chunks, so that a payload of a few pages spans several of them.
PACKET_PAGES = 8
CHUNK_SIZE = 16 * KiB
BOMB_BYTES = 64 * MiB  # what a bomb expands to; decoding must stay far below it
MEMORY_LIMIT = 16 * MiB
_HOSTILE_PACKETS = 300  # per codec: enough to reach every field of a packet several times


class ConformanceError(AssertionError):
    """A codec or handler breaks its contract. An AssertionError, so that a test runner
    reports a failure, not an error; `failures` holds (property, detail) pairs."""

    def __init__(self, subject: str, failures: list[tuple[str, str]]) -> None:
        self.failures = failures
        lines = "".join(f"\n  {prop}: {detail}" for prop, detail in failures)
        super().__init__(f"{subject} breaks {len(failures)} of the battery's properties:{lines}")


# -- payloads -------------------------------------------------------------------------------

def random_bytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def compressible_bytes(n: int) -> bytes:
    text = b"".join(b"page %06d of a fairly compressible guest image\n" % i
                    for i in range(n // 40 + 1))
    return text[:n]


def mixed_pages(pages: int, tail: int = 0, seed: int = 0) -> bytes:
    """Pages of every flavour a guest has (zero, random, compressible, zero but for its last
    byte), then `tail` non-zero bytes: a short last page that must arrive whole."""
    rng = random.Random(seed)
    flavours = [lambda: bytes(PAGE_SIZE), lambda: rng.randbytes(PAGE_SIZE),
                lambda: compressible_bytes(PAGE_SIZE), lambda: bytes(PAGE_SIZE - 1) + b"\x01"]
    return (b"".join(flavours[page % 4]() for page in range(pages))
            + bytes(b | 1 for b in rng.randbytes(tail)))


_CODEC_PAYLOADS = {
    "empty": b"",
    "one byte": b"\x7f",
    "4 KiB random": random_bytes(4 * KiB),
    "4 KiB compressible": compressible_bytes(4 * KiB),
    "512 KiB random": random_bytes(512 * KiB, seed=2),
    "512 KiB compressible": compressible_bytes(512 * KiB),
    "512 KiB zero": bytes(512 * KiB),
}
_HANDLER_PAYLOADS = {
    "mixed pages, short last page": mixed_pages(21, tail=1000),
    "random, two chunks and a bit": random_bytes(2 * CHUNK_SIZE + 77, seed=11),
    "compressible": compressible_bytes(CHUNK_SIZE + PAGE_SIZE),
    "all zero": bytes(3 * CHUNK_SIZE),
    "one byte": b"\x01",
}
# Tampered packets and bombs are aimed at a destination built for this: 12 pages and a short.
_SAMPLE = mixed_pages(12, tail=100)
SAMPLE_BYTES = len(_SAMPLE)


def is_identity(codec: Codec) -> bool:
    """The codec sends bytes as they are: it has no header, and corruption is the channel
    checksum's job, so a bad payload may come back as a plain ProtocolError."""
    sample = b"identity probe " * 10
    return bytes(codec.compress(sample)) == sample


def peak_memory(call: Callable[[], Any]) -> int:
    """The most bytes Python held at once while `call` ran, above what it held before: how a
    bounded decoder is told from one that expands a bomb. Leaves a caller's tracing on."""
    tracing = tracemalloc.is_tracing()
    if tracing:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    try:
        call()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        if not tracing:
            tracemalloc.stop()
    return peak - before


_BOMBS: dict[tuple[type, str], bytes] = {}


def _bomb(codec: Codec) -> bytes:
    """A frame that expands to BOMB_BYTES zeros (small for any real compressor), made once
    per codec: compressing 64 MiB takes a tenth of a second."""
    key = (type(codec), codec.spec)
    if key not in _BOMBS:
        _BOMBS[key] = bytes(codec.compress(bytes(BOMB_BYTES)))
    return _BOMBS[key]


def _damaged_header(frame: bytes) -> bytes:
    return bytes([frame[0] ^ 0xFF]) + frame[1:]


def _corrupt_error(codec: Codec) -> type[ProtocolError]:
    """What a payload that does not decode must raise: CorruptPayload from a decoding codec;
    an identity codec decodes nothing, so the handler's size check may say ProtocolError."""
    return ProtocolError if is_identity(codec) else CorruptPayload


def _expect(condition: bool, message: str) -> None:
    """An assert that `python -O` cannot strip: the battery must not pass by being skipped."""
    if not condition:
        raise AssertionError(message)


def _refused(call: Callable[[], Any], error: type[Exception], what: str) -> None:
    try:
        call()
    except error:
        return
    except Exception as exc:
        raise AssertionError(f"{what}: raised {type(exc).__name__} ({exc}), not "
                             f"{error.__name__}") from exc
    raise AssertionError(f"{what}: accepted, {error.__name__} expected")


def _difference(came: bytes, sent: bytes) -> str:
    if len(came) != len(sent):
        return f"{len(came)} bytes came back for the {len(sent)} sent"
    first = next(i for i, (a, b) in enumerate(zip(came, sent)) if a != b)
    return f"what came back differs from what was sent from byte {first} on"


def _verdict(subject: str, checks: Iterable[tuple[str, str, Callable[[], None]]]) -> None:
    """Run every (property, where, check), so that an author sees all that is broken at once."""
    failures: list[tuple[str, str]] = []
    first: Exception | None = None
    for prop, where, check in checks:
        try:
            check()
        except Exception as exc:
            detail = str(exc) if isinstance(exc, AssertionError) else (
                f"raised {type(exc).__name__}: {exc}")
            failures.append((prop, where + detail))
            first = first or exc
    if failures:
        raise ConformanceError(subject, failures) from first


def _select(known: Collection[str], wanted: Collection[str] | None) -> list[str]:
    if wanted is None:
        return list(known)
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ValueError(f"unknown properties {unknown}; known: {', '.join(known)}")
    return list(wanted)


# -- codecs ---------------------------------------------------------------------------------

def _codec_registered(codec: Codec) -> None:
    """A packet names its codec by spec; the destination rebuilds it from that name alone."""
    cls = type(codec)
    loaded = CODECS.load(cls.name)
    _expect(loaded is cls, f"name {cls.name!r} loads {loaded.__module__}.{loaded.__qualname__}, "
                           f"not {cls.__module__}.{cls.__qualname__}")
    expected = cls.name if codec.level is None else f"{cls.name}:{codec.level}"
    _expect(codec.spec == expected, f"spec {codec.spec!r} should be {expected!r}")
    again = make_codec(codec.spec)
    _expect(type(again) is cls and again.spec == codec.spec,
            f"spec {codec.spec!r} reloads as {again.spec!r}")


def _codec_levels(codec: Codec) -> None:
    """A peer's HELLO names a level; one the codec lacks must be a UsageError, not a crash."""
    cls = type(codec)
    if cls.levels is None:
        _refused(lambda: cls(1), UsageError, "a level for a codec that has none")
        return
    for level in (cls.levels.start, cls.levels.stop - 1):
        cls(level)
    for level in (cls.levels.stop, cls.levels.start - 1):
        _refused(lambda: cls(level), UsageError, f"level {level}")


def _codec_round_trip(codec: Codec) -> None:
    for label, data in _CODEC_PAYLOADS.items():
        frame = bytes(codec.compress(memoryview(data)))  # handlers pass views of the image
        out = bytes(codec.decompress(memoryview(frame), len(data)))  # zmq hands over buffers
        if out != data:
            raise AssertionError(f"{label}: {_difference(out, data)}")


def _codec_truncated(codec: Codec) -> None:
    for label, data in _CODEC_PAYLOADS.items():
        frame = bytes(codec.compress(data))
        if not frame:
            continue  # an empty frame cannot be cut
        for cut in sorted({len(frame) - 1, len(frame) // 2, 0}):
            _refused(lambda: codec.decompress(frame[:cut], len(data)), CorruptPayload,
                     f"{label}: frame cut to {cut} of {len(frame)} bytes")


def _codec_wrong_size(codec: Codec) -> None:
    """The size comes from the header, the frame from the network: they must agree."""
    for label, data in _CODEC_PAYLOADS.items():
        frame = bytes(codec.compress(data))
        for size in sorted({len(data) + 1, max(len(data) - 1, 0), 2 * len(data) + 10}
                           - {len(data)}):
            _refused(lambda: codec.decompress(frame, size), CorruptPayload,
                     f"{label}: a frame of {len(data)} bytes decoded as {size}")


def _codec_garbage(codec: Codec) -> None:
    for garbage, size in [(random_bytes(1000, seed=9), 4096), (b"\xff" * 64, 4096),
                          (b"", 4096), (b"\x00" * 10, 0)]:
        _refused(lambda: codec.decompress(garbage, size), CorruptPayload,
                 f"{len(garbage)} bytes of garbage decoded as {size}")


def _codec_flipped_byte(codec: Codec) -> None:
    """Without its own checksum a codec may not notice every flip, but it must never return
    another size nor raise anything but CorruptPayload (the channel checksum does the rest)."""
    data = compressible_bytes(4 * KiB) + random_bytes(512, seed=3)
    frame = bytes(codec.compress(data))
    for position in range(0, len(frame), max(1, len(frame) // 400)):
        damaged = bytearray(frame)
        damaged[position] ^= 0x5A
        try:
            out = codec.decompress(bytes(damaged), len(data))
        except CorruptPayload:
            continue
        except Exception as exc:
            raise AssertionError(f"byte {position} flipped: raised {type(exc).__name__} "
                                 f"({exc}), not CorruptPayload") from exc
        _expect(len(out) == len(data),
                f"byte {position} flipped: {len(out)} bytes came back, not {len(data)}")


def _codec_damaged_header(codec: Codec) -> None:
    if is_identity(codec):
        return  # no header to damage
    data = compressible_bytes(4 * KiB)
    frame = _damaged_header(bytes(codec.compress(data)))
    _refused(lambda: codec.decompress(frame, len(data)), CorruptPayload,
             "a frame with its first byte inverted")


def _codec_trailing_bytes(codec: Codec) -> None:
    """Bytes after the frame are not the sender's: a codec that ignores them hides tampering."""
    data = compressible_bytes(4 * KiB)
    frame = bytes(codec.compress(data))
    for tail in (b"\x00", b"trailing garbage", frame):
        _refused(lambda: codec.decompress(frame + tail, len(data)), CorruptPayload,
                 f"{len(tail)} bytes after the frame")


def _within_memory(call: Callable[[], Any], frame: bytes, what: str) -> None:
    """`call` must not allocate for what `frame` expands to. One copy of the frame itself is
    allowed (zlib keeps an unconsumed tail): the channel already bounds a frame's size, and a
    codec level that stores rather than compresses makes a bomb as large as its expansion."""
    limit = MEMORY_LIMIT + len(frame)
    peak = peak_memory(call)
    _expect(peak < limit, f"refusing {what} took {peak / MiB:.1f} MiB (at most "
                          f"{limit / MiB:.1f} MiB)")


def _codec_size_bomb(codec: Codec) -> None:
    bomb = _bomb(codec)
    what = f"a frame of {BOMB_BYTES >> 20} MiB decoded as 4096"
    _within_memory(lambda: _refused(lambda: codec.decompress(bomb, 4096), CorruptPayload, what),
                   bomb, what)


_CODEC_CHECKS: dict[str, Callable[[Codec], None]] = {
    "registered": _codec_registered,
    "levels": _codec_levels,
    "round trip": _codec_round_trip,
    "truncated": _codec_truncated,
    "wrong size": _codec_wrong_size,
    "garbage": _codec_garbage,
    "flipped byte": _codec_flipped_byte,
    "damaged header": _codec_damaged_header,
    "trailing bytes": _codec_trailing_bytes,
    "size bomb": _codec_size_bomb,
}
CODEC_PROPERTIES = tuple(_CODEC_CHECKS)


def check_codec(codec: Codec | str, properties: Collection[str] | None = None) -> None:
    """Raise ConformanceError unless `codec` (or the codec this spec loads) keeps the Codec
    contract: exact round trips, CorruptPayload for every bad frame, bombs refused within
    MEMORY_LIMIT, registered under its own name."""
    if isinstance(codec, str):
        codec = make_codec(codec)
    _verdict(f"codec {codec.spec!r}", [(prop, "", lambda check=_CODEC_CHECKS[prop]: check(codec))
                                       for prop in _select(CODEC_PROPERTIES, properties)])


# -- payload handlers -----------------------------------------------------------------------

def transfer_settings(codec: str, **changes: int) -> TransferSettings:
    """The settings the battery runs a handler under, with `codec` for RAM and devices."""
    fields: dict[str, Any] = dict(compress=codec, device_compress=codec,
                                  packet_pages=PACKET_PAGES, chunk_size=CHUNK_SIZE)
    fields.update(changes)
    return TransferSettings(**fields)


# A packet's worth, larger than the defaults above so that a codec's overhead on
# incompressible data is not lost in the slack of max_payload(); small enough to stay quick.
_WORST_CASE = dict(packet_pages=128, chunk_size=1 * MiB)


class Wire:
    """What lies between a source's encode() and a destination's apply(): the header as the
    channel encodes it and every check the destination's channel makes (ChannelRules),
    without sockets. So a handler meets its packets as it would in a transfer."""

    SESSION = b"conformance-test"

    def __init__(self, destination: PayloadHandler, settings: TransferSettings) -> None:
        self.kind = destination.kind
        self.rules = ChannelRules(self.SESSION, 0, settings, [self.kind],
                                  destination.max_payload())
        self.seq = 0

    def carry(self, encoded: Encoded) -> tuple[dict[str, Any], list[memoryview]]:
        """The body and frames the destination handler gets; ProtocolError where the channel
        would refuse the packet (a payload over the handler's max_payload(), say)."""
        frames = [bytes(f) for f in encoded.frames]
        header = encode(Packet(session=self.SESSION, channel=0, seq=self.seq, kind=self.kind,
                               sizes=[len(f) for f in frames], checksum=checksum(frames),
                               body=encoded.body))
        self.seq += 1
        msg = self.rules.check_message([memoryview(header), *map(memoryview, frames)])
        return msg.body, [memoryview(f) for f in frames]


@dataclass(frozen=True)
class Tampered:
    """A packet no valid source sends, and what the destination must refuse it with (having
    written nothing). CorruptPayload is a ProtocolError, so the default accepts both."""

    body: dict[str, Any]
    frames: list[bytes]
    error: type[ProtocolError] = ProtocolError


@dataclass(frozen=True)
class HandlerScenario:
    """How the battery drives one handler; its author fills one in.

    source(folder, settings, payload): put `payload` where a source of this kind holds it,
      under `folder` (empty, made for it), and return the source's context and the job specs
      that send all of it.
    destination(folder, settings, size): a destination context ready for `size` bytes that
      writes only under `folder`: the battery snapshots that folder (and the context's
      `written` page states) to prove a refused packet wrote nothing.
    landed(context): what the destination with this context holds now, to compare with the
      payload once every packet was applied.
    tampered: label -> function(session codec) giving a packet the destination (built for
      SAMPLE_BYTES under transfer_settings) must refuse, or None where a case does not apply
      to that codec. The battery adds the frame-level cases itself (frames missing, extra,
      truncated, damaged header), from the first valid packet of its sample.
    """

    handler: type[PayloadHandler]
    source: Callable[[Path, TransferSettings, bytes], tuple[HandlerContext, list[dict[str, Any]]]]
    destination: Callable[[Path, TransferSettings, int], HandlerContext]
    landed: Callable[[HandlerContext], bytes]
    tampered: Mapping[str, Callable[[Codec], Tampered | None]] = field(default_factory=dict)


@dataclass
class _Pair:
    """A source and a destination handler over one payload, in a folder of their own."""

    scenario: HandlerScenario
    codec: Codec  # the session's, as the handlers build it from the settings
    payload: bytes
    jobs: list[dict[str, Any]]
    source: PayloadHandler
    destination: PayloadHandler
    context: HandlerContext  # the destination's
    folder: Path  # the destination's
    wire: Wire

    def deliver(self, label: str) -> None:
        """Send every job, last first (channels deliver in any order), and compare."""
        for job in reversed(self.jobs):
            notice = self.destination.apply(*self.wire.carry(self.source.encode(job)))
            _expect(notice is None or _survives_ipc(self.wire.kind, notice),
                    f"{label}: apply() returned {notice!r:.200}, neither None nor a dict a "
                    f"worker can send its coordinator")
        landed = bytes(self.scenario.landed(self.context))
        if landed != self.payload:
            raise AssertionError(f"{label}: {_difference(landed, self.payload)}")

    def packets(self) -> list[tuple[dict[str, Any], list[bytes]]]:
        """The payload's packets as the source encodes them."""
        return [(encoded.body, [bytes(f) for f in encoded.frames])
                for encoded in map(self.source.encode, self.jobs)]

    def packet_with_payload(self) -> tuple[dict[str, Any], list[bytes], int]:
        """The first packet that carries payload bytes, and which of its frames does."""
        for body, frames in self.packets():
            for i, frame in enumerate(frames):
                if frame:
                    return body, frames, i
        raise AssertionError("no packet of the sample carries payload bytes to tamper with")

    def apply(self, body: dict[str, Any], frames: list[bytes]) -> Any:
        return self.destination.apply(body, [memoryview(f) for f in frames])

    def state(self) -> dict[str, bytes]:
        files = {str(p.relative_to(self.folder)): p.read_bytes()
                 for p in sorted(self.folder.rglob("*")) if p.is_file()}
        if self.context.written is not None:
            files["(page states)"] = self.context.written.tobytes()
        return files

    def sizes(self) -> dict[Path, int]:
        return {p: p.stat().st_size for p in self.folder.rglob("*") if p.is_file()}

    def refuses(self, label: str, case: Tampered) -> None:
        before = self.state()
        _refused(lambda: self.apply(case.body, case.frames), case.error, label)
        after = self.state()
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        _expect(not changed, f"{label}: refused, but it wrote {', '.join(changed)}")


def _survives_ipc(kind: str, notice: Any) -> bool:
    return isinstance(notice, dict) and decode(encode(jobs.Notice(kind=kind, data=notice)),
                                               jobs.Notice).data == notice


@contextmanager
def _pair(scenario: HandlerScenario, codec: str, payload: bytes,
          settings: TransferSettings | None = None) -> Iterator[_Pair]:
    """A pair in a temporary folder of its own, so that no check sees another's leftovers
    and none leaves anything behind."""
    settings = settings or transfer_settings(codec)
    with tempfile.TemporaryDirectory(prefix="multifd-battery-") as root, ExitStack() as stack:
        source_dir, destination_dir = Path(root, "source"), Path(root, "destination")
        source_dir.mkdir()
        destination_dir.mkdir()
        source_context, specs = scenario.source(source_dir, settings, payload)
        context = scenario.destination(destination_dir, settings, len(payload))
        source = scenario.handler(source_context)
        stack.callback(source.close)
        destination = scenario.handler(context)
        stack.callback(destination.close)
        yield _Pair(scenario, make_codec(codec), payload, list(specs), source, destination,
                    context, destination_dir, Wire(destination, settings))


def _handler_registered(scenario: HandlerScenario) -> None:
    """A worker loads its handlers by the kinds the HELLO announces."""
    cls = scenario.handler
    _expect(issubclass(cls, PayloadHandler), f"{cls.__qualname__} is not a PayloadHandler")
    loaded = HANDLERS.load(cls.kind)
    _expect(loaded is cls, f"kind {cls.kind!r} loads {loaded.__module__}.{loaded.__qualname__}"
                           f", not {cls.__module__}.{cls.__qualname__}")


def _handler_round_trip(scenario: HandlerScenario, codec: str) -> None:
    for label, payload in _HANDLER_PAYLOADS.items():
        with _pair(scenario, codec, payload) as pair:
            pair.deliver(label)


def _handler_empty(scenario: HandlerScenario, codec: str) -> None:
    with _pair(scenario, codec, b"") as pair:
        pair.deliver("an empty payload")


def _handler_worst_case(scenario: HandlerScenario, codec: str) -> None:
    """Incompressible packets, as full as the settings allow, must pass the channel's bound
    on the payload: the handler declares that bound itself (max_payload)."""
    settings = transfer_settings(codec, **_WORST_CASE)
    payload = random_bytes(max(settings.packet_bytes, settings.chunk_size), seed=8)
    with _pair(scenario, codec, payload, settings) as pair:
        bound = pair.destination.max_payload()
        for _, frames in pair.packets():
            size = sum(map(len, frames))
            _expect(size <= bound, f"a full incompressible packet carries {size} payload bytes,"
                                   f" more than its max_payload() of {bound}")
        pair.deliver("incompressible packets")


def _frame_cases(pair: _Pair) -> dict[str, Tampered]:
    """What a hostile peer can do to any handler's frames, whatever its body says."""
    body, frames, i = pair.packet_with_payload()

    def replaced(frame: bytes) -> list[bytes]:
        return frames[:i] + [frame] + frames[i + 1:]

    cases = {
        "payload frames missing": Tampered(body, []),
        "an extra payload frame": Tampered(body, frames + [b"x" * 16]),
        "payload frame truncated": Tampered(body, replaced(frames[i][:-1]),
                                            _corrupt_error(pair.codec)),
    }
    if not is_identity(pair.codec):
        cases["payload frame with a damaged header"] = Tampered(
            body, replaced(_damaged_header(frames[i])), CorruptPayload)
    return cases


def _handler_tampered(scenario: HandlerScenario, codec: str) -> None:
    with _pair(scenario, codec, _SAMPLE) as pair:
        cases = {**_frame_cases(pair),
                 **{label: build(pair.codec) for label, build in scenario.tampered.items()}}
        for label, case in cases.items():
            if case is not None:
                pair.refuses(label, case)
        body, frames, _ = pair.packet_with_payload()
        try:  # the frame cases differ from this packet only where they say
            pair.apply(body, frames)
        except ProtocolError as exc:
            raise AssertionError(f"the valid packet the frame cases change is refused: {exc}"
                                 ) from exc


def _handler_size_bomb(scenario: HandlerScenario, codec: str) -> None:
    with _pair(scenario, codec, _SAMPLE) as pair:
        body, _, _ = pair.packet_with_payload()
        bomb = Tampered(body, [_bomb(pair.codec)], _corrupt_error(pair.codec))
        what = f"a payload frame that expands to {BOMB_BYTES >> 20} MiB"
        _within_memory(lambda: pair.refuses(what, bomb), bomb.frames[0], what)


_LEAVES: tuple[Any, ...] = (None, True, False, 0, -1, 1, 1 << 40, 1 << 64, -(1 << 63), 0.5,
                            "", "x", b"", b"\xff" * 3, [], [[]], [0, 1], {}, {"": 0})


def _mutated(value: Any, rng: random.Random, texts: tuple[str, ...]) -> Any:
    """`value` changed in one place, as a hostile peer would: near its valid value (one off,
    a path in a name, a flag byte short) or of another type altogether."""
    if isinstance(value, dict) and value:
        changed = dict(value)
        key, roll = rng.choice(list(changed)), rng.random()
        if roll < 0.15:
            del changed[key]
        elif roll < 0.25:
            changed["unexpected"] = rng.choice(_LEAVES)
        else:
            changed[key] = _mutated(changed[key], rng, texts)
        return changed
    if rng.random() < 0.2:
        return rng.choice(_LEAVES)
    if isinstance(value, list) and value:
        changed, i, roll = list(value), rng.randrange(len(value)), rng.random()
        if roll < 0.2:
            del changed[i]
        elif roll < 0.4:
            changed.insert(i, changed[i])
        elif roll < 0.5:
            changed.reverse()
        else:
            changed[i] = _mutated(changed[i], rng, texts)
        return changed
    if isinstance(value, bool):
        return rng.choice((not value, int(value), None))
    if isinstance(value, int):
        return rng.choice((value - 1, value + 1, -value - 1, 2 * value + 1, value + (1 << 32),
                           (1 << 63) - 1, 1 << 63))
    if isinstance(value, str):
        return rng.choice((value + "\n", value[:-1], "../" + value, "/" + value, "." + value,
                           value * 40, value + "\x00", value + "\u00ef", *texts))
    if isinstance(value, bytes) and value:
        return rng.choice((value[:-1], value + b"\x00", bytes(len(value)), b"\xff" * len(value)))
    return rng.choice(_LEAVES)


def _mutated_frames(frames: list[bytes], rng: random.Random, codec: Codec,
                    packets: list[tuple[dict[str, Any], list[bytes]]]) -> list[bytes]:
    """Frames that do not belong to the body: none, one more, cut, flipped, another packet's,
    or a well-formed frame of a plausible size (which gets past the size checks)."""
    roll = rng.randrange(6)
    if roll == 0:
        return []
    if roll == 1:
        return frames + [rng.randbytes(rng.choice((1, 16, PAGE_SIZE)))]
    if roll in (2, 3) and any(frames):
        i = rng.choice([i for i, frame in enumerate(frames) if frame])
        frame = bytearray(frames[i])
        if roll == 2:
            del frame[rng.randrange(len(frame)):]
        else:
            frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
        return frames[:i] + [bytes(frame)] + frames[i + 1:]
    if roll == 4:
        return rng.choice(packets)[1]
    sizes = (0, 1, 100, PAGE_SIZE - 1, PAGE_SIZE, PAGE_SIZE + 100, 2 * PAGE_SIZE,
             CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1)
    return [bytes(codec.compress(b"\x05" * rng.choice(sizes)))]


def _described(body: dict[str, Any], frames: list[bytes]) -> str:
    return f"body {body!r:.300} with frames of {[len(f) for f in frames]} bytes"


def _handler_hostile(scenario: HandlerScenario, codec: str) -> None:
    """A destination faces whatever a peer sends: valid packets changed here and there must
    raise ProtocolError (CorruptPayload is one) or apply, and never resize what the
    destination was given. Seeded, so a failure repeats."""
    rng = random.Random(f"{scenario.handler.kind} {codec}")
    texts = (*CODECS.names(), "zstd:19", "bogus")
    with _pair(scenario, codec, _SAMPLE) as pair:
        packets = pair.packets()
        sizes = pair.sizes()
        for _ in range(_HOSTILE_PACKETS):
            body, frames = copy.deepcopy(rng.choice(packets))
            roll = rng.random()
            if roll < 0.75:
                for _ in range(rng.randint(1, 3)):
                    body = _mutated(body, rng, texts)
            if roll > 0.5:
                frames = _mutated_frames(frames, rng, pair.codec, packets)
            try:
                pair.apply(body, frames)
            except ProtocolError:
                pass
            except Exception as exc:
                raise AssertionError(f"{_described(body, frames)}: raised {type(exc).__name__} "
                                     f"({exc}), not ProtocolError") from exc
            now = pair.sizes()
            if {p: now.get(p) for p in sizes} != sizes:
                raise AssertionError(f"{_described(body, frames)}: resized the destination's "
                                     f"files")


_HANDLER_CHECKS: dict[str, Callable[[HandlerScenario, str], None]] = {
    "round trip": _handler_round_trip,
    "empty input": _handler_empty,
    "worst case": _handler_worst_case,
    "tampered": _handler_tampered,
    "size bomb": _handler_size_bomb,
    "hostile": _handler_hostile,
}
HANDLER_PROPERTIES = ("registered", *_HANDLER_CHECKS)


def check_handler(scenario: HandlerScenario, codecs: Iterable[str] | None = None,
                  properties: Collection[str] | None = None) -> None:
    """Raise ConformanceError unless the scenario's handler keeps the PayloadHandler contract
    under each codec (default: every registered one, since a session may pick any): what it
    sends lands exactly, in any order; its packets fit its max_payload(); every tampered,
    bombed or hostile packet is refused with ProtocolError having written nothing."""
    wanted = _select(HANDLER_PROPERTIES, properties)
    checks: list[tuple[str, str, Callable[[], None]]] = []
    if "registered" in wanted:
        checks.append(("registered", "", lambda: _handler_registered(scenario)))
    for codec in CODECS.names() if codecs is None else codecs:
        checks += [(prop, f"with codec {codec!r}: ",
                    lambda check=_HANDLER_CHECKS[prop], codec=codec: check(scenario, codec))
                   for prop in wanted if prop != "registered"]
    _verdict(f"handler {scenario.handler.kind!r}", checks)


__all__ = ["BOMB_BYTES", "CHUNK_SIZE", "CODEC_PROPERTIES", "HANDLER_PROPERTIES", "MEMORY_LIMIT",
           "PACKET_PAGES", "SAMPLE_BYTES", "ConformanceError", "HandlerScenario", "Tampered",
           "Wire", "check_codec", "check_handler", "compressible_bytes", "is_identity",
           "mixed_pages", "peak_memory", "random_bytes", "transfer_settings"]
