"""Pausing the source of a live migration: a process (SIGSTOP / SIGCONT) or the user's commands.

A pause must return only once the source has stopped writing: the engine's last look for
dirty pages comes right after it. For a process that means waiting until the kernel reports
it stopped, since SIGSTOP is delivered asynchronously.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from engine.errors import TransferError, UsageError

STOP_TIMEOUT_S = 5.0
_STOPPED = (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)


class ProcessPause:
    """Stops process `pid` with SIGSTOP and resumes it with SIGCONT."""

    def __init__(self, pid: int) -> None:
        if pid <= 1 or pid == os.getpid():
            raise UsageError(f"cannot pause process {pid}")
        try:
            self.process = psutil.Process(pid)
        except psutil.Error:
            raise UsageError(f"there is no process {pid} to pause") from None
        self.pid = pid

    def pause(self) -> None:
        try:
            os.kill(self.pid, signal.SIGSTOP)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while (status := self.process.status()) not in _STOPPED:
                if status == psutil.STATUS_ZOMBIE or time.monotonic() > deadline:
                    raise TransferError(f"process {self.pid} did not stop ({status})")
                time.sleep(0.0002)
        except (ProcessLookupError, psutil.NoSuchProcess):
            raise TransferError(f"process {self.pid} is gone; cannot pause it") from None

    def resume(self) -> None:
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass  # nothing left to resume


class CommandPause:
    """Runs the user's shell commands; the pause command must return once the source stopped."""

    def __init__(self, pause_command: str, resume_command: str | None = None) -> None:
        if not pause_command.strip():
            raise UsageError("the pause command is empty")
        self.pause_command = pause_command
        self.resume_command = resume_command

    def pause(self) -> None:
        _run(self.pause_command, "pause")

    def resume(self) -> None:
        if self.resume_command:
            _run(self.resume_command, "resume")


def _run(command: str, what: str) -> None:
    # Its output goes to stderr: stdout carries our --json line.
    done = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL,
                          stdout=sys.stderr.fileno())
    if done.returncode != 0:
        raise TransferError(f"the {what} command failed (exit code {done.returncode}): "
                            f"{command}")
