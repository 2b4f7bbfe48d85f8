"""The load tester's smoke run (seconds, not a benchmark), and the pieces behind its options:
the matrix of settings and its schedule."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import TransferSettings
from engine.tools.bench.matrix import Axis, cells, schedule


def bench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "bench", "--warm-up", "0", *args],
                          capture_output=True, text=True, timeout=timeout)


def test_bench_smoke_measures_every_cell_against_the_ceilings():
    run = bench("--size", "2M", "--repeat", "1", "--channels", "1,2", "--compress",
                "none,zstd:1", "--json")
    assert run.returncode == 0, run.stderr
    (report,) = json.loads(run.stdout)["runs"]
    assert report["machine"]["nproc"] >= 1
    (wire,) = report["wire_ceiling_bytes_per_s"]
    assert wire > 0
    assert {f["compress"] for f in report["work_floor_cpu_s_per_gib"]} == {"none", "zstd:1"}
    cells_ = {(c["cell"]["channels"], c["cell"]["compress"]): c for c in report["cells"]}
    assert set(cells_) == {(1, "none"), (2, "none"), (1, "zstd:1"), (2, "zstd:1")}
    for cell in cells_.values():
        assert cell["failures"] == 0
        assert cell["median"]["cpu_per_gib"] > 0 and cell["median"]["peak_anon_mib"] > 0
    # A mixed image: zero pages never travel, and zstd shrinks the rest.
    assert cells_[(2, "none")]["median"]["wire_ratio"] < 0.8
    ratio = {key: cell["median"]["wire_ratio"] for key, cell in cells_.items()}
    assert ratio[(2, "zstd:1")] < ratio[(2, "none")]


def test_bench_compares_encryption_on_and_off():
    run = bench("--size", "2M", "--repeat", "1", "--channels", "2", "--compress", "none",
                "--curve", "off,on", "--no-ceilings", "--json")
    assert run.returncode == 0, run.stderr
    (report,) = json.loads(run.stdout)["runs"]
    cells_ = {c["cell"]["curve"]: c for c in report["cells"]}
    assert set(cells_) == {False, True}
    assert all(cell["failures"] == 0 for cell in cells_.values())


def test_bench_prints_a_table_and_soak_reports_each_transfer():
    run = bench("--size", "1M", "--repeat", "1", "--channels", "1", "--compress", "none",
                "--no-ceilings")
    assert run.returncode == 0, run.stderr
    assert "GiB/s" in run.stdout and "CPU s" in run.stdout  # x floor: in --wide
    soak = bench("--size", "1M", "--channels", "2", "--soak", "1", "--json")
    assert soak.returncode == 0, soak.stderr
    report = json.loads(soak.stdout)
    assert report["transfers"] >= 1 and report["failures"] == 0


@pytest.mark.parametrize("args, message", [
    (("--compress", "lz9"), "unknown codec"),
    (("--kind", "nonsense"), "unknown image kind"),
    (("--channels", "0"), "at least 1"),
    (("--max-bandwidth", "fast"), "rate 'fast'"),
])
def test_bench_refuses_bad_options_in_one_line(args, message):
    run = bench(*args)
    assert run.returncode == 2
    assert message in run.stderr and "Traceback" not in run.stderr


def test_the_schedule_runs_every_cell_once_per_round_in_shuffled_orders():
    matrix = cells([Axis("channels", (1, 2, 4)), Axis("compress", ("none", "zstd:1"))])
    plan = schedule(matrix, repeat=3, seed=7)
    rounds = [[cell for number, cell in plan if number == r] for r in range(3)]
    assert all(sorted(map(hash, r)) == sorted(map(hash, matrix)) for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1, "every round in the same order"


def test_an_axis_named_after_a_setting_goes_into_the_settings():
    (cell,) = cells([Axis("kind", ("mixed",)), Axis("window", (3,)),
                     Axis("compress", ("zstd:2",))])
    assert cell.settings() == TransferSettings(window=3, compress="zstd:2")


def test_the_tree_tool_names_each_process_of_a_command_and_their_total(tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(4 << 20))  # at 4 MiB/s every worker lives long enough to be seen
    run = subprocess.run([sys.executable, "-m", "engine.tools.bench.tree", "--", sys.executable,
                          "-m", "engine", "migrate", str(src), str(tmp_path / "dst"), "--json",
                          "--max-bandwidth", "4M", "--packet-pages", "64"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    names = {line.split()[1] for line in run.stdout.splitlines() if "CPU s  peak RSS" in line}
    assert {"multifd-src0", "multifd-src1", "multifd-dst0", "multifd-dst1"} <= names, run.stdout
    assert "peak anonymous memory" in run.stdout.splitlines()[-1]
    usage = subprocess.run([sys.executable, "-m", "engine.tools.bench.tree"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "usage:" in usage.stderr
