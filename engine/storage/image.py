"""Where an image lives: a regular file or POSIX shared memory ("shm:NAME"), and its mapping.

Workers map images themselves, so page bytes go from the source mapping to the socket and
from the socket to the destination mapping without passing through a coordinator.
A destination is created beside its final name (NAME.partial) and renamed only once the
transfer has verified, so a half-written image is never found under the final name.
"""
from __future__ import annotations

import mmap
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DestinationRefused, TransferError, UsageError
from engine.storage.journal import Journal

SHM_DIR = Path("/dev/shm")
PARTIAL_SUFFIX = ".partial"
_SHM_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True)
class Location:
    """An image's place; `text` is what the user wrote, `path` what the OS opens."""

    text: str
    path: Path
    shared_memory: bool

    @property
    def partial_path(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)

    @property
    def journal_path(self) -> Path:
        """What has arrived in NAME.partial, for resuming (engine/storage/journal.py)."""
        return self.path.with_name(self.path.name + ".journal")

    @property
    def default_device_dir(self) -> Path:
        """Device files go beside the image unless told otherwise: NAME.devices/DEVICE."""
        return self.path.with_name(self.path.name + ".devices")


def parse_location(text: str) -> Location:
    if text.startswith("shm:"):
        name = text[4:]
        if not _SHM_NAME.match(name) or name in (".", ".."):
            raise UsageError(f"shared memory name {name!r} must be letters, digits, '.', '_' "
                             "or '-'")
        return Location(text, SHM_DIR / name, True)
    if not text:
        raise UsageError("an empty path is not an image")
    return Location(text, Path(text), False)


def source_size(location: Location) -> int:
    """Size of a readable source image; UsageError if it is missing or not a regular file."""
    try:
        st = os.stat(location.path)
    except OSError as exc:
        raise UsageError(f"cannot read source {location.text}: {exc.strerror}") from None
    if not os.path.isfile(location.path):
        raise UsageError(f"source {location.text} is not a regular file")
    if not os.access(location.path, os.R_OK):
        raise UsageError(f"cannot read source {location.text}: permission denied")
    return st.st_size


def stored_bytes(path: str | os.PathLike) -> int:
    """What a file's data occupies on its filesystem: a sparse file's holes take nothing, and
    an image's holes are not sent, so this is what a copy of it needs at most."""
    st = os.stat(path)
    return min(st.st_size, st.st_blocks * 512)


def check_free_space(location: Location, image_size: int, stored: int,
                     already: Path | None = None) -> None:
    """Refuse up front a destination whose filesystem cannot hold the copy of a source whose
    data occupies `stored` bytes (and the journal), rather than fail with ENOSPC half way;
    `already`: the file the copy goes into, if it exists (a resumed or in-place copy)."""
    need = stored + Journal.bytes_for(image_size)
    folder = location.path.parent
    try:
        fs = os.statvfs(folder)
    except OSError:
        return  # not our business to fail on: creating the file will say what is wrong
    free = fs.f_bavail * fs.f_frsize
    if already is not None:
        try:
            need -= stored_bytes(already)
        except OSError:
            pass
    if need > free:
        raise DestinationRefused(
            f"the destination is full: {location.text} needs {_mib(need)} and {folder} has "
            f"{_mib(free)} free; free some space, or receive into a bigger place (to continue "
            f"an interrupted copy there, move {location.partial_path.name} and "
            f"{location.journal_path.name} beside the new destination and add --resume)")


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def check_destination(location: Location, force: bool, size: int | None = None) -> None:
    """Refuse a destination we could not create, or would overwrite without --force
    (naming the size mismatch, when the source's `size` is known)."""
    parent = location.path.parent
    if not parent.is_dir():
        raise DestinationRefused(f"destination folder {parent} does not exist")
    try:  # a real try, for what access() does not know (root in /proc, read-only mounts)
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise DestinationRefused(f"cannot create files in destination folder {parent}: "
                                 f"{exc.strerror}") from None
    if location.path.is_dir():
        raise DestinationRefused(f"destination {location.text} is a directory")
    if location.path.exists() and not force:
        existing = location.path.stat().st_size
        if size is not None and existing != size:
            raise DestinationRefused(f"destination {location.text} exists with {existing} "
                                     f"bytes, the source has {size}; pass --force to replace it")
        raise DestinationRefused(f"destination {location.text} exists; pass --force to "
                                 "replace it")


def check_not_interrupted(location: Location, resume: bool, force: bool, advice: str) -> None:
    """Refuse to start over on an interrupted copy's NAME.partial without being told: it
    may hold most of a long transfer. `advice` says how to continue it or start over."""
    if resume or force or not location.partial_path.exists():
        return
    raise DestinationRefused(f"{location.partial_path} holds an interrupted transfer; {advice}")


def create_partial(location: Location, size: int) -> Path:
    """Create (or empty) NAME.partial with `size` bytes, all zero and sparse."""
    path = location.partial_path
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:  # e.g. its folder was removed since the receiver started
        raise DestinationRefused(f"cannot create the destination {path}: "
                                 f"{exc.strerror}") from None
    try:
        os.ftruncate(fd, size)
    except OSError as exc:  # the sender announced more than this filesystem holds (EFBIG)
        path.unlink()
        raise TransferError(f"cannot create a destination of {size} bytes at {path}: "
                            f"{exc.strerror}") from None
    finally:
        os.close(fd)
    return path


def map_file(path: str | os.PathLike, writable: bool, offset: int = 0,
             length: int | None = None) -> mmap.mmap | None:
    """Map a file from `offset` (page aligned) for `length` bytes (default: to its end);
    None when that is empty (mmap cannot map zero bytes)."""
    fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size - offset if length is None else length
        if size <= 0:
            return None
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return mmap.mmap(fd, size, access=access, offset=offset)
    finally:
        os.close(fd)
