"""The identity codec: pages travel as they are, zero-copy from the mapped image."""
from __future__ import annotations

from engine.errors import CorruptPayload
from workers.codecs.base import Codec


class PlainCodec(Codec):
    name = "none"

    def compress(self, data):
        return data

    def decompress(self, data, size: int):
        if len(data) != size:
            raise CorruptPayload(f"uncompressed payload of {len(data)} bytes, expected {size}")
        return data
