"""Zstandard: the codec to use when the link is slower than ~1 GB/s per core."""
from __future__ import annotations

import zstandard

from engine.errors import CorruptPayload
from workers.codecs.base import Codec


class ZstdCodec(Codec):
    name = "zstd"
    levels = range(-7, 23)
    default_level = 1

    def __init__(self, level: int | None = None) -> None:
        super().__init__(level)
        self._compressor = zstandard.ZstdCompressor(level=self.level, write_content_size=True)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, data) -> bytes:
        return self._compressor.compress(data)

    def decompress(self, data, size: int) -> bytes:
        try:
            # Our frames always state their size; a frame that states another size, or none,
            # is refused before anything is allocated for it.
            if zstandard.frame_content_size(data) != size:
                raise CorruptPayload(f"zstd frame does not state the expected size {size}")
            # libzstd refuses blocks that decode past the stated size, so this is bounded.
            inflater = self._decompressor.decompressobj()
            out = inflater.decompress(data)
        except zstandard.ZstdError as exc:
            raise CorruptPayload(f"zstd payload does not decode: {exc}") from None
        if len(out) != size or not inflater.eof or inflater.unused_data:
            raise CorruptPayload(f"zstd payload is not one frame of exactly {size} bytes")
        return out
