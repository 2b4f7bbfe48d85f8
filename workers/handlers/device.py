"""The "device" handler: device-state blobs in chunks, staged on the destination by index.

Chunks of one device may arrive on any channel in any order. The destination worker writes
each chunk at its place (index x chunk size) in the device's staging file and tells its
coordinator, which loads the device strictly in chunk order (engine/coordinator/assembly.py). So nothing
is buffered in memory while waiting for an earlier chunk on a slower channel.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from engine.errors import ProtocolError
from engine.storage.digest import chunk_hash
from engine.storage.device_files import (MAX_DEVICE_BYTES, MAX_INSTANCE, NAME_PATTERN,
                                         device_key, staging_path)
from workers.codecs import make_codec
from workers.handlers.base import Encoded, HandlerContext, PayloadHandler

class DeviceHandler(PayloadHandler):
    kind = "device"

    def __init__(self, context: HandlerContext) -> None:
        super().__init__(context)
        self.codec = make_codec(context.settings.device_compress)
        self.chunk_size = context.settings.chunk_size
        self._files: dict[str, int] = {}

    # -- source ---------------------------------------------------------------------------

    def encode(self, spec: dict[str, Any]) -> Encoded:
        fd = self._open(spec["path"], os.O_RDONLY)
        offset = spec["offset"]
        if self.context.fault == "device-double-chunk" and spec["index"] == 1:
            offset = 0  # chunk 0 once more, in chunk 1's place
        data = os.pread(fd, spec["length"], offset)
        if len(data) != spec["length"]:
            raise ProtocolError(f"device file {spec['path']} shrank while being sent")
        frames = [self.codec.compress(data)] if data else []
        body = {key: spec[key] for key in ("name", "instance", "index", "last")}
        body.update(codec=self.codec.spec, raw=len(data))
        self.counters["device_bytes"] += len(data)
        return Encoded(body, frames)

    # -- destination ----------------------------------------------------------------------

    def max_payload(self) -> int:
        return self.chunk_size + self.chunk_size // 64 + 4096

    def apply(self, body: dict[str, Any], frames: list[Any]) -> dict[str, Any]:
        name, instance, index, last, raw = self._check_body(body)
        if raw == 0:
            if frames:
                raise ProtocolError("empty device chunk carries payload")
            data = b""
        else:
            if len(frames) != 1:
                raise ProtocolError("device chunk must be one frame")
            data = self.codec.decompress(frames[0], raw)
        if self.context.fault == "device-drop-chunk" and index == 1:
            return None  # as if this chunk had never arrived
        key = device_key(name, instance)
        fd = self._open(staging_path(self.context.device_dir, key), os.O_RDWR | os.O_CREAT)
        os.pwrite(fd, data, index * self.chunk_size)
        self.counters["device_bytes"] += raw
        return {"name": name, "instance": instance, "index": index, "last": last, "size": raw,
                "hash": chunk_hash(data)}

    def _check_body(self, body: dict[str, Any]) -> tuple[str, int, int, bool, int]:
        name, instance, index = body.get("name"), body.get("instance"), body.get("index")
        last, raw, codec = body.get("last"), body.get("raw"), body.get("codec")
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ProtocolError(f"bad device name {str(name)[:40]!r}")
        if not _is_int(instance) or not 0 <= instance <= MAX_INSTANCE:
            raise ProtocolError(f"bad device instance {instance!r}")
        if not _is_int(index) or not 0 <= index < MAX_DEVICE_BYTES // self.chunk_size:
            raise ProtocolError(f"device chunk index {index!r} is out of range")
        if not isinstance(last, bool) or not _is_int(raw):
            raise ProtocolError("device chunk has a malformed last flag or size")
        if not 0 <= raw <= self.chunk_size or (raw < self.chunk_size and not last):
            raise ProtocolError(f"device chunk of {raw} bytes (chunks are {self.chunk_size})")
        if codec != self.codec.spec:
            raise ProtocolError(f"device chunk uses codec {str(codec)[:40]!r}, the session "
                                f"announced {self.codec.spec!r}")
        return name, instance, index, last, raw

    def _open(self, path: str | Path, flags: int) -> int:
        key = str(path)
        if key not in self._files:
            self._files[key] = os.open(path, flags, 0o600)
        return self._files[key]

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
