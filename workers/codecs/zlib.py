"""zlib (deflate): slower than zstd, kept for peers and users that only have zlib."""
from __future__ import annotations

import zlib

from engine.errors import CorruptPayload
from workers.codecs.base import Codec


class ZlibCodec(Codec):
    name = "zlib"
    levels = range(0, 10)
    default_level = 1

    def compress(self, data) -> bytes:
        return zlib.compress(data, self.level)

    def decompress(self, data, size: int) -> bytes:
        inflater = zlib.decompressobj()
        try:
            # max_length bounds the output: a bomb stops at size + 1 bytes.
            out = inflater.decompress(data, size + 1)
        except zlib.error as exc:
            raise CorruptPayload(f"zlib payload does not decode: {exc}") from None
        if len(out) != size or not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise CorruptPayload(f"zlib payload decodes to the wrong size (expected {size})")
        return out
