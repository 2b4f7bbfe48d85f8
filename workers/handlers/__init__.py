"""Payload handlers, found by name: "ram" (pages) and "device" (device-state chunks)."""
from __future__ import annotations

from workers.handlers.base import Encoded, HandlerContext, PayloadHandler
from workers.registry import Registry

HANDLERS: Registry[PayloadHandler] = Registry("payload handler", "multifd_engine.handlers", {
    "ram": "workers.handlers.ram:RamHandler",
    "device": "workers.handlers.device:DeviceHandler",
})

__all__ = ["HANDLERS", "Encoded", "HandlerContext", "PayloadHandler"]
