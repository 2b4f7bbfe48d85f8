"""Faults with real processes: killed workers and coordinators, cut connections, interrupts,
a stalled destination. Each ends verified, or fails with one clear message and nothing left
behind. Durations are printed for the record (run with -s), never asserted tightly: this
machine's timings swing; the generous limits only catch hangs."""
from __future__ import annotations

import filecmp
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tcp_proxy import receiver_behind_proxy
from test_cli import last_json, start_receiver

MiB = 1 << 20
# Slow enough to act in the middle: a random image at zstd level 3, two packets in flight.
SLOW = ["--compress", "zstd:3", "--window", "2"]


def start_sender(src: Path, endpoint: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine", "send", str(src), "--to", endpoint,
                             "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def workers_of(process: subprocess.Popen) -> dict[str, psutil.Process]:
    """The worker processes of a coordinator, by name (multifd-src0, multifd-dst1, ...)."""
    found = {}
    for child in psutil.Process(process.pid).children(recursive=True):
        try:
            if child.name().startswith("multifd-"):
                found[child.name()] = child
        except psutil.NoSuchProcess:
            pass
    return found


def wait_for_progress(partial: Path, nbytes: int, timeout: float = 60) -> None:
    """Until the destination holds `nbytes` of data: the transfer is under way."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if partial.stat().st_blocks * 512 >= nbytes:
                return
        except FileNotFoundError:
            assert not partial.with_suffix("").exists(), "the transfer ended before the test acted"
        time.sleep(0.01)
    raise AssertionError("the transfer made no progress")


def kill_worker(coordinator: subprocess.Popen, name: str) -> None:
    deadline = time.monotonic() + 10
    while name not in workers_of(coordinator):
        assert time.monotonic() < deadline, f"no worker {name}"
        time.sleep(0.01)
    workers_of(coordinator)[name].kill()


def finish(*processes: subprocess.Popen, timeout: float = 120) -> list[tuple[int, str, str]]:
    """Wait for each process: (exit code, stdout, stderr)."""
    outputs = [p.communicate(timeout=timeout) for p in processes]
    return [(p.returncode, *output) for p, output in zip(processes, outputs)]


def assert_no_processes_left(*coordinators: subprocess.Popen) -> None:
    deadline = time.monotonic() + 5
    names = ("multifd-src", "multifd-dst")
    while time.monotonic() < deadline:
        left = [p for p in psutil.process_iter(["name"])
                if (p.info["name"] or "").startswith(names)
                and any(_descends(p, c.pid) for c in coordinators)]
        if not left:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes left behind: {left}")


def _descends(process: psutil.Process, ancestor: int) -> bool:
    try:
        return any(parent.pid == ancestor for parent in process.parents())
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def random_image(image):
    return image(160 * MiB, kind="random")


@pytest.mark.parametrize("side, victim", [("source", "multifd-src0"),
                                          ("destination", "multifd-dst1")])
def test_a_killed_worker_is_replaced_and_the_transfer_verifies(random_image, tmp_path, side,
                                                               victim):
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(random_image, endpoint, *SLOW)
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    kill_worker(sender if side == "source" else receiver, victim)
    (sent, out, err), (received, _, rerr) = finish(sender, receiver)
    assert sent == 0 and received == 0, err + rerr
    assert "starting a new" in err + rerr
    assert last_json(out)["ok"] is True
    assert filecmp.cmp(random_image, tmp_path / "dst", shallow=False)


def test_verbose_shows_each_channel_s_events_and_the_replay_after_a_killed_worker(
        random_image, tmp_path):
    receiver, endpoint = start_receiver(tmp_path / "dst", "-v")
    sender = start_sender(random_image, endpoint, *SLOW, "-v")
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    kill_worker(sender, "multifd-src0")
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert sent == 0 and received == 0, err + rerr
    events = err.splitlines()
    assert "multifd: channel 1: source worker started" in " ".join(events)
    assert [line for line in events if line.startswith("multifd: channel 0: connecting to ")
            and ", replaying from packet " in line], err
    assert "channel 1: destination worker listening on port" in rerr
    assert "round 0: every channel reached the barrier; released" in rerr


def test_a_channel_that_keeps_failing_fails_the_transfer_and_names_it(random_image, tmp_path):
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(random_image, endpoint, *SLOW)
    wait_for_progress(tmp_path / "dst.partial", 8 * MiB)
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while len(killed) < 3 and time.monotonic() < deadline:
        victim = workers_of(sender).get("multifd-src0")  # each replacement, as it appears
        if victim is not None and victim.pid not in killed:
            victim.kill()
            killed.add(victim.pid)
        time.sleep(0.01)
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert sent == 1 and received == 1
    assert "channel 0 failed 3 times" in err and "Traceback" not in err + rerr
    assert not (tmp_path / "dst").exists()
    assert_no_processes_left(sender, receiver)


def test_a_cut_connection_is_reconnected_and_the_transfer_verifies(random_image, tmp_path,
                                                                  second_loopback_address):
    with receiver_behind_proxy(tmp_path / "dst", second_loopback_address, 2) as (
            receiver, proxy, endpoint, _):
        sender = start_sender(random_image, endpoint, *SLOW)
        wait_for_progress(tmp_path / "dst.partial", 32 * MiB)
        proxy.cut()
        (sent, out, err), (received, _, rerr) = finish(sender, receiver)
    assert sent == 0 and received == 0, err + rerr
    assert "connection to the destination lost" in err
    assert filecmp.cmp(random_image, tmp_path / "dst", shallow=False)


@pytest.mark.parametrize("victim", ["receiver", "sender"])
def test_a_killed_coordinator_is_noticed_by_the_other_side(random_image, tmp_path, victim):
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(random_image, endpoint, *SLOW)
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    killed, survivor = (receiver, sender) if victim == "receiver" else (sender, receiver)
    killed.kill()
    started = time.monotonic()
    code, _, err = finish(survivor, timeout=30)[0]
    print(f"\n{victim} killed: the other side exited after {time.monotonic() - started:.2f} s")
    assert code == 1
    assert err.strip().splitlines()[-1].startswith("multifd: error:")
    assert "Traceback" not in err
    assert not (tmp_path / "dst").exists()
    killed.communicate()
    assert_no_processes_left(sender, receiver)


@pytest.mark.parametrize("victim", ["receiver", "sender"])
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_cleanly_and_leaves_no_final_destination(random_image, tmp_path,
                                                                   victim, signum, code):
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(random_image, endpoint, *SLOW)
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    target = receiver if victim == "receiver" else sender
    target.send_signal(signum)
    started = time.monotonic()
    target_code, _, err = finish(target, timeout=30)[0]
    print(f"\n{victim} stopped {time.monotonic() - started:.2f} s after the signal")
    assert target_code == code
    assert "stopped" in err and "Traceback" not in err
    if victim == "sender":
        assert err.strip().splitlines()[-1].endswith(
            "to continue, start the receiver on the same DEST again and run: python -m engine "
            f"send {random_image} --to {endpoint} --json {' '.join(SLOW)} --resume")
    other = sender if target is receiver else receiver
    assert finish(other, timeout=30)[0][0] == 1
    assert not (tmp_path / "dst").exists(), "an incomplete image got its final name"
    assert (tmp_path / "dst.partial").exists()
    assert_no_processes_left(sender, receiver)


def test_an_interrupted_shared_memory_destination_is_removed(random_image):
    name = f"multifd-interrupt-{os.getpid()}"
    migrate = subprocess.Popen([sys.executable, "-m", "engine", "migrate", str(random_image),
                                f"shm:{name}", *SLOW], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_progress(Path("/dev/shm") / f"{name}.partial", 16 * MiB)
    migrate.send_signal(signal.SIGINT)
    assert finish(migrate, timeout=30)[0][0] == 130
    leftovers = [p.name for p in Path("/dev/shm").iterdir() if p.name.startswith(name)]
    assert not leftovers, leftovers
    assert_no_processes_left(migrate)


def test_a_destination_that_stops_reading_stalls_the_sender_with_bounded_memory(image,
                                                                                 tmp_path):
    src = image(256 * MiB, kind="random")
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(src, endpoint, "--window", "4")
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    stopped = list(workers_of(receiver).values())
    for worker in stopped:
        worker.suspend()
    try:
        time.sleep(1.0)
        before = (tmp_path / "dst.partial").stat().st_blocks
        sizes = []
        for _ in range(10):
            sizes.append(sum(w.memory_full_info().uss for w in workers_of(sender).values()))
            time.sleep(0.2)
        assert (tmp_path / "dst.partial").stat().st_blocks == before, "data moved while stalled"
        assert sender.poll() is None, "the sender gave up on a slow destination"
        # Bounded: nothing like the 256 MiB image piles up in the source workers.
        assert max(sizes) - min(sizes) < 8 * MiB, sizes
    finally:
        for worker in stopped:
            worker.resume()
    (sent, _, err), (received, _, _) = finish(sender, receiver)
    assert sent == 0 and received == 0, err
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)


@pytest.mark.parametrize("interrupted", ["sender", "receiver"])
def test_an_interrupted_transfer_resumes_with_only_what_is_missing(random_image, tmp_path,
                                                                   interrupted):
    device = tmp_path / "state.bin"
    device.write_bytes(os.urandom(3 * MiB + 5))
    receiver, endpoint = start_receiver(tmp_path / "dst", "--device-dir", str(tmp_path))
    sender = start_sender(random_image, endpoint, *SLOW, "--device", f"nic={device}")
    wait_for_progress(tmp_path / "dst.partial", 48 * MiB)
    (sender if interrupted == "sender" else receiver).send_signal(signal.SIGINT)
    finish(sender, receiver, timeout=30)
    assert (tmp_path / "dst.partial").exists() and (tmp_path / "dst.journal").exists()
    assert not (tmp_path / "dst").exists()

    receiver, endpoint = start_receiver(tmp_path / "dst", "--device-dir", str(tmp_path))
    sender = start_sender(random_image, endpoint, "--resume", "--compress", "none",
                          "--device", f"nic={device}")
    (sent, out, err), (received, _, rerr) = finish(sender, receiver)
    assert sent == 0 and received == 0, err + rerr
    summary = last_json(out)
    assert summary["normal_pages"] * 4096 < random_image.stat().st_size - 40 * MiB, \
        "resume sent pages the destination already had"
    assert filecmp.cmp(random_image, tmp_path / "dst", shallow=False)
    assert (tmp_path / "nic").read_bytes() == device.read_bytes()
    assert not (tmp_path / "dst.journal").exists() and not (tmp_path / "dst.partial").exists()


def test_an_interrupted_migrate_says_what_it_kept_and_resumes_only_on_request(random_image,
                                                                             tmp_path):
    dst = tmp_path / "dst"
    typed = ["migrate", str(random_image), str(dst), *SLOW]
    migrate = subprocess.Popen([sys.executable, "-m", "engine", *typed], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_for_progress(tmp_path / "dst.partial", 32 * MiB)
    migrate.send_signal(signal.SIGINT)
    code, _, err = finish(migrate, timeout=30)[0]
    assert code == 130
    hint = f"to continue, run: {shlex.join(['python', '-m', 'engine', *typed, '--resume'])}"
    assert err.strip().splitlines()[-1] == (
        f"multifd: interrupted; stopped; kept {tmp_path / 'dst.partial'} and dst.journal: {hint}")

    kept = (tmp_path / "dst.partial").stat().st_blocks
    again = subprocess.run([sys.executable, "-m", "engine", *typed], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 2
    assert again.stderr == (f"multifd: error: {tmp_path / 'dst.partial'} holds an interrupted "
                            "transfer; add --resume to continue it, or --force to start over\n")
    assert (tmp_path / "dst.partial").stat().st_blocks == kept, "the rerun touched the partial"

    resumed = subprocess.run([sys.executable, *shlex.split(hint.split(": ", 1)[1])[1:],
                              "--json"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    summary = last_json(resumed.stdout)
    moved = summary["bytes"] - summary["resumed_pages"] * 4096
    assert summary["resumed_pages"] * 4096 >= 32 * MiB - 4 * MiB  # what was there, less in flight
    assert summary["gib_per_s"] == pytest.approx(moved / (1 << 30) / summary["seconds"],
                                                 rel=0.01, abs=0.002)
    assert filecmp.cmp(random_image, dst, shallow=False)


def test_a_sender_without_resume_is_refused_by_a_receiver_holding_a_partial(random_image,
                                                                            tmp_path):
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(random_image, endpoint, *SLOW)
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    receiver.send_signal(signal.SIGINT)
    (_, _, rerr), _ = finish(receiver, sender, timeout=30)
    assert rerr.strip().splitlines()[-1].endswith(
        f"kept {tmp_path / 'dst.partial'} and dst.journal: to continue, run: python -m engine "
        f"receive {tmp_path / 'dst'} --listen tcp://127.0.0.1:0 --json and send with --resume")

    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(random_image, endpoint)
    (sent, out, err), (received, _, rerr) = finish(sender, receiver, timeout=60)
    refusal = (f"{tmp_path / 'dst.partial'} holds an interrupted transfer; send with --resume "
               "to continue it, or start this receiver with --force to start over")
    assert (sent, received) == (2, 2)
    assert rerr.strip().splitlines()[-1] == f"multifd: error: {refusal}"
    assert last_json(out)["error"] == f"receiver refused the transfer: {refusal}"


def test_resume_without_an_earlier_transfer_fails_clearly(image, tmp_path):
    src = image(MiB)
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(src, endpoint, "--resume")
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert sent == 1 and received == 1
    assert "nothing to resume" in err and "Traceback" not in err + rerr
