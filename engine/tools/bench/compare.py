"""Whether a peer's copy is the image, byte for byte: a peer has none of the engine's
verification, so the bench checks what it wrote, outside the measurement."""
from __future__ import annotations

from pathlib import Path

_CHUNK = 16 << 20


def same_bytes(image: Path, copy: Path) -> bool:
    """True if `copy` exists and holds exactly the bytes of `image`."""
    try:
        if copy.stat().st_size != image.stat().st_size:
            return False
        with open(image, "rb") as a, open(copy, "rb") as b:
            while chunk := a.read(_CHUNK):
                if chunk != b.read(_CHUNK):
                    return False
    except OSError:
        return False
    return True
