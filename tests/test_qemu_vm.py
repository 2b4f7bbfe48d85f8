"""engine/qemu: the QMP client, the VM checks and a switchover done by hand, against real
QEMUs (TCG) running the page-stamp guest (tests/guest)."""
from __future__ import annotations

import os
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from engine.qemu import vm
from engine.qemu.qmp import QMP, CommandFailed, NotQMP, QMPConnectionLost, QMPTimeout
from engine.qemu.guest import InconsistentMemory, build_guest, check_consistent, read_generation, read_header
from engine.qemu.guest.launch import qemu_argv
from vm_lab import needs_qemu, wait_generation_above

pytestmark = needs_qemu

MIB = 1 << 20


def copy_in_place(src: Path, dst: Path) -> None:
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        while chunk := fin.read(8 * MIB):
            fout.write(chunk)


@pytest.fixture
def saved(lab):
    """A stopped source and its device state."""
    source, qmp = lab.source()
    vm.enable_ignore_shared(qmp)
    vm.stop(qmp)
    return source, vm.save_device_state_bytes(qmp)


# -- the guest ------------------------------------------------------------------------

def test_build_guest_makes_a_boot_sector_disk(tmp_path):
    disk = build_guest(tmp_path, stamp_pages=16, spin=100)
    data = disk.read_bytes()
    assert len(data) == MIB and data[510:512] == b"\x55\xaa"


def test_stamp_rule_accepts_a_pass_in_progress_and_rejects_a_stray_page(tmp_path):
    ram = tmp_path / "ram"
    header = struct.pack("<8s5I", b"LABGUEST", 1, 0x200000, 8, 4096, 5)
    image = bytearray(0x200000 + 8 * 4096)
    image[0x100000:0x100000 + len(header)] = header
    for page, stamp in enumerate([5, 5, 5, 4, 4, 4, 4, 4]):
        struct.pack_into("<I", image, 0x200000 + page * 4096, stamp)
    ram.write_bytes(image)
    assert check_consistent(ram).fresh == 3
    struct.pack_into("<I", image, 0x200000 + 6 * 4096, 5)
    ram.write_bytes(image)
    with pytest.raises(InconsistentMemory, match="page 6"):
        check_consistent(ram)


def test_guest_boots_and_keeps_stamping(lab):
    source, qmp = lab.source()
    header = read_header(source.ram)
    assert (header.stamp_start, header.stamp_pages, header.page_size) == (0x200000, 1024, 4096)
    wait_generation_above(source.ram, header.generation)
    vm.stop(qmp)
    stopped = check_consistent(source.ram)
    time.sleep(0.1)
    assert read_generation(source.ram) == stopped.generation  # stop means stopped


# -- QMP client -----------------------------------------------------------------------

def test_qmp_greets_and_knows_its_peer(lab):
    source, qmp = lab.source(boot=False)
    assert qmp.version >= (7, 2, 0)
    assert qmp.peer_pid == source.process.pid
    assert qmp.execute("query-status")["status"] == "running"


def test_qmp_error_carries_qemus_description_and_connection_survives(lab):
    _, qmp = lab.source(boot=False)
    with pytest.raises(CommandFailed) as refused:
        qmp.execute("qom-get", {"path": "/nowhere", "property": "x"})
    assert refused.value.desc == "Device '/nowhere' not found"
    assert refused.value.error_class == "DeviceNotFound"
    with pytest.raises(CommandFailed, match="has not been found"):
        qmp.execute("no-such-command")
    assert qmp.execute("query-status")["status"] == "running"


def test_qmp_collects_events_between_answers(lab):
    _, qmp = lab.source(boot=False)
    vm.stop(qmp)
    vm.cont(qmp)
    assert qmp.wait_event("STOP", timeout=2)["event"] == "STOP"
    assert qmp.wait_event("RESUME", timeout=2)["event"] == "RESUME"
    assert qmp.wait_event("STOP", timeout=0.05) is None


def test_qmp_timeout_leaves_the_connection_usable(lab):
    _, qmp = lab.source(boot=False)
    with pytest.raises(QMPTimeout, match="query-status"):
        qmp.execute("query-status", timeout=0)
    assert qmp.execute("query-name") == {"name": "src"}  # the late answer was dropped


def test_qmp_reports_a_qemu_that_died(lab):
    source, qmp = lab.source(boot=False)
    source.kill()
    with pytest.raises(QMPConnectionLost):
        qmp.execute("query-status")


def test_qmp_close_frees_the_monitor_for_the_next_client(lab):
    source, qmp = lab.source(boot=False)
    qmp.close()
    with QMP(source.qmp) as again:
        assert again.execute("query-status")["status"] == "running"


# -- not QMP: each fails fast with one line ------------------------------------------

def test_a_plain_file_is_not_qmp(lab):
    with pytest.raises(NotQMP, match="is not a socket"):
        QMP(lab.disk)


def test_a_missing_path_is_not_qmp(lab):
    with pytest.raises(NotQMP, match="no such QMP socket"):
        QMP(lab.workdir / "nothing.qmp")


def test_a_socket_nobody_listens_on_is_not_qmp(lab):
    path = lab.workdir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))
    with pytest.raises(NotQMP, match="nobody is listening"):
        QMP(path)


@pytest.mark.parametrize("says, match", [
    (b"SSH-2.0-OpenSSH_9.2\r\n", "not a QMP socket"),
    (b'{"hello": "world"}\n', "no QMP greeting"),
    (b"", "closed the connection without a QMP greeting"),
    (None, "no QMP greeting within"),
])
def test_a_random_unix_socket_is_not_qmp(lab, says, match):
    path = lab.workdir / "other.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen()
    done = threading.Event()

    def serve():
        peer, _ = server.accept()
        if says is not None:
            peer.sendall(says)
            peer.close()
        done.wait(5)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        start = time.monotonic()
        with pytest.raises(NotQMP, match=match):
            QMP(path, greeting_timeout=0.5)
        assert time.monotonic() - start < 2
    finally:
        done.set()
        thread.join()
        server.close()


def test_qemus_human_monitor_is_not_qmp(lab):
    hmp = lab.workdir / "hmp.sock"
    argv = qemu_argv(ram=lab.ram_path("hmp"), ram_mib=64, disk=lab.disk,
                     qmp=lab.workdir / "unused", paused=True, incoming=True)
    at = argv.index("-qmp")
    argv[at:at + 2] = ["-monitor", f"unix:{hmp},server=on,wait=off"]
    lab.spawn(argv)
    with pytest.raises(NotQMP, match=r"human monitor \(HMP\)"):
        QMP(hmp, wait_s=10)


def test_a_qmp_socket_held_by_another_client_is_reported_busy(lab):
    source, _ = lab.source(boot=False)  # the lab's own client holds the monitor
    with pytest.raises(NotQMP, match="another client"):
        QMP(source.qmp, greeting_timeout=0.3)


# -- checks -----------------------------------------------------------------------------

def test_check_accepts_the_vms_ram_file_under_another_name(lab):
    source, qmp = lab.source(boot=False)
    link = lab.ram_path("link")
    link.symlink_to(source.ram)
    backend = vm.check_ram_file(qmp, link)
    assert (backend.id, backend.share, backend.size) == ("ram0", True, 64 * MIB)
    assert backend.mem_path == str(source.ram)


def test_check_refuses_a_copy_of_the_ram_file(lab):
    source, qmp = lab.source()
    vm.stop(qmp)
    copy = lab.ram_path("copy")
    shutil.copyfile(source.ram, copy)
    with pytest.raises(vm.VmRefused, match="is not the VM's RAM: its backend ram0 maps"):
        vm.check_ram_file(qmp, copy)


def test_check_refuses_a_ram_file_renamed_over_the_one_qemu_maps(lab):
    source, _ = lab.source(boot=False)
    destination, qmp = lab.destination(source)
    replacement = lab.ram_path("replacement")
    shutil.copyfile(destination.ram, replacement)
    os.replace(replacement, destination.ram)  # what a write-then-rename destination does
    with pytest.raises(vm.VmRefused, match="QEMU maps an older file"):
        vm.check_ram_file(qmp, destination.ram)


def test_check_refuses_a_missing_ram_file(lab):
    _, qmp = lab.source(boot=False)
    with pytest.raises(vm.VmRefused, match="cannot stat the RAM file"):
        vm.check_ram_file(qmp, lab.workdir / "absent.ram")


def test_check_refuses_a_backend_without_share_on(lab):
    source, qmp = lab.source(share=False, boot=False)
    with pytest.raises(vm.VmRefused, match="share=off"):
        vm.check_ram_file(qmp, source.ram)


def test_check_refuses_ram_that_is_not_a_file(lab):
    argv = qemu_argv(ram=lab.ram_path("unused"), ram_mib=64, disk=lab.disk,
                     qmp=lab.workdir / "memfd.qmp", paused=True, incoming=True)
    at = argv.index("-object")
    argv[at + 1] = "memory-backend-memfd,id=ram0,size=64M,share=on"
    lab.spawn(argv)
    with QMP(lab.workdir / "memfd.qmp", wait_s=10) as qmp:
        with pytest.raises(vm.VmRefused, match="memory-backend-memfd, not a"):
            vm.check_ram_file(qmp, lab.disk)


def test_a_waiting_destination_is_not_a_source_and_a_running_vm_not_a_destination(lab):
    source, qmp = lab.source(boot=False)
    _, incoming = lab.destination(source)
    with pytest.raises(vm.VmRefused, match="waiting for an incoming migration"):
        vm.expect_source(incoming)
    with pytest.raises(vm.VmRefused, match="not waiting for an incoming migration"):
        vm.expect_incoming(qmp)
    vm.expect_incoming(incoming)


def test_a_destination_listening_on_a_uri_is_refused(lab):
    argv = qemu_argv(ram=lab.ram_path("listening"), ram_mib=64, disk=lab.disk,
                     qmp=lab.workdir / "listening.qmp")
    lab.spawn(argv + ["-incoming", f"unix:{lab.workdir / 'incoming.sock'}"])
    with QMP(lab.workdir / "listening.qmp", wait_s=10) as listening:
        with pytest.raises(vm.VmRefused, match="already receiving"):
            vm.expect_incoming(listening)


def test_ignore_shared_is_set_read_back_and_restored(lab):
    _, qmp = lab.source(boot=False)
    previous = vm.enable_ignore_shared(qmp)
    states = {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities")}
    assert states["x-ignore-shared"] and states["events"]
    vm.restore_capabilities(qmp, previous)
    states = {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities")}
    assert not states["x-ignore-shared"] and not states["events"]


# -- device state and the switchover ---------------------------------------------------

@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_the_guest_migrates_and_runs_on_while_the_source_stays_paused(lab, machine):
    source, src_qmp = lab.source(machine=machine)
    vm.check_ram_file(src_qmp, source.ram)
    vm.expect_source(src_qmp)
    vm.enable_ignore_shared(src_qmp)

    destination, dst_qmp = lab.destination(source, machine=machine)  # before any RAM
    vm.check_ram_file(dst_qmp, destination.ram)
    vm.expect_incoming(dst_qmp)
    vm.enable_ignore_shared(dst_qmp)
    empty = destination.ram.read_bytes()
    assert not any(empty)

    vm.stop(src_qmp)
    switchover = check_consistent(source.ram)
    state = vm.save_device_state_bytes(src_qmp)
    assert 100_000 < len(state) < 1_000_000  # no RAM in it: ROM blocks and devices
    assert vm.run_state(src_qmp) == "postmigrate"
    assert destination.ram.read_bytes() == empty  # the waiting QEMU did not touch it

    copy_in_place(source.ram, destination.ram)
    reference = source.ram.read_bytes()
    assert destination.ram.read_bytes() == reference
    vm.load_device_state(dst_qmp, state)
    assert vm.run_state(dst_qmp) == "paused"  # the source was paused when it saved
    assert destination.ram.read_bytes() == reference  # loading left the RAM alone (TCG)
    assert vm.start_guest(dst_qmp) == "running"

    wait_generation_above(destination.ram, switchover.generation)
    vm.stop(dst_qmp)
    after = check_consistent(destination.ram)
    assert after.generation > switchover.generation
    assert read_generation(source.ram) == switchover.generation
    assert vm.run_state(src_qmp) == "postmigrate"
    assert src_qmp.execute("query-migrate")["status"] == "completed"
    assert dst_qmp.execute("query-migrate")["status"] == "completed"


def capabilities(socket_path: Path) -> dict[str, bool]:
    with QMP(socket_path) as qmp:
        return {c["capability"]: c["state"] for c in qmp.execute("query-migrate-capabilities")}


def test_source_and_destination_objects_migrate_the_guest_and_restore_settings(lab):
    source, qmp = lab.source()
    destination, dst_qmp = lab.destination(source)
    qmp.close()  # one client per monitor: the objects bring their own
    dst_qmp.close()
    with vm.SourceVM(source.qmp, source.ram) as src, \
            vm.DestinationVM(destination.qmp, destination.ram) as dst:
        src.pause()
        switchover = check_consistent(source.ram)
        state = src.save_device_state()
        copy_in_place(source.ram, destination.ram)
        assert dst.start(state) == "running"
        wait_generation_above(destination.ram, switchover.generation)
        assert (src.state(), dst.state()) == ("postmigrate", "running")
    for end in (source, destination):
        assert capabilities(end.qmp)["x-ignore-shared"] is False


def test_a_source_object_resumes_the_vm_after_a_failure_past_the_pause(lab):
    source, qmp = lab.source()
    qmp.close()
    with vm.SourceVM(source.qmp, source.ram) as src:
        src.pause()
        src.save_device_state()
        stopped = read_generation(source.ram)
        src.resume()  # e.g. the transfer failed after the pause
        wait_generation_above(source.ram, stopped)
        assert src.state() == "running"


def test_a_refused_source_object_frees_the_monitor(lab):
    source, qmp = lab.source(boot=False)
    qmp.close()
    with pytest.raises(vm.VmRefused, match="is not the VM's RAM"):
        vm.SourceVM(source.qmp, lab.disk)
    assert capabilities(source.qmp)["x-ignore-shared"] is False


def test_an_abandoned_destination_stays_waiting_and_takes_a_second_attempt(lab, saved):
    source, state = saved
    destination, qmp = lab.destination(source)
    qmp.close()
    vm.DestinationVM(destination.qmp, destination.ram).abandon()  # say DEST failed to verify
    assert destination.alive()
    copy_in_place(source.ram, destination.ram)
    with vm.DestinationVM(destination.qmp, destination.ram) as again:
        assert again.start(state) == "running"


def test_resume_right_after_the_save_runs_the_source_again(lab):
    source, qmp = lab.source()
    vm.enable_ignore_shared(qmp)
    vm.stop(qmp)
    vm.save_device_state(qmp, lab.workdir / "device.state")
    stopped = read_generation(source.ram)
    vm.cont(qmp)  # no "Migration is not finalized yet": save waited for postmigrate
    wait_generation_above(source.ram, stopped)
    assert vm.run_state(qmp) == "running"


def test_a_failed_save_leaves_the_source_paused_and_resumable(lab):
    source, qmp = lab.source()
    vm.enable_ignore_shared(qmp)
    vm.stop(qmp)
    with pytest.raises(vm.DeviceStateFailed, match="No space left on device"):
        vm.save_device_state(qmp, "/dev/full")
    assert vm.run_state(qmp) == "paused"
    vm.cont(qmp)
    wait_generation_above(source.ram, read_generation(source.ram))


def test_saving_a_running_vm_is_refused(lab):
    _, qmp = lab.source(boot=False)
    vm.enable_ignore_shared(qmp)
    with pytest.raises(vm.DeviceStateFailed, match="must be stopped"):
        vm.save_device_state_bytes(qmp)


def test_a_corrupt_device_state_makes_the_destination_exit_and_leaves_its_ram(lab, saved):
    source, state = saved
    destination, qmp = lab.destination(source, copy=True)
    vm.enable_ignore_shared(qmp)
    before = destination.ram.read_bytes()
    bad = bytearray(state)
    bad[100] ^= 0xFF  # inside the first RAM-block record: structural damage
    with pytest.raises(vm.DeviceStateFailed, match="exited while loading"):
        vm.load_device_state(qmp, bytes(bad))
    assert destination.wait_exit() == 1
    assert "load of migration failed" in destination.log_text()
    assert destination.ram.read_bytes() == before


def test_a_destination_without_ignore_shared_refuses_the_stream(lab, saved):
    source, state = saved
    destination, qmp = lab.destination(source, copy=True)
    with pytest.raises(vm.DeviceStateFailed):
        vm.load_device_state(qmp, state)
    assert destination.wait_exit() == 1
    assert "x-ignore-shared is off, but received capability is on" in destination.log_text()


def test_a_destination_of_another_size_refuses_the_stream(lab, saved):
    source, state = saved
    ram = lab.ram_path("bigger")
    machine, qmp = lab.start("bigger", ram, source.disk, ram_mib=128, incoming=True)
    vm.enable_ignore_shared(qmp)
    with pytest.raises(vm.DeviceStateFailed):
        vm.load_device_state(qmp, state)
    assert machine.wait_exit() == 1
    assert "Size mismatch: ram0: 0x4000000 != 0x8000000" in machine.log_text()


def test_cont_on_a_waiting_destination_does_not_run_the_guest(lab, saved):
    source, state = saved
    destination, qmp = lab.destination(source, copy=True)
    vm.enable_ignore_shared(qmp)
    generation = read_generation(destination.ram)
    vm.cont(qmp)  # accepted: it only arms autostart
    time.sleep(0.2)
    assert vm.run_state(qmp) == "inmigrate"
    assert read_generation(destination.ram) == generation
    with pytest.raises(vm.DeviceStateFailed, match="not loaded"):
        vm.start_guest(qmp)


def test_a_destination_loads_only_once(lab, saved):
    source, state = saved
    destination, qmp = lab.destination(source, copy=True)
    vm.enable_ignore_shared(qmp)
    vm.load_device_state(qmp, state)
    with pytest.raises(vm.DeviceStateFailed, match="already been started"):
        vm.load_device_state(qmp, state)
    assert vm.start_guest(qmp) == "running"


def test_a_waiting_destination_can_be_told_to_quit(lab):
    source, _ = lab.source(boot=False)
    destination, qmp = lab.destination(source)
    qmp.close()
    vm.DestinationVM(destination.qmp, destination.ram).abandon(quit=True)
    assert destination.wait_exit() == 0
