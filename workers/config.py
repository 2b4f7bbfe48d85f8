"""What a worker process is started with: its side, channel, image and settings."""
from __future__ import annotations

from dataclasses import dataclass

from engine.security import ClientKeys, ServerKeys
from engine.settings import TransferSettings


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a worker process needs to start (pickled to it by multiprocessing)."""

    side: str  # "source" or "destination"
    channel: int
    control: str
    coordinator_pid: int
    session: bytes
    settings: TransferSettings
    image_path: str
    image_size: int
    handlers: tuple[str, ...]
    listen_host: str = "127.0.0.1"
    listen_port: int = 0  # a replacement destination worker binds its predecessor's port
    round: int = 0  # the round a replacement destination worker joins in
    fresh: bool = True
    journal_path: str | None = None  # destination: the page states live in its journal
    device_dir: str | None = None
    keys: ServerKeys | ClientKeys | None = None  # CURVE; None: plain TCP
    data_ports: int = 0  # destination: channel i binds data_ports + i; 0: any free port
    # The transfer's page hashes (engine/storage/digest.py): a file of its own on the source,
    # a region of the journal on the destination.
    hashes_path: str | None = None
    hashes_offset: int = 0
    pace: float = 0.0  # source: bytes per second this channel may send (a share of the cap)
    fault: str = ""  # MULTIFD_FAULT: a fault the handlers inject, for tests
