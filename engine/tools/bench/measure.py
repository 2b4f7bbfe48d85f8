"""Measuring the engine's processes together: wall time, CPU seconds and peak anonymous memory.

CPU comes from the kernel's own accounting, not from sampling: a worker's last moments
before it exits would be invisible to a sampler. In this process (the API runs) it is our
own CPU time plus, for each child (the forkserver), its own time and that of the children it
reaped (the workers). For commands it is the CPU of every reaped descendant; this process
becomes a child subreaper, so that a command's orphans (its forkserver) are reaped, and
counted, here. Peak memory is the sum of the anonymous memory (`Anonymous` in
/proc/PID/smaps_rollup) of the whole process tree: what the engine adds. USS also counts the
page-cache pages of an image that a process maps, which are the image's, not the engine's
(QEMU's USS is the size of the guest). Sampled on a thread every SAMPLE_S: often enough for transfers of seconds whose memory is
flat by design, and rarely enough that the sampler (one scan of the process table and one
smaps read per process, a few ms) takes about 3% of one core, not a third as at 20 Hz.
"""
from __future__ import annotations

import ctypes
import os
import resource
import threading
import time
from dataclasses import dataclass

import psutil

SAMPLE_S = 0.2
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Usage:
    wall_s: float
    cpu_s: float
    peak_anon: int


def become_subreaper() -> None:
    """Orphaned descendants (a command's forkserver) get reparented to us, to be reaped and
    counted (Linux only; elsewhere their CPU is missed)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class TreeMeter:
    """Measures what runs between __enter__ and __exit__.

    In-process (`command=False`): this process and its descendants. For a command
    (`command=True`): only descendants started inside the block, whose CPU is counted once
    they have been reaped (call `reap_orphans` after the command exits).
    """

    def __init__(self, command: bool = False, exclude: frozenset[int] = frozenset()) -> None:
        """`exclude`: children (and their trees) that are not part of what is measured."""
        self.command = command
        self.exclude = exclude
        self.me = psutil.Process()
        self.usage: Usage | None = None
        self._peak = 0
        self._sampler_cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-meter", daemon=True)

    def __enter__(self) -> "TreeMeter":
        self._cpu0 = self._cpu()
        self._wall0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        wall = time.perf_counter() - self._wall0
        self._stop.set()
        self._thread.join()
        cpu = self._cpu() - self._cpu0 - (0.0 if self.command else self._sampler_cpu)
        self.usage = Usage(wall_s=wall, cpu_s=cpu, peak_anon=self._peak)

    def _cpu(self) -> float:
        if self.command:
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            return children.ru_utime + children.ru_stime
        total = sum(self.me.cpu_times()[:2])
        for child in self.me.children():
            try:
                times = child.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system + times.children_user + times.children_system
        return total

    def _tree(self) -> list[int]:
        """Our descendants, but not the excluded subtrees (and us, in-process)."""
        children: dict[int, list[int]] = {}
        for process in psutil.process_iter(["ppid"]):
            children.setdefault(process.info["ppid"], []).append(process.pid)
        tree = [] if self.command else [self.me.pid]
        pending = [pid for pid in children.get(self.me.pid, []) if pid not in self.exclude]
        while pending:
            pid = pending.pop()
            tree.append(pid)
            pending += children.get(pid, [])
        return tree

    def _sample(self) -> None:
        started = time.thread_time()
        while True:
            total = 0
            for pid in self._tree():
                try:
                    total += anonymous_bytes(pid)
                except OSError:
                    pass  # it ended between listing and reading
            self._peak = max(self._peak, total)
            if self._stop.wait(SAMPLE_S):
                break
        self._sampler_cpu = time.thread_time() - started


def reap_orphans(keep: set[int], timeout_s: float = 5.0) -> None:
    """Wait for and reap every child but `keep` (a finished command's orphans)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = [p for p in psutil.Process().children() if p.pid not in keep]
        if not left:
            return
        for process in left:
            try:
                os.waitpid(process.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.02)


def anonymous_bytes(pid: int) -> int:
    """The anonymous memory a process maps (pages it shares with its forkserver counted in
    each process that maps them)."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Anonymous:"):
                return int(line.split()[1]) * 1024
    return 0
