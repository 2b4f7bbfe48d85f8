"""--max-bandwidth: rates as users write them, the token bucket each source worker paces its\nchannel with, and the cap in a transfer."""
from __future__ import annotations

import time

import pytest

import engine
from engine import TransferSettings, UsageError
from workers.pacing import TokenBucket
from engine.units import parse_rate

MiB = 1 << 20


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


def test_max_bandwidth_slows_a_transfer_down_to_the_cap_and_starves_no_channel(image, tmp_path):
    src = image(2 * MiB, kind="random")
    started = time.perf_counter()
    result = engine.migrate(str(src), str(tmp_path / "dst"),
                            TransferSettings(channels=2, packet_pages=64), max_bandwidth=2 * MiB)
    # Eight 256 KiB packets at 2 MiB/s: each channel sends four at 1 MiB/s, the first at once
    # and each later one once the one before it is paid for, so the last leave after 0.75 s.
    # Only a lower bound is asserted; a loaded machine makes it slower, never faster.
    assert time.perf_counter() - started > 0.7
    assert result.ok and (tmp_path / "dst").read_bytes() == src.read_bytes()
    shares = [channel.bytes / result.wire_bytes for channel in result.per_channel]
    assert min(shares) > 0.3, f"one channel carried almost nothing under the cap: {shares}"
