"""Sizes as people write them: 4096, 64K, 256M, 1G (powers of 1024)."""
from __future__ import annotations

import re

from engine.errors import UsageError

_SIZE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)
_FACTORS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    match = _SIZE.match(text.strip())
    if not match:
        raise UsageError(f"size {text!r} is not a number with an optional K, M, G or T")
    return int(match.group(1)) * _FACTORS[match.group(2).upper()]
