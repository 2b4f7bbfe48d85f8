"""Device state as files: what may name a device, and where the destination stages its chunks.

Both ends and the device handler follow these rules: the sender refuses a bad name before
anything is sent, the destination never writes outside its device folder, and the paths a
transfer will write are known before it starts (engine/storage/aliases.py).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from engine.errors import DestinationRefused, UsageError

MAX_DEVICE_BYTES = 64 << 30
MAX_INSTANCE = 65535
MAX_NAME_LENGTH = 128
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # use with fullmatch


def check_device_name(name: str) -> None:
    """UsageError, saying what is wrong, unless `name` can name a device (and its file)."""
    if not isinstance(name, str) or not name:
        raise UsageError("a device needs a name")
    if len(name) > MAX_NAME_LENGTH:
        raise UsageError(f"device name {name[:20]}... is {len(name)} characters long; at most "
                         f"{MAX_NAME_LENGTH}")
    if name in (".", ".."):
        raise UsageError(f"device name {name!r} names a folder, not a file")
    if not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"device name {name!r} must start with a letter or digit and hold "
                         "only letters, digits, '.', '_' or '-'")


def device_key(name: str, instance: int) -> str:
    """The name a device goes by in summaries and as its file: NAME, or NAME.INSTANCE."""
    return name if instance == 0 else f"{name}.{instance}"


def staging_path(device_dir: Path, key: str) -> Path:
    return device_dir / f".{key}.partial"


def check_device_folder(folder: Path) -> None:
    """DestinationRefused unless device files can go into `folder`: a writable folder, or
    one that can be created. Checked before the destination creates anything, so that a bad
    --device-dir leaves no DEST.partial behind."""
    if folder.exists():
        if not folder.is_dir():
            raise DestinationRefused(f"the device folder {folder} is not a folder")
        where = folder
    else:
        where = folder.parent
        if not where.is_dir():
            raise DestinationRefused(f"cannot create the device folder {folder}: {where} is "
                                     "not a folder")
    if not os.access(where, os.W_OK | os.X_OK):
        raise DestinationRefused(f"cannot write device files into {folder}: {where} is not "
                                 "writable")
