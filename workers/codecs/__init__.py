"""Compressors used under the payload handlers, found by name ("zstd:3" = zstd, level 3)."""
from __future__ import annotations

from engine.errors import UsageError
from workers.codecs.base import Codec
from workers.registry import Registry

CODECS: Registry[Codec] = Registry("codec", "multifd_engine.codecs", {
    "none": "workers.codecs.plain:PlainCodec",
    "zlib": "workers.codecs.zlib:ZlibCodec",
    "zstd": "workers.codecs.zstd:ZstdCodec",
})


def make_codec(spec: str) -> Codec:
    """Build a codec from "NAME" or "NAME:LEVEL"; UsageError with a clear message if bad."""
    name, _, level_text = spec.partition(":")
    try:
        cls = CODECS.load(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    level = None
    if level_text:
        try:
            level = int(level_text)
        except ValueError:
            raise UsageError(f"codec level must be a whole number, not {level_text!r}") from None
    return cls(level)


__all__ = ["CODECS", "Codec", "make_codec"]
