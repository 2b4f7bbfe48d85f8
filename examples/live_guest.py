"""A running guest migrated live: it keeps incrementing byte 0 of every 4 KiB page, in sweeps.

    python examples/live_guest.py --size 256M --channels 2 --compress zstd:1 --json

Like QEMU's migration test guest, the guest (a separate process) sweeps a shared-memory
region page after page, adding 1 to the first byte of each page, at `--rate` bytes of region
per second. The engine migrates the region while the guest runs (pre-copy rounds), stops the
guest with SIGSTOP when the rest fits the downtime limit, and completes. Then this script
checks the destination:
- consistent: every page holds the same byte as the first page, except that from exactly
  one edge on the pages hold one less (the guest was stopped mid-sweep);
- identical: the destination equals the paused source byte for byte.
The guest cooperates by default (`--dirty log`): it adds 1 to a page's counter in the dirty
log (engine/live/dirty.py) before and after writing the page, as a hypervisor's dirty logging
would. `--dirty hash` has it write blindly and the engine compare page hashes instead.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from engine import EngineError, TransferSettings
from engine.live.dirty import LOG_ENTRY, create_dirty_log
from engine.storage.image import SHM_DIR, map_file
from engine.live.rounds import migrate_live
from engine.live.pause import ProcessPause
from engine.cli.summary import print_summary
from engine.settings import PAGE_SIZE, LiveSettings
from engine.units import parse_size

SWEEP_CHUNK_PAGES = 256
COMPARE_BYTES = 64 << 20


def guest(region: str, log: str | None, rate_pages: float, ready) -> None:
    """Sweep the region forever, `rate_pages` pages per second (until killed)."""
    first_bytes = np.frombuffer(map_file(region, writable=True), dtype=np.uint8)[::PAGE_SIZE]
    counters = np.frombuffer(map_file(log, writable=True), dtype=LOG_ENTRY) if log else None
    pages = len(first_bytes)
    due = time.monotonic()
    ready.set()
    while True:
        for first in range(0, pages, SWEEP_CHUNK_PAGES):
            end = min(first + SWEEP_CHUNK_PAGES, pages)
            if counters is not None:
                counters[first:end] += 1  # odd: being written
            first_bytes[first:end] += 1
            if counters is not None:
                counters[first:end] += 1
            due = max(due + (end - first) / rate_pages, time.monotonic() - 0.1)
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)


def consistent(first_bytes: np.ndarray) -> bool:
    """Pages [0, k) hold the first page's byte v and pages [k, n) hold v - 1 (mod 256)."""
    behind = (first_bytes[0] - first_bytes).astype(np.uint8)  # 0 or 1 where consistent
    if np.any(behind > 1):
        return False
    return bool(np.count_nonzero(np.diff(behind)) <= 1)


def identical(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    x, y = map_file(a, writable=False), map_file(b, writable=False)
    if x is None:
        return True
    left, right = np.frombuffer(x, dtype=np.uint8), np.frombuffer(y, dtype=np.uint8)
    return all(np.array_equal(left[i:i + COMPARE_BYTES], right[i:i + COMPARE_BYTES])
               for i in range(0, len(left), COMPARE_BYTES))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256M", help="region size (default 256M)")
    parser.add_argument("--rate", default="256M",
                        help="bytes of region the guest sweeps per second (default 256M)")
    parser.add_argument("--dirty", choices=("log", "hash"), default="log",
                        help="dirty tracking: log (the guest keeps it; default) or hash")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--compress", default="zstd:1")
    parser.add_argument("--downtime-limit", type=int, default=300, metavar="MS")
    parser.add_argument("--max-rounds", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="print one JSON line at the end")
    args = parser.parse_args()
    try:
        return run(args)
    except EngineError as exc:
        print(f"live_guest: error: {exc}", file=sys.stderr)
        return exc.exit_code


def run(args: argparse.Namespace) -> int:
    size, rate = parse_size(args.size), parse_size(args.rate)
    pages = size // PAGE_SIZE
    if size % PAGE_SIZE or not pages or not rate:
        raise SystemExit("live_guest: --size must be whole pages, --size and --rate not 0")
    settings = TransferSettings(channels=args.channels, compress=args.compress)
    live = LiveSettings(dirty=args.dirty, downtime_limit_ms=args.downtime_limit,
                        max_rounds=args.max_rounds)
    name = f"multifd-guest-{os.getpid()}"
    region, copy = SHM_DIR / name, SHM_DIR / f"{name}.copy"
    log = SHM_DIR / f"{name}.dirty" if args.dirty == "log" else None
    devices = Path(tempfile.mkdtemp(prefix="multifd-guest-devices-"))
    spawn = multiprocessing.get_context("spawn")
    ready = spawn.Event()
    process = None
    try:
        with open(region, "wb") as f:
            f.truncate(size)
        if log is not None:
            create_dirty_log(log, pages)
        process = spawn.Process(target=guest, daemon=True,
                                args=(str(region), log and str(log), rate / PAGE_SIZE, ready))
        process.start()
        if not ready.wait(30):
            raise SystemExit("live_guest: the guest did not start")
        paused = ProcessPause(process.pid)
        say = (lambda text: None) if args.json else (lambda text: print(text, file=sys.stderr))
        say(f"guest {process.pid} sweeps {size >> 20} MiB at {rate >> 20} MiB/s; "
            f"migrating live ({args.dirty} tracking)")

        def save_devices() -> dict[str, bytes]:  # called once the guest is paused
            return {"cpu": json.dumps({"pid": process.pid, "pages": pages}).encode()}

        result = migrate_live(
            f"shm:{region.name}", f"shm:{copy.name}", settings, live, pause=paused.pause,
            resume=paused.resume, devices=save_devices, device_dir=devices,
            on_round=lambda report: say(str(report)))
        first_bytes = np.frombuffer(map_file(copy, writable=False), dtype=np.uint8)[::PAGE_SIZE]
        checks = {"consistent": consistent(first_bytes), "identical": identical(region, copy)}
        if args.json:
            summary = {**result.to_json(), **checks, "guest_rate": rate}
            print(json.dumps(summary, sort_keys=True))
        else:
            print_summary(result)
            say(", ".join(f"{key}: {value}" for key, value in checks.items()))
        return 0 if all(checks.values()) else 1
    finally:
        if process is not None and process.pid is not None:
            process.kill()  # works on a stopped process too
            process.join()
        for path in (region, copy, log):
            if path is not None:
                path.unlink(missing_ok=True)
        shutil.rmtree(devices, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
