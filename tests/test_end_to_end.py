"""End to end through real worker processes, real ZeroMQ TCP sockets and real files/shm."""
from __future__ import annotations

import filecmp
import os
import threading
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import Receiver, Sender, TransferSettings, VerificationFailed
from engine.tools.samples import sample_bytes
from engine.settings import PAGE_SIZE
from engine.storage.image import map_file
from engine.storage.journal import HEADER_BYTES, Journal
from workers.handlers import HandlerContext
from workers.handlers.ram import RamHandler

MiB = 1 << 20


@pytest.mark.parametrize("channels", [1, 2, 4])
@pytest.mark.parametrize("codec", ["none", "zlib", "zstd"])
def test_every_codec_and_channel_count_copies_the_image_exactly(image, tmp_path, codec,
                                                                 channels):
    src = image(6 * MiB + 3 * PAGE_SIZE, seed=channels)
    result = engine.migrate(str(src), str(tmp_path / "dst"),
                            TransferSettings(channels=channels, compress=codec, packet_pages=128))
    assert result.ok and filecmp.cmp(src, tmp_path / "dst", shallow=False)
    assert result.channels == channels
    assert result.normal_pages > 0 and result.zero_pages > 0
    assert result.normal_pages + result.zero_pages == src.stat().st_size // PAGE_SIZE
    assert sum(c.packets for c in result.per_channel) >= 13  # 1539 pages / 128 per packet
    if codec != "none":
        assert result.wire_bytes < result.normal_pages * PAGE_SIZE


@pytest.mark.parametrize("size", [1, PAGE_SIZE, PAGE_SIZE + 1, 129 * PAGE_SIZE - 7,
                                  3 * 128 * PAGE_SIZE + 5 * PAGE_SIZE])
def test_odd_image_sizes_arrive_whole(image, tmp_path, size):
    src = image(size, kind="random", seed=size)
    result = engine.migrate(str(src), str(tmp_path / "dst"), TransferSettings(compress="zstd"))
    assert result.bytes == size
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)


def test_an_empty_image_transfers_as_an_empty_file_with_its_devices(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(b"")
    result = engine.migrate(str(src), str(tmp_path / "dst"), devices={"cpu": b"registers"})
    assert result.ok and result.bytes == 0 and result.normal_pages == result.zero_pages == 0
    assert (tmp_path / "dst").stat().st_size == 0
    assert (tmp_path / "dst.devices" / "cpu").read_bytes() == b"registers"


def test_device_blobs_of_every_size_arrive_in_order(image, tmp_path):
    src = image(2 * MiB)
    blobs = {"empty": b"", "one": b"\x01", "big": sample_bytes(5 * MiB + 17, seed=3),
             "nic": sample_bytes(300_000, kind="random", seed=4)}
    result = engine.migrate(str(src), str(tmp_path / "dst"), TransferSettings(channels=4),
                            devices=blobs, device_dir=tmp_path / "devices")
    assert result.devices == {name: len(data) for name, data in blobs.items()}
    for name, data in blobs.items():
        assert (tmp_path / "devices" / name).read_bytes() == data
    assert not list((tmp_path / "devices").glob(".*")), "staging files left behind"


def test_ram_zstd_and_device_passthrough_share_one_transfer(image, tmp_path):
    src = image(4 * MiB, kind="text")
    state = sample_bytes(3 * MiB, kind="text", seed=9)
    result = engine.migrate(str(src), str(tmp_path / "dst"),
                            TransferSettings(compress="zstd:3", device_compress="none"),
                            devices={"dev": state})
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)
    assert (tmp_path / "dst.devices" / "dev").read_bytes() == state
    ram_wire = result.wire_bytes - len(state)
    assert ram_wire < src.stat().st_size / 2, "RAM was not compressed"
    assert result.wire_bytes > len(state), "device state was not passed through whole"


def _serve(receiver: Receiver, outcome: dict) -> threading.Thread:
    def run() -> None:
        try:
            outcome["result"] = receiver.run(timeout_s=60)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_pages_resent_in_a_later_round_end_with_their_latest_content(image, tmp_path):
    src = image(4 * MiB, seed=5)
    pages = src.stat().st_size // PAGE_SIZE
    outcome: dict = {}
    with Receiver(str(tmp_path / "dst"), on_device=None) as receiver:
        thread = _serve(receiver, outcome)
        with Sender(str(src), str(receiver.endpoint), TransferSettings(channels=3)) as sender:
            sender.send_range()
            assert sender.sync() == 0
            # Round 1: rewrite a scattered set of pages, including some to all-zero (a zero
            # page must overwrite an older non-zero copy) and some from zero to data.
            rng = np.random.default_rng(1)
            changed = np.unique(rng.integers(0, pages, 200))
            with open(src, "r+b") as f:
                for i, page in enumerate(changed):
                    f.seek(int(page) * PAGE_SIZE)
                    f.write(bytes(PAGE_SIZE) if i % 3 == 0 else os.urandom(PAGE_SIZE))
            sender.send_pages(changed)
            assert sender.sync() == 1
            result = sender.finish()
        thread.join(30)
    assert result.rounds == 2 and outcome["result"].rounds == 2
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)


def test_producers_on_several_threads_share_one_sender(image, tmp_path):
    src = image(8 * MiB, seed=6)
    pages = src.stat().st_size // PAGE_SIZE
    outcome: dict = {}
    with Receiver(str(tmp_path / "dst"), device_dir=tmp_path / "devs") as receiver:
        thread = _serve(receiver, outcome)
        with Sender(str(src), str(receiver.endpoint), TransferSettings(channels=2)) as sender:
            quarter = pages // 4
            producers = [threading.Thread(target=sender.send_range,
                                          args=(i * quarter, quarter if i < 3 else pages - 3 * quarter))
                         for i in range(4)]
            producers += [threading.Thread(target=sender.send_device,
                                           args=(f"dev{i}", sample_bytes(MiB + i, seed=i)))
                          for i in range(3)]
            for producer in producers:
                producer.start()
            for producer in producers:
                producer.join()
            result = sender.finish()
        thread.join(30)
    assert result.ok and filecmp.cmp(src, tmp_path / "dst", shallow=False)
    assert sorted(os.listdir(tmp_path / "devs")) == ["dev0", "dev1", "dev2"]


def test_device_chunks_reach_a_callback_strictly_in_order(image, tmp_path):
    src = image(MiB)
    state = sample_bytes(7 * MiB + 5, kind="random", seed=8)
    seen: list[tuple[str, int, bool]] = []
    received = bytearray()

    def on_device(key: str, index: int, data: bytes, last: bool) -> None:
        seen.append((key, index, last))
        received.extend(data)

    outcome: dict = {}
    with Receiver(str(tmp_path / "dst"), on_device=on_device) as receiver:
        thread = _serve(receiver, outcome)
        settings = TransferSettings(channels=4, chunk_size=MiB)
        with Sender(str(src), str(receiver.endpoint), settings) as sender:
            sender.send_range()
            sender.send_device("vm", state)
            sender.finish()
        thread.join(30)
    assert [index for _, index, _ in seen] == list(range(8))
    assert [last for _, _, last in seen] == [False] * 7 + [True]
    assert bytes(received) == state


def test_a_source_changed_behind_the_engines_back_fails_a_reread(image, tmp_path):
    """The fold proves the destination holds what was read and sent; a source changed after
    its pages were read (and not sent again) takes the re-read to see (README, verify)."""
    src = image(2 * MiB, kind="random")
    outcome: dict = {}
    with Receiver(str(tmp_path / "dst")) as receiver:
        thread = _serve(receiver, outcome)
        with Sender(str(src), str(receiver.endpoint),
                    TransferSettings(verify="reread")) as sender:
            sender.send_range()
            sender.sync()
            with open(src, "r+b") as f:  # changed after it was sent, and not re-sent
                f.write(b"changed")
            with pytest.raises(VerificationFailed):
                sender.finish()
        thread.join(30)
    assert isinstance(outcome["error"], VerificationFailed)
    assert not (tmp_path / "dst").exists(), "an unverified image got its final name"
    assert (tmp_path / "dst.partial").exists()


def test_shared_memory_source_and_destination(image, tmp_path):
    name = f"multifd-test-{os.getpid()}"
    src = Path("/dev/shm") / f"{name}-src"
    src.write_bytes(image(3 * MiB + 100).read_bytes())
    try:
        engine.migrate(f"shm:{src.name}", f"shm:{name}-dst", TransferSettings(compress="zstd"),
                       device_dir=tmp_path)
        assert filecmp.cmp(src, Path("/dev/shm") / f"{name}-dst", shallow=False)
    finally:
        src.unlink()
        (Path("/dev/shm") / f"{name}-dst").unlink(missing_ok=True)


def test_zero_pages_stay_holes_in_the_destination_through_transfer_and_digest(image, tmp_path):
    src = image(8 * MiB, kind="mixed", seed=3)
    result = engine.migrate(str(src), str(tmp_path / "dst"), TransferSettings(channels=2))
    assert result.ok and result.zero_pages > 0
    allocated = (tmp_path / "dst").stat().st_blocks * 512
    assert allocated <= result.normal_pages * PAGE_SIZE + 64 * 1024, \
        "zero pages were written, or read through a mapping, and took memory"


def test_zero_pages_written_in_place_skip_the_holes_and_zero_the_pages_with_data(tmp_path):
    """A destination written in place (a waiting QEMU's RAM file) is not known to be zero, but
    its holes are: zero pages are written over its data only, and its holes stay holes."""
    pages = 64
    dst = tmp_path / "ram"
    with open(dst, "wb") as f:
        f.truncate(pages * PAGE_SIZE)
        for page in (3, 40):
            f.seek(page * PAGE_SIZE)
            f.write(b"\xee" * PAGE_SIZE)
    src = tmp_path / "zeros"
    src.write_bytes(bytes(pages * PAGE_SIZE))
    journal = Journal.create(tmp_path / "ram.journal", pages * PAGE_SIZE, 1 << 20,
                             holds_data=dst)
    written = np.frombuffer(map_file(journal.path, writable=True, offset=HEADER_BYTES,
                                     length=pages), dtype=np.uint8)
    settings = TransferSettings(packet_pages=pages)
    source = RamHandler(HandlerContext(settings=settings, image_size=pages * PAGE_SIZE,
                                       image_path=str(src)))
    destination = RamHandler(HandlerContext(settings=settings, image_size=pages * PAGE_SIZE,
                                            image_path=str(dst), written=written))
    packet = source.encode({"runs": [[0, pages]]})
    destination.apply(packet.body, packet.frames)
    destination.close()
    source.close()
    assert dst.read_bytes() == bytes(pages * PAGE_SIZE)
    assert dst.stat().st_blocks * 512 <= 2 * PAGE_SIZE, "zeros were written into the holes"

