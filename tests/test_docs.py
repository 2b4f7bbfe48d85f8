"""The README's promises: the quick start is what CI runs."""
from __future__ import annotations

import ast
import re
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
