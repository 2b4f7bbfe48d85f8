"""A running QEMU guest migrated by the engine (`--qemu`, `--dest-qemu`, `receive --qemu`):
real QEMUs under TCG running the page-stamp guest (tests/guest), the engine's commands in
their own processes. The guest's memory must pass its consistency rule at the destination,
keep changing there (the guest runs), and the source must stay paused; every failure leaves
the destination QEMU unstarted and, after the pause, the source running again."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


from engine.qemu.qmp import QMP
from engine.qemu.guest import check_consistent, read_generation
from vm_lab import needs_qemu, wait_generation_above
from test_cli import last_json, multifd, start_receiver
from test_reliability import finish

pytestmark = needs_qemu


def status(qmp_socket: Path) -> str:
    with QMP(qmp_socket) as qmp:
        return qmp.execute("query-status")["status"]


def vm_pair(lab):
    """A running source and a destination waiting with -incoming defer; their QMP sockets
    are free for the engine (QMP serves one client at a time)."""
    source, source_qmp = lab.source()
    destination, destination_qmp = lab.destination(source)
    source_qmp.close()
    destination_qmp.close()
    return source, destination


def assert_migrated(source, destination, summary: dict) -> None:
    """The guest runs on at the destination, consistent; the source stays paused."""
    assert summary["ok"] is True
    assert summary["vm"] == {"source": "postmigrate", "destination": "running"}
    assert summary["devices"]["qemu"] > 100_000  # QEMU's own device state, ~300 KB
    assert summary["downtime_ms"] > 0
    frozen = read_generation(source.ram)
    wait_generation_above(destination.ram, frozen)  # the guest runs at the destination
    assert read_generation(source.ram) == frozen and status(source.qmp) == "postmigrate"
    with QMP(destination.qmp) as qmp:
        qmp.execute("stop")
    snapshot = check_consistent(destination.ram)  # one moment of one guest's memory
    assert snapshot.generation > frozen


def test_a_running_guest_is_live_migrated_with_zstd_ram_and_passthrough_device_state(lab):
    source, destination = vm_pair(lab)
    run = multifd("migrate", str(source.ram), str(destination.ram), "--qemu", str(source.qmp),
                  "--dest-qemu", str(destination.qmp), "--live", "--compress", "zstd",
                  "--channels", "2", "--json")
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert summary["compress"] == "zstd" and summary["channels"] == 2
    assert summary["converged"] is True and len(summary["pages_per_round"]) >= 2
    assert_migrated(source, destination, summary)


def test_a_paused_guest_goes_from_send_to_receive_in_two_processes(lab):
    source, destination = vm_pair(lab)
    receiver, endpoint = start_receiver(destination.ram, "--qemu", str(destination.qmp))
    sender = subprocess.Popen([sys.executable, "-m", "engine", "send", str(source.ram),
                               "--to", endpoint, "--qemu", str(source.qmp), "--json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (sent, out, err), (received, rout, rerr) = finish(sender, receiver)
    assert (sent, received) == (0, 0), err + rerr
    assert last_json(rout)["digest"] == last_json(out)["digest"]
    assert_migrated(source, destination, last_json(out))


# -- refused before anything changes ---------------------------------------------------------

def test_a_socket_that_is_not_qemus_qmp_is_refused_at_once(lab, tmp_path):
    source, destination = vm_pair(lab)
    not_a_socket = tmp_path / "qmp"
    not_a_socket.write_text("hello")
    for qmp, message in ((not_a_socket, "is not a socket"),
                         (tmp_path / "missing", "no such QMP socket")):
        run = multifd("migrate", str(source.ram), str(destination.ram), "--qemu", str(qmp),
                      "--dest-qemu", str(destination.qmp))
        assert run.returncode == 2 and message in run.stderr, run.stderr
        assert len(run.stderr.strip().splitlines()) == 1
    assert status(source.qmp) == "running" and status(destination.qmp) == "inmigrate"


def test_ram_that_is_not_shared_or_not_the_vms_is_refused(lab, tmp_path):
    private, qmp = lab.source("private", share=False, boot=False)  # its file sees nothing
    qmp.close()
    run = multifd("send", str(private.ram), "--to", "tcp://127.0.0.1:9", "--qemu",
                  str(private.qmp))
    assert run.returncode == 2 and "share=off" in run.stderr, run.stderr
    source, destination = vm_pair(lab)
    copy = tmp_path / "copy.ram"
    copy.write_bytes(source.ram.read_bytes())
    run = multifd("migrate", str(copy), str(destination.ram), "--qemu", str(source.qmp),
                  "--dest-qemu", str(destination.qmp))
    assert run.returncode == 2 and "is not the VM's RAM" in run.stderr, run.stderr
    assert status(source.qmp) == "running"


def test_a_destination_qemu_that_is_not_waiting_for_a_migration_is_refused(lab):
    source, source_qmp = lab.source()
    busy, busy_qmp = lab.source("busy")  # a running VM, not -incoming defer
    source_qmp.close()
    busy_qmp.close()
    run = multifd("migrate", str(source.ram), str(busy.ram), "--qemu", str(source.qmp),
                  "--dest-qemu", str(busy.qmp))
    assert run.returncode == 2, run.stderr
    assert "not waiting for an incoming migration" in run.stderr
    assert status(source.qmp) == "running" and status(busy.qmp) == "running"


# -- failures during the migration -----------------------------------------------------------

def start_slow_migration(source, destination, *extra: str) -> subprocess.Popen:
    """A migration capped at 1 MiB/s: several seconds for the guest's few MiB of data."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine", "migrate", str(source.ram), str(destination.ram),
         "--qemu", str(source.qmp), "--dest-qemu", str(destination.qmp), "--max-bandwidth",
         "1M", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until_under_way(destination) -> None:
    journal = destination.ram.with_name(destination.ram.name + ".journal")
    deadline = time.monotonic() + 30
    while not journal.exists():
        assert time.monotonic() < deadline, "the transfer did not start"
        time.sleep(0.01)
    time.sleep(0.5)


def test_a_source_qemu_killed_mid_transfer_fails_cleanly_and_starts_nothing(lab):
    source, destination = vm_pair(lab)
    migration = start_slow_migration(source, destination, "--live")
    wait_until_under_way(destination)
    source.kill()
    code, _, err = finish(migration)[0]
    assert code == 1 and "Traceback" not in err, err
    assert "lost the QMP connection" in err.strip().splitlines()[-1]
    assert status(destination.qmp) == "inmigrate"  # still waiting, never started


def test_a_failure_after_the_pause_lets_the_source_run_again(lab):
    source, destination = vm_pair(lab)
    migration = start_slow_migration(source, destination)  # paused for the whole copy
    wait_until_under_way(destination)
    frozen = read_generation(source.ram)
    destination.kill()
    code, _, err = finish(migration)[0]
    assert code == 1 and "Traceback" not in err, err
    assert status(source.qmp) == "running"
    wait_generation_above(source.ram, frozen)
