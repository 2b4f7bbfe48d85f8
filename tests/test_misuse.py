"""Local misuse, as a reliability engineer tried it (docs/hostile.md, "Local misuse"): paths
that alias the source, destinations that cannot be created or are full, options that cannot
work, and what a command leaves behind. Real commands in separate processes; every case
checks the files afterwards, the source against a copy taken before the run."""
from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from test_cli import assert_usage_error, last_json, multifd, start_receiver
from test_reliability import SLOW, finish, start_sender, wait_for_progress

MiB = 1 << 20
SHM = Path("/dev/shm")


@pytest.fixture
def source(image, tmp_path):
    """An 8 MiB mixed image and a pristine copy of it to compare with after the run."""
    src = image(8 * MiB, seed=3)
    reference = tmp_path / "reference"
    shutil.copyfile(src, reference)
    return src, reference


@pytest.fixture
def shm_name():
    name = f"multifd-misuse-{uuid.uuid4().hex[:8]}"
    yield name
    for path in SHM.glob(f"{name}*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def assert_untouched(path: Path, reference: Path, before: os.stat_result) -> None:
    """The source still holds its bytes, as the same file with the same mode."""
    after = path.stat()
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert path.read_bytes() == reference.read_bytes(), "the source was modified"


def assert_nothing_created(dest: Path, *keep: Path) -> None:
    for suffix in ("", ".partial", ".journal", ".devices"):
        path = dest.with_name(dest.name + suffix)
        assert path in keep or not path.exists(), f"{path} was created"


# -- 1, 2: the destination would write the source -------------------------------------------

@pytest.mark.parametrize("name", ["dst.partial", "dst.journal", "dst"])
def test_a_source_with_a_destination_files_name_is_refused_and_kept(source, tmp_path, name):
    src, reference = source
    alias = tmp_path / name
    src.rename(alias)
    before = alias.stat()
    run = multifd("migrate", str(alias), str(tmp_path / "dst"), "--force", "--json")
    assert_usage_error(run, "which is the source")
    assert_untouched(alias, reference, before)
    assert_nothing_created(tmp_path / "dst", alias)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_a_destination_that_links_to_the_source_is_refused(source, tmp_path, link):
    src, reference = source
    dest = tmp_path / "dst"
    (os.symlink if link == "symlink" else os.link)(src, dest.with_name("dst.partial"))
    before = src.stat()
    run = multifd("migrate", str(src), str(dest), "--force")
    assert_usage_error(run, "which is the source")
    assert_untouched(src, reference, before)


@pytest.mark.parametrize("suffix", [".partial", ".journal"])
def test_shared_memory_named_like_the_destinations_files_is_refused(source, shm_name, suffix):
    src, reference = source
    alias = SHM / f"{shm_name}{suffix}"
    shutil.copyfile(src, alias)
    before = alias.stat()
    run = multifd("migrate", f"shm:{alias.name}", f"shm:{shm_name}", "--json")
    assert_usage_error(run, "which is the source")
    assert_untouched(alias, reference, before)
    assert_nothing_created(SHM / shm_name, alias)


def test_a_device_file_inside_the_device_folder_is_refused(source, tmp_path):
    src, reference = source
    folder = tmp_path / "devices"
    folder.mkdir()
    state = folder / "cpu"
    state.write_bytes(b"registers" * 1000)
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--device", f"cpu={state}",
                  "--device-dir", str(folder))
    assert_usage_error(run, "which is the state of device cpu")
    assert state.read_bytes() == b"registers" * 1000
    assert_nothing_created(tmp_path / "dst")


def test_a_receiver_on_the_same_host_refuses_a_sender_whose_source_it_would_write(
        source, tmp_path):
    src, reference = source
    alias = tmp_path / "dst.partial"
    src.rename(alias)
    before = alias.stat()
    receiver, endpoint = start_receiver(tmp_path / "dst", "--force")
    sender = start_sender(alias, endpoint)
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert (sent, received) == (2, 2), err + rerr
    for output in (err, rerr):
        assert "which is the sender's source image" in output.strip().splitlines()[-1]
        assert "Traceback" not in output
    assert_untouched(alias, reference, before)
    assert_nothing_created(tmp_path / "dst", alias)


def test_shared_memory_send_and_receive_on_one_host_refuse_the_alias(source, shm_name):
    src, reference = source
    alias = SHM / f"{shm_name}.partial"
    shutil.copyfile(src, alias)
    before = alias.stat()
    receiver, endpoint = start_receiver(Path(f"shm:{shm_name}"))
    sender = start_sender(Path(f"shm:{alias.name}"), endpoint)
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert (sent, received) == (2, 2), err + rerr
    assert_untouched(alias, reference, before)


def test_the_source_as_its_own_destination_is_refused_even_with_force(source):
    src, reference = source
    before = src.stat()
    run = multifd("migrate", str(src), str(src), "--force")
    assert_usage_error(run, "which is the source")
    assert_untouched(src, reference, before)


# -- 3: a destination that cannot be created ------------------------------------------------

def test_a_destination_folder_removed_while_the_receiver_waits_fails_in_one_line(source,
                                                                                  tmp_path):
    src, _ = source
    folder = tmp_path / "v"
    folder.mkdir()
    receiver, endpoint = start_receiver(folder / "d.img")
    folder.rmdir()
    sender = start_sender(src, endpoint)
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert (sent, received) == (2, 2)
    for output in (err, rerr):
        last = output.strip().splitlines()[-1]
        assert f"destination folder {folder} does not exist" in last
        assert "Traceback" not in output


def test_a_destination_in_proc_is_refused_before_listening():
    run = multifd("receive", "/proc/dst.img", "--listen", "tcp://127.0.0.1:0")
    assert_usage_error(run, "cannot create files in destination folder /proc")


# -- 4: device names ------------------------------------------------------------------------

@pytest.mark.parametrize("name, message", [
    ("my dev", "must start with a letter or digit"),
    ("x" * 129, "is 129 characters long; at most 128"),
    (".", "names a folder"),
    ("..", "names a folder"),
])
def test_bad_device_names_are_refused_before_anything_is_created(source, tmp_path, name,
                                                                 message):
    src, _ = source
    state = tmp_path / "state.bin"
    state.write_bytes(b"s" * 4096)
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--device", f"{name}={state}")
    assert_usage_error(run, message)
    assert_nothing_created(tmp_path / "dst")


def test_a_missing_device_file_is_refused_before_anything_is_created(source, tmp_path):
    src, _ = source
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--device",
                  f"cpu={tmp_path / 'absent'}")
    assert_usage_error(run, "is not a readable file")
    assert_nothing_created(tmp_path / "dst")


API_MISSING_DEVICE = """
import sys, engine
try:
    engine.migrate(sys.argv[1], sys.argv[2], devices={"cpu": b"...", "nic": sys.argv[3]})
except engine.UsageError as exc:
    print(exc)
"""


def test_a_missing_device_file_given_to_the_api_is_refused_before_anything_is_created(
        source, tmp_path):
    src, _ = source
    run = subprocess.run([sys.executable, "-c", API_MISSING_DEVICE, str(src),
                          str(tmp_path / "dst"), str(tmp_path / "absent")],
                         capture_output=True, text=True, timeout=60)
    assert run.stdout == f"device nic: {tmp_path / 'absent'} is not a readable file\n", \
        run.stdout + run.stderr
    assert_nothing_created(tmp_path / "dst")


@pytest.mark.parametrize("command", ["migrate", "receive"])
@pytest.mark.parametrize("folder, message", [
    ("a-file", "the device folder {tmp}/a-file is not a folder"),
    ("nowhere/devices", "cannot create the device folder {tmp}/nowhere/devices: {tmp}/nowhere "
                        "is not a folder"),
])
def test_a_device_folder_that_cannot_be_made_is_refused_before_anything_is_created(
        source, tmp_path, command, folder, message):
    src, _ = source
    (tmp_path / "a-file").write_bytes(b"")
    where = ([str(src), str(tmp_path / "dst"), "--device", f"cpu={src}"] if command == "migrate"
             else [str(tmp_path / "dst"), "--listen", "tcp://127.0.0.1:0"])
    run = multifd(command, *where, "--device-dir", str(tmp_path / folder), timeout=30)
    assert_usage_error(run, message.format(tmp=tmp_path))
    assert_nothing_created(tmp_path / "dst")


# -- 5: a full destination ------------------------------------------------------------------

def in_small_filesystem(mib: int, command: str) -> subprocess.CompletedProcess:
    """Run a shell `command` where /mnt/small is a fresh tmpfs of `mib` MiB (private mount
    namespace: nothing is mounted for anyone else)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    script = f"mkdir -p /mnt/small && mount -t tmpfs -o size={mib}m tmpfs /mnt/small && " \
             f"{command}"
    run = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                          script], capture_output=True, text=True, timeout=120)
    if "mount:" in run.stderr or "unshare:" in run.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {run.stderr.strip()}")
    return run


def test_a_destination_without_room_is_refused_up_front(image):
    src = image(8 * MiB, kind="random")
    run = in_small_filesystem(4, f"{sys.executable} -m engine migrate {src} /mnt/small/d.img;"
                                 " echo rc=$?; ls -A /mnt/small")
    lines = run.stdout.split()
    assert "rc=2" in lines and lines[-1] == "rc=2", run.stdout  # and nothing was created
    assert "the destination is full: /mnt/small/d.img needs 8.0 MiB" in run.stderr
    assert "--resume" in run.stderr and run.stderr.count("\n") == 1


def test_a_destination_that_fills_up_during_the_transfer_says_it_is_full(image, tmp_path):
    src = image(2 * MiB, kind="random")
    state = tmp_path / "state.bin"
    state.write_bytes(os.urandom(8 * MiB))  # device state is not part of the up-front check
    run = in_small_filesystem(
        6, f"{sys.executable} -m engine migrate {src} /mnt/small/d.img --device cpu={state}")
    assert run.returncode == 1, run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "the destination is full" in last and "Traceback" not in run.stderr


# -- 6: options that cannot work ------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    (["--compress", "zstd:"], "empty level"),
    (["--device-compress", "zlib:"], "empty level"),
    (["--max-bandwidth", "1"], "at least 1M"),
    (["--max-bandwidth", "1K"], "at least 1M"),
    (["--chunk-size", "1"], "chunk size must be a whole number from 4096"),
])
def test_sender_options_that_cannot_work_are_refused_before_anything_is_created(
        source, tmp_path, options, message):
    src, _ = source
    run = multifd("migrate", str(src), str(tmp_path / "dst"), *options)
    assert_usage_error(run, message)
    assert_nothing_created(tmp_path / "dst")


def test_chunk_sizes_take_suffixes(source, tmp_path):
    src, _ = source
    state = tmp_path / "state.bin"
    state.write_bytes(os.urandom(3 * MiB + 1))
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--chunk-size", "1M",
                  "--device", f"cpu={state}", "--json")
    assert run.returncode == 0, run.stderr
    assert last_json(run.stdout)["devices"] == {"cpu": 3 * MiB + 1}


@pytest.mark.parametrize("ports, message", [
    ("65535", "the first data port must be from 1 to 65472"),
    ("-1", "the first data port must be from 1 to 65472"),
    ("7390", "would include the listen port 7400"),
    ("7400", "would include the listen port 7400"),
])
def test_receiver_data_ports_that_cannot_work_are_refused_at_once(tmp_path, ports, message):
    run = multifd("receive", str(tmp_path / "dst"), "--listen", "tcp://127.0.0.1:7400",
                  "--data-ports", ports, timeout=30)
    assert_usage_error(run, message)
    assert_nothing_created(tmp_path / "dst")


# -- 7: leftovers ---------------------------------------------------------------------------

def test_a_resume_after_a_killed_receiver_leaves_no_empty_device_folder(image, tmp_path):
    src = image(160 * MiB, kind="random")
    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(src, endpoint, *SLOW)
    wait_for_progress(tmp_path / "dst.partial", 16 * MiB)
    receiver.kill()
    finish(sender, receiver, timeout=60)
    assert (tmp_path / "dst.devices").is_dir()  # what kill -9 leaves behind

    receiver, endpoint = start_receiver(tmp_path / "dst")
    sender = start_sender(src, endpoint, "--resume")
    (sent, _, err), (received, _, rerr) = finish(sender, receiver)
    assert (sent, received) == (0, 0), err + rerr
    assert (tmp_path / "dst").read_bytes() == src.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]


REAPER = """
import ctypes, subprocess, sys, psutil
ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: orphans come to us
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(code, [p.name() for p in psutil.Process().children()])
"""


def test_a_migrate_that_returned_leaves_no_process_behind(source, tmp_path):
    """Orphaned helpers (the forkserver, the resource tracker) would be re-parented to the
    reaper; right after the command returned, there must be none."""
    if not hasattr(ctypes.CDLL(None), "prctl"):
        pytest.skip("no prctl: not Linux")
    src, _ = source
    run = subprocess.run([sys.executable, "-c", REAPER, sys.executable, "-m", "engine",
                          "migrate", str(src), str(tmp_path / "dst")],
                         capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "0 []", run.stdout + run.stderr


# -- 8: nobody listening --------------------------------------------------------------------

def test_a_sender_with_nobody_listening_says_where_it_connects_and_gives_up_in_time(source):
    src, _ = source
    port = free_port()
    run = multifd("send", str(src), "--to", f"tcp://127.0.0.1:{port}", "--connect-timeout", "1",
                  timeout=20)  # far below the 30 s default: the option took effect
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1
    assert lines[0] == f"multifd: connecting to tcp://127.0.0.1:{port}"
    assert lines[-1] == (f"multifd: error: no receiver answered at tcp://127.0.0.1:{port} "
                         "within 1 s")


def free_port() -> int:
    """A port nobody listens on (it was bound a moment ago, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
