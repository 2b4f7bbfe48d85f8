"""What CURVE encryption costs: `multifd migrate` with and without --curve, interleaved.

    python examples/curve_cost.py --size 512M --runs 5 --codecs none zstd:1

Each run is a separate `python -m engine migrate --json` process copying one mixed sample
image (in /dev/shm, so no disk is timed); the runs of every variant are interleaved, so a
neighbour's load hits them all alike. Besides the transfer time it reports the CPU time of the
whole process tree (coordinator, forkserver, every worker and libzmq's I/O threads), which a
busy machine does not inflate: this script makes itself the subreaper of the run, so the
workers' CPU reaches it when the orphaned forkserver is reaped. It prints a Markdown table of
medians and the CURVE/plain ratios (the figures go to docs/security.md).

A second table isolates libzmq: one TCP connection pushing 512 KiB messages (the default
packet) in one process, plain and CURVE, interleaved: the ceiling of one encrypted channel.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from engine.tools.samples import write_sample
from engine.security import ephemeral_keys
from engine.units import parse_size


PR_SET_CHILD_SUBREAPER = 36


def migrate_once(src: Path, dst: Path, codec: str, curve: bool,
                 channels: int) -> tuple[float, float]:
    """(transfer seconds as reported, CPU seconds of the whole process tree)."""
    command = [sys.executable, "-m", "engine", "migrate", str(src), str(dst), "--force",
               "--json", "--compress", codec, "--channels", str(channels)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = subprocess.run(command + (["--curve"] if curve else []), capture_output=True,
                         text=True, check=True)
    reap_orphans()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return json.loads(run.stdout.strip().splitlines()[-1])["seconds"], cpu


def reap_orphans(timeout_s: float = 10.0) -> None:
    """Wait for the forkserver the run left behind (it exits when its parent is gone)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.01)
    raise RuntimeError("a process of the run did not exit")


def one_connection_gib_per_s(curve: bool, total: int = 1 << 30,
                             message: int = 512 << 10) -> float:
    """PUSH to PULL over loopback TCP in this process; libzmq's I/O threads do the crypto."""
    context = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    if curve:
        server, client = ephemeral_keys()
        server.configure(pull)  # no authenticator: this measures the cipher, not ZAP
        client.configure(push)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push.connect(f"tcp://127.0.0.1:{port}")
    payload, count = os.urandom(message), total // message
    sender = threading.Thread(target=lambda: [push.send(payload, copy=False)
                                              for _ in range(count)])
    started = time.perf_counter()
    sender.start()
    for _ in range(count):
        pull.recv(copy=False)
    seconds = time.perf_counter() - started
    sender.join()
    context.destroy(linger=0)
    return total / (1 << 30) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512M", help="image size (default 512M)")
    parser.add_argument("--runs", type=int, default=5, help="runs per variant (default 5)")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--codecs", nargs="+", default=["none", "zstd:1"])
    args = parser.parse_args()
    size = parse_size(args.size)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")
    folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="multifd-curve-cost-", dir=folder) as tmp:
        src, dst = Path(tmp) / "src", Path(tmp) / "dst"
        write_sample(src, size, kind="mixed", seed=1)
        variants = [(codec, curve) for codec in args.codecs for curve in (False, True)]
        for codec, curve in variants:  # warm-up: page cache, zstd tables
            migrate_once(src, dst, codec, curve, args.channels)
        runs: dict[tuple[str, bool], list[tuple[float, float]]] = {v: [] for v in variants}
        for _ in range(args.runs):
            for codec, curve in variants:
                runs[codec, curve].append(migrate_once(src, dst, codec, curve, args.channels))
    gib = size / (1 << 30)
    print(f"{args.size} mixed image, {args.channels} channels, median of {args.runs} "
          f"interleaved runs, {os.cpu_count()} CPUs\n")
    print("| codec | transfer s plain / CURVE | GiB/s plain / CURVE | time ratio "
          "| CPU s plain / CURVE | CPU ratio |")
    print("|---|---|---|---|---|---|")
    for codec in args.codecs:
        (plain_s, plain_cpu), (curve_s, curve_cpu) = (
            [statistics.median(column) for column in zip(*runs[codec, curve])]
            for curve in (False, True))
        print(f"| {codec} | {plain_s:.2f} / {curve_s:.2f} | {gib / plain_s:.2f} / "
              f"{gib / curve_s:.2f} | {curve_s / plain_s:.2f} | {plain_cpu:.2f} / "
              f"{curve_cpu:.2f} | {curve_cpu / plain_cpu:.2f} |")
    rates: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.runs):
        for curve in (False, True):
            rates[curve].append(one_connection_gib_per_s(curve))
    plain, curve = (statistics.median(rates[c]) for c in (False, True))
    print(f"\nOne libzmq connection, 1 GiB in 512 KiB messages, median of {args.runs}\n")
    print("| plain GiB/s | CURVE GiB/s | CURVE/plain |")
    print("|---|---|---|")
    print(f"| {plain:.2f} | {curve:.2f} | {curve / plain:.2f} |")


if __name__ == "__main__":
    main()
