"""Device state on the destination: reassembly in chunk order, verification, and sinks.

Destination workers write each chunk at its place in the device's staging file and report
it. The assembler checks every report (no duplicate, nothing after the last chunk) and loads
each device strictly in index order into its sink, as soon as the next chunk is there.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from engine.storage.aliases import FileId, refuse_aliases
from engine.storage.digest import device_digest
from engine.errors import ProtocolError, TransferError, VerificationFailed
from engine.storage.device_files import device_key, staging_path


class DeviceSink(Protocol):
    """Where a device's state goes once complete and verified, or chunk by chunk in order."""

    def check(self, key: str) -> None:
        """Called when a device first arrives: refuse it now if it could not be committed."""

    def load(self, key: str, index: int, data: Callable[[], bytes], last: bool) -> None:
        """Called for each chunk in index order; `data()` reads the chunk's bytes."""

    def commit(self, key: str, staged: Path) -> None:
        """Called once the whole transfer verified; `staged` holds the device's bytes."""


class DirectorySink:
    """CLI sink: the device becomes the file DIR/KEY once the transfer has verified."""

    def __init__(self, directory: Path, force: bool = False,
                 sources: dict[str, FileId | None] | None = None) -> None:
        """`sources`: the files that must never be replaced (see engine/storage/aliases.py)."""
        self.directory = directory
        self.force = force
        self.sources = sources or {}

    def check(self, key: str) -> None:
        final = self.directory / key
        refuse_aliases(self.sources, [final])
        if final.exists() and not self.force:
            raise TransferError(f"device file {final} exists; pass --force to replace it")

    def load(self, key: str, index: int, data: Callable[[], bytes], last: bool) -> None:
        pass  # the staged file already is the device's bytes, in place

    def commit(self, key: str, staged: Path) -> None:
        os.replace(staged, self.directory / key)


class CallbackSink:
    """API sink: `callback(key, index, data, last)` for each chunk, strictly in order."""

    def __init__(self, callback: Callable[[str, int, bytes, bool], None]) -> None:
        self.callback = callback

    def check(self, key: str) -> None:
        pass  # nothing is written under the device's name

    def load(self, key: str, index: int, data: Callable[[], bytes], last: bool) -> None:
        self.callback(key, index, data(), last)

    def commit(self, key: str, staged: Path) -> None:
        staged.unlink()


@dataclass
class _Device:
    received: dict[int, int] = field(default_factory=dict)  # chunk index -> its size
    hashes: dict[int, int] = field(default_factory=dict)  # chunk index -> its folded hash
    origins: dict[int, tuple[int, int] | None] = field(default_factory=dict)  # -> (channel, seq)
    loaded: int = 0  # chunks handed to the sink so far, in order
    last: int | None = None  # index of the last chunk, once seen
    size: int = 0


class DeviceAssembler:
    def __init__(self, staging_dir: Path, chunk_size: int, sink: DeviceSink) -> None:
        self.staging_dir = staging_dir
        self.chunk_size = chunk_size
        self.sink = sink
        self.devices: dict[str, _Device] = {}

    def add(self, name: str, instance: int, index: int, last: bool, size: int, hash: int,
            origin: tuple[int, int] | None = None) -> bool:
        """Record a chunk that landed; False if this very packet (same channel and sequence
        number, `origin`) had landed before and was re-sent after a reconnect. Any other
        repeat of a chunk is a protocol error."""
        key = device_key(name, instance)
        if key not in self.devices:
            self.sink.check(key)
        device = self.devices.setdefault(key, _Device())
        if index in device.received:
            if origin is None or device.origins.get(index) != origin \
                    or device.received[index] != size:
                raise ProtocolError(f"device {key}: chunk {index} arrived twice")
            return False
        if device.last is not None and (index > device.last or last):
            raise ProtocolError(f"device {key}: chunk {index} after its last chunk")
        if last:
            if device.received and max(device.received) > index:
                raise ProtocolError(f"device {key}: last chunk {index} is not the highest")
            device.last = index
        device.received[index] = size
        device.hashes[index] = hash
        device.origins[index] = origin
        device.size += size
        self._load_ready(key, device)
        return True

    def received(self) -> dict[str, list[int]]:
        """The chunks each device has so far (what a resumed transfer need not send)."""
        return {key: sorted(device.received) for key, device in self.devices.items()}

    def _load_ready(self, key: str, device: _Device) -> None:
        path = staging_path(self.staging_dir, key)
        while device.loaded in device.received:
            index = device.loaded
            offset = index * self.chunk_size
            self.sink.load(key, index, lambda: _read(path, offset, self.chunk_size),
                           index == device.last)
            device.loaded += 1

    def check_complete(self, expected: set[str]) -> None:
        """Every announced device arrived whole, and nothing else did."""
        for key in sorted(expected | self.devices.keys()):
            device = self.devices.get(key)
            if key not in expected:
                raise ProtocolError(f"device {key} arrived but the source did not announce it")
            if device is None or device.last is None or device.loaded != device.last + 1:
                missing = "its last chunk" if device is None or device.last is None else \
                    f"chunk {device.loaded}"
                raise VerificationFailed(f"verification failed: device {key} is incomplete "
                                         f"({missing} never arrived)")

    def digests(self) -> dict[str, str]:
        """Each device's folded digest, from the hashes of the chunks as they were written."""
        return {key: device_digest(device.size, (device.hashes[i] for i in sorted(device.hashes)))
                for key, device in self.devices.items()}

    def sizes(self) -> dict[str, int]:
        return {key: device.size for key, device in self.devices.items()}

    def commit(self) -> None:
        for key in self.devices:
            self.sink.commit(key, staging_path(self.staging_dir, key))

    def discard(self) -> None:
        for key in self.devices:
            staging_path(self.staging_dir, key).unlink(missing_ok=True)


def _read(path: Path, offset: int, size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(size)
