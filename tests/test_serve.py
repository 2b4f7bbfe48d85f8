"""A receiver that serves: `receive --serve --dest-template`, one named transfer after
another, a JSON log line for each and for each sender refused, SIGTERM between or during
transfers (issue 13, item 10). Real processes, the commands a user types."""
from __future__ import annotations

import filecmp
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
import zmq.auth

from engine.settings import TransferSettings
from engine.wire.framing import decode, encode
from engine.wire.protocol import SESSION_BYTES, Fault, new_hello

from test_cli import assert_usage_error, multifd
from test_reliability import wait_for_progress

MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent


def start_server(template: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """A serving receiver on a free port; returns it and its endpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "engine", "receive", "--serve", "--dest-template", template,
         "--listen", "tcp://127.0.0.1:0", *extra], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    line = process.stderr.readline()
    match = re.search(r"serving on (tcp://\S+)", line)
    assert match, f"receiver said {line!r}"
    return process, match.group(1)


def stop(server: subprocess.Popen) -> tuple[list[dict], str]:
    """SIGTERM, as systemd stops a service; its log lines and its stderr."""
    server.send_signal(signal.SIGTERM)
    out, err = server.communicate(timeout=60)
    assert server.returncode == 143, err
    assert err.rstrip().endswith("multifd: terminated by SIGTERM; stopped"), err
    return [json.loads(line) for line in out.splitlines()], err


def send(src: Path, endpoint: str, *extra: str) -> subprocess.CompletedProcess:
    return multifd("send", str(src), "--to", endpoint, "-q", *extra)


def keygen(folder: Path, name: str) -> tuple[Path, Path]:
    assert multifd("keygen", str(folder), "--name", name, "-q").returncode == 0
    return folder / f"{name}.key", folder / f"{name}.key_secret"


def test_transfers_one_after_another_each_named_and_logged_with_the_sender_key(image,
                                                                               tmp_path):
    receiver_public, receiver_secret = keygen(tmp_path / "keys", "receiver")
    sender_public, sender_secret = keygen(tmp_path / "keys", "alice")
    _, stranger_secret = keygen(tmp_path / "keys", "mallory")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "alice.key").write_bytes(sender_public.read_bytes())
    alice = ["--server-key", str(receiver_public), "--key", str(sender_secret)]
    first, second = image(3 * MiB, seed=1, name="a.ram"), image(5 * MiB, seed=2, name="b.ram")
    server, endpoint = start_server(str(tmp_path / "vm-{name}.ram"), "--key",
                                    str(receiver_secret), "--allow", str(allowed))

    assert send(first, endpoint, "--name", "web1", *alice).returncode == 0
    assert send(second, endpoint, "--name", "db.2", *alice).returncode == 0
    stranger = send(first, endpoint, "--name", "x", "--server-key", str(receiver_public),
                    "--key", str(stranger_secret), "--connect-timeout", "5")
    unnamed = send(first, endpoint, *alice)
    log, err = stop(server)

    assert filecmp.cmp(first, tmp_path / "vm-web1.ram", shallow=False)
    assert filecmp.cmp(second, tmp_path / "vm-db.2.ram", shallow=False)
    assert stranger.returncode != 0 and unnamed.returncode == 1
    assert "send with --name NAME" in unnamed.stderr
    alice_key = zmq.auth.load_certificate(sender_public)[0].decode()
    mallory_key = zmq.auth.load_certificate(tmp_path / "keys/mallory.key")[0].decode()
    transfers = [line for line in log if line["event"] == "transfer"]
    assert [(t["name"], t["destination"], t["outcome"], t["sender"], t["sender_key"])
            for t in transfers] == [
        ("web1", str(tmp_path / "vm-web1.ram"), "verified", "alice", alice_key),
        ("db.2", str(tmp_path / "vm-db.2.ram"), "verified", "alice", alice_key)]
    assert transfers[1]["bytes"] == 5 * MiB and transfers[1]["digest"]
    refused = [line for line in log if line["event"] == "refused"]
    assert {"sender": "", "sender_key": mallory_key} in [
        {k: r[k] for k in ("sender", "sender_key")} for r in refused]
    assert any("--name" in r["reason"] and r["sender"] == "alice" for r in refused)
    assert "refused a sender whose key is not allowed" in err


def test_sigterm_during_a_transfer_keeps_it_and_the_sender_resumes_it(image, tmp_path):
    src = image(64 * MiB, kind="random")
    template = str(tmp_path / "{name}")
    server, endpoint = start_server(template)
    sender = subprocess.Popen([sys.executable, "-m", "engine", "send", str(src), "--to",
                               endpoint, "--name", "guest", "--max-bandwidth", "16M", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_progress(tmp_path / "guest.partial", 16 * MiB)
    log, _ = stop(server)
    sender.communicate(timeout=60)
    assert sender.returncode != 0
    assert log == [{**log[0], "event": "transfer", "name": "guest", "outcome": "interrupted",
                    "kept": str(tmp_path / "guest.partial")}]
    assert not (tmp_path / "guest").exists() and (tmp_path / "guest.journal").exists()

    server, endpoint = start_server(template)
    assert send(src, endpoint, "--name", "guest", "--resume").returncode == 0
    log, _ = stop(server)
    assert filecmp.cmp(src, tmp_path / "guest", shallow=False)
    assert log[0]["outcome"] == "verified" and log[0]["resumed_pages"] > 0


def test_sigterm_between_transfers_stops_cleanly(tmp_path):
    server, _ = start_server(str(tmp_path / "{name}"))
    log, _ = stop(server)
    assert log == [] and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--serve", "--listen", "tcp://127.0.0.1:0"], "--serve needs --dest-template"),
    (["--serve", "--dest-template", "/tmp/x", "--listen", "tcp://127.0.0.1:0"],
     "must hold {name} once"),
    (["--serve", "--dest-template", "/tmp/{name}/{other}", "--listen", "tcp://127.0.0.1:0"],
     "must hold {name} once"),
    (["d", "--serve", "--dest-template", "/tmp/{name}", "--listen", "tcp://127.0.0.1:0"],
     "--serve takes no DEST"),
    (["d", "--dest-template", "/tmp/{name}", "--listen", "tcp://127.0.0.1:0"],
     "--dest-template goes with --serve"),
    (["--listen", "tcp://127.0.0.1:0"], "receive needs DEST"),
])
def test_serve_refuses_bad_usage_in_one_line(args, message):
    assert_usage_error(multifd("receive", *args), message)


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "a..b", "x" * 65, "sp ace"])
def test_send_refuses_a_name_that_could_leave_the_template(image, name):
    assert_usage_error(multifd("send", str(image(MiB)), "--to", "tcp://127.0.0.1:9",
                               "--name", name), "--name: ")


def test_the_example_unit_starts_a_serving_receiver_with_options_it_takes():
    unit = (ROOT / "examples" / "multifd-receiver.service").read_text()
    command = re.search(r"^ExecStart=(.*?[^\\])$", unit, re.MULTILINE | re.DOTALL).group(1)
    words = shlex.split(command.replace("\\\n", " "))
    assert words[1:3] == ["receive", "--serve"]
    shown = multifd("receive", "--help").stdout
    assert all(word in shown for word in words if word.startswith("--"))
    assert "SuccessExitStatus=143" in unit


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", "..", "x" * 65])
def test_a_hello_whose_name_could_leave_the_template_is_refused_and_logged(tmp_path, name):
    server, endpoint = start_server(str(tmp_path / "in" / "{name}"))
    context = zmq.Context()
    try:
        peer = context.socket(zmq.DEALER)  # a hand-made sender: `send --name` refuses these
        peer.connect(endpoint)
        peer.send(encode(new_hello(os.urandom(SESSION_BYTES), 4096, TransferSettings(),
                                   ["ram"], name=name)))
        assert peer.poll(30_000), "the receiver did not answer"
        answer = decode(peer.recv(), Fault)
    finally:
        context.destroy(linger=0)
    log, _ = stop(server)
    assert "transfer name" in answer.message
    assert [line["event"] for line in log] == ["refused"] and "transfer name" in log[0]["reason"]
    assert list(tmp_path.iterdir()) == []  # nothing written, inside the template or out
