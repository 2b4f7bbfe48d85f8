"""Refuse a destination that is the source under another name.

Verification cannot catch this case: once the destination has truncated the source, both
sides hash the same emptied file and agree. So before the destination creates or truncates
anything, every path it will write is compared with the source by device and inode, which
also sees through symbolic and hard links. Device and inode numbers only mean something on
the running kernel that gave them, so they travel (in HELLO) with that kernel's boot id.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from engine.errors import DestinationRefused
from engine.storage.image import Location
from engine.storage.device_files import staging_path


@lru_cache(maxsize=1)
def this_host() -> str:
    """The running kernel's boot id: equal for two processes exactly when their device and
    inode numbers name the same files (containers on one kernel included)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


@dataclass(frozen=True)
class FileId:
    """Which file a path is, on which host."""

    host: str
    device: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FileId | None":
        """The file `path` names (following links), or None if there is none."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(this_host(), st.st_dev, st.st_ino)


def refuse_aliases(sources: dict[str, FileId | None], writes: Iterable[Path]) -> None:
    """DestinationRefused if a path the destination will write is one of the `sources` (a phrase
    naming each, like "the source IMG" -> its identity). Sources on another host cannot be
    aliased."""
    local = {ident: name for name, ident in sources.items()
             if ident is not None and ident.host == this_host()}
    if not local:
        return
    for path in writes:
        name = local.get(FileId.of(path))
        if name is not None:
            raise DestinationRefused(f"the destination may write {path}, which is {name}: that would "
                             "destroy it; choose another destination (--force does not "
                             "change this)")


def destination_writes(location: Location, device_dir: Path | None,
                       device_keys: Iterable[str] = ()) -> list[Path]:
    """Every existing path a destination may create, truncate, write or replace before it
    knows which devices come: the image, its partial copy and journal, the device folder and
    the staging files in it. A device's own file (DIR/KEY) is replaced only after the
    transfer verified, so it is checked when the device first arrives (DirectorySink), or
    here when the `device_keys` are known up front. No `device_dir`: device state goes to a
    callback, through a private folder."""
    paths = [location.path, location.partial_path, location.journal_path]
    if device_dir is None:
        return paths
    paths.append(device_dir)
    for key in device_keys:
        paths += [device_dir / key, staging_path(device_dir, key)]
    if device_dir.is_dir():
        try:
            paths += sorted(device_dir.glob(staging_path(Path(), "*").name))
        except OSError:
            pass  # an unreadable folder fails with its own message when it is used
    return paths
