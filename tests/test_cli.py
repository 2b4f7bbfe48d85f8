"""The command line as other tools call it: separate OS processes, exit codes, JSON."""
from __future__ import annotations

import filecmp
import json
import os
import pty
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine import Sender, TransferSettings, VerificationFailed
from engine.tools.samples import sample_bytes

MiB = 1 << 20
JSON_KEYS = {"ok", "bytes", "seconds", "gib_per_s", "wire_gib_per_s", "wire_bytes",
             "normal_pages", "zero_pages", "channels", "compress", "rounds", "digest", "devices",
             "resumed_pages", "per_channel"}


def multifd(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *args], capture_output=True,
                          text=True, timeout=timeout)


def assert_usage_error(run: subprocess.CompletedProcess, message: str) -> None:
    """Exit code 2 and one line on stderr that says `message`."""
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], run.stderr


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def start_receiver(dest: Path, *extra: str,
                   listen: str = "tcp://127.0.0.1:0") -> tuple[subprocess.Popen, str]:
    """A `receive` process on a free port of `listen`; returns it and its endpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "receive", str(dest), "--listen", listen,
         "--json", *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"listening on (tcp://\S+)", line)
    assert match, f"receiver said {line!r}"
    return process, match.group(1)


def test_migrate_prints_the_json_contract_and_verifies(image, tmp_path):
    src = image(5 * MiB)
    dev = tmp_path / "cpu.bin"
    dev.write_bytes(sample_bytes(123_457, seed=2))
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--channels", "2", "--compress",
                  "zstd", "--device", f"cpu={dev}", "--device-dir", str(tmp_path / "out"),
                  "--json")
    assert run.returncode == 0, run.stderr
    summary = last_json(run.stdout)
    assert JSON_KEYS <= summary.keys()
    assert summary["ok"] is True and summary["bytes"] == 5 * MiB
    assert summary["devices"] == {"cpu": 123_457}
    assert len(summary["per_channel"]) == 2
    assert {"bytes", "packets", "busy_s"} <= summary["per_channel"][0].keys()
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)
    assert (tmp_path / "out" / "cpu").read_bytes() == dev.read_bytes()


def test_receive_and_send_run_as_separate_processes(image, tmp_path):
    src = image(7 * MiB + 5)
    dev = tmp_path / "nic.bin"
    dev.write_bytes(sample_bytes(2 * MiB, kind="random"))
    receiver, endpoint = start_receiver(tmp_path / "dst", "--device-dir", str(tmp_path))
    sent = multifd("send", str(src), "--to", endpoint, "--channels", "3", "--compress",
                   "zstd:1", "--device", f"nic={dev}", "--json")
    out, err = receiver.communicate(timeout=60)
    assert sent.returncode == 0, sent.stderr
    assert receiver.returncode == 0, err
    assert last_json(sent.stdout)["digest"] == last_json(out)["digest"]
    assert filecmp.cmp(src, tmp_path / "dst", shallow=False)
    assert (tmp_path / "nic").read_bytes() == dev.read_bytes()


def test_a_mismatch_is_reported_with_exit_code_1(image, tmp_path):
    src = image(MiB, kind="random")
    receiver, endpoint = start_receiver(tmp_path / "dst")
    with Sender(str(src), endpoint, TransferSettings(verify="reread")) as sender:
        sender.send_range()
        sender.sync()
        with open(src, "r+b") as f:
            f.write(b"not what was sent")
        with pytest.raises(VerificationFailed):
            sender.finish()
    out, err = receiver.communicate(timeout=60)
    assert receiver.returncode == 1
    assert "digest differs" in err and "Traceback" not in err
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("args, message", [
    (["migrate", "{missing}", "{dst}"], "cannot read source"),
    (["migrate", "{tmp}", "{dst}"], "not a regular file"),
    (["migrate", "{src}", "{dst}", "--compress", "lz4"],
     "unknown codec 'lz4'; known: none, zlib, zstd, auto"),
    (["migrate", "{src}", "{dst}", "--chanels", "3"],
     "unknown option --chanels; did you mean --channels? (see 'multifd migrate --help')"),
    (["send", "{src}", "--to", "tcp://127.0.0.1:9", "--max-bandwith=1G"],
     "unknown option --max-bandwith; did you mean --max-bandwidth? (see 'multifd send --help')"),
    (["receive", "{dst}", "--listen", "tcp://127.0.0.1:0", "--bogus"],
     "unknown option --bogus (see 'multifd receive --help')"),
    (["migrate", "{src}", "{dst}", "--compress", "zstd:99"], "zstd level"),
    (["migrate", "{src}", "{dst}", "--channels", "0"], "channels must be"),
    (["migrate", "{src}", "{dst}", "--channels", "1000"], "channels must be"),
    (["migrate", "{src}", "{src}"], "which is the source"),
    (["migrate", "{src}", "{other}"], "exists with 100 bytes, the source has 8192"),
    (["migrate", "{src}", "{tmp}/nofolder/dst"], "does not exist"),
    (["migrate", "{src}", "{dst}", "--device", "nopath"], "NAME=PATH"),
    (["migrate", "{src}", "{dst}", "--device", "a={missing}"], "not a readable file"),
    (["send", "{src}", "--to", "localhost:5000"], "malformed endpoint"),
    (["receive", "{dst}", "--listen", "tcp://127.0.0.1:99999"], "not a usable TCP port"),
    (["migrate", "{src}"], "required"),
    ([], "a command is needed"),
])
def test_bad_usage_is_one_line_and_exit_code_2(image, tmp_path, args, message):
    src = image(8192)
    other = tmp_path / "other"
    other.write_bytes(bytes(100))
    names = {"src": src, "dst": tmp_path / "dst", "tmp": tmp_path, "missing": tmp_path / "nope",
             "other": other}
    assert_usage_error(multifd(*[a.format(**names) for a in args]), message)
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("args, error, code", [
    (["send", "{src}", "--to", "tcp://127.0.0.1:{port}", "--connect-timeout", "1"],
     "no receiver answered at tcp://127.0.0.1:{port} within 1 s", 1),
    (["migrate", "{src}", "{tmp}/dst", "--channels", "0"],
     "channels must be a whole number from 1 to 64, not 0", 2),
    (["migrate", "{src}", "{tmp}/dst", "--connect-timeout", "0"],
     "a timeout is a number of seconds above zero, not '0'", 2),
])
def test_a_failure_with_json_ends_stdout_with_ok_false(image, tmp_path, args, error, code):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    names = {"src": image(8192), "tmp": tmp_path, "port": port}
    run = multifd(*[a.format(**names) for a in args], "--json", timeout=30)
    assert run.returncode == code
    assert last_json(run.stdout) == {"ok": False, "error": error.format(**names),
                                     "exit_code": code}
    assert run.stderr.strip().splitlines()[-1] == f"multifd: error: {error.format(**names)}"


def test_migrate_takes_a_connect_timeout(image, tmp_path):
    src = image(MiB)
    run = multifd("migrate", str(src), str(tmp_path / "dst"), "--connect-timeout", "5", "--json")
    assert run.returncode == 0, run.stderr
    assert last_json(run.stdout)["ok"] is True


API_BANDWIDTH = """
import sys, engine
try:
    result = engine.migrate(sys.argv[1], sys.argv[2], max_bandwidth=sys.argv[3])
    print(result.ok)
except engine.UsageError as exc:
    print(exc)
"""


@pytest.mark.parametrize("rate, said", [
    ("100M", "True"),
    ("800mbit", "True"),
    ("1K", "max bandwidth must be at least 1M (1 MiB/s, about 8.4mbit), not 1024 bytes per "
           "second"),
    ("fast", "rate 'fast' is not like 1gbit, 500mbit or 100M (bytes per second)"),
])
def test_the_api_takes_a_bandwidth_as_the_command_line_writes_it(image, tmp_path, rate, said):
    run = subprocess.run([sys.executable, "-c", API_BANDWIDTH, str(image(MiB)),
                          str(tmp_path / "dst"), rate], capture_output=True, text=True,
                         timeout=60)
    assert run.stdout == said + "\n", run.stderr


def in_a_terminal(*args: str) -> tuple[int, str]:
    """Run `python -m engine ARGS` on a pseudo-terminal, as a user at a shell; its exit code
    and everything it wrote there."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "engine", *args], stdin=terminal,
                               stdout=terminal, stderr=terminal, env={**os.environ,
                                                                      "COLUMNS": "120"})
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    return process.wait(timeout=120), seen.decode(errors="replace")


def test_the_bar_and_the_summary_speak_binary_units_and_both_rates(image, tmp_path):
    src = image(32 * MiB, kind="random")  # a second at the cap: the bar draws a few times
    code, screen = in_a_terminal("migrate", str(src), str(tmp_path / "dst"), "--max-bandwidth",
                                 "32M")
    assert code == 0, screen
    assert re.search(r"\d+\.\d/32\.0 MiB\S* [\d.,]+ [KMG]iB/s image", screen), screen
    rate = next(line for line in screen.splitlines() if "rate" in line)
    assert re.search(r"[\d.,]+ [KMG]iB/s image, [\d.,]+ [KMG]iB/s on the wire", rate), rate
    assert "MB/s" not in screen and "GB/s" not in screen


COMMANDS = ["migrate", "send", "receive", "keygen", "demo", "bench"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_quiet_and_verbose(command):
    shown = multifd(command, "--help").stdout
    assert "-q, --quiet" in shown and "-v, --verbose" in shown


def test_quiet_prints_nothing_but_errors(image, tmp_path):
    src = image(MiB)
    done = multifd("migrate", str(src), str(tmp_path / "dst"), "-q")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    keys = multifd("keygen", str(tmp_path / "keys"), "--name", "a", "-q")
    assert (keys.returncode, keys.stderr) == (0, "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    failed = multifd("send", str(src), "--to", nobody, "--connect-timeout", "1", "-q")
    assert failed.returncode == 1
    assert failed.stderr == f"multifd: error: no receiver answered at {nobody} within 1 s\n"
    json_only = multifd("migrate", str(src), str(tmp_path / "dst2"), "-q", "--json")
    assert json_only.stderr == "" and last_json(json_only.stdout)["ok"] is True


def test_quiet_and_verbose_together_are_refused(image, tmp_path):
    assert_usage_error(multifd("migrate", str(image(8192)), str(tmp_path / "dst"), "-q", "-v"),
                       "not allowed with argument")


def test_a_port_in_use_is_a_usage_error(tmp_path):
    receiver, endpoint = start_receiver(tmp_path / "a")
    try:
        run = multifd("receive", str(tmp_path / "b"), "--listen", endpoint)
        assert run.returncode == 2 and "cannot listen" in run.stderr
    finally:
        receiver.kill()
        receiver.communicate()


def test_version_names_the_libraries():
    run = multifd("--version")
    assert run.returncode == 0
    assert "libzmq" in run.stdout and "CURVE" in run.stdout and "zstandard" in run.stdout
