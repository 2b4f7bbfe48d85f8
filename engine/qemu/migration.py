"""A QEMU guest migrated by the engine: its RAM file over the channels, QEMU's own device
state riding along as device `qemu`.

The source VM's RAM is a shared memory-backend-file, so the engine reads the very file the
guest runs on (in rounds while it runs, with --live). At switchover QEMU stops and saves its
device state without that RAM (x-ignore-shared); the destination QEMU waits with
`-incoming defer` on DEST, which the receiver writes in place, and loads the device state
only once the image verified. What is RAM and what is device state never meet in one
stream, so RAM may be zstd-compressed while the device state passes through as it is.

QEMU's errors are translated here, at the boundary: a VM that cannot be migrated (a check
refused it, nothing changed) is a UsageError, anything later a TransferError.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping

from engine.errors import TransferError, UsageError
from engine.coordinator.result import VmResult
from engine.qemu.qmp import NotQMP, QMPError
from engine.qemu.vm import DestinationVM, SourceVM, VmRefused

if TYPE_CHECKING:
    from engine.live.rounds import RoundReport
    from engine.settings import LiveSettings
    from engine.coordinator.sender import Sender

QEMU_DEVICE = "qemu"  # the device name QEMU's device state travels under


@contextmanager
def qemu_errors() -> Iterator[None]:
    """Turn QMP's and the VM checks' errors into the engine's (one line, an exit code)."""
    try:
        yield
    except (VmRefused, NotQMP) as exc:
        raise UsageError(str(exc)) from None
    except QMPError as exc:
        raise TransferError(f"QEMU: {exc}") from None


def open_source(qmp_socket: str, ram_file: str | os.PathLike) -> SourceVM:
    """The running VM behind `qmp_socket`, checked: `ram_file` is its shared RAM file and
    no migration is under way. Sets x-ignore-shared (put back by close())."""
    with qemu_errors():
        return SourceVM(qmp_socket, ram_file)


def open_destination(qmp_socket: str, ram_file: str | os.PathLike) -> DestinationVM:
    """The QEMU waiting with `-incoming defer` behind `qmp_socket`, checked: `ram_file` is
    its shared RAM file."""
    with qemu_errors():
        return DestinationVM(qmp_socket, ram_file)


def migrate_vm(sender: "Sender", vm: SourceVM, live: "LiveSettings | None" = None,
               devices: Mapping[str, bytes | str | os.PathLike] | None = None,
               on_round: "Callable[[RoundReport], None] | None" = None) -> VmResult:
    """Send the VM through a started `sender`: in rounds while it runs (`live`), or paused
    from the start. Its device state follows the last RAM as device `qemu`, with `devices`.
    If anything fails after the pause, the VM runs again; after success it stays paused
    (postmigrate), as after QEMU's own migration."""
    from engine.live.rounds import run_live

    def device_state() -> dict[str, Any]:
        with qemu_errors():
            state = vm.save_device_state()
        return {**(devices or {}), QEMU_DEVICE: state}

    def pause() -> None:
        with qemu_errors():
            vm.pause()

    if live is not None:
        result = run_live(sender, live, pause=pause, resume=vm.resume, devices=device_state,
                          on_round=on_round)
        downtime_ms = result.downtime_ms
    else:
        paused_at = time.perf_counter()
        try:
            pause()
            sender.send_range()
            for name, state in device_state().items():
                sender.send_device(name, state)
            result = sender.finish()
        except BaseException:
            vm.resume()
            raise
        downtime_ms = 1000 * (sender.verified_at - paused_at)
    with qemu_errors():
        source_state = vm.state()
    return VmResult(migration=result, downtime_ms=downtime_ms,
                    vm={"source": source_state, "destination": sender.destination_vm})


class QemuSink:
    """The receiver's device sink beside a waiting QEMU: device `qemu` is loaded into it
    once the transfer verified (and the guest started); other devices go to `files`."""

    def __init__(self, vm: DestinationVM, files: Any) -> None:
        self.vm = vm
        self.files = files
        self.loading = False  # the load was tried: QEMU is no longer as it was

    def check(self, key: str) -> None:
        if key != QEMU_DEVICE:
            self.files.check(key)

    def load(self, key: str, index: int, data: Callable[[], bytes], last: bool) -> None:
        pass  # QEMU loads its state whole, after verification

    def commit(self, key: str, staged: Path) -> None:
        if key != QEMU_DEVICE:
            self.files.commit(key, staged)
            return
        self.loading = True
        with qemu_errors():
            self.vm.start(staged)
        staged.unlink()
