"""--compress auto: what the send gauge measures of the link, how the codec is chosen from it,
and that a destination takes every announced codec and nothing else."""
from __future__ import annotations

from collections import Counter

import pytest

import engine
from engine import TransferSettings
from engine.errors import ProtocolError
from engine.settings import PAGE_SIZE
from workers.codecs import make_codec
from workers.codecs.adaptive import AdaptiveChoice
from workers.gauge import LinkState, SendGauge
from workers.handlers.base import HandlerContext
from workers.handlers.ram import RamHandler

MiB = 1 << 20


def test_the_send_gauge_measures_the_drain_rate_only_while_the_window_is_full():
    gauge = SendGauge(window=4)
    gauge.sent()
    gauge.acknowledged(1, 1000, now=1.0)
    gauge.sent()
    gauge.acknowledged(1, 1000, now=2.0)  # one packet out of four: not the link's pace
    assert gauge.state() == LinkState(fill=0.0, drain_rate=0.0, sent=2)
    for _ in range(4):
        gauge.sent()
    gauge.acknowledged(1, 1000, now=3.0)  # a full window from here on
    gauge.acknowledged(1, 1000, now=3.001)  # a burst ...
    gauge.acknowledged(1, 2000, now=4.0)  # ... then a pause: 3000 bytes in one second
    # made of packets 3 and 4 (counted from 0), acknowledged after the first measured one
    assert gauge.state() == LinkState(fill=0.25, drain_rate=pytest.approx(3000.0), sent=6,
                                      drained=range(3, 5))


def test_the_send_gauge_takes_no_rate_from_a_burst_of_acknowledgements():
    gauge = SendGauge(window=4)
    for _ in range(4):
        gauge.sent()
    for now in (1.0, 1.001, 1.002):  # the far end had them queued: not the link's pace
        gauge.acknowledged(1, 1000, now=now)
    assert gauge.state().drain_rate == 0.0


def _choice(state: list) -> AdaptiveChoice:
    """`state`: [fill, drain rate], and optionally the packets the rate was measured on."""
    codecs = [make_codec("none"), make_codec("zstd:1"), make_codec("zstd:3")]
    sent = [0]

    def link() -> LinkState:
        sent[0] += 1  # as the channel counts: one packet sent after each pick
        return LinkState(*state[:2], sent=sent[0] - 1, drained=(state[2:] or [range(0)])[0])
    return AdaptiveChoice(codecs, link)


def _measured(choice: AdaptiveChoice, ratios=(0.6, 0.5), speeds=(300e6, 200e6)) -> None:
    for codec, ratio, speed in zip(choice.codecs[1:], ratios, speeds):
        for _ in range(1 if codec.spec in choice.warm else 2):  # the first only warms up
            choice.record(codec, raw=2 << 20, compressed=int(ratio * (2 << 20)),
                          seconds=(2 << 20) / speed)


def test_auto_does_not_judge_a_codec_by_its_first_packet():
    choice = _choice([7 / 8, 50e6])
    codec = choice.pick()
    assert codec.spec == "zstd:1"
    choice.record(codec, raw=2 << 20, compressed=1 << 20, seconds=1.0)  # a cold context
    assert choice.pick().spec == "zstd:1" and "zstd:1" not in choice.speed


def test_auto_sends_raw_until_it_knows_the_pace_of_the_link():
    for fill in (0.25, 7 / 8):
        choice = _choice([fill, 0.0])
        _measured(choice)
        assert {choice.pick().spec for _ in range(40)} == {"none"}


def _picks(choice: AdaptiveChoice, count: int) -> Counter:
    return Counter(choice.pick().spec for _ in range(count))


def test_auto_measures_the_fastest_codec_first_then_compresses_as_hard_as_a_slow_link_pays():
    # 50 MB/s, seconds per MB: none 20, zstd:1 max(3.3, 12), zstd:3 max(5, 10)
    choice = _choice([7 / 8, 50e6])
    assert choice.pick().spec == "zstd:1"  # not measured yet
    _measured(choice)
    assert _picks(choice, 14) == {"zstd:3": 13, "zstd:1": 1}  # one probe, of the neighbour


def test_auto_climbs_the_levels_one_neighbour_at_a_time():
    codecs = [make_codec(spec) for spec in ("none", "zstd:1", "zstd:2", "zstd:3")]
    choice = AdaptiveChoice(codecs, lambda: LinkState(7 / 8, 50e6))
    for _ in range(2):  # zstd:1 warmed up and measured; the others not yet
        choice.record(codecs[1], raw=2 << 20, compressed=1 << 20, seconds=0.01)
    assert [choice.pick().spec for _ in range(8)] == ["zstd:1"] * 7 + ["zstd:2"]


def test_auto_keeps_compressing_on_a_slow_link_when_the_window_has_room():
    choice = _choice([0.0, 50e6])  # a run of zero pages has just drained the window
    _measured(choice)
    assert _picks(choice, 14) == {"zstd:3": 13, "zstd:1": 1}


def test_auto_stops_raising_the_level_where_the_cpu_would_take_longer_than_the_wire():
    choice = _choice([7 / 8, 50e6])
    # zstd:3 at 50 MB/s (the cores are busy): max(20, 10) against zstd:1's max(3.3, 12)
    _measured(choice, speeds=(300e6, 50e6))
    assert _picks(choice, 14) == {"zstd:1": 13, "zstd:3": 1}


def test_auto_sends_raw_to_a_far_end_that_drains_compressed_packets_slower():
    state = [7 / 8, 0.0]
    choice = _choice(state)
    assert {choice.pick().spec for _ in range(8)} == {"none"}  # packets 0-7: pace unknown
    _measured(choice)
    state[1:] = [50e6, range(0, 8)]  # raw packets drained at 50 MB/s: compressing pays
    assert _picks(choice, 8) == {"zstd:3": 7, "zstd:1": 1}  # packets 8-15, one a probe
    state[1:] = [50e6, range(4, 12)]  # measured on raw and compressed packets ...
    assert choice.pick().spec == "zstd:3"  # ... tells nothing of either (packet 16)
    # The compressed packets drained at 20 MB/s, the far end's pace, not the wire's: less
    # image per second (at best 20 / 0.5 = 40 MB/s) than raw (50 MB/s).
    state[1:] = [20e6, range(8, 16)]
    assert _picks(choice, 14) == {"none": 14}


def test_auto_leaves_a_fast_link_and_incompressible_data_uncompressed_but_keeps_probing():
    state = [7 / 8, 500e6]  # the far end drains 500 MB/s: compressing at 300 is slower
    choice = _choice(state)
    _measured(choice)
    assert _picks(choice, 32) == {"none": 31, "zstd:1": 1}  # a probe of the neighbour
    state[1] = 50e6
    for _ in range(8):
        _measured(choice, ratios=(1.0, 1.0))  # random pages: nothing saved at any speed
    assert [choice.pick().spec for _ in range(15)].count("none") >= 14


def _handler(path, settings, drain=lambda: 0.0) -> RamHandler:
    return RamHandler(HandlerContext(settings=settings, image_size=path.stat().st_size,
                                     image_path=str(path),
                                     link=lambda: LinkState(fill=1.0, drain_rate=drain())))


def test_auto_packets_may_use_any_announced_codec_and_nothing_else(image, tmp_path):
    src = image(64 * PAGE_SIZE, kind="text")
    dst = tmp_path / "dst"
    dst.write_bytes(bytes(src.stat().st_size))
    auto = TransferSettings(compress="auto", packet_pages=32)
    drain = [0.0]
    source = _handler(src, auto, lambda: drain[0])
    raw = source.encode({"runs": [[0, 32]]})  # the link's pace not known yet
    drain[0] = 50e6
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


