"""A writer the live example does not know: a hot set rewritten all the time, plus a sweep.

    python examples/hot_writer.py --size 1G --hot 16M --sweep-rate 64M --dirty hash

The region starts as a sample image (`--kind`, mixed by default: a guest that used its memory).
The writer (a separate process) keeps writing random bytes to random pages of a hot set at
the start of a shared-memory region, and sweeps the rest of the region slowly, page after
page, writing into each; the hot set is where a real program's stack and heap churn, the
sweep its slow drift through the rest. `python -m engine migrate --live --pause-pid` moves the
region while it writes, exactly as a user would type it. Then this script checks that the
destination equals the paused region byte for byte, and whether the downtime the engine
measured kept within the limit when it said the rounds converged (the engine's promise).
With `--dirty log` the writer also keeps the dirty log (engine/live/dirty.py): a page's
counter goes up by one before the write and by one after.
"""
from __future__ import annotations

import argparse
import filecmp
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine.live.dirty import LOG_ENTRY, create_dirty_log
from engine.settings import PAGE_SIZE
from engine.storage.image import SHM_DIR, map_file
from engine.tools.samples import write_sample
from engine.units import parse_size

# Pages the writer touches between two looks at the clock.
BATCH_PAGES = 64


def writer(region: str, log: str | None, hot_pages: int, sweep_pages_per_s: float,
           ready) -> None:
    """Write until killed: BATCH_PAGES random hot pages, then the sweep's share, in turns."""
    words = np.frombuffer(map_file(region, writable=True), dtype=np.uint64)
    counters = np.frombuffer(map_file(log, writable=True), dtype=LOG_ENTRY) if log else None
    pages = len(words) * 8 // PAGE_SIZE
    rng = np.random.default_rng(os.getpid())
    cold_pages = pages - hot_pages
    swept, started = 0, time.monotonic()  # cold pages swept so far, and since when
    ready.set()
    while True:
        hot = np.unique(rng.integers(0, hot_pages, BATCH_PAGES))
        due = int((time.monotonic() - started) * sweep_pages_per_s) - swept if cold_pages else 0
        due = min(max(due, 0), BATCH_PAGES)
        cold = hot_pages + (swept + np.arange(due)) % max(cold_pages, 1)
        swept += due
        touched = np.union1d(hot, cold)
        if counters is not None:
            counters[touched] += 1  # odd: being written
        offsets = touched * (PAGE_SIZE // 8) + rng.integers(0, PAGE_SIZE // 8, len(touched))
        words[offsets] = rng.integers(0, 1 << 63, len(touched), dtype=np.uint64)
        if counters is not None:
            counters[touched] += 1
        time.sleep(0.001)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="region size (default 256M)")
    parser.add_argument("--hot", default="16M", help="the hot set at its start (default 16M)")
    parser.add_argument("--sweep-rate", default="64M",
                        help="bytes of the rest swept per second (default 64M)")
    parser.add_argument("--kind", default="mixed",
                        help="what the region holds at the start (a sample image kind, "
                             "default mixed: text, binary and zero pages)")
    parser.add_argument("--dirty", choices=("log", "hash"), default="hash")
    parser.add_argument("--compress", default="zstd:1")
    parser.add_argument("--downtime-limit", type=int, default=300, metavar="MS")
    args = parser.parse_args()
    size, hot, sweep = (parse_size(v) for v in (args.size, args.hot, args.sweep_rate))
    if size % PAGE_SIZE or not 0 < hot <= size or not sweep:
        parser.error("--size must be whole pages, --hot within it, --sweep-rate not 0")
    folder = Path(tempfile.mkdtemp(prefix="multifd-hot-", dir=SHM_DIR))
    region, copy, devices = folder / "region", folder / "copy", folder / "devices"
    log = folder / "region.dirty" if args.dirty == "log" else None
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    process = None
    try:
        write_sample(region, size, kind=args.kind)
        if log is not None:
            create_dirty_log(log, size // PAGE_SIZE)
        process = spawn.Process(target=writer, daemon=True, args=(
            str(region), log and str(log), hot // PAGE_SIZE, sweep / PAGE_SIZE, ready))
        process.start()
        if not ready.wait(30):
            raise SystemExit("hot_writer: the writer did not start")
        run = subprocess.run(
            [sys.executable, "-m", "engine", "migrate", str(region), str(copy), "--live", "--pause-pid", str(process.pid), "--dirty",
             args.dirty, "--compress", args.compress, "--downtime-limit",
             str(args.downtime_limit), "--device-dir", str(devices),
             "--json"], capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"hot_writer: the migration failed: {run.stderr.strip()}")
        result = json.loads(run.stdout.strip().splitlines()[-1])
        kept = result["downtime_ms"] <= result["downtime_limit_ms"]
        report = {key: result[key] for key in (
            "converged", "downtime_ms", "expected_downtime_ms", "downtime_parts_ms",
            "downtime_limit_ms", "rounds", "seconds", "dirty")}
        report.update(identical=filecmp.cmp(region, copy, shallow=False),
                      promise_kept=kept or not result["converged"])
        print(json.dumps(report, sort_keys=True))
        return 0 if report["identical"] else 1
    finally:
        if process is not None and process.pid is not None:
            process.kill()  # a stopped writer too
            process.join()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
