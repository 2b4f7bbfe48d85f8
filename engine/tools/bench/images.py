"""The benchmark's sample images (engine/tools/samples.py) in a scratch folder in /dev/shm, and the
warm-up that this VM needs before any timing means anything.

This VM faults memory in from its host on first touch: a large allocation soon after a large
free can run several times slower than the same work a moment later. Writing and deleting a
large file in /dev/shm first makes the later runs comparable.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from engine.errors import UsageError
from engine.tools.samples import write_sample

SHM = Path("/dev/shm")
_BLOCK = 16 << 20


class ImageFolder:
    """Sample images made once per (kind, size, seed), and destination paths beside them."""

    def __init__(self) -> None:
        base = SHM if SHM.is_dir() else None
        self.path = Path(tempfile.mkdtemp(prefix="multifd-bench-", dir=base))
        self._made: dict[tuple[str, int, int], Path] = {}

    def image(self, kind: str, size: int, seed: int) -> Path:
        key = (kind, size, seed)
        if key not in self._made:
            path = self.path / f"{kind}-{size}-{seed}.img"
            write_sample(path, size, kind=kind, seed=seed)
            self._made[key] = path
        return self._made[key]

    def destination(self) -> Path:
        return self.path / "destination.img"

    def check_room(self, images: int, destination: int) -> None:
        free = shutil.disk_usage(self.path).free
        if free < images + destination:
            raise UsageError(f"the benchmark needs {(images + destination) >> 20} MiB in "
                             f"{self.path.parent}, which has {free >> 20} MiB free")

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def warm_up(nbytes: int, folder: Path = SHM) -> None:
    """Write and delete `nbytes` in `folder` (tmpfs), at most what is free there."""
    nbytes = min(nbytes, shutil.disk_usage(folder).free - (1 << 30))
    if nbytes <= 0:
        return
    block = bytes(_BLOCK)
    fd, name = tempfile.mkstemp(prefix="multifd-warm-", dir=folder)
    try:
        written = 0
        while written < nbytes:
            written += os.write(fd, memoryview(block)[:min(_BLOCK, nbytes - written)])
    finally:
        os.close(fd)
        os.unlink(name)
