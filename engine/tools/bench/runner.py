"""Running one cell of the matrix, three ways, each measured the same way (measure.py).

- ApiRunner: `engine.migrate()` in this process, as a Python user calls it; the forkserver
  is started once by a warm-up transfer, as in any long-lived program.
- CommandRunner: the whole `python -m engine migrate` command, start-up included, as QEMU's
  figures are taken.
- LinkRunner (link.py): `receive` and `send` commands in two network namespaces.

The peers (peers.py) run through `measured_command` too, so every whole command of either
side is timed and counted the same way.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

from engine.tools.bench.matrix import Cell
from engine.tools.bench.measure import TreeMeter, reap_orphans
from engine.errors import EngineError
from engine.settings import TransferSettings

COMMAND_TIMEOUT_S = 600


@dataclass(frozen=True)
class Sample:
    """One measured transfer of one cell."""

    cell: Cell
    repeat: int
    ok: bool
    image_bytes: int
    wall_s: float  # what the runner waited for, start-up included
    seconds: float  # the engine's own figure (TransferResult.seconds)
    cpu_s: float
    peak_anon: int
    wire_bytes: int
    error: str = ""
    run: str = "engine"  # who moved the image: the engine, or a peer (peers.py)
    # From the first to the last acknowledgement (API runs only): the data phase, without
    # start-up and the final digests, over which a --max-bandwidth cap is judged.
    data_seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "cell"}
        out["cell"] = dict(self.cell.values)
        return out


class Runner(Protocol):
    """Runs one cell: the engine (ApiRunner, CommandRunner, LinkRunner) or a peer."""

    name: str

    def run(self, cell: Cell, repeat: int, image: Path, destination: Path) -> Sample:
        """Move `image` to `destination` once, measured; a failure is a Sample with ok
        False and its reason, never an exception. `destination` is gone afterwards."""


def settings_arguments(settings: TransferSettings) -> list[str]:
    """The command-line options that give these settings."""
    return ["--channels", str(settings.channels), "--compress", settings.compress,
            "--packet-pages", str(settings.packet_pages), "--window", str(settings.window),
            "--chunk-size", str(settings.chunk_size)]


def sample_from(cell: Cell, repeat: int, size: int, meter: TreeMeter,
                result: dict[str, Any] | None, error: str = "",
                wall_s: float | None = None, run: str = "engine") -> Sample:
    usage = meter.usage
    result = result or {}
    return Sample(cell=cell, repeat=repeat, ok=bool(result.get("ok")) and not error,
                  image_bytes=size, wall_s=usage.wall_s if wall_s is None else wall_s,
                  seconds=float(result.get("seconds", usage.wall_s)), cpu_s=usage.cpu_s,
                  peak_anon=usage.peak_anon, wire_bytes=int(result.get("wire_bytes", 0)),
                  error=error, run=run)


class ApiRunner:
    name = "api"

    def __init__(self, max_bandwidth: int | None = None) -> None:
        self.max_bandwidth = max_bandwidth

    def run(self, cell: Cell, repeat: int, image: Path, destination: Path) -> Sample:
        from engine.coordinator.local import migrate
        result, error = None, ""
        ticks: list[float] = []
        with TreeMeter() as meter:
            try:
                result = migrate(str(image), str(destination), cell.settings(), force=True,
                                 max_bandwidth=self.max_bandwidth, curve=cell.get("curve", False),
                                 progress=lambda n: ticks.append(time.perf_counter())
                                 ).to_json()
            except EngineError as exc:
                error = str(exc)
        destination.unlink(missing_ok=True)
        sample = sample_from(cell, repeat, image.stat().st_size, meter, result, error)
        if len(ticks) > 1:
            sample = dataclasses.replace(sample, data_seconds=ticks[-1] - ticks[0])
        return sample


class CommandRunner:
    name = "command"

    def __init__(self, max_bandwidth: int | None = None) -> None:
        self.max_bandwidth = max_bandwidth

    def run(self, cell: Cell, repeat: int, image: Path, destination: Path) -> Sample:
        command = [sys.executable, "-m", "engine", "migrate", str(image), str(destination),
                   "--force", "--json", *settings_arguments(cell.settings()),
                   *max_bandwidth_arguments(self.max_bandwidth),
                   *(["--curve"] if cell.get("curve") else [])]
        done, wall, meter = measured_command(command)
        destination.unlink(missing_ok=True)
        result, error = command_result(done)
        return sample_from(cell, repeat, image.stat().st_size, meter, result, error, wall)


def measured_command(command: list[str]
                     ) -> tuple[subprocess.CompletedProcess, float, TreeMeter]:
    """Run `command` to its end: what it did, its wall time, and the meter that counted the
    CPU and memory of every process it started (its orphans too)."""
    keep = existing_children()
    with TreeMeter(command=True, exclude=keep) as meter:
        started = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, cwd=engine_root())
        except subprocess.TimeoutExpired:  # a failed run of the cell, not of the bench
            done = subprocess.CompletedProcess(command, -9, "", f"{command[0]} timed out "
                                               f"after {COMMAND_TIMEOUT_S} s; killed")
        wall = time.perf_counter() - started
        reap_orphans(keep)
    return done, wall, meter


def max_bandwidth_arguments(rate: int | None) -> list[str]:
    return ["--max-bandwidth", str(rate)] if rate else []


def command_result(done: subprocess.CompletedProcess) -> tuple[dict | None, str]:
    """The JSON line of a finished engine command, or the reason it has none."""
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit code {done.returncode}"]
        return None, lines[-1]
    try:
        return json.loads(done.stdout.strip().splitlines()[-1]), ""
    except (ValueError, IndexError):
        return None, "no JSON summary"


def existing_children() -> frozenset[int]:
    return frozenset(p.pid for p in psutil.Process().children())


def engine_root() -> str:
    """The folder `engine` is imported from (the checkout, above engine/tools/bench/): the
    working directory of every command the bench starts, so that `python -m engine` runs
    this code and not another installed copy, under `ip netns exec` too."""
    return str(Path(__file__).resolve().parents[3])
