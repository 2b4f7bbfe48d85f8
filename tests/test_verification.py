"""Verification folded into the transfer: each fault it must catch, injected through the real
handlers in real worker processes (MULTIFD_FAULT, read when the workers start), ends in
VerificationFailed, and the destination is never declared complete.

Each fault test has a twin run without the fault, on the same input, that verifies: so what
fails is the fault, not the setup.
"""
from __future__ import annotations

import filecmp
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest

import engine
from engine import Receiver, Sender, TransferSettings, VerificationFailed
from engine.settings import PAGE_SIZE

MiB = 1 << 20
CHUNK = 4096  # small device chunks, so that a device has several
DEVICE = random.Random(7).randbytes(3 * CHUNK + 22)  # 3 different whole chunks and a bit


def _migrate(src: Path, dst: Path, **settings) -> engine.TransferResult:
    dst.parent.mkdir(exist_ok=True)
    return engine.migrate(str(src), str(dst), TransferSettings(channels=2, chunk_size=CHUNK,
                                                                 packet_pages=64, **settings),
                          devices={"cpu": DEVICE}, device_dir=dst.parent / "devices")


def _refused(dst: Path) -> None:
    """A destination that did not verify: not under its name, its devices not committed."""
    assert not dst.exists()
    assert not (dst.parent / "devices" / "cpu").exists()


@pytest.mark.parametrize("fault, reason", [
    ("ram-flip-byte", "one byte different"),
    ("ram-drop-page", "a page never sent"),
    ("ram-wrong-offset", "a page written at the wrong offset"),
    ("device-drop-chunk", "a device chunk missing"),
    ("device-double-chunk", "a device chunk doubled"),
])
def test_each_fault_fails_verification(image, tmp_path, monkeypatch, fault, reason):
    src = image(3 * MiB + 5 * PAGE_SIZE, seed=len(fault))
    assert _migrate(src, tmp_path / "control" / "dst").ok  # the same transfer, no fault
    monkeypatch.setenv("MULTIFD_FAULT", fault)
    with pytest.raises(VerificationFailed, match="verification failed|did not verify"):
        _migrate(src, tmp_path / "dst")
    _refused(tmp_path / "dst")


def _two_rounds(src: Path, dst: Path) -> engine.TransferResult:
    """Round 0 sends the image, round 1 the pages rewritten meanwhile."""
    dst.parent.mkdir(exist_ok=True)
    outcome: dict = {}
    with Receiver(str(dst)) as receiver:
        thread = threading.Thread(target=lambda: outcome.update(
            result=_run_catching(receiver)), daemon=True)
        thread.start()
        with Sender(str(src), str(receiver.endpoint),
                    TransferSettings(channels=2, packet_pages=32)) as sender:
            sender.send_range()
            sender.sync()
            changed = np.arange(0, 64, 3)
            with open(src, "r+b") as f:
                for page in changed:
                    f.seek(int(page) * PAGE_SIZE)
                    f.write(os.urandom(PAGE_SIZE))
            sender.send_pages(changed)
            sender.sync()
            try:
                return sender.finish()
            finally:
                thread.join(30)


def _run_catching(receiver: Receiver):
    try:
        return receiver.run(timeout_s=60)
    except Exception as exc:  # the sender's side raises what the test checks
        return exc


def test_an_older_copy_applied_over_a_newer_one_fails_verification(image, tmp_path,
                                                                   monkeypatch):
    assert _two_rounds(image(1 * MiB, kind="random", seed=1), tmp_path / "control").ok
    monkeypatch.setenv("MULTIFD_FAULT", "ram-stale-copy")
    with pytest.raises(VerificationFailed):
        _two_rounds(image(1 * MiB, kind="random", seed=2), tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_a_page_the_caller_never_sent_fails_before_complete(image, tmp_path):
    src = image(1 * MiB, seed=3)
    with Receiver(str(tmp_path / "dst")) as receiver:
        thread = threading.Thread(target=_run_catching, args=(receiver,), daemon=True)
        thread.start()
        with Sender(str(src), str(receiver.endpoint)) as sender:
            sender.send_range(0, 255)  # all but the last page
            with pytest.raises(VerificationFailed, match="1 of 256 pages were never sent "
                                                         r"\(the first: page 255\)"):
                sender.finish()
        thread.join(30)
    assert not (tmp_path / "dst").exists()


def test_a_write_storage_lost_passes_the_fold_and_fails_a_reread(image, tmp_path, monkeypatch):
    """What each mode proves (README): fold, what was written; reread, what storage holds."""
    src = image(2 * MiB, kind="random", seed=4)
    monkeypatch.setenv("MULTIFD_FAULT", "ram-lost-write")
    assert _migrate(src, tmp_path / "fold" / "dst").ok
    assert not filecmp.cmp(src, tmp_path / "fold" / "dst", shallow=False)
    with pytest.raises(VerificationFailed, match="stored image's digest differs"):
        _migrate(src, tmp_path / "dst", verify="reread")
    _refused(tmp_path / "dst")


def test_both_modes_verify_a_clean_transfer_with_the_same_digest(image, tmp_path):
    src = image(2 * MiB + 100, seed=5)
    fold = _migrate(src, tmp_path / "a" / "dst")
    reread = _migrate(src, tmp_path / "b" / "dst", verify="reread")
    assert fold.ok and reread.ok and fold.digest == reread.digest
    assert filecmp.cmp(src, tmp_path / "b" / "dst", shallow=False)


def test_an_unknown_verification_mode_is_refused(tmp_path):
    with pytest.raises(engine.UsageError, match="unknown verification 'crc'; known: fold, "
                                                "reread"):
        TransferSettings(verify="crc")
