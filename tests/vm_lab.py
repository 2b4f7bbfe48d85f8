"""Real QEMUs running the page-stamp guest, for tests; each one is killed and its files
removed at the end, whatever happened.

Sockets live in a short /tmp directory: a unix socket path must fit in 108 bytes, and
pytest's tmp_path for a long test name does not.
"""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from engine.qemu.qmp import QMP
from engine.qemu.guest import read_generation
from engine.qemu.guest.launch import GuestQemu, start_qemu, wait_booted

RAM_MIB = 64
_serial = itertools.count()


class Lab:
    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.workdir = Path(tempfile.mkdtemp(prefix="multifd-vm-", dir="/tmp"))
        self.machines: list[GuestQemu] = []
        self.processes: list[subprocess.Popen] = []
        self.clients: list[QMP] = []
        self.files: list[Path] = []

    def ram_path(self, name: str) -> Path:
        path = Path(f"/dev/shm/multifd-test-{os.getpid()}-{next(_serial)}-{name}.ram")
        # and the journal an engine destination keeps beside it after a failure
        self.files += [path, path.with_name(path.name + ".journal")]
        return path

    def connect(self, machine: GuestQemu, **options) -> QMP:
        client = QMP(machine.qmp, wait_s=10, **options)
        self.clients.append(client)
        return client

    def start(self, name: str, ram: Path, disk: Path, ram_mib: int = RAM_MIB,
              **options) -> tuple[GuestQemu, QMP]:
        machine = start_qemu(ram=ram, ram_mib=ram_mib, disk=disk, workdir=self.workdir,
                             name=name, **options)
        self.machines.append(machine)
        return machine, self.connect(machine)

    def spawn(self, argv: list[str]) -> subprocess.Popen:
        """A QEMU with a hand-made command line (output discarded), killed on teardown."""
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.processes.append(process)
        return process

    def source(self, name: str = "src", *, boot: bool = True, **options) -> tuple[GuestQemu, QMP]:
        """A VM running the guest on its own disk copy (a disk is write-locked by its VM)."""
        disk = self.workdir / f"{name}.img"
        shutil.copyfile(self.disk, disk)
        machine, client = self.start(name, self.ram_path(name), disk, **options)
        if boot:
            wait_booted(machine)
        return machine, client

    def destination(self, source: GuestQemu, name: str = "dst", *, copy: bool = False,
                    **options) -> tuple[GuestQemu, QMP]:
        """A QEMU waiting with -incoming defer, on the source's disk (shared storage) and
        its own RAM file: an empty one of the right size, or a copy of the source's."""
        ram = self.ram_path(name)
        if copy:
            shutil.copyfile(source.ram, ram)
        else:
            with open(ram, "wb") as f:
                f.truncate(source.ram.stat().st_size)
        return self.start(name, ram, source.disk, incoming=True, **options)

    def close(self) -> None:
        for client in self.clients:
            client.close()
        for machine in self.machines:
            machine.kill()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for path in self.files:
            if os.path.lexists(path):
                path.unlink()
        shutil.rmtree(self.workdir, ignore_errors=True)


QEMU_BINARY = os.environ.get("MULTIFD_QEMU", "qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(shutil.which(QEMU_BINARY) is None,
                                reason="qemu-system-x86_64 is not installed (Debian: "
                                       "qemu-system-x86; .ci/run installs it)")


def wait_generation_above(ram: Path, floor: int, timeout: float = 10.0) -> int:
    """Until the guest's counter in `ram` passes `floor`: the guest is running."""
    deadline = time.monotonic() + timeout
    while (generation := read_generation(ram)) <= floor:
        assert time.monotonic() < deadline, f"the guest's counter stayed at {generation}"
        time.sleep(0.005)
    return generation
