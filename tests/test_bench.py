"""The load tester's smoke run (seconds, not a benchmark), and the pieces behind its options:
the matrix, pacing (--max-bandwidth), and the per-packet codec choice (--compress auto)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

import engine
from engine import TransferSettings, UsageError
from engine.tools.bench.matrix import Axis, cells, schedule
from engine.errors import ProtocolError
from engine.coordinator.pacing import Pacer, TokenBucket
from engine.settings import PAGE_SIZE
from engine.units import parse_rate
from workers.codecs import make_codec
from workers.codecs.adaptive import AdaptiveChoice
from workers.gauge import LinkState, SendGauge
from workers.handlers.base import HandlerContext
from workers.handlers.ram import RamHandler

MiB = 1 << 20


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "bench", "--warm-up", "0", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_bench_smoke_measures_every_cell_against_the_ceilings():
    run = bench("--size", "2M", "--repeat", "1", "--channels", "1,2", "--compress",
                "none,zstd:1", "--json")
    assert run.returncode == 0, run.stderr
    (report,) = json.loads(run.stdout)["runs"]
    assert report["machine"]["nproc"] >= 1
    (wire,) = report["wire_ceiling_bytes_per_s"]
    assert wire > 0
    assert {f["compress"] for f in report["work_floor_cpu_s_per_gib"]} == {"none", "zstd:1"}
    cells_ = {(c["cell"]["channels"], c["cell"]["compress"]): c for c in report["cells"]}
    assert set(cells_) == {(1, "none"), (2, "none"), (1, "zstd:1"), (2, "zstd:1")}
    for cell in cells_.values():
        assert cell["failures"] == 0
        assert cell["median"]["cpu_per_gib"] > 0 and cell["median"]["peak_uss_mib"] > 0
    # A mixed image: zero pages never travel, and zstd shrinks the rest.
    assert cells_[(2, "none")]["median"]["wire_ratio"] < 0.8
    ratio = {key: cell["median"]["wire_ratio"] for key, cell in cells_.items()}
    assert ratio[(2, "zstd:1")] < ratio[(2, "none")]


def test_bench_compares_encryption_on_and_off():
    run = bench("--size", "2M", "--repeat", "1", "--channels", "2", "--compress", "none",
                "--curve", "off,on", "--no-ceilings", "--json")
    assert run.returncode == 0, run.stderr
    (report,) = json.loads(run.stdout)["runs"]
    cells_ = {c["cell"]["curve"]: c for c in report["cells"]}
    assert set(cells_) == {False, True}
    assert all(cell["failures"] == 0 for cell in cells_.values())


def test_bench_prints_a_table_and_soak_reports_each_transfer():
    run = bench("--size", "1M", "--repeat", "1", "--channels", "1", "--compress", "none",
                "--no-ceilings")
    assert run.returncode == 0, run.stderr
    assert "GiB/s" in run.stdout and "CPU s" in run.stdout  # x floor: in --wide
    soak = bench("--size", "1M", "--channels", "2", "--soak", "1", "--json")
    assert soak.returncode == 0, soak.stderr
    report = json.loads(soak.stdout)
    assert report["transfers"] >= 1 and report["failures"] == 0


@pytest.mark.parametrize("args, message", [
    (("--compress", "lz9"), "unknown codec"),
    (("--kind", "nonsense"), "unknown image kind"),
    (("--channels", "0"), "at least 1"),
    (("--max-bandwidth", "fast"), "rate 'fast'"),
])
def test_bench_refuses_bad_options_in_one_line(args, message):
    run = bench(*args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_the_schedule_runs_every_cell_once_per_round_in_shuffled_orders():
    matrix = cells([Axis("channels", (1, 2, 4)), Axis("compress", ("none", "zstd:1"))])
    plan = schedule(matrix, repeat=3, seed=7)
    rounds = [[cell for number, cell in plan if number == r] for r in range(3)]
    assert all(sorted(map(hash, r)) == sorted(map(hash, matrix)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, "every round in the same order"


def test_an_axis_named_after_a_setting_goes_into_the_settings():
    (cell,) = cells([Axis("kind", ("mixed",)), Axis("window", (3,)),
                     Axis("compress", ("zstd:2",))])
    assert cell.settings() == TransferSettings(window=3, compress="zstd:2")


def test_rates_are_read_as_tc_and_qemu_write_them():
    assert parse_rate("1gbit") == 125_000_000
    assert parse_rate("500mbit") == 62_500_000
    assert parse_rate("100M") == 100 * MiB
    with pytest.raises(UsageError):
        parse_rate("0M")


def test_the_token_bucket_holds_packets_back_until_their_bytes_are_paid():
    now = [0.0]
    bucket = TokenBucket(1000, clock=lambda: now[0])
    assert bucket.delay_s() == 0
    bucket.charge(500)
    assert bucket.delay_s() == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.delay_s() == 0
    now[0] = 100.0  # a long pause saves up only a short burst
    bucket.charge(100)
    assert bucket.delay_s() > 0


def test_the_send_gauge_measures_the_drain_rate_only_while_the_window_is_full():
    gauge = SendGauge(window=4)
    gauge.sent()
    gauge.acknowledged(1, 1000, now=1.0)
    gauge.sent()
    gauge.acknowledged(1, 1000, now=2.0)  # one packet out of four: not the link's pace
    assert gauge.state() == LinkState(fill=0.0, drain_rate=0.0)
    for _ in range(4):
        gauge.sent()
    gauge.acknowledged(1, 1000, now=3.0)  # a full window from here on
    gauge.acknowledged(1, 1000, now=3.001)  # a burst ...
    gauge.acknowledged(1, 2000, now=4.0)  # ... then a pause: 3000 bytes in one second
    assert gauge.state() == LinkState(fill=0.25, drain_rate=pytest.approx(3000.0))


def test_the_pacer_charges_estimates_at_once_and_settles_them_with_the_wire_bytes():
    now = [0.0]
    pacer = Pacer(1000, channels=2, clock=lambda: now[0])
    pacer.dispatched(0, 400)  # nothing seen yet: every image byte may travel
    pacer.dispatched(1, 400)
    assert pacer.delay_s() == pytest.approx(0.8)
    pacer.acknowledged(0, 1, image_bytes=400, wire_bytes=100)  # compressed to a quarter
    assert pacer.delay_s() == pytest.approx(0.5)
    pacer.dispatched(0, 400)  # now estimated at the ratio seen
    assert pacer.delay_s() == pytest.approx(0.6)


def test_max_bandwidth_slows_a_transfer_down_to_the_cap(image, tmp_path):
    src = image(3 * MiB, kind="random")
    started = time.perf_counter()
    result = engine.migrate(str(src), str(tmp_path / "dst"), TransferSettings(channels=2),
                            max_bandwidth=2 * MiB)
    # 3 MiB at 2 MiB/s: every packet is paid for when dispatched, even the first ones, so
    # at least the last 3 - 0.1 MiB wait for tokens. Only a lower bound is asserted; a
    # loaded machine makes it slower, never faster.
    assert time.perf_counter() - started > 1.2
    assert result.ok and (tmp_path / "dst").read_bytes() == src.read_bytes()


def _choice(state: list) -> AdaptiveChoice:
    codecs = [make_codec("none"), make_codec("zstd:1"), make_codec("zstd:3")]
    return AdaptiveChoice(codecs, lambda: LinkState(*state))


def _measured(choice: AdaptiveChoice, ratios=(0.6, 0.5), speeds=(300e6, 200e6)) -> None:
    for codec, ratio, speed in zip(choice.codecs[1:], ratios, speeds):
        choice.record(codec, raw=2 << 20, compressed=int(ratio * (2 << 20)),
                      seconds=(2 << 20) / speed)


def test_auto_sends_raw_while_the_window_has_room():
    choice = _choice([0.25, 50e6])
    _measured(choice)
    assert {choice.pick().spec for _ in range(40)} == {"none"}


def test_auto_tries_each_codec_then_compresses_as_hard_as_a_slow_link_pays_for():
    state = [7 / 8, 0.0]
    choice = _choice(state)
    assert choice.pick().spec == "zstd:1"  # not measured yet
    _measured(choice)
    state[1] = 50e6  # 50 MB/s: none 50, zstd:1 min(300, 83), zstd:3 min(200, 100)
    assert {choice.pick().spec for _ in range(14)} == {"zstd:3"}


def test_auto_leaves_a_fast_link_and_incompressible_data_uncompressed_but_keeps_probing():
    state = [7 / 8, 500e6]  # the far end drains 500 MB/s: compressing at 300 is slower
    choice = _choice(state)
    _measured(choice)
    picks = [choice.pick().spec for _ in range(32)]
    assert picks.count("none") == 30 and len(set(picks)) == 3  # two probes, one per codec
    state[1] = 50e6
    for _ in range(8):
        _measured(choice, ratios=(1.0, 1.0))  # random pages: nothing saved at any speed
    assert [choice.pick().spec for _ in range(15)].count("none") >= 14


def _handler(path, settings, fill=lambda: 0.0) -> RamHandler:
    return RamHandler(HandlerContext(settings=settings, image_size=path.stat().st_size,
                                     image_path=str(path),
                                     link=lambda: LinkState(fill=fill(), drain_rate=0.0)))


def test_auto_packets_may_use_any_announced_codec_and_nothing_else(image, tmp_path):
    src = image(64 * PAGE_SIZE, kind="text")
    dst = tmp_path / "dst"
    dst.write_bytes(bytes(src.stat().st_size))
    auto = TransferSettings(compress="auto", packet_pages=32)
    fill = [0.0]
    source = _handler(src, auto, lambda: fill[0])
    raw = source.encode({"runs": [[0, 32]]})
    fill[0] = 1.0
    packed = source.encode({"runs": [[32, 32]]})
    assert (raw.body["codec"], packed.body["codec"]) == ("none", "zstd:1")
    destination = _handler(dst, auto)
    destination.apply(raw.body, raw.frames)
    destination.apply(packed.body, packed.frames)
    destination.close()
    assert dst.read_bytes() == src.read_bytes()
    fixed = _handler(dst, TransferSettings(compress="none", packet_pages=32))
    with pytest.raises(ProtocolError, match="announced none"):
        fixed.apply(packed.body, packed.frames)
    fixed.close()
    source.close()


def test_auto_compression_migrates_verified(image, tmp_path):
    src = image(3 * MiB)
    result = engine.migrate(str(src), str(tmp_path / "dst"), TransferSettings(compress="auto"))
    assert result.ok and result.compress == "auto"
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()


def test_zero_pages_stay_holes_in_the_destination_through_transfer_and_digest(image, tmp_path):
    src = image(8 * MiB, kind="mixed", seed=3)
    result = engine.migrate(str(src), str(tmp_path / "dst"), TransferSettings(channels=2))
    assert result.ok and result.zero_pages > 0
    allocated = (tmp_path / "dst").stat().st_blocks * 512
    assert allocated <= result.normal_pages * PAGE_SIZE + 64 * 1024, \
        "zero pages were written, or read through a mapping, and took memory"
