"""Shared fixtures: sample images and the promise that no worker process outlives a test."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from engine.tools.samples import write_sample

ENGINE_TIMEOUT_S = 120


@pytest.fixture
def image(tmp_path: Path):
    """make(size, kind="mixed", seed=0, name="src") -> Path of a fresh sample image."""

    def make(size: int, kind: str = "mixed", seed: int = 0, name: str = "src") -> Path:
        path = tmp_path / name
        write_sample(path, size, kind=kind, seed=seed)
        return path

    return make


def _workers() -> list[psutil.Process]:
    """Our grandchildren: worker processes (the forkserver itself is a direct child)."""
    me = os.getpid()
    return [p for p in psutil.Process(me).children(recursive=True) if p.ppid() != me]


@pytest.fixture(autouse=True)
def no_leftover_workers():
    yield
    deadline = time.monotonic() + 5
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = _workers()
    assert not left, f"worker processes left behind: {[p.pid for p in left]}"


@pytest.fixture
def second_loopback_address():
    """The receiver listens on 127.0.0.2 and the proxy on 127.0.0.1 with the same data port
    numbers: the sender dials the data ports on the host it dialled for control."""
    try:
        socket.create_server(("127.0.0.2", 0)).close()
    except OSError:
        pytest.skip("127.0.0.2 is not a loopback address here")
    return "127.0.0.2"


@pytest.fixture(scope="session")
def guest_disk(tmp_path_factory):
    """The page-stamp guest (tests/guest), assembled from source once per run."""
    from engine.qemu.guest import build_guest
    return build_guest(tmp_path_factory.mktemp("guest"))


@pytest.fixture
def lab(guest_disk):
    """Starts real QEMUs with the guest; kills them and removes their files afterwards."""
    from vm_lab import Lab
    lab = Lab(guest_disk)
    try:
        yield lab
    finally:
        lab.close()
