"""`python -m engine.tools.bench.tree -- COMMAND ...`: one command's processes, one by one.

The load tester reports a whole command's CPU and memory; this says which process spent
them: each process of the command's tree (worker processes by name), its CPU seconds and
its peak RSS, and the peak anonymous memory of all of them together. It is how BENCHMARKS.md
splits a transfer's cost between the coordinator, the forkserver and each worker.
CPU is sampled every SAMPLE_S (the last moments of a process are missed: totals run a little
low; `bench --runner command` counts exactly, from the kernel, but not per process).
"""
from __future__ import annotations

import subprocess
import sys
import time

import psutil

from engine.tools.bench.measure import anonymous_bytes, become_subreaper

SAMPLE_S = 0.02
MiB = 1 << 20


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m engine.tools.bench.tree -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    become_subreaper()
    started = time.perf_counter()
    command = subprocess.Popen(argv)
    me = psutil.Process()
    seen: dict[int, tuple[str, float, int]] = {}  # pid -> name, CPU s, peak RSS
    peak_anonymous = 0
    while command.poll() is None:
        anonymous = 0
        for process in me.children(recursive=True):
            try:
                times, rss = process.cpu_times(), process.memory_info().rss
                name = seen.get(process.pid, (process.name(), 0, 0))[0]
                anonymous += anonymous_bytes(process.pid)
            except (psutil.Error, OSError):
                continue  # it ended meanwhile
            peak_rss = max(rss, seen.get(process.pid, (name, 0, 0))[2])
            seen[process.pid] = (name, times.user + times.system, peak_rss)
        peak_anonymous = max(peak_anonymous, anonymous)
        time.sleep(SAMPLE_S)
    wall = time.perf_counter() - started
    for pid, (name, cpu, rss) in sorted(seen.items()):
        print(f"{pid:>8}  {name:<16} {cpu:6.2f} CPU s  peak RSS {rss / MiB:6.0f} MiB")
    print(f"total: {wall:.2f} s wall, {sum(cpu for _, cpu, _ in seen.values()):.2f} CPU s, "
          f"peak anonymous memory {peak_anonymous / MiB:.0f} MiB")
    return command.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
