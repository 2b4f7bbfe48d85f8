"""`bench --peer qemu,lean,cp`: the peers run beside the engine on the same tiny images, and the
table a user reads (issue 10 item 5, issue 13 item 7). Real runs, one repeat, no timings."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86 is not installed")


def bench(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "bench", "--size", "4M",
                           "--repeat", "1", *args],
                          capture_output=True, text=True, timeout=300, env=env)


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("bench: ")]


@needs_qemu
def test_the_peers_run_beside_the_engine_in_a_table_of_at_most_100_columns():
    run = bench("--channels", "1,2", "--compress", "none,zstd:1", "--peer", "qemu,lean,cp")
    assert run.returncode == 0, run.stderr
    lines = table_lines(run.stdout)
    assert max(map(len, lines)) <= 100
    rows = {}
    for line in lines:
        match = re.match(r"^ *(?:(\d) +(\S+) +)?(engine|qemu|lean|cp) ", line)
        if match:
            rows.setdefault(match.group(3), []).append(line)
    # Under each of the 4 engine cells: qemu and lean; cp only where nothing is compressed.
    assert {name: len(found) for name, found in rows.items()} == {
        "engine": 4, "qemu": 4, "lean": 4, "cp": 2}
    assert "±" not in run.stdout, "a spread shown for a single repeat"
    assert "kind=mixed size=4M" in lines[0], "the axes with one value belong in the title"
    progress = [line for line in run.stderr.splitlines() if line.startswith("bench: [")]
    assert len(progress) == 4 + 4 + 4 + 1, "cp runs once: channels are not its axis"
    assert all("size=4M" in line for line in progress)
    # The warm-up is the run's own size: the 4M image and its 8M of destination room.
    assert "warming up: writing and deleting 12M in /dev/shm" in run.stderr


@needs_qemu
def test_the_json_gives_each_peer_its_figures_and_the_ratios_engine_over_peer():
    run = bench("--channels", "2", "--compress", "none", "--peer", "qemu,lean,cp", "--json",
                "--no-ceilings", "--warm-up", "0")
    assert run.returncode == 0, run.stderr
    (report,) = json.loads(run.stdout)["runs"]
    assert report["runner"] == "command", "peers are whole commands: so is the engine"
    (cell,) = report["cells"]
    assert cell["failures"] == 0
    ratios = cell["engine_over_peer"]
    assert set(ratios) == {"qemu", "lean", "cp"}
    assert all(ratios[peer]["wall_s"] > 0 and ratios[peer]["cpu_s"] > 0 for peer in ratios)
    peers = {p["run"]: p for p in report["peer_cells"]}
    assert set(peers) == {"qemu", "lean", "cp"}
    assert peers["cp"]["cell"] == {"kind": "mixed", "size": 4 << 20, "compress": "none"}
    assert peers["qemu"]["cell"]["channels"] == 2
    for peer in peers.values():
        assert peer["failures"] == 0, peer["samples"][0]["error"]
        assert peer["median"]["cpu_s"] > 0, f"{peer['run']}: the CPU of its processes"
        (sample,) = peer["samples"]
        assert sample["run"] == peer["run"] and sample["ok"]
    assert ratios["qemu"]["wall_s"] == pytest.approx(
        cell["median"]["wall_s"] / peers["qemu"]["median"]["wall_s"])
    assert peers["lean"]["median"]["wire_ratio"] < 1, "zero pages never travel"


def test_without_qemu_on_path_asking_for_it_fails_in_one_line_before_any_work(tmp_path):
    run = bench("--peer", "lean,qemu", env={"PATH": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "multifd: error: --peer qemu needs qemu-system-x86_64, which is not on PATH "
        "(apt-get install qemu-system-x86)"]
    assert run.stdout == ""


def test_a_peer_that_runs_none_of_the_cells_says_so_and_no_peer_column_is_empty():
    run = bench("--channels", "2", "--compress", "auto", "--peer", "cp", "--repeat", "2",
                "--no-ceilings", "--warm-up", "0", "--wide")
    assert run.returncode == 0, run.stderr
    assert "cp runs none of these cells" in run.stderr
    lines = table_lines(run.stdout)
    assert not any(re.search(r"\b(cp|qemu|QEMU|ratio)\b", line) for line in lines)
    header = " ".join(lines)
    assert "x floor" in header and "CPU s/GiB" in header, "--wide shows every column"
    assert "±" in run.stdout, "two repeats have a spread to show"


@pytest.mark.parametrize("args, message", [
    (("--peer", "vmware"), "unknown peer 'vmware'; known: qemu, lean, cp"),
    (("--peer", "lean", "--soak", "1"), "--peer compares uncapped runs on loopback"),
    (("--peer", "cp", "--max-bandwidth", "100M"), "leave out --link, --soak and --max-band"),
])
def test_bench_refuses_bad_peer_options_in_one_line(args, message):
    run = bench(*args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="the plot extra (matplotlib) is not installed")
def test_the_plot_is_written_with_the_peers_and_the_wire_ceiling(tmp_path):
    path = tmp_path / "bench.png"
    run = bench("--channels", "1,2", "--compress", "none", "--peer", "lean", "--warm-up", "0",
                "--plot", str(path))
    assert run.returncode == 0, run.stderr
    assert f"plot written to {path}" in run.stderr
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_plot_is_refused_before_any_work(tmp_path):
    (tmp_path / "matplotlib").mkdir()  # a package that cannot be imported shadows it
    (tmp_path / "matplotlib" / "__init__.py").write_text("raise ImportError('no plots here')")
    run = bench("--plot", str(tmp_path / "x.png"),
                env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert run.returncode == 2
    assert "--plot needs matplotlib" in run.stderr and "making sample images" not in run.stderr
