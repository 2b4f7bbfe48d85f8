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


# `--compress auto` lets the source pick per packet among these, fastest first; the session
# announces "auto" and the destination accepts exactly these (workers/codecs/adaptive.py).
# zstd:1 to zstd:3 are where a 1 Gbit/s link balances with this machine's CPU; zstd:4
# gives zstd:3's bytes slower, zstd:5 and zstd:6 2-2.7x slower for 2-3% fewer bytes, and
# trying them costs more than they save on these links (BENCHMARKS.md, "slow links").
AUTO = "auto"
AUTO_CHOICES = ("none", "zstd:1", "zstd:2", "zstd:3")


def session_codecs(spec: str) -> dict[str, Codec]:
    """The codecs a session with this --compress value may use, by the spec packets name
    them with: one for a fixed choice, AUTO_CHOICES (fastest first) for "auto"."""
    if spec == AUTO:
        codecs = [make_codec(choice) for choice in AUTO_CHOICES]
    else:
        codecs = [make_codec(spec, also_known=(AUTO,))]
    return {codec.spec: codec for codec in codecs}


def make_codec(spec: str, also_known: tuple[str, ...] = ()) -> Codec:
    """Build a codec from "NAME" or "NAME:LEVEL"; UsageError with a clear message if bad
    (an unknown name lists the known ones, with `also_known`: what the caller takes too)."""
    name, colon, level_text = spec.partition(":")
    try:
        cls = CODECS.load(name)
    except ValueError:
        known = ", ".join([*CODECS.names(), *also_known])
        raise UsageError(f"unknown codec {name!r}; known: {known}") from None
    if colon and not level_text:
        raise UsageError(f"codec {spec!r} has an empty level: write {name} or {name}:LEVEL")
    level = None
    if level_text:
        try:
            level = int(level_text)
        except ValueError:
            raise UsageError(f"codec level must be a whole number, not {level_text!r}") from None
    return cls(level)


__all__ = ["AUTO", "AUTO_CHOICES", "CODECS", "Codec", "make_codec", "session_codecs"]
