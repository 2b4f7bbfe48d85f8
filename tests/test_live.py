"""Live migration: a real writer process keeps changing the source while it is migrated."""
from __future__ import annotations


import os
import subprocess
import sys

from pathlib import Path

import numpy as np
import psutil
import pytest

from engine import TransferSettings, UsageError
from engine.live.dirty import LogTracker, create_dirty_log
from engine.errors import ProtocolError
from engine.storage.image import map_file
from engine.live.rounds import migrate_live
from engine.settings import PAGE_SIZE
from workers.handlers import HandlerContext
from workers.handlers.ram import RamHandler

from test_cli import last_json, multifd, start_receiver

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent
LIVE_KEYS = {"ok", "rounds", "pages_per_round", "seconds_per_round", "rate", "dirty_rate",
             "downtime_ms", "downtime_parts_ms", "downtime_limit_ms", "expected_downtime_ms",
             "converged", "dirty", "digest"}

# A writer that cannot be stopped politely: it sweeps the whole region, adding 1 to the
# first byte of every page (and keeping the dirty log if given), every `pause` seconds.
WRITER = """
import sys, time
import numpy as np
from engine.live.dirty import LOG_ENTRY
from engine.storage.image import map_file
region, log, pause = sys.argv[1], sys.argv[2], float(sys.argv[3])
first = np.frombuffer(map_file(region, writable=True), dtype=np.uint8)[::4096]
counters = np.frombuffer(map_file(log, writable=True), dtype=LOG_ENTRY) if log != "-" else None
print("ready", flush=True)
while True:
    if counters is not None:
        counters += 1
    first += 1
    if counters is not None:
        counters += 1
    time.sleep(pause)
"""


@pytest.fixture
def writer(tmp_path):
    """start(size, pause_s, log=False) -> (region path, writer process); killed afterwards."""
    started: list[subprocess.Popen] = []

    def start(size: int, pause_s: float, log: bool = False) -> tuple[Path, subprocess.Popen]:
        region = tmp_path / "region"
        region.write_bytes(bytes(size))
        if log:
            create_dirty_log(f"{region}.dirty", size // PAGE_SIZE)
        process = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(region), f"{region}.dirty" if log else "-",
             str(pause_s)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "ready"
        return region, process

    yield start
    for process in started:
        process.kill()
        process.wait()


def stopped(process: subprocess.Popen) -> bool:
    return psutil.Process(process.pid).status() == psutil.STATUS_STOPPED


# -- the two dirty trackers, on their own ------------------------------------------------

def test_a_page_scan_reports_exactly_the_pages_whose_content_changed(tmp_path):
    size = 300 * PAGE_SIZE + 123  # a short last page too
    path = tmp_path / "image"
    path.write_bytes(os.urandom(size))
    handler = RamHandler(HandlerContext(settings=TransferSettings(), image_size=size,
                                        image=map_file(path, writable=False),
                                        image_path=str(path)))

    def changed(start: int, count: int) -> list[int]:
        answer = handler.scan({"start": start, "count": count})
        bits = np.unpackbits(np.frombuffer(answer["changed"], np.uint8), count=count)
        return (start + np.flatnonzero(bits)).tolist()

    def write(*pages: int, text: bytes) -> None:
        with open(path, "r+b") as f:
            for page in pages:
                f.seek(page * PAGE_SIZE + 5)
                f.write(text)

    assert changed(0, 301) == list(range(301))  # a first scan knows no earlier content
    assert changed(0, 301) == []
    write(0, 7, 299, 300, text=b"changed")
    # The first change in a block of 16 pages reports the block (pages 0-15, 288-300) ...
    assert changed(0, 301) == list(range(16)) + list(range(288, 301))
    write(7, 290, 300, text=b"again")
    assert changed(0, 301) == [7, 290, 300]  # ... from then on, exactly the pages
    assert changed(0, 301) == []
    with pytest.raises(ProtocolError):
        handler.scan({"start": 200, "count": 102})


def _anonymous_bytes() -> int:
    with open("/proc/self/smaps_rollup") as rollup:
        return next(int(line.split()[1]) * 1024 for line in rollup
                    if line.startswith("Anonymous:"))


def test_scanning_the_image_copies_no_page_into_anonymous_memory(tmp_path):
    size = 64 << 20
    path = tmp_path / "image"
    path.write_bytes(os.urandom(size))
    handler = RamHandler(HandlerContext(settings=TransferSettings(), image_size=size,
                                        image=map_file(path, writable=False),
                                        image_path=str(path)))
    before = _anonymous_bytes()
    for _ in range(3):
        handler.scan({"start": 0, "count": size // PAGE_SIZE})
    # The hashes kept (8 bytes a page, 1/512 of the image) and allocator noise, no page.
    assert _anonymous_bytes() - before < 8 << 20


def test_scanning_a_sparse_image_leaves_its_holes_unallocated_and_sees_writes_into_them(
        tmp_path):
    size = 64 << 20
    path = tmp_path / "ram"
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(100 * PAGE_SIZE)
        f.write(b"guest")
    handler = RamHandler(HandlerContext(settings=TransferSettings(), image_size=size,
                                        image=map_file(path, writable=False),
                                        image_path=str(path)))
    spec = {"start": 0, "count": size // PAGE_SIZE}

    def changed() -> list[int]:
        answer = handler.scan(spec)
        return np.flatnonzero(np.unpackbits(np.frombuffer(answer["changed"], np.uint8),
                                            count=spec["count"])).tolist()

    changed()
    assert changed() == []
    assert path.stat().st_blocks * 512 <= 1 << 20, "the scan allocated the file's holes"
    with open(path, "r+b") as f:
        f.seek(9000 * PAGE_SIZE)
        f.write(b"new")
    assert 9000 in changed() and changed() == []


def test_the_dirty_log_reports_written_pages_and_writes_still_in_progress(tmp_path):
    path = tmp_path / "region.dirty"
    create_dirty_log(path, 64)
    counters = np.frombuffer(map_file(path, writable=True), dtype=np.uint32)
    tracker = LogTracker(path, 64)
    tracker.begin()
    counters[[3, 40]] += 2  # finished writes
    counters[9] += 1  # a write under way (the writer was stopped mid-write)
    assert tracker.collect().tolist() == [3, 9, 40]
    assert tracker.collect().tolist() == [9]  # still under way: still dirty
    counters[9] += 1
    assert tracker.collect().tolist() == [9]
    assert tracker.collect().tolist() == []
    tracker.close()
    with pytest.raises(UsageError, match="one uint32 per page"):
        LogTracker(path, 65)


# -- whole live migrations ---------------------------------------------------------------

@pytest.mark.parametrize("dirty", ["hash", "log"])
def test_the_example_guest_migrates_live_consistent_and_identical(dirty):
    run = subprocess.run(
        [sys.executable, "examples/live_guest.py", "--size", "16M", "--rate", "32M",
         "--channels", "2", "--compress", "zstd:1", "--dirty", dirty, "--json"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=180)
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert summary["ok"] and summary["consistent"] and summary["identical"], summary
    assert summary["dirty"] == dirty
    assert summary["rounds"] == len(summary["pages_per_round"]) >= 2
    assert summary["downtime_ms"] > 0


@pytest.mark.parametrize("dirty", ["hash", "log"])
def test_migrate_live_pauses_the_writer_and_leaves_it_paused(writer, tmp_path, dirty):
    region, process = writer(8 * MiB, pause_s=0.05, log=dirty == "log")
    run = multifd("migrate", str(region), str(tmp_path / "dst"), "--live", "--dirty", dirty,
                  "--pause-pid", str(process.pid), "--compress", "zstd", "--json")
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert LIVE_KEYS <= summary.keys()
    assert summary["ok"] and summary["dirty"] == dirty
    assert stopped(process), "the source must stay paused after a successful migration"
    assert (tmp_path / "dst").read_bytes() == region.read_bytes()


def test_send_live_to_a_separate_receiver(writer, tmp_path):
    region, process = writer(4 * MiB, pause_s=0.02)
    receiver, endpoint = start_receiver(tmp_path / "dst")
    # A pause command must return only once the source has stopped.
    pause = (f"kill -STOP {process.pid}; "
             f"until grep -q ') T ' /proc/{process.pid}/stat; do sleep 0.001; done")
    sent = multifd("send", str(region), "--to", endpoint, "--live", "--pause-cmd", pause,
                   "--channels", "3", "--json")
    out, err = receiver.communicate(timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert receiver.returncode == 0, err
    summary = last_json(sent.stdout)
    assert summary["rounds"] == last_json(out)["rounds"] == len(summary["pages_per_round"])
    assert (tmp_path / "dst").read_bytes() == region.read_bytes()


# -- a writer faster than the link: the policy decides -----------------------------------

# One page per packet and one packet in flight: each page waits for the previous one's
# acknowledgement through two processes and TCP, so the 256 pages of 1 MiB take far longer
# than 1 ms, and the writer dirties all of them every 2 ms. No round can fit the limit.
SLOW_LINK = ["--channels", "1", "--packet-pages", "1", "--window", "1", "--downtime-limit",
             "1", "--max-rounds", "3"]


def test_no_convergence_switches_over_after_max_rounds_by_default(writer, tmp_path):
    region, process = writer(MiB, pause_s=0.002)
    run = multifd("migrate", str(region), str(tmp_path / "dst"), "--live", "--pause-pid",
                  str(process.pid), *SLOW_LINK, "--json")
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert summary["converged"] is False
    assert summary["rounds"] == 4  # 3 while the writer ran, then the stop-and-copy round
    assert len(summary["pages_per_round"]) == 4 and summary["pages_per_round"][0] == 256
    assert summary["expected_downtime_ms"] > 1
    assert stopped(process)
    assert (tmp_path / "dst").read_bytes() == region.read_bytes()


def test_no_convergence_fails_without_pausing_when_asked(writer, tmp_path):
    region, process = writer(MiB, pause_s=0.002)
    run = multifd("migrate", str(region), str(tmp_path / "dst"), "--live", "--pause-pid",
                  str(process.pid), *SLOW_LINK, "--on-no-convergence", "fail")
    assert run.returncode == 1
    assert "did not converge in 3 rounds" in run.stderr and "Traceback" not in run.stderr
    assert not stopped(process), "the source must keep running"
    assert not (tmp_path / "dst").exists()


def test_rounds_that_stop_getting_shorter_end_before_max_rounds(writer, tmp_path):
    region, process = writer(MiB, pause_s=0.002)
    slow = [*SLOW_LINK[:-1], "30"]  # the same slow link, 30 rounds allowed
    run = multifd("migrate", str(region), str(tmp_path / "dst"), "--live", "--pause-pid",
                  str(process.pid), *slow, "--json")
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert summary["converged"] is False
    assert summary["rounds"] < 30, "the rounds ran on though the stop never got shorter"
    assert (tmp_path / "dst").read_bytes() == region.read_bytes()


def test_a_failure_after_the_pause_resumes_the_source(image, tmp_path):
    src = image(2 * MiB)
    calls: list[str] = []
    with pytest.raises(UsageError, match="device name"):
        migrate_live(str(src), str(tmp_path / "dst"), pause=lambda: calls.append("pause"),
                     resume=lambda: calls.append("resume"),
                     devices=lambda: {"not a name!": b"state"})
    assert calls == ["pause", "resume"]
    assert not (tmp_path / "dst").exists()


# -- usage -------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--dirty", "log"], "--dirty needs --live"),
    (["--pause-pid", "{pid}"], "--pause-pid needs --live"),
    (["--live"], "--pause-pid, --pause-cmd or --qemu"),
    (["--live", "--pause-pid", "{pid}", "--pause-cmd", "true"], "--pause-pid, --pause-cmd or --qemu"),
    (["--live", "--pause-pid", "{pid}", "--resume-cmd", "true"], "goes with --pause-cmd"),
    (["--live", "--pause-pid", "999999999"], "no process 999999999"),
    (["--live", "--pause-cmd", "true", "--dirty", "log"], "dirty log"),
    (["--live", "--pause-cmd", "true", "--dirty", "bitmap"], "invalid choice"),
    (["--live", "--pause-cmd", "true", "--downtime-limit", "0"], "downtime limit"),
    (["--live", "--pause-cmd", "true", "--max-rounds", "0"], "max rounds"),
])
def test_bad_live_usage_is_one_line_and_exit_code_2(image, tmp_path, args, message):
    src = image(64 * 1024)
    run = multifd("migrate", str(src), str(tmp_path / "dst"),
                  *[a.format(pid=os.getpid()) for a in args])
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not (tmp_path / "dst").exists()
