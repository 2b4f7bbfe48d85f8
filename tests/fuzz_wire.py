"""A bounded fuzz run of a destination's receive path: only engine errors may come out.

    python tests/fuzz_wire.py --examples 100000

Real packets (RAM pages under each codec, device chunks, SYNC, INIT) are made by the
source-side handlers, then mutated by hypothesis: bytes flipped, frames cut, dropped,
duplicated or added, header and body fields replaced by any msgpack value, and (often) the
sizes and checksum fixed up afterwards so that the mutation reaches the handler. Each input
goes through what a destination worker does with a message: ChannelRules.check_init or
check_message, the handler's apply(), and the device assembler. Anything but ProtocolError
(or its CorruptPayload) escaping is a bug; so is a file appearing in the staging folder
under a name the device handler should have refused.
tests/test_hostile.py runs a short version with the normal suite.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from engine.coordinator.assembly import CallbackSink, DeviceAssembler  # noqa: E402
from engine.errors import ProtocolError  # noqa: E402
from engine.wire.framing import encode  # noqa: E402
from engine.wire.protocol import (MAGIC, VERSION, ChannelRules, Init, Packet, Sync,  # noqa: E402
                             checksum)
from engine.settings import PAGE_SIZE, TransferSettings  # noqa: E402
from workers.handlers import HANDLERS, HandlerContext  # noqa: E402

SESSION = b"s" * 16
IMAGE_SIZE = 16 * PAGE_SIZE + 100  # a short last page too
CHUNK = 4096
STAGED = re.compile(r"\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.partial")


class Destination:
    """One destination worker's receive path for one codec, on an in-memory image."""

    def __init__(self, codec: str, folder: Path) -> None:
        self.folder = folder
        self.settings = TransferSettings(channels=2, compress=codec, device_compress=codec,
                                         packet_pages=8, chunk_size=CHUNK)
        self.image = folder.with_suffix(".img")  # the RAM handler writes with pwrite
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        context = HandlerContext(settings=self.settings, image_size=IMAGE_SIZE,
                                 image_path=str(self.image), written=np.zeros(17, np.uint8),
                                 device_dir=folder)
        self.handlers = {kind: HANDLERS.load(kind)(context) for kind in ("ram", "device")}
        max_payload = max(h.max_payload() for h in self.handlers.values())
        self.rules = ChannelRules(SESSION, 0, self.settings, list(self.handlers), max_payload)

    def receive(self, frames: list[bytes]) -> None:
        if len(frames) == 1:
            try:
                self.rules.check_init(frames)
            except ProtocolError:
                pass
        msg = self.rules.check_message(frames)
        if isinstance(msg, Packet):
            try:
                notice = self.handlers[msg.kind].apply(msg.body,
                                                       [memoryview(f) for f in frames[1:]])
            finally:
                assert os.path.getsize(self.image) == IMAGE_SIZE, "wrote outside the image"
            if notice is not None:
                DeviceAssembler(self.folder, CHUNK, CallbackSink(lambda *a: None)).add(**notice)


def seeds(folder: Path) -> list[tuple[Destination, list[bytes]]]:
    """Real messages, each with the destination that would accept it."""
    found = []
    source_image = bytearray(np.random.default_rng(0).integers(0, 256, IMAGE_SIZE, np.uint8))
    source_image[2 * PAGE_SIZE:4 * PAGE_SIZE] = bytes(2 * PAGE_SIZE)  # zero pages
    device = folder / "device.bin"
    device.write_bytes(bytes(source_image[:3 * CHUNK - 7]))
    for codec in ("none", "zstd", "zlib"):
        destination = Destination(codec, folder / codec)
        destination.folder.mkdir()
        source = folder / f"source-{codec}.img"
        source.write_bytes(source_image)
        context = HandlerContext(settings=destination.settings, image_size=IMAGE_SIZE,
                                 image_path=str(source))
        ram, dev = (HANDLERS.load(kind)(context) for kind in ("ram", "device"))
        specs = [("ram", ram, {"runs": [[0, 8]]}), ("ram", ram, {"runs": [[12, 2], [15, 2]]}),
                 ("device", dev, {"path": str(device), "offset": CHUNK, "length": CHUNK,
                                  "name": "cpu", "instance": 0, "index": 1, "last": False}),
                 ("device", dev, {"path": str(device), "offset": 2 * CHUNK,
                                  "length": CHUNK - 7, "name": "cpu", "instance": 2,
                                  "index": 2, "last": True})]
        for seq, (kind, handler, spec) in enumerate(specs):
            encoded = handler.encode(spec)
            frames = [bytes(f) for f in encoded.frames]
            header = encode(Packet(session=SESSION, channel=0, seq=seq, kind=kind,
                                   sizes=[len(f) for f in frames], checksum=checksum(frames),
                                   body=encoded.body))
            found.append((destination, [header, *frames]))
        found.append((destination, [encode(Sync(session=SESSION, channel=0, round=0))]))
        found.append((destination, [encode(Init(magic=MAGIC, version=VERSION, session=SESSION,
                                                channel=0, first_seq=0))]))
        dev.close()
    return found


# Flat values and one level of nesting: deeper structures cost hypothesis far more time per
# input and the decoder refuses nesting by type first (deep nesting: tests/test_hostile.py).
_LEAVES = (st.none() | st.booleans() | st.integers(-(1 << 64), (1 << 64) - 1) | st.floats()
           | st.text(max_size=12) | st.binary(max_size=32)
           | st.sampled_from([0, -1, 1 << 40, "ram", "none", "zstd:1"]))
VALUES = (_LEAVES | st.lists(_LEAVES, max_size=4)
          | st.dictionaries(st.text(max_size=6), _LEAVES, max_size=4))


def _replace_field(data: st.DataObject, frames: list[bytes]) -> list[bytes]:
    """Set one header field, or one body field, to any msgpack value."""
    try:
        tag, fields = msgpack.unpackb(frames[0], raw=False)
        target = fields["body"] if "body" in fields and data.draw(st.booleans()) else fields
        key = data.draw(st.sampled_from(sorted(target) + ["extra"]))
        target[key] = data.draw(VALUES)
        return [msgpack.packb([tag, fields], use_bin_type=True), *frames[1:]]
    except Exception:  # not a header we can parse: leave it to the byte mutations
        return frames


def _fix_up(data: st.DataObject, frames: list[bytes]) -> list[bytes]:
    """Make the header's sizes and checksum match the frames again."""
    try:
        tag, fields = msgpack.unpackb(frames[0], raw=False)
        fields["sizes"] = [len(f) for f in frames[1:]]
        fields["checksum"] = checksum(frames[1:])
        return [msgpack.packb([tag, fields], use_bin_type=True), *frames[1:]]
    except Exception:
        return frames


def _bytes_op(data: st.DataObject, frames: list[bytes]) -> list[bytes]:
    frames = list(frames) or [b""]
    i = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[i])
    op = data.draw(st.sampled_from(["flip", "cut", "grow", "drop", "twice", "add"]))
    at = data.draw(st.integers(0, max(0, len(frame) - 1)))
    if op == "flip" and frame:
        frame[at] ^= data.draw(st.integers(1, 255))
    elif op == "cut":
        del frame[at:]
    elif op == "grow":
        frame[at:at] = data.draw(st.binary(min_size=1, max_size=32))
    elif op == "drop":
        return frames[:i] + frames[i + 1:]
    elif op == "twice":
        return frames[:i + 1] + frames[i:]
    elif op == "add":
        return frames + [data.draw(st.binary(max_size=64))]
    frames[i] = bytes(frame)
    return frames


def run(examples: int) -> dict[str, int]:
    """Fuzz `examples` inputs; returns how many ended in each outcome. Raises on a bug."""
    outcomes: collections.Counter[str] = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="multifd-fuzz-") as folder:
        pool = seeds(Path(folder))

        @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
                  suppress_health_check=list(HealthCheck))
        @given(st.data())
        def fuzz(data: st.DataObject) -> None:
            destination, frames = data.draw(st.sampled_from(pool))
            for _ in range(data.draw(st.integers(1, 3))):
                mutate = data.draw(st.sampled_from([_bytes_op, _replace_field, _replace_field]))
                frames = mutate(data, frames)
            if data.draw(st.integers(0, 3)):
                frames = _fix_up(data, frames)
            try:
                destination.receive(frames)
                outcomes["accepted"] += 1
            except ProtocolError as exc:  # CorruptPayload included
                outcomes[type(exc).__name__] += 1
            for staged in destination.folder.iterdir():
                assert STAGED.fullmatch(staged.name), f"unexpected file {staged.name}"

        fuzz()
    return dict(outcomes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100_000)
    args = parser.parse_args()
    started = time.perf_counter()
    outcomes = run(args.examples)
    seconds = time.perf_counter() - started
    print(f"{sum(outcomes.values())} inputs in {seconds:.0f} s, only engine errors: "
          + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
