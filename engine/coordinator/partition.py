"""Cutting payloads into packet-sized job descriptors, lazily, so any size streams."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from engine.settings import PAGE_SIZE

Runs = list[list[int]]


def range_packets(start: int, count: int, packet_pages: int) -> Iterator[Runs]:
    """Packets covering pages [start, start + count), each one run of up to packet_pages."""
    end = start + count
    for first in range(start, end, packet_pages):
        yield [[first, min(packet_pages, end - first)]]


def list_packets(pages: np.ndarray, packet_pages: int) -> Iterator[Runs]:
    """Packets covering a sorted array of distinct page indices, as runs of consecutive pages."""
    for first in range(0, len(pages), packet_pages):
        chunk = pages[first:first + packet_pages]
        breaks = np.flatnonzero(np.diff(chunk) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(chunk)]))
        yield [[int(chunk[s]), int(e - s)] for s, e in zip(starts, ends)]


def runs_bytes(runs: Runs, image_size: int) -> int:
    """Image bytes that a packet's runs cover (the last page of the image may be short)."""
    return sum(min((start + count) * PAGE_SIZE, image_size) - start * PAGE_SIZE
               for start, count in runs)


def chunk_spans(size: int, chunk_size: int) -> Iterator[tuple[int, int, int, bool]]:
    """(index, offset, length, last) of each chunk of a blob; an empty blob is one empty chunk."""
    count = max(1, (size + chunk_size - 1) // chunk_size)
    for index in range(count):
        offset = index * chunk_size
        yield index, offset, min(chunk_size, size - offset), index == count - 1
