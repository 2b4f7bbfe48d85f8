"""Both ends on one machine: a Receiver on a loopback port and a Sender talking to it.

This is what `python -m engine migrate` runs. The two coordinators share this process (the
receiver on a thread); each side still has its own worker processes and every byte crosses
real TCP sockets, exactly as between two hosts.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Mapping, TypeVar

from engine.storage.aliases import FileId, destination_writes, refuse_aliases
from engine.storage.device_files import check_device_folder
from engine.coordinator.receiver import Receiver
from engine.errors import EngineError, TransferError
from engine.coordinator.result import TransferResult
from engine.storage.image import (check_destination, check_free_space, check_not_interrupted,
                                  parse_location, source_size, stored_bytes)
from engine.security import ephemeral_keys
from engine.settings import CONNECT_TIMEOUT_S, TransferSettings
from engine.coordinator.dispatcher import Acked
from engine.coordinator.sender import Sender, check_device

RECEIVER_JOIN_S = 10.0
R = TypeVar("R")


def migrate(source: str, destination: str, settings: TransferSettings = TransferSettings(),
            devices: Mapping[str, bytes | str | os.PathLike] | None = None,
            device_dir: str | os.PathLike | None = None, force: bool = False,
            progress: Callable[[Acked], None] | None = None,
            curve: bool = False, resume: bool = False,
            max_bandwidth: int | str | None = None,
            connect_timeout: float = CONNECT_TIMEOUT_S) -> TransferResult:
    """Copy image `source` to `destination` (paths or "shm:NAME") plus device state, verified.
    `resume` continues an interrupted copy into the same destination (see engine/storage/journal.py);
    `max_bandwidth` caps the bytes per second on the wire, all channels together (a number,
    or text such as "100M" or "500mbit").

    Loopback needs no encryption; `curve` turns it on anyway (fresh keys for this transfer),
    to measure its cost or to keep other local users from reading the image off the wire.

    Raises, all `engine.EngineError`s:
    - UsageError before anything is created: an unreadable source or device file, a bad
      device name or setting, a destination that exists (without `force`), is the source
      under another name, has no room, or holds an interrupted copy's DEST.partial (pass
      `resume` to continue it or `force` to start over);
    - TransferError (PeerLost, ProtocolError, CorruptPayload) when the copy fails on the
      way, VerificationFailed when it arrived but differs from the source. A file
      destination then stays as DEST.partial with DEST.journal, which `resume` continues;
      a shared-memory one is removed. Nothing ever has the final name unless it verified."""

    check_inputs(source, destination, devices, device_dir, force, resume)

    def copy(sender: Sender) -> TransferResult:
        sender.send_range()
        for name, state in (devices or {}).items():
            sender.send_device(name, state)
        return sender.finish()

    return run_locally(source, destination, copy, settings, device_dir, force, progress, curve,
                       resume, max_bandwidth, connect_timeout=connect_timeout)


def check_inputs(source: str, destination: str,
                 devices: Mapping[str, bytes | str | os.PathLike] | None = None,
                 device_dir: str | os.PathLike | None = None, force: bool = False,
                 resume: bool = False, in_place: bool = False) -> None:
    """Everything a copy on this machine can refuse before it creates anything (UsageError):
    an unreadable source or device file, a bad device name, a destination that exists
    (without `force`; `in_place`: it must, a destination QEMU's RAM file), an interrupted
    copy's DEST.partial (without `resume` or `force`), a destination that has no room, or
    would write the source or a device file under any of its names (DEST, DEST.partial,
    DEST.journal, the device folder), or a device folder that cannot be created."""
    src, dest = parse_location(source), parse_location(destination)
    size = source_size(src)
    sources = {f"the source {src.text}": FileId.of(src.path)}
    for name, state in (devices or {}).items():
        path = check_device(name, state)
        if path is not None:
            sources[f"the state of device {name} ({path})"] = FileId.of(path)
    folder = Path(device_dir) if device_dir else dest.default_device_dir
    refuse_aliases(sources, destination_writes(dest, folder, devices or {}))
    if not in_place:
        check_destination(dest, force, size)
        check_not_interrupted(dest, resume, force, "add --resume to continue it, or --force to "
                                                   "start over")
    check_device_folder(folder)
    already = dest.path if in_place else dest.partial_path if resume else None
    check_free_space(dest, size, stored_bytes(src.path), already)


def run_locally(source: str, destination: str, transfer: Callable[[Sender], R],
                settings: TransferSettings = TransferSettings(),
                device_dir: str | os.PathLike | None = None, force: bool = False,
                progress: Callable[[Acked], None] | None = None, curve: bool = False,
                resume: bool = False, max_bandwidth: int | str | None = None,
                dest_qemu: str | None = None,
                connect_timeout: float = CONNECT_TIMEOUT_S) -> R:
    """Serve `destination` on a loopback receiver thread while `transfer(sender)` sends to it.

    `transfer` drives the started Sender (rounds, devices, finish) and returns its result;
    migrate() sends everything once, live migration (engine/live/rounds.py) sends rounds, a VM's
    migration (engine/qemu/migration.py) either. `dest_qemu`: see Receiver's `qemu`.
    `connect_timeout`: how long each end waits for the other to answer, in seconds.
    """
    server_keys, client_keys = ephemeral_keys() if curve else (None, None)
    receiver = Receiver(destination, "tcp://127.0.0.1:0", device_dir=device_dir, force=force,
                        keys=server_keys, qemu=dest_qemu)
    outcome: dict[str, object] = {}

    def serve() -> None:
        try:
            outcome["result"] = receiver.run(timeout_s=connect_timeout)
        except BaseException as exc:  # reported by the main thread below
            outcome["error"] = exc

    thread = threading.Thread(target=serve, name="multifd-receiver", daemon=True)
    try:
        sender = Sender(source, str(receiver.endpoint), settings, progress=progress,
                        keys=client_keys, resume=resume, max_bandwidth=max_bandwidth,
                        connect_timeout=connect_timeout)
        thread.start()
        with sender:
            result = transfer(sender)
    finally:
        if thread.ident is not None:
            thread.join(RECEIVER_JOIN_S)
        receiver.close()
    error = outcome.get("error")
    if isinstance(error, EngineError):
        raise error
    if error is not None or "result" not in outcome:
        raise TransferError(f"receiver did not finish: {error}")
    return result
