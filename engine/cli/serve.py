"""`receive --serve`: a receiver for a host that accepts transfers, one after another, on
one endpoint, as a service would run it.

Each transfer goes to --dest-template with the name its sender gave (engine/storage/names.py
holds the rule for names). stdout gets one JSON line per transfer, and one per sender
refused, for a log such as systemd's journal to keep. SIGTERM stops it between transfers or
during one: an interrupted transfer keeps DEST.partial and DEST.journal (as an interrupted
`receive` does), and its sender continues it with --resume once the receiver runs again.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

from engine import log
from engine.cli.progress import following
from engine.cli.status import Tracker
from engine.coordinator.receiver import Peer, Receiver
from engine.coordinator.result import TransferResult
from engine.errors import EngineError, Interrupted, UsageError
from engine.security import ServerKeys, key_names
from engine.storage.image import parse_location
from engine.storage.names import DestinationTemplate


def serve(args: argparse.Namespace, keys: ServerKeys | None) -> int:
    """Serve transfers until a signal stops us (that ends the command, exit 130 or 143)."""
    if args.dest is not None:
        raise UsageError("--serve takes no DEST: --dest-template names each transfer's")
    if args.dest_template is None:
        raise UsageError("--serve needs --dest-template, e.g. '/dev/shm/{name}'")
    if args.qemu is not None or args.device_dir is not None:
        raise UsageError("--serve takes neither --qemu nor --device-dir: each transfer's "
                         "device state goes beside it, to DEST.devices")
    template = DestinationTemplate(args.dest_template)
    transfers = TransferLog(key_names(args.allow) if keys else {})
    with Receiver(template, args.listen, force=args.force, keys=keys,
                  data_ports=args.data_ports, on_refused=transfers.refused) as receiver:
        note = f"; sender keys allowed: {len(keys.allowed)}" if keys else ""
        log.notice(f"serving on {receiver.endpoint} into {template}{note}")
        while True:
            serve_one(receiver, args.progress, transfers)


def serve_one(receiver: Receiver, progress: str, transfers: "TransferLog") -> None:
    """Wait for the next sender and serve its transfer; its outcome goes to the log."""
    tracker = Tracker("destination", 0, "listening")
    receiver.progress = tracker.arrived
    try:
        with following(tracker, progress, "receiving"):
            result = receiver.run()
    except (Interrupted, KeyboardInterrupt):
        if receiver.peer is not None:
            transfers.transfer(receiver.peer, "interrupted")
        raise
    except EngineError as exc:
        if receiver.peer is None:
            raise
        transfers.transfer(receiver.peer, "failed", error=str(exc))
    else:
        transfers.transfer(receiver.peer, "verified", result)


class TransferLog:
    """The JSON lines on stdout: one per transfer, one per sender refused (those come from
    the authenticator's thread too, hence the lock)."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names  # allowed public keys (Z85) -> their file names
        self.lock = threading.Lock()

    def transfer(self, peer: Peer, outcome: str, result: TransferResult | None = None,
                 error: str | None = None) -> None:
        """`outcome`: verified, failed or interrupted; `kept`: the partial copy a sender
        continues with --resume, if one is left."""
        location = parse_location(peer.destination)
        kept = location.partial_path if location.journal_path.exists() else None
        self.write(event="transfer", name=peer.name, destination=peer.destination,
                   **self.sender(peer.key), outcome=outcome, error=error,
                   bytes=result.bytes if result else None,
                   seconds=round(result.seconds, 3) if result else None,
                   wire_bytes=result.wire_bytes if result else None,
                   digest=result.digest if result else None,
                   resumed_pages=result.resumed_pages if result else None,
                   kept=str(kept) if kept is not None and kept.exists() else None)

    def refused(self, reason: str, key: str) -> None:
        self.write(event="refused", reason=reason, **self.sender(key))

    def sender(self, key: str) -> dict[str, str]:
        return {"sender": self.names.get(key, ""), "sender_key": key}

    def write(self, **fields: Any) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self.lock:
            print(json.dumps({"time": stamp, **fields}), flush=True)
