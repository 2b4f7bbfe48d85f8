"""Dataclass messages to and from msgpack, with every field type-checked on the way in.

Every message the engine sends (over TCP to the peer, or over IPC to its own workers) is a
frozen dataclass registered here under a short tag. Decoding refuses anything that is not
exactly such a message: unknown tag, missing or extra field, wrong type, oversized frame.
That is the first half of the wire validation; the range checks that need session context
(channel < channels, pages inside the image) live in protocol.py.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import msgpack

from engine.errors import ProtocolError

# A header is small: a few dozen fields and at most a few thousand page indices.
MAX_HEADER_BYTES = 256 << 10

_TYPES: dict[str, type] = {}
_HINTS: dict[type, dict[str, Any]] = {}
M = TypeVar("M")


def message(tag: str):
    """Class decorator: register a frozen dataclass as a message with this tag."""

    def register(cls: type[M]) -> type[M]:
        if tag in _TYPES:
            raise ValueError(f"message tag {tag!r} registered twice")
        cls = dataclasses.dataclass(frozen=True)(cls)
        cls.TAG = tag
        _TYPES[tag] = cls
        return cls

    return register


def encode(msg: Any) -> bytes:
    fields = {f.name: getattr(msg, f.name) for f in dataclasses.fields(msg)}
    return msgpack.packb([msg.TAG, fields], use_bin_type=True)


def decode(data: bytes | memoryview, *expected: type[M]) -> M:
    """Decode one message; it must be one of `expected` (any registered one if none given)."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(data)} bytes is larger than {MAX_HEADER_BYTES}")
    try:
        raw = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_array_len=65536,
            max_map_len=4096,
            max_str_len=4096,
            max_bin_len=MAX_HEADER_BYTES,
        )
    except (ValueError, TypeError, RecursionError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError) as exc:
        raise ProtocolError(f"header is not valid msgpack ({type(exc).__name__})") from None
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], str)
            and isinstance(raw[1], dict)):
        raise ProtocolError("header is not a [tag, fields] pair")
    tag, fields = raw
    cls = _TYPES.get(tag)
    if cls is None or (expected and cls not in expected):
        wanted = ", ".join(c.TAG for c in expected) or "a known message"
        raise ProtocolError(f"unexpected message {tag[:40]!r}, wanted {wanted}")
    return _build(cls, fields)


def _build(cls: type[M], fields: dict) -> M:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = required - fields.keys()
    extra = fields.keys() - hints.keys()
    if missing or extra:
        raise ProtocolError(f"{cls.TAG} message has missing fields {sorted(missing)} "
                            f"or unknown fields {sorted(map(repr, extra))[:5]}")
    for name, value in fields.items():
        if not _is_instance(value, hints[name]):
            raise ProtocolError(f"{cls.TAG}.{name} has the wrong type ({type(value).__name__})")
    return cls(**fields)


def _is_instance(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_is_instance(value, arm) for arm in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(
            _is_instance(k, key) and _is_instance(v, item) for k, v in value.items())
    if hint is Any:
        return True
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)
