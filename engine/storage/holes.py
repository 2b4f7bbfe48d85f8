"""Where a file's holes are: the parts that read as zeros and take no storage.

Sparse files are the rule here: a fresh destination, a guest's RAM file that the guest has
touched only in part. Reading a hole with pread costs a copy of zeros; reading it through a
mapping, or writing zeros into it, allocates it. So the digest, the journal and the RAM
handler ask first, with lseek's SEEK_DATA and SEEK_HOLE.
"""
from __future__ import annotations

import errno
import os


def next_data(fd: int, offset: int, end: int) -> int:
    """Where the first data at or after `offset` starts, at most `end` (`end`: none before
    it; `offset` where the filesystem cannot tell holes, so that nothing is skipped)."""
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), end)
    except OSError as exc:
        return end if exc.errno == errno.ENXIO else offset


def next_hole(fd: int, offset: int, end: int) -> int:
    """Where the first hole at or after `offset` starts, at most `end`. On tmpfs this walks
    every page of the data before it: ask once per extent, not once per chunk."""
    try:
        return min(os.lseek(fd, offset, os.SEEK_HOLE), end)
    except OSError:
        return end
