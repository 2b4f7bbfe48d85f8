"""The QEMU peer: QEMU's own multifd migration of a paused VM whose RAM is the image, the
design the engine takes its name from, run by `bench --peer qemu` on the same images.

Two QEMUs over the engine's QMP client (engine/qemu/qmp.py): the source maps the image as
its RAM (memory-backend-file, share=on), the destination a fresh file, the one the engine's
runs write to; both start with -S, so no guest code runs (TCG is right for that: nothing is
emulated). Multifd is set on both sides and read back, so a setting QEMU ignored fails the
run instead of measuring something else. QEMU 7.2 takes the zstd/zlib level only from the
command line (-global migration.multifd-zstd-level; 9.0 fixed migrate-set-parameters).

The wall time runs from `migrate` until both sides report completed: QEMU's start-up is not
in it, as the engine's link runs do not count the waiting receiver's. The CPU seconds are
both QEMU processes' whole lives, start-up included. The destination is compared with the
image byte for byte afterwards, outside the measurement.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from engine.qemu.qmp import QMP, NotQMP, QMPError
from engine.qemu.vm import quit_qemu, wait_migration
from engine.tools.bench.matrix import Cell
from engine.tools.bench.measure import TreeMeter, reap_orphans
from engine.tools.bench.runner import COMMAND_TIMEOUT_S, Sample, existing_children, sample_from
from engine.tools.bench.compare import same_bytes
from workers.codecs import make_codec

QEMU = "qemu-system-x86_64"
SIZE_MULTIPLE = 2 << 20  # the RAM of a q35 machine: whole 2 MiB pages
UNLIMITED = 1 << 50  # max-bandwidth, bytes/s: QEMU's default would cap it at 128 MiB/s
START_TIMEOUT_S = 30.0
_LOG_TAIL = 300


class QemuFailed(Exception):
    """A QEMU would not start, or the migration failed; the message is one line."""


def qemu_missing() -> bool:
    return shutil.which(QEMU) is None


class QemuRunner:
    """One cell (kind, size, channels, compress) as a QEMU-to-QEMU multifd migration."""

    name = "qemu"

    def run(self, cell: Cell, repeat: int, image: Path, destination: Path) -> Sample:
        size = image.stat().st_size
        destination.unlink(missing_ok=True)
        keep = existing_children()
        wall, error = 0.0, ""
        with tempfile.TemporaryDirectory(prefix="multifd-bench-qemu-",
                                         dir=destination.parent) as scratch:
            with TreeMeter(command=True, exclude=keep) as meter:
                try:
                    wall = _migrate(Path(scratch), image, destination, cell)
                except (QemuFailed, QMPError, OSError, subprocess.SubprocessError) as exc:
                    error = f"QEMU: {exc}"
                reap_orphans(keep)
        if not error and not same_bytes(image, destination):
            error = "QEMU's destination RAM differs from the image"
        destination.unlink(missing_ok=True)
        return sample_from(cell, repeat, size, meter, {"ok": True, "seconds": wall}, error,
                           wall, run=self.name)


def _migrate(scratch: Path, image: Path, destination: Path, cell: Cell) -> float:
    """Start both QEMUs, migrate, quit them; the seconds from `migrate` to both completed."""
    codec = make_codec(cell["compress"])
    parameters = {"multifd-channels": cell["channels"], "multifd-compression": codec.name}
    extra: list[str] = []
    if codec.level is not None:
        parameters[f"multifd-{codec.name}-level"] = codec.level
        extra = ["-global", f"migration.multifd-{codec.name}-level={codec.level}"]
    size = image.stat().st_size
    processes: dict[str, subprocess.Popen] = {}
    sessions: dict[str, QMP] = {}
    try:
        for side, ram in (("destination", destination), ("source", image)):
            processes[side] = _start(scratch, side, ram, size, extra)
        for side, process in processes.items():
            sessions[side] = _connect(scratch, side, process)
        for side, qmp in sessions.items():
            _configure(side, qmp, parameters)
        sessions["source"].execute("migrate-set-parameters", {"max-bandwidth": UNLIMITED})
        sessions["destination"].execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        port = _listening_port(sessions["destination"])
        started = time.perf_counter()
        sessions["source"].execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        finished = []
        for side in ("source", "destination"):
            result = wait_migration(sessions[side], COMMAND_TIMEOUT_S)
            if result.status != "completed":
                raise QemuFailed(f"the {side}'s migration {result.status}: "
                                 f"{result.info.get('error-desc', 'no reason given')}")
            finished.append(time.perf_counter())
        for side, qmp in sessions.items():
            quit_qemu(qmp)
            processes[side].wait(START_TIMEOUT_S)
        return max(finished) - started
    finally:
        for qmp in sessions.values():
            qmp.close()
        for process in processes.values():  # only the QEMUs started here, by their pid
            if process.poll() is None:
                process.kill()
                process.wait()


def _start(scratch: Path, side: str, ram: Path, size: int, extra: list[str]
           ) -> subprocess.Popen:
    mem_path = str(ram).replace(",", ",,")  # QEMU's option syntax doubles commas
    command = [QEMU, "-name", side, "-no-user-config", "-nodefaults", "-display", "none",
               "-machine", "q35", "-accel", "tcg", "-m", f"{size >> 20}M",
               "-object", f"memory-backend-file,id=ram0,size={size},mem-path={mem_path},"
                          "share=on",
               "-machine", "memory-backend=ram0",
               "-qmp", f"unix:{scratch / side}.qmp,server=on,wait=off", "-S", *extra,
               *(["-incoming", "defer"] if side == "destination" else [])]
    with open(scratch / f"{side}.log", "wb") as log:
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _connect(scratch: Path, side: str, process: subprocess.Popen) -> QMP:
    """QMP to a QEMU that is starting; QemuFailed with its last words if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return QMP(scratch / f"{side}.qmp", wait_s=0.2)
        except NotQMP:
            if process.poll() is not None:
                log = (scratch / f"{side}.log").read_text(errors="replace").strip()
                last = log.splitlines()[-1][-_LOG_TAIL:] if log else "no output"
                raise QemuFailed(f"the {side} QEMU exited with {process.returncode}: "
                                 f"{last}") from None
            if time.monotonic() > deadline:
                raise QemuFailed(f"the {side} QEMU did not open QMP within "
                                 f"{START_TIMEOUT_S:g} s") from None


def _listening_port(qmp: QMP) -> str:
    """The port the destination chose for tcp:...:0 (query-migrate names it)."""
    addresses = qmp.execute("query-migrate").get("socket-address") or [{}]
    port = addresses[0].get("port")
    if port is None:
        raise QemuFailed("the destination QEMU does not say which port it listens on")
    return port


def _configure(side: str, qmp: QMP, parameters: dict) -> None:
    """Multifd, and MIGRATION events (they end wait_migration's waits without polling);
    read back, so that a setting QEMU ignored fails here."""
    qmp.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "multifd", "state": True}, {"capability": "events", "state": True}]})
    qmp.execute("migrate-set-parameters", parameters)
    applied = qmp.execute("query-migrate-parameters")
    wrong = {name: applied.get(name) for name, value in parameters.items()
             if applied.get(name) != value}
    if wrong:
        raise QemuFailed(f"the {side} QEMU did not apply {wrong} (wanted {parameters})")
