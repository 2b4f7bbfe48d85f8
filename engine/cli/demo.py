"""`python -m engine demo`: the engine on a built-in sample, start to finish.

Builds a mixed image (zero pages, text, machine code, random) and two device blobs in a
temporary folder (in /dev/shm when it has room, so the disk is not what is measured),
migrates them over 2 channels with zstd, shows progress and a summary, checks the copy
byte for byte independently of the engine's own digest, and removes everything.
"""
from __future__ import annotations

import filecmp
import shutil
import tempfile
from pathlib import Path

from engine import log
from engine.coordinator.local import migrate
from engine.cli.progress import following
from engine.cli.status import Tracker
from engine.cli.summary import json_line, print_summary
from engine.tools.samples import sample_bytes, write_sample
from engine.settings import TransferSettings
from engine.units import parse_size


def run_demo(size_text: str, as_json: bool) -> int:
    size = parse_size(size_text)
    shm = Path("/dev/shm")
    room = shutil.disk_usage(shm).free if shm.is_dir() else 0
    folder = Path(tempfile.mkdtemp(prefix="multifd-demo-", dir=shm if room > 3 * size else None))
    try:
        src, dst = folder / "guest.ram", folder / "copy.ram"
        if not as_json:
            log.notice(f"building a {size >> 20} MiB sample image and two device blobs in "
                       f"{folder}")
        write_sample(src, size, kind="mixed", seed=2024)
        devices = {"cpu": sample_bytes(256 << 10, kind="binary", seed=1),
                   "virtio-net": sample_bytes(5 << 20, kind="mixed", seed=2)}
        settings = TransferSettings(channels=2, compress="zstd:1")
        with following(Tracker("source", size, "starting"), "auto", "migrating") as tracker:
            result = migrate(str(src), str(dst), settings, devices=devices,
                             progress=tracker.acked)
        same = filecmp.cmp(src, dst, shallow=False) and all(
            (folder / "copy.ram.devices" / name).read_bytes() == data
            for name, data in devices.items())
        if as_json:
            print(json_line(result))
        elif log.verbosity() > log.QUIET:
            print_summary(result, title="demo: transfer verified")
            print("independent byte-for-byte comparison: " + ("identical" if same else "DIFFERENT"))
        return 0 if same else 1
    finally:
        shutil.rmtree(folder, ignore_errors=True)
