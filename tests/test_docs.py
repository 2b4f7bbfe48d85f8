"""The README's promises: the quick start is what CI runs."""
from __future__ import annotations

from pathlib import Path

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
