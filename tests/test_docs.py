"""The README's promises: the quick start is what CI runs, the layers hold, the cited paths
exist, and the Python snippets and shell walk-throughs run as pasted."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.tools.samples import write_sample

ROOT = Path(__file__).resolve().parent.parent


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_opens_with_the_two_set_up_commands():
    run_demo, run_tests = quick_start()
    assert run_demo.startswith("pip install") and "python -m engine demo" in run_demo
    assert run_tests.startswith("pip install") and "pytest" in run_tests


def test_ci_runs_the_readme_test_command_verbatim():
    _, run_tests = quick_start()
    assert run_tests in (ROOT / ".ci" / "run").read_text().splitlines()


# -- the tree keeps its layers (docs/architecture.md) ------------------------------------------

CORE = ["engine/errors.py", "engine/settings.py", "engine/security.py", "engine/log.py",
        "engine/units.py", "engine/wire", "engine/storage"]
COORDINATORS = ["engine.coordinator", "engine.live", "engine.qemu", "engine.cli", "engine.tools"]


def _imports(paths: list[str]) -> dict[str, set[str]]:
    """Every module each file under `paths` imports (absolute imports; the code uses no other)."""
    found: dict[str, set[str]] = {}
    for path in paths:
        files = [ROOT / path] if path.endswith(".py") else sorted((ROOT / path).rglob("*.py"))
        for file in files:
            names: set[str] = set()
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names.add(node.module)
                    names.update(f"{node.module}.{alias.name}" for alias in node.names)
            found[str(file.relative_to(ROOT))] = names
    return found


def _offenders(paths: list[str], forbidden: list[str]) -> list[str]:
    return sorted(f"{file} imports {name}" for file, names in _imports(paths).items()
                  for name in names
                  if any(name == f or name.startswith(f + ".") for f in forbidden))


def test_the_core_imports_neither_workers_nor_a_coordinator():
    assert _offenders(CORE, ["workers", *COORDINATORS]) == []


def test_workers_import_only_the_core():
    assert _offenders(["workers"], COORDINATORS) == []


def test_the_architecture_tree_lists_every_room():
    tree = (ROOT / "docs/architecture.md").read_text().split("```")[1]
    rooms = [p.name for base in ("engine", "workers") for p in (ROOT / base).iterdir()
             if p.is_dir() and (p / "__init__.py").exists()]
    assert [room for room in rooms if f"  {room}/" not in tree] == []


CITED = re.compile(r"(?<![\w/.])((?:engine|workers|tests|examples|docs|\.ci)/[\w/.-]*\w)")


def test_every_file_path_the_docs_cite_exists():
    documents = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
    missing = sorted({f"{doc.name}: {path}" for doc in documents
                      for path in CITED.findall(doc.read_text())
                      if not (ROOT / path).exists()})
    assert missing == []


# -- the Python API snippets run as pasted ------------------------------------------------------

def python_snippets() -> list[str]:
    """The README's ```python blocks, in order."""
    text = (ROOT / "README.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


def run_script(folder: Path, name: str, code: str) -> subprocess.CompletedProcess:
    """`python NAME.py` in `folder`, as a user runs a script: its own interpreter, no guard."""
    (folder / name).write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's engine, wherever it runs
    return subprocess.run([sys.executable, name], cwd=folder, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_migrate_snippet_runs_pasted_into_a_script_without_a_main_guard(tmp_path):
    write_sample(tmp_path / "guest.ram", 8 << 20)
    (tmp_path / "virtio-net.state").write_bytes(b"n" * 5000)
    migrate_snippet = python_snippets()[0]
    assert "__main__" not in migrate_snippet
    run = run_script(tmp_path, "literal.py", migrate_snippet)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    _rate, wire_bytes, digest = run.stdout.split()
    assert int(wire_bytes) > 0 and len(digest) == 32
    assert (tmp_path / "copy.ram").read_bytes() == (tmp_path / "guest.ram").read_bytes()
    assert (tmp_path / "copy.ram.devices" / "virtio-net").read_bytes() == b"n" * 5000
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "copy.ram", "copy.ram.devices", "guest.ram", "literal.py", "virtio-net.state"]


def keygen(folder: Path) -> None:
    """The README's keygen commands ("Between two hosts"), run in `folder`."""
    for name in ("receiver", "sender"):
        subprocess.run([sys.executable, "-m", "engine", "keygen", f"keys/{name}", "--name", name],
                       cwd=folder, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True,
                       capture_output=True, timeout=30)
    (folder / "keys/allowed").mkdir()
    shutil.copy(folder / "keys/sender/sender.key", folder / "keys/allowed/")  # as the README


@pytest.mark.parametrize("snippet", [1, 2], ids=["rounds", "encrypted"])
def test_the_receiver_and_sender_snippets_run_as_two_scripts(tmp_path, snippet):
    write_sample(tmp_path / "guest.ram", 40 << 20)  # page 9000 is inside
    if snippet == 2:
        keygen(tmp_path)
    receiver_part, sender_part = python_snippets()[snippet].split("\n# In another (the source):\n")
    with socket.socket() as s:  # the README's port 7000 may be taken on a shared machine
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    (tmp_path / "receiver.py").write_text(receiver_part.replace("tcp://127.0.0.1:7000", endpoint))
    receiver = subprocess.Popen([sys.executable, "receiver.py"], cwd=tmp_path,
                                env={**os.environ, "PYTHONPATH": str(ROOT)},
                                stderr=subprocess.PIPE, text=True)
    sender = run_script(tmp_path, "sender.py",
                        "import engine\n" + sender_part.replace("tcp://127.0.0.1:7000", endpoint))
    _, receiver_err = receiver.communicate(timeout=60)
    assert sender.returncode == 0, sender.stderr
    assert receiver.returncode == 0, receiver_err
    assert (tmp_path / "copy.ram").read_bytes() == (tmp_path / "guest.ram").read_bytes()
    if snippet == 1:
        assert (tmp_path / "devices" / "cpu").read_bytes() == b"..."


# -- the README's command synopsis is what --help says ----------------------------------------

def synopsis() -> list[tuple[str, str]]:
    """Each command of the README's "Command line" block and its (joined) synopsis, one
    pair per line (a command may have several: receive, receive --serve)."""
    block = (ROOT / "README.md").read_text().split("## Command line\n\n```sh\n", 1)[1]
    lines = block.split("```", 1)[0].replace("\\\n", " ").splitlines()
    return [(line.split()[3], line) for line in lines if re.match(r"python -m engine \w", line)]


def test_the_readme_synopsis_names_options_and_values_as_help_does():
    commands = synopsis()
    assert {command for command, _ in commands} == {"migrate", "receive", "send", "keygen",
                                                    "demo"}
    for command, line in commands:
        shown = subprocess.run([sys.executable, "-m", "engine", command, "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=30).stdout
        shown = " ".join(shown.split())  # argparse wraps lines where it likes
        for option, value in re.findall(r"(--[\w-]+)(?: ([A-Z][A-Z_=:/]*))?", line):
            assert f"{option} {value}".strip() in shown, f"{command}: {option} {value}"


# -- the README's shell walk-throughs run as pasted, in two shells --------------------------

def sh_block(after: str) -> str:
    """The first ```sh block after the line `after` in the README."""
    text = (ROOT / "README.md").read_text().split(after, 1)[1]
    return text.split("```sh\n", 1)[1].split("```", 1)[0]


def free_endpoint() -> str:
    with socket.socket() as s:  # the README's port 7000 may be taken on a shared machine
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def bash(script: str, folder: Path, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(["bash", "-e", "-c", script], cwd=folder, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **popen)


def test_the_two_host_walk_through_runs_as_pasted_in_two_shells(tmp_path):
    block = sh_block("## Between two hosts").replace("127.0.0.1:7000", free_endpoint())
    keys, rest = block.split("# shell 1: wait for one transfer\n")
    shell1, shell2 = rest.split("# shell 2:")
    assert bash(keys, tmp_path).wait(60) == 0
    receiver = bash(shell1, tmp_path)
    sender = bash("# shell 2:" + shell2, tmp_path)
    sent, received = sender.communicate(timeout=120)[0], receiver.communicate(timeout=60)[0]
    assert sender.returncode == 0 and receiver.returncode == 0, sent + received
    assert "transfer verified" in sent and "transfer verified" in received
    assert (tmp_path / "guest-copy.ram").read_bytes() == (tmp_path / "guest.ram").read_bytes()


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("as") is None,
                    reason="qemu-system-x86 and binutils are not installed (.ci/run installs them)")
def test_the_qemu_walk_through_runs_as_pasted_in_two_shells(tmp_path):
    endpoint = free_endpoint()
    shell1 = sh_block("Walk-through on one machine").replace("127.0.0.1:7000", endpoint)
    shell2 = sh_block("Shell 2, the migration:").replace("127.0.0.1:7000", endpoint)
    leftovers = [Path("/dev/shm/src.ram"), Path("/dev/shm/dst.ram"), Path("/tmp/src.qmp"),
                 Path("/tmp/dst.qmp")]
    machines = bash(shell1, tmp_path, start_new_session=True)  # its QEMUs stay in its group
    try:
        run = bash(shell2, tmp_path)
        out = run.communicate(timeout=180)[0]
        assert run.returncode == 0, out + machines.communicate(timeout=60)[0]
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["ok"] and summary["vm"] == {"source": "postmigrate",
                                                   "destination": "running"}
        assert machines.wait(60) == 0  # the receiver's shell ends once the guest runs there
    finally:
        os.killpg(machines.pid, signal.SIGKILL)
        machines.wait(30)
        for path in leftovers:
            path.unlink(missing_ok=True)
        shutil.rmtree("/tmp/guest", ignore_errors=True)


def test_the_serving_receiver_walk_through_runs_as_pasted(tmp_path):
    """As pasted but for the two names a reader puts in: the receiver host, and the address
    to listen on (loopback here)."""
    endpoint = free_endpoint()
    keys = sh_block("## Between two hosts").split("# shell 1: wait for one transfer\n")[0]
    serve, send = sh_block("Each transfer's device state goes beside it").split(
        "\npython -m engine send")
    serve = serve.replace("0.0.0.0:7000", endpoint)
    send = "python -m engine send" + send.replace("RECEIVER-HOST:7000", endpoint)
    write_sample(tmp_path / "guest.ram", 4 << 20)
    assert bash(keys, tmp_path).wait(60) == 0
    receiver = bash(f"exec {serve}", tmp_path)  # exec: SIGTERM reaches the receiver itself
    try:
        sent = bash(send, tmp_path)
        assert sent.wait(120) == 0, sent.communicate()[0]
        line = json.loads(next(text for text in receiver.stdout if text.startswith("{")))
        assert line["name"] == "web1" and line["outcome"] == "verified", line
        assert Path("/dev/shm/web1").read_bytes() == (tmp_path / "guest.ram").read_bytes()
        receiver.send_signal(signal.SIGTERM)
        assert receiver.wait(60) == 143
    finally:
        receiver.kill()
        Path("/dev/shm/web1").unlink(missing_ok=True)
        shutil.rmtree("/dev/shm/web1.devices", ignore_errors=True)
