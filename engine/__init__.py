"""multifd-engine: move memory images and device state over parallel ZeroMQ channels, verified.

The public surface: `migrate` (both ends on this machine), `Sender` and `Receiver` (one end
each, between processes or hosts), `TransferSettings`, `TransferResult`, the errors, and the
CURVE keys that encrypt a transfer between hosts: `write_key_pair` (what `multifd keygen`
does), `load_server_keys` -> `ServerKeys` for a Receiver, `load_client_keys` -> `ClientKeys`
for a Sender.

The coordinators are imported on first use: `import engine` alone stays light, so that the
command line can start the worker forkserver before it imports numpy and ZeroMQ, and the
workers do not import the coordinators at all (BENCHMARKS.md, "start-up").
"""
from __future__ import annotations

import importlib
from typing import Any

from engine.errors import (AuthenticationFailed, CorruptPayload, EngineError, Interrupted,
                           NotConverged, PeerLost, ProtocolError, TransferError,
                           UsageError, VerificationFailed)
from engine.settings import TransferSettings

__version__ = "0.1.0"

_LAZY = {"Receiver": "engine.coordinator.receiver", "migrate": "engine.coordinator.local",
         "TransferResult": "engine.coordinator.result", "Sender": "engine.coordinator.sender",
         **dict.fromkeys(["ClientKeys", "ServerKeys", "load_client_keys", "load_server_keys",
                          "write_key_pair"], "engine.security")}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = ["AuthenticationFailed", "ClientKeys", "CorruptPayload", "EngineError", "Interrupted",
           "NotConverged", "PeerLost", "ProtocolError", "Receiver", "Sender", "ServerKeys",
           "TransferError", "TransferResult", "TransferSettings", "UsageError",
           "VerificationFailed", "load_client_keys", "load_server_keys", "migrate",
           "write_key_pair", "__version__"]
