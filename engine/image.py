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
from dataclasses import dataclass
from pathlib import Path

from engine.errors import TransferError, UsageError

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
        """What has arrived in NAME.partial, for resuming (engine/journal.py)."""
        return self.path.with_name(self.path.name + ".journal")


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


def check_destination(location: Location, force: bool, size: int | None = None) -> None:
    """Refuse a destination we could not create, or would overwrite without --force
    (naming the size mismatch, when the source's `size` is known)."""
    parent = location.path.parent
    if not parent.is_dir():
        raise UsageError(f"destination folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write in destination folder {parent}")
    if location.path.is_dir():
        raise UsageError(f"destination {location.text} is a directory")
    if location.path.exists() and not force:
        existing = location.path.stat().st_size
        if size is not None and existing != size:
            raise UsageError(f"destination {location.text} exists with {existing} bytes, the "
                             f"source has {size}; pass --force to replace it")
        raise UsageError(f"destination {location.text} exists; pass --force to replace it")


def create_partial(location: Location, size: int) -> Path:
    """Create (or empty) NAME.partial with `size` bytes, all zero and sparse."""
    path = location.partial_path
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
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
