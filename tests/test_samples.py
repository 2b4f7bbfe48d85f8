"""Sample images: exact sizes, determinism, the mixed layout, and realistic compressibility."""
from __future__ import annotations

import numpy as np
import pytest
import zstandard

from engine.tools.samples import KINDS, PAGE, page_kinds, sample_bytes, write_sample

MiB = 1 << 20
CONTENT_KINDS = ("text", "binary", "random")


def pages(data: bytes) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(-1, PAGE)


def zstd1_ratio(data: bytes) -> float:
    return len(data) / len(zstandard.ZstdCompressor(level=1).compress(data))


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_seed_gives_the_same_bytes(kind):
    assert sample_bytes(MiB + 5, kind, seed=3) == sample_bytes(MiB + 5, kind, seed=3)


@pytest.mark.parametrize("kind", ("text", "binary", "random", "mixed"))
def test_another_seed_gives_other_bytes(kind):
    assert sample_bytes(MiB + 5, kind, seed=3) != sample_bytes(MiB + 5, kind, seed=4)


@pytest.mark.parametrize("size", [0, 1, PAGE - 1, PAGE, 5 * MiB + 123])
def test_files_have_exactly_the_size_asked_for(tmp_path, size):
    path = tmp_path / "image"
    write_sample(path, size, seed=1)
    assert path.stat().st_size == size


@pytest.mark.parametrize("kind", KINDS)
def test_sample_bytes_are_what_write_sample_writes(tmp_path, kind):
    path = tmp_path / "image"
    write_sample(path, 3 * MiB + 7, kind, seed=5)
    assert path.read_bytes() == sample_bytes(3 * MiB + 7, kind, seed=5)


def test_an_unknown_kind_is_refused_with_the_known_ones_listed(tmp_path):
    with pytest.raises(ValueError, match="zero, text, binary, random, mixed"):
        write_sample(tmp_path / "image", PAGE, kind="json")
    assert not (tmp_path / "image").exists()
    with pytest.raises(ValueError, match="known kinds"):
        sample_bytes(PAGE, kind="json")


def test_mixed_zero_pages_are_about_40_percent_and_only_where_the_layout_says():
    size = 64 * MiB
    layout = page_kinds(size, seed=11)
    zero = ~pages(sample_bytes(size, seed=11)).any(axis=1)
    assert 0.30 <= zero.mean() <= 0.50
    np.testing.assert_array_equal(zero, layout == KINDS.index("zero"))
    shares = np.bincount(layout, minlength=4)[:4] / layout.size
    np.testing.assert_allclose(shares, [0.40, 0.25, 0.20, 0.15], atol=0.07)


def test_a_shorter_mixed_layout_is_a_prefix_of_a_longer_one():
    np.testing.assert_array_equal(page_kinds(3 * MiB + 1, seed=2),
                                  page_kinds(9 * MiB, seed=2)[:769])


@pytest.mark.parametrize("kind", CONTENT_KINDS)
def test_content_pages_are_never_zero_nor_copies_of_each_other(kind):
    rows = pages(sample_bytes(4 * MiB, kind, seed=6))
    assert rows.any(axis=1).all()
    assert len(np.unique(rows, axis=0)) == len(rows)


def test_compressibility_is_realistic():
    assert zstd1_ratio(sample_bytes(4 * MiB, "text", seed=1)) > 2.5
    assert 1.5 < zstd1_ratio(sample_bytes(4 * MiB, "binary", seed=1)) < 3
    assert zstd1_ratio(sample_bytes(4 * MiB, "random", seed=1)) < 1.05
