"""What `bench --peer qemu,lean,cp` runs beside the engine, in the same shuffled rounds on the
same images: timings on these machines swing 2x from one day to the next, a ratio measured
in one run holds.

- qemu: QEMU's own multifd migration of a paused VM whose RAM is the image (qemu_peer.py);
- lean: the least a Python + numpy + pyzmq pipeline does to move an image (lean.py);
- cp: the image copied, what any copy on this machine costs at least.

A peer runs only what it can. It names the axes it understands (packet_pages, window and
the like are the engine's own) and the codecs it has; its cell is the engine's cell cut to
those axes, so one peer run stands beside every engine cell that contains it.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UsageError
from engine.tools.bench.compare import same_bytes
from engine.tools.bench.matrix import Cell
from engine.tools.bench.qemu_peer import QEMU, SIZE_MULTIPLE, QemuRunner, qemu_missing
from engine.tools.bench.runner import (Runner, Sample, command_result, measured_command,
                                       sample_from)
from engine.settings import PAGE_SIZE
from workers.codecs import make_codec


@dataclass(frozen=True)
class Peer:
    name: str
    axes: tuple[str, ...]  # the cell's axes this peer runs with
    codecs: tuple[str, ...]  # the codec families it has (levels are passed on)
    size_multiple: int = PAGE_SIZE

    def cell_for(self, cell: Cell) -> Cell | None:
        """The part of an engine cell this peer runs, or None if it cannot run it."""
        if cell.get("curve") or cell["size"] % self.size_multiple:
            return None
        spec = cell["compress"]
        if spec == "auto" or make_codec(spec).name not in self.codecs:
            return None
        return Cell(tuple((k, v) for k, v in cell.values if k in self.axes))


PEERS = {
    "qemu": Peer("qemu", ("kind", "size", "channels", "compress"), ("none", "zstd", "zlib"),
                 SIZE_MULTIPLE),
    "lean": Peer("lean", ("kind", "size", "channels", "compress"), ("none", "zstd")),
    "cp": Peer("cp", ("kind", "size", "compress"), ("none",)),
}


def chosen_peers(names: list[str]) -> list[Peer]:
    """The peers asked for, checked before any work: UsageError names what is missing."""
    unknown = [name for name in names if name not in PEERS]
    if unknown:
        raise UsageError(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    if "qemu" in names and qemu_missing():
        raise UsageError(f"--peer qemu needs {QEMU}, which is not on PATH "
                         "(apt-get install qemu-system-x86)")
    return [PEERS[name] for name in dict.fromkeys(names)]


def runner_for(peer: Peer) -> Runner:
    return QemuRunner() if peer.name == "qemu" else CommandPeer(peer.name)


class CommandPeer:
    """A peer that is one command (lean, cp), timed and counted as the engine's commands are;
    its copy is compared with the image afterwards, outside the measurement."""

    def __init__(self, name: str) -> None:
        self.name = name

    def command(self, cell: Cell, image: Path, destination: Path) -> list[str]:
        if self.name == "cp":
            return ["cp", str(image), str(destination)]
        return [sys.executable, "-m", "engine.tools.bench.lean", str(image), str(destination),
                str(cell["channels"]), cell["compress"]]

    def run(self, cell: Cell, repeat: int, image: Path, destination: Path) -> Sample:
        destination.unlink(missing_ok=True)
        done, wall, meter = measured_command(self.command(cell, image, destination))
        if self.name == "cp" and done.returncode == 0:
            result, error = {"ok": True, "seconds": wall}, ""
        else:
            result, error = command_result(done)
            error = error or (result or {}).get("error", "")
        if not error and not same_bytes(image, destination):
            error = f"{self.name}'s copy differs from the image"
        destination.unlink(missing_ok=True)
        return sample_from(cell, repeat, image.stat().st_size, meter, result, error, wall,
                           run=self.name)
