"""multifd-engine: move memory images and device state over parallel ZeroMQ channels, verified.

The public surface: `migrate` (both ends on this machine), `Sender` and `Receiver` (one end
each, between processes or hosts), `TransferSettings`, `TransferResult`, and the errors.
"""
from __future__ import annotations

from engine.destination import Receiver
from engine.errors import (CorruptPayload, EngineError, Interrupted, NotConverged, PeerLost,
                           ProtocolError, TransferError, UsageError, VerificationFailed)
from engine.local import migrate
from engine.result import TransferResult
from engine.settings import TransferSettings
from engine.source import Sender

__version__ = "0.1.0"

__all__ = ["CorruptPayload", "EngineError", "Interrupted", "NotConverged", "PeerLost",
           "ProtocolError",
           "Receiver", "Sender", "TransferError", "TransferResult", "TransferSettings",
           "UsageError", "VerificationFailed", "migrate", "__version__"]
