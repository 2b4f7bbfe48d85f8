"""Live-migrate a running QEMU guest with the engine, and (optionally) with QEMU's own
multifd migration on the same guest, for comparison.

    python examples/qemu_guest.py --ram 1G --compress zstd --compare-qemu --repeats 3

It builds the page-stamp guest (engine/qemu/guest: a boot sector that stamps a generation
number into thousands of pages, over and over), boots it under TCG with its RAM in
/dev/shm, starts a destination QEMU waiting with `-incoming defer`, and runs
`python -m engine migrate --live --qemu ... --dest-qemu ...`. After each migration it
checks that the guest runs on at the destination and that the memory there is consistent.
With --compare-qemu, QEMU migrates the same guest itself (multifd, same channels and
compression, 300 ms downtime limit), interleaved with the engine's runs; the table gives
medians of total time and downtime. Needs qemu-system-x86 and binutils.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.qemu.guest import build_guest, check_consistent, read_generation
from engine.qemu.guest.launch import start_qemu, wait_booted
from engine.qemu.qmp import QMP
from engine.units import parse_size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ram", default="256M", help="guest RAM (default 256M)")
    parser.add_argument("--pages", type=int, default=8192,
                        help="pages the guest keeps stamping (default 8192 = 32 MiB)")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--compress", default="zstd", help="none or zstd (default zstd)")
    parser.add_argument("--compare-qemu", action="store_true",
                        help="also migrate with QEMU's own multifd, interleaved")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args()
    if shutil.which("qemu-system-x86_64") is None:
        print("qemu_guest: qemu-system-x86_64 is not installed (Debian: qemu-system-x86)",
              file=sys.stderr)
        return 2
    ram_mib = parse_size(args.ram) >> 20
    with tempfile.TemporaryDirectory(prefix="multifd-guest-", dir="/tmp") as folder:
        work = Path(folder)
        disk = build_guest(work, stamp_pages=min(args.pages, (ram_mib - 3) * 256))
        runs: dict[str, list[dict]] = {"engine": [], "qemu": []}
        tools = ["engine", "qemu"] if args.compare_qemu else ["engine"]
        for repeat in range(args.repeats):
            for tool in (tools if repeat % 2 == 0 else tools[::-1]):  # interleaved
                figures = migrate_once(tool, work, disk, ram_mib, args)
                runs[tool].append(figures)
                if args.json:
                    print(json.dumps({"tool": tool, **figures}), flush=True)
        for tool in tools:
            seconds = statistics.median(r["seconds"] for r in runs[tool])
            downtime = statistics.median(r["downtime_ms"] for r in runs[tool])
            print(f"{tool}: {args.ram} guest, {args.channels} channels, {args.compress}: "
                  f"total {seconds:.3f} s, downtime {downtime:.0f} ms (median of "
                  f"{len(runs[tool])}); the guest runs on at the destination, consistent")
    return 0


def migrate_once(tool: str, work: Path, disk: Path, ram_mib: int,
                 args: argparse.Namespace) -> dict:
    """Boot a source, start a waiting destination, migrate with `tool`, check the guest."""
    src_ram, dst_ram = Path(f"/dev/shm/{work.name}-src.ram"), Path(f"/dev/shm/{work.name}-dst.ram")
    source = destination = None
    try:
        source = start_qemu(ram=src_ram, ram_mib=ram_mib, disk=disk, workdir=work, name="src")
        with open(dst_ram, "wb") as f:
            f.truncate(ram_mib << 20)
        destination = start_qemu(ram=dst_ram, ram_mib=ram_mib, disk=disk, workdir=work,
                                 name="dst", incoming=True)
        wait_booted(source)
        time.sleep(0.5)  # the guest has been running a while
        if tool == "engine":
            figures = engine_migrates(source, destination, args)
        else:
            figures = qemu_migrates(source, destination, args)
        frozen = read_generation(src_ram)
        deadline = time.monotonic() + 10
        while read_generation(dst_ram) <= frozen:  # the guest runs at the destination
            if time.monotonic() > deadline:
                raise SystemExit(f"{tool}: the guest does not run at the destination")
            time.sleep(0.01)
        with QMP(destination.qmp) as qmp:
            qmp.execute("stop")
        check_consistent(dst_ram)
        return figures
    finally:
        for machine in (source, destination):
            if machine is not None:
                machine.kill()
        for path in (src_ram, dst_ram, dst_ram.with_name(dst_ram.name + ".journal")):
            path.unlink(missing_ok=True)


def engine_migrates(source, destination, args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "engine", "migrate", str(source.ram),
                          str(destination.ram), "--qemu", str(source.qmp), "--dest-qemu",
                          str(destination.qmp), "--live", "--channels", str(args.channels),
                          "--compress", args.compress, "--json"],
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise SystemExit(f"engine: {run.stderr.strip()}")
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    # Whole command, interpreter start included (QEMU's own figure starts at `migrate`).
    return {"seconds": round(time.perf_counter() - started, 4),
            "downtime_ms": summary["downtime_ms"],
            "downtime_parts_ms": summary["downtime_parts_ms"],
            "wire_bytes": summary["wire_bytes"], "vm": summary["vm"]}


def qemu_migrates(source, destination, args: argparse.Namespace) -> dict:
    """QEMU's own live migration: multifd over loopback TCP, RAM included."""
    capabilities = [{"capability": "multifd", "state": True},
                    {"capability": "events", "state": True}]
    parameters = {"multifd-channels": args.channels,
                  "multifd-compression": "zstd" if args.compress.startswith("zstd") else "none",
                  "max-bandwidth": 1 << 40, "downtime-limit": 300}
    with QMP(source.qmp) as src, QMP(destination.qmp) as dst:
        for qmp in (src, dst):
            qmp.execute("migrate-set-capabilities", {"capabilities": capabilities})
            qmp.execute("migrate-set-parameters", parameters)
        dst.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = dst.execute("query-migrate")["socket-address"][0]["port"]
        started = time.perf_counter()
        src.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        while (info := src.execute("query-migrate"))["status"] not in ("completed", "failed"):
            src.wait_event("MIGRATION", timeout=0.05)
        if info["status"] != "completed":
            raise SystemExit(f"qemu: migration {info['status']}: {info.get('error-desc')}")
        while dst.execute("query-status")["status"] != "running":
            time.sleep(0.001)
        seconds = time.perf_counter() - started
        return {"seconds": round(seconds, 4), "downtime_ms": info["downtime"],
                "wire_bytes": info["ram"]["transferred"],
                "vm": {"source": src.execute("query-status")["status"], "destination": "running"}}


if __name__ == "__main__":
    sys.exit(main())
