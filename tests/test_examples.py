"""Every script in examples/ runs, on small inputs."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# script: (small arguments, a word its output must contain)
SMALL_ARGS = {
    "migrate_image.py": (["--size", "8M", "--channels", "2", "--compress", "zstd:1"],
                         "verified"),
    "rounds.py": (["--size", "4M", "--rounds", "2"], "verified: True"),
    "curve_cost.py": (["--size", "8M", "--runs", "1", "--codecs", "none"], "CURVE/plain"),
    "live_guest.py": (["--size", "8M", "--rate", "16M", "--json"], '"identical": true'),
    "hot_writer.py": (["--size", "16M", "--hot", "1M", "--sweep-rate", "8M"],
                      '"identical": true'),
    "qemu_guest.py": (["--ram", "64M", "--pages", "1024", "--compare-qemu"], "consistent"),
}
NEEDS_QEMU = {"qemu_guest.py"}


def test_every_example_has_small_arguments():
    scripts = {p.name for p in (ROOT / "examples").glob("*.py")}
    missing = scripts - SMALL_ARGS.keys()
    assert not missing, f"examples without a test: {missing}"


@pytest.mark.parametrize("script", sorted(SMALL_ARGS))
def test_example_runs(script):
    if script in NEEDS_QEMU and shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (.ci/run installs it)")
    args, expected = SMALL_ARGS[script]
    run = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                         capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 0, run.stderr
    assert expected in run.stdout
