"""Sizes as people write them: 4096, 64K, 256M, 1G (powers of 1024), and as the engine shows
them: binary units everywhere (KiB, MiB/s, GiB/s), like the sizes they are measured against."""
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


_RATE_BITS = re.compile(r"^(\d+(?:\.\d+)?)([kmg]?)bit$", re.IGNORECASE)
_BIT_FACTORS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}


def parse_rate(text: str) -> int:
    """A rate in bytes per second: "1gbit" or "500mbit" as tc writes link rates (powers of
    1000, bits), or a size per second as QEMU's max-bandwidth takes it ("100M", "1G")."""
    bits = _RATE_BITS.match(text.strip())
    if bits:
        rate = int(float(bits.group(1)) * _BIT_FACTORS[bits.group(2).lower()] / 8)
    else:
        try:
            rate = parse_size(text)
        except UsageError:
            raise UsageError(f"rate {text!r} is not like 1gbit, 500mbit or 100M (bytes per "
                             "second)") from None
    if rate <= 0:
        raise UsageError(f"rate {text!r} must be above zero")
    return rate


_BINARY_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def format_size(nbytes: float) -> str:
    """`nbytes` in the largest binary unit that keeps it at 1 or more: "512.0 MiB"."""
    value, unit = float(nbytes), _BINARY_UNITS[0]
    for unit in _BINARY_UNITS:
        if abs(value) < 1024 or unit == _BINARY_UNITS[-1]:
            break
        value /= 1024
    return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"


def format_rate(bytes_per_s: float) -> str:
    """A rate in the same units: "179.2 MiB/s"."""
    return f"{format_size(bytes_per_s)}/s"
