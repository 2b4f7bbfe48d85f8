"""The Python API as a type checker and a user's editor see it: the package says it is typed,
and every name `engine` exports is there, documented."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import engine

ROOT = Path(__file__).resolve().parent.parent


def test_the_built_package_ships_py_typed(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:  # a clean copy: no build output of this checkout gets in
        if (ROOT / name).is_file():
            (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, tmp_path / "src" / name)
    build = subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()",
                            "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
                           cwd=tmp_path / "src", capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "lib" / "engine" / "py.typed").is_file()
    assert (tmp_path / "lib" / "workers" / "py.typed").is_file()


def test_every_exported_name_resolves_and_is_documented():
    undocumented = [name for name in engine.__all__ if name != "__version__"
                    and not (getattr(engine, name).__doc__ or "").strip()]
    assert undocumented == []
    keys = {"ClientKeys", "ServerKeys", "load_client_keys", "load_server_keys"}
    assert keys <= set(engine.__all__)


def test_the_raising_calls_say_what_they_raise():
    for documented in (engine.migrate, engine.Sender):
        assert "Raises" in documented.__doc__
        for error in ("UsageError", "PeerLost", "VerificationFailed"):
            assert error in documented.__doc__, (documented.__name__, error)
