"""multifd-engine: move memory images and device state over parallel ZeroMQ channels, verified.

The public surface: `migrate` (both ends on this machine), `Sender` and `Receiver` (one end
each, between processes or hosts), `TransferSettings`, `TransferResult`, and the errors.
The coordinators are imported on first use (PEP 562), so that worker-side modules can import
`engine.errors` or `engine.protocol` without pulling in the coordinators, and a third-party
handler can import `workers.handlers` on its own.
"""
from __future__ import annotations

import importlib

from engine.errors import (AuthenticationFailed, CorruptPayload, EngineError, Interrupted,
                           NotConverged, PeerLost, ProtocolError, TransferError,
                           UsageError, VerificationFailed)
from engine.settings import TransferSettings

__version__ = "0.1.0"

_LAZY = {"Receiver": "engine.destination", "Sender": "engine.source",
         "migrate": "engine.local", "TransferResult": "engine.result"}

__all__ = ["AuthenticationFailed", "CorruptPayload", "EngineError", "Interrupted",
           "NotConverged", "PeerLost", "ProtocolError", "Receiver", "Sender", "TransferError", "TransferResult",
           "TransferSettings", "UsageError", "VerificationFailed", "migrate", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
