"""Following a transfer from anywhere: `--progress json` on a pipe, the bar on a terminal on
both ends, and `kill -USR1 PID` for a status line (issue 13, item 9). Real processes."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time

import psutil

from test_cli import in_a_terminal, last_json, start_receiver
from test_live import writer  # noqa: F401  (the fixture: a process that keeps writing)
from test_reliability import wait_for_progress

MiB = 1 << 20
# 64 MiB of random pages at 16 MiB/s: a few seconds, so that several lines are written and
# the source sees some of its 16 MiB units acknowledged before the end.
SIZE = 64 * MiB
SLOW = ["--max-bandwidth", "16M"]
STATUS_KEYS = {"side", "phase", "round", "image_bytes", "image_size", "wire_bytes", "seconds",
               "image_rate", "wire_rate", "image_mib_per_s", "wire_mib_per_s", "dirty_rate",
               "expected_downtime_ms", "seconds_left"}


def progress_lines(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def test_progress_json_writes_one_line_a_second_on_a_pipe(image, tmp_path):
    src = image(SIZE, kind="random")
    run = subprocess.run([sys.executable, "-m", "engine", "migrate", str(src),
                          str(tmp_path / "dst"), "--progress", "json", "--json", *SLOW],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = progress_lines(run.stderr)
    assert len(lines) >= 2, run.stderr
    assert all(line.keys() == STATUS_KEYS for line in lines)
    assert {line["side"] for line in lines} == {"source"}
    assert {line["phase"] for line in lines} <= {"starting", "copying", "finishing"}
    done = [line["image_bytes"] for line in lines]
    assert done == sorted(done) and all(line["image_size"] == SIZE for line in lines)
    moving = [line for line in lines if line["image_bytes"]]
    assert moving and all(line["wire_bytes"] > 0 and line["wire_mib_per_s"] is not None
                          for line in moving)
    assert last_json(run.stdout)["ok"] is True  # stdout keeps only the result


def test_the_receiver_shows_its_progress_as_json(image, tmp_path):
    src = image(SIZE, kind="random")
    receiver, endpoint = start_receiver(tmp_path / "dst", "--progress", "json")
    sent = subprocess.run([sys.executable, "-m", "engine", "send", str(src), "--to", endpoint,
                           "-q", *SLOW], capture_output=True, text=True, timeout=120)
    out, err = receiver.communicate(timeout=60)
    assert sent.returncode == 0 and receiver.returncode == 0, sent.stderr + err
    lines = [line for line in progress_lines(err) if line["phase"] != "listening"]
    assert lines, err
    assert {line["side"] for line in lines} == {"destination"}
    assert {line["phase"] for line in lines} <= {"receiving", "verifying"}
    done = [line["image_bytes"] for line in lines]
    assert done == sorted(done) and 0 < done[-1] <= SIZE
    assert all(line["wire_bytes"] is None for line in lines)  # known only at the end
    assert last_json(out)["ok"] is True


def test_the_receiver_draws_a_bar_on_a_terminal(image, tmp_path):
    src = image(SIZE, kind="random")
    endpoint = free_endpoint()
    sender = subprocess.Popen([sys.executable, "-m", "engine", "send", str(src), "--to",
                               endpoint, "-q", *SLOW], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    code, screen = in_a_terminal("receive", str(tmp_path / "dst"), "--listen", endpoint)
    _, err = sender.communicate(timeout=60)
    assert code == 0 and sender.returncode == 0, screen + err
    assert re.search(r"receiving.*\d+\.\d/64\.0 MiB\S* [\d.,]+ [KMG]iB/s image", screen), screen
    assert "transfer verified" in screen


def test_sigusr1_prints_a_status_line_and_the_transfer_goes_on(image, tmp_path):
    src = image(SIZE, kind="random")
    migrate = subprocess.Popen([sys.executable, "-m", "engine", "migrate", str(src),
                                str(tmp_path / "dst"), "--json", *SLOW],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_progress(tmp_path / "dst.partial", 40 * MiB)  # each channel's 1st unit is in
    helpers = psutil.Process(migrate.pid).children(recursive=True)  # forkserver, workers
    migrate.send_signal(signal.SIGUSR1)
    out, err = migrate.communicate(timeout=120)
    assert migrate.returncode == 0, err
    assert re.search(r"^multifd: (starting|copying|finishing), round 0: [\d.,]+ [KM]iB of "
                     r"64\.0 MiB image in [\d.]+ s; [\d.,]+ [KM]iB on the wire; "
                     r"[\d.,]+ [KM]iB/s image, [\d.,]+ [KM]iB/s wire", err, re.MULTILINE), err
    assert last_json(out)["ok"] is True
    assert helpers and not _alive(helpers), "the forkserver or a worker outlived the command"


def test_sigusr1_before_the_receiver_answers_shows_nothing_done_yet(image, tmp_path):
    # Nobody answers: the sender gives up after its connect timeout. (Not Ctrl-C: one that
    # lands while the sender dials can leave it waiting in zmq's Context.term for ever.)
    send = subprocess.Popen([sys.executable, "-m", "engine", "send", str(image(MiB)), "--to",
                             free_endpoint(), "--connect-timeout", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert "connecting to" in send.stderr.readline()
    send.send_signal(signal.SIGUSR1)
    assert send.stderr.readline().startswith("multifd: starting, round 0: 0 B of 1.0 MiB image")
    _, err = send.communicate(timeout=60)
    assert send.returncode == 1 and "no receiver answered" in err, err


def _alive(processes: list[psutil.Process], wait_s: float = 5.0) -> list[psutil.Process]:
    """Those of `processes` still running after up to `wait_s` (they stop as the command
    ends, not necessarily before it returns)."""
    deadline = time.monotonic() + wait_s
    while True:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def test_a_live_migration_reports_its_rounds_dirty_rate_and_expected_downtime(writer,
                                                                              tmp_path):
    region, process = writer(16 * MiB, pause_s=0.01)  # dirties every page all the time
    run = subprocess.run([sys.executable, "-m", "engine", "migrate", str(region),
                          str(tmp_path / "dst"), "--live", "--pause-pid", str(process.pid),
                          "--max-rounds", "2", "--downtime-limit", "1", "--max-bandwidth", "8M",
                          "--progress", "json", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = progress_lines(run.stderr)
    assert {line["phase"] for line in lines} <= {"starting", "precopy", "switchover"}
    later = [line for line in lines if line["round"] >= 1]
    assert later and all(line["dirty_rate"] > 0 and line["expected_downtime_ms"] > 1
                         for line in later), run.stderr
    assert last_json(run.stdout)["converged"] is False
