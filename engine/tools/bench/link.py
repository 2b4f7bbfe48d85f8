"""`bench --link RATE`: the matrix across two network namespaces joined by a shaped veth pair.

This is what users have between two hosts: a link slower than loopback, where compression
pays. The namespaces, the veth pair and the tbf shaping (this kernel has no netem, so no
added delay) are made by this module and always removed, on errors and Ctrl-C too. Traffic
uses only the two addresses inside those namespaces. Root is needed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from engine.tools.bench.matrix import Cell
from engine.tools.bench.measure import TreeMeter, reap_orphans
from engine.tools.bench.runner import (COMMAND_TIMEOUT_S, Sample, command_result, engine_root,
                                 existing_children, max_bandwidth_arguments, sample_from,
                                 settings_arguments)
from engine.errors import TransferError, UsageError

SOURCE_ADDRESS, DESTINATION_ADDRESS = "10.77.0.1", "10.77.0.2"
# tbf's queue: this many seconds' worth of bytes wait at the shaper before it drops.
QUEUE_S = 0.05


def check_can_run() -> None:
    """UsageError unless we are root and have iproute2: said before any work starts."""
    if os.geteuid() != 0:
        raise UsageError("bench --link needs root: it creates network namespaces and a "
                         "veth pair (run it as root, e.g. with sudo)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise UsageError(f"bench --link needs '{tool}' (apt-get install iproute2)")


class LinkLab:
    """Two namespaces, source and destination, and a veth pair between them."""

    def __init__(self) -> None:
        check_can_run()
        tag = os.getpid()
        self.source, self.destination = f"multifd-src-{tag}", f"multifd-dst-{tag}"
        self.devices = {self.source: "mfd-src", self.destination: "mfd-dst"}

    def __enter__(self) -> "LinkLab":
        try:
            for namespace in self.devices:
                _ip("netns", "add", namespace)
            _ip("link", "add", self.devices[self.source], "netns", self.source, "type", "veth",
                "peer", "name", self.devices[self.destination], "netns", self.destination)
            for namespace, address in ((self.source, SOURCE_ADDRESS),
                                       (self.destination, DESTINATION_ADDRESS)):
                device = self.devices[namespace]
                _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", device)
                _ip("-n", namespace, "link", "set", device, "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def shape(self, rate: int) -> None:
        """Both directions at `rate` bytes per second, with token bucket filters."""
        burst = max(64 << 10, rate // 100)
        for namespace, device in self.devices.items():
            subprocess.run(["tc", "-n", namespace, "qdisc", "del", "dev", device, "root"],
                           capture_output=True)
            _run("tc", "-n", namespace, "qdisc", "add", "dev", device, "root", "tbf",
                 "rate", f"{rate * 8}bit", "burst", str(burst),
                 "limit", str(burst + int(rate * QUEUE_S)))

    def prefix(self, namespace: str) -> list[str]:
        return ["ip", "netns", "exec", namespace]

    def close(self) -> None:
        for namespace in self.devices:  # deleting a namespace deletes its end of the veth
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


class LinkRunner:
    """A cell as `receive` in the destination namespace and `send` in the source one."""

    name = "link"

    def __init__(self, lab: LinkLab, max_bandwidth: int | None = None) -> None:
        self.lab = lab
        self.max_bandwidth = max_bandwidth

    def run(self, cell: Cell, repeat: int, image: Path, destination: Path) -> Sample:
        """Wall time is the `send` command's, start-up included, with the receiver already
        listening (as QEMU's figures are taken: the destination waits in -incoming mode);
        CPU and memory are both ends'."""
        engine = [sys.executable, "-m", "engine"]
        keep = existing_children()
        with TreeMeter(command=True, exclude=keep) as meter:
            receiver = subprocess.Popen(
                [*self.lab.prefix(self.lab.destination), *engine, "receive", str(destination),
                 "--listen", f"tcp://{DESTINATION_ADDRESS}:0", "--force", "--json",
                 # the lab's own veth pair, reachable from these two namespaces only
                 "--insecure"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=engine_root())
            try:
                endpoint = _listening(receiver)
                started = time.perf_counter()
                sent = subprocess.run(
                    [*self.lab.prefix(self.lab.source), *engine, "send", str(image), "--to",
                     endpoint, "--json", *settings_arguments(cell.settings()),
                     *max_bandwidth_arguments(self.max_bandwidth)],
                    capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                    cwd=engine_root())
                wall = time.perf_counter() - started
                receiver.communicate(timeout=COMMAND_TIMEOUT_S)
            finally:
                if receiver.poll() is None:
                    receiver.kill()
                    receiver.wait()
            reap_orphans(keep)
        destination.unlink(missing_ok=True)
        result, error = command_result(sent)
        return sample_from(cell, repeat, image.stat().st_size, meter, result, error, wall)


def _listening(receiver: subprocess.Popen) -> str:
    line = receiver.stderr.readline()
    match = re.search(r"listening on (tcp://\S+)", line)
    if not match:
        raise TransferError(f"the receiver in the link namespace did not start: {line.strip()}")
    return match.group(1)


def _ip(*args: str) -> None:
    _run("ip", *args)


def _run(*command: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise TransferError(f"'{' '.join(command)}' failed: {done.stderr.strip()}")
