"""Starting QEMU with the page-stamp guest, for tests, the example and benchmarks.

A source boots the guest's disk with its RAM in a shared file; a destination is the same
machine with `-incoming defer`, mapping its own RAM file. The disk is opened read-write by
both, as with shared storage: a QEMU waiting for an incoming migration keeps its images
inactive (no locks) until the load completes, and the source inactivates its own at the
end of `migrate`. (ide-hd refuses readonly=on, and q35 has no floppy.)
"""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.qemu.guest.layout import read_header

QEMU = os.environ.get("MULTIFD_QEMU", "qemu-system-x86_64")


def qemu_argv(*, ram: Path, ram_mib: int, disk: Path, qmp: Path, incoming: bool = False,
              share: bool = True, machine: str = "pc", accel: str = "tcg",
              paused: bool = False, serial: Path | None = None,
              name: str = "guest") -> list[str]:
    """The command line of a guest VM (one vCPU, no default devices; TCG unless told)."""
    def escaped(path: Path) -> str:  # QEMU's option syntax doubles commas
        return str(path).replace(",", ",,")

    argv = [QEMU, "-name", name, "-machine", machine, "-accel", accel, "-smp", "1",
            "-m", f"{ram_mib}M", "-nodefaults", "-no-user-config", "-display", "none",
            "-object", f"memory-backend-file,id=ram0,size={ram_mib}M,"
                       f"mem-path={escaped(ram)},share={'on' if share else 'off'}",
            "-machine", "memory-backend=ram0",
            "-drive", f"file={escaped(disk)},format=raw,if=ide",
            "-serial", f"file:{escaped(serial)}" if serial else "none",
            "-qmp", f"unix:{escaped(qmp)},server=on,wait=off"]
    if paused:
        argv.append("-S")
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


@dataclass
class GuestQemu:
    """One QEMU process; kill() is safe to call more than once."""

    argv: list[str]
    qmp: Path
    ram: Path
    disk: Path
    log: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def command_line(self) -> str:
        return shlex.join(self.argv)

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def start_qemu(*, ram: Path, ram_mib: int, disk: Path, workdir: Path, name: str,
               **options) -> GuestQemu:
    """Start QEMU (stdout/stderr to WORKDIR/NAME.log, COM1 to WORKDIR/NAME.serial) and
    return at once: connect with QMP(..., wait_s=...), the socket appears a few ms later.

    Every guest VM has the same devices, a serial port included: a destination must match
    its source's device set exactly (-serial none vs file: is "Unknown savevm section").
    """
    qmp = workdir / f"{name}.qmp"
    log = workdir / f"{name}.log"
    options.setdefault("serial", workdir / f"{name}.serial")
    if qmp.exists():
        qmp.unlink()
    argv = qemu_argv(ram=ram, ram_mib=ram_mib, disk=disk, qmp=qmp, name=name, **options)
    with open(log, "wb") as out:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    return GuestQemu(argv=argv, qmp=qmp, ram=ram, disk=disk, log=log, process=process)


def wait_booted(vm: GuestQemu, timeout: float = 20.0) -> float:
    """Wait until the guest wrote its header and stamped a few passes; seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not vm.alive():
            raise RuntimeError(f"QEMU exited ({vm.process.returncode}): {vm.log_text()[-500:]}")
        header = read_header(vm.ram) if vm.ram.exists() else None
        if header is not None and header.generation > 2:
            return time.monotonic() - start
        time.sleep(0.01)
    raise TimeoutError(f"the guest did not boot within {timeout:g} s")
