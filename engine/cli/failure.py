"""How a command that did not verify ends: one line on stderr, the JSON line a `--json` caller
parses even then, and after an interrupt what was kept and the command that continues."""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from engine.errors import EngineError, Interrupted


@dataclass(frozen=True)
class Failure:
    """What a command reports instead of a result."""

    error: str  # the sentence, without the "multifd: error: " in front
    exit_code: int
    interrupted: bool = False

    @classmethod
    def of(cls, exc: BaseException) -> "Failure | None":
        """The failure an exception stands for; None for one the command line does not
        translate (a bug: its traceback is worth more than a sentence)."""
        if isinstance(exc, Interrupted):
            return cls(str(exc), exc.exit_code, interrupted=True)
        if isinstance(exc, KeyboardInterrupt):
            return cls("interrupted", 130, interrupted=True)
        if isinstance(exc, EngineError):
            return cls(str(exc), exc.exit_code)
        if isinstance(exc, OSError):  # one the engine did not foresee: still naming the file
            where = f"{exc.filename}: " if exc.filename else ""
            return cls(f"{where}{exc.strerror or exc}", 1)
        return None

    def report(self, args: argparse.Namespace | None, argv: Sequence[str]) -> None:
        """One line on stderr (an interrupt's says what was kept and how to continue); with
        --json, `{"ok": false, "error": ..., "exit_code": ...}` as the last line of stdout."""
        if self.interrupted:
            line = f"{self.error}; stopped" + (resume_hint(args, argv) if args else "")
        else:
            line = f"error: {self.error}"
        print(f"multifd: {line}", file=sys.stderr, flush=True)
        if "--json" in argv:
            print(json.dumps({"ok": False, "error": self.error, "exit_code": self.exit_code}),
                  flush=True)


def resume_hint(args: argparse.Namespace, argv: Sequence[str]) -> str:
    """What an interrupted command kept and the command that continues it ("" if nothing
    can be resumed: live and VM migrations start again, shared memory is not kept)."""
    if args.command not in ("migrate", "send", "receive") or getattr(args, "live", False) \
            or getattr(args, "qemu", None) is not None:
        return ""
    if getattr(args, "serve", False):  # an interrupted transfer's log line says what it kept
        return ""
    if args.command == "send":
        return (f"; to continue, start the receiver on the same DEST again and run: "
                f"{_again(argv, '--resume')}")
    from engine.storage.image import parse_location  # numpy: only once there is a failure
    dest = parse_location(args.dest)
    if not dest.partial_path.exists() or not dest.journal_path.exists():
        return ""
    kept = f"; kept {dest.partial_path} and {dest.journal_path.name}"
    if args.command == "receive":
        return f"{kept}: to continue, run: {_again(argv)} and send with --resume"
    return f"{kept}: to continue, run: {_again(argv, '--resume')}"


def _again(argv: Sequence[str], *extra: str) -> str:
    """The command line as typed, plus `extra` options it lacks, ready to paste."""
    program = ["python", "-m", "engine"] if Path(sys.argv[0]).name == "__main__.py" \
        else ["multifd"]
    return shlex.join([*program, *argv, *(option for option in extra if option not in argv)])
