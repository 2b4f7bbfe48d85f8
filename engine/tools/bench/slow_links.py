"""`python -m engine.tools.bench.slow_links`: `send --compress auto` against QEMU and plain
pipes across the same shaped links, in the same shuffled rounds, on the same image.

`bench --link` runs only the engine; issue 10 asks for `auto` to beat, on each link, QEMU
multifd (none and zstd, ../shared/peers/qemu_multifd.py in the two namespaces), `zstd -1
-T0 | socat` and `cat | socat`. Every run is timed as it would be used: the receiving end
listens first, the wall time runs from starting the source until the destination holds the
image (the engine's `send` command, start-up included; QEMU's figure is the peer script's,
from `migrate` to both sides completed, start-up not included). Wire bytes are what left the
source's veth (TCP/IP headers included; `send`'s own figure is its payload), CPU seconds every process the run started (the
rusage of reaped children: this process is their subreaper). Each copy is compared with the
image. Root is needed (network namespaces).
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from engine.tools.bench.compare import same_bytes
from engine.tools.bench.images import ImageFolder
from engine.tools.bench.link import DESTINATION_ADDRESS, LinkLab, LinkRunner
from engine.tools.bench.matrix import Cell, schedule
from engine.tools.bench.measure import become_subreaper, reap_orphans
from engine.tools.bench.runner import existing_children
from engine.units import parse_rate, parse_size

# The project's QEMU driver, beside the checkout (../shared/peers); --qemu-peer overrides it.
QEMU_PEER = Path(__file__).resolve().parents[4] / "shared" / "peers" / "qemu_multifd.py"
PORT = 47011  # the pipes' listening port, inside the destination namespace only
TIMEOUT_S = 300

# The pipes, by the name the table gives them: (source, destination) shell commands.
PIPES = {
    "zstd -1 -T0 | socat": ("zstd -1 -T0 -c {image} | socat -u - TCP:{address}:{port}",
                            "socat -u TCP-LISTEN:{port},reuseaddr - | zstd -d -T0 -q -o "
                            "{destination}"),
    "cat | socat": ("cat {image} | socat -u - TCP:{address}:{port}",
                    "socat -u TCP-LISTEN:{port},reuseaddr - > {destination}"),
}
QEMU_RUNS = {"QEMU none": "none", "QEMU zstd": "zstd"}


@dataclass(frozen=True)
class Run:
    wall_s: float
    cpu_s: float
    wire_bytes: int
    error: str = ""


def run_one(lab: LinkLab, name: str, image: Path, destination: Path, channels: int,
            qemu_peer: Path) -> Run:
    """One transfer of `image` across the lab's link by `name`, measured."""
    destination.unlink(missing_ok=True)
    keep = existing_children()
    before_wire, before_cpu = _wire_bytes(lab), _children_cpu()
    wall, error = _transfer(lab, name, image, destination, channels, qemu_peer)
    reap_orphans(keep)
    cpu, wire = _children_cpu() - before_cpu, _wire_bytes(lab) - before_wire
    # The engine and QEMU's peer script compare the copy themselves (and QEMU's lives in its
    # own folder); the pipes do not.
    if not error and name in PIPES and not same_bytes(image, destination):
        error = "the copy differs from the image"
    destination.unlink(missing_ok=True)
    return Run(wall, cpu, wire, error)


def _transfer(lab: LinkLab, name: str, image: Path, destination: Path, channels: int,
              qemu_peer: Path) -> tuple[float, str]:
    if name.startswith("engine "):
        cell = Cell((("channels", channels), ("compress", name.split()[1])))
        sample = LinkRunner(lab).run(cell, 0, image, destination)
        return sample.wall_s, sample.error
    if name in QEMU_RUNS:
        done = subprocess.run(
            [sys.executable, str(qemu_peer), "--image", str(image), "--channels",
             str(channels), "--compression", QEMU_RUNS[name], "--json",
             "--tmpdir", str(destination.parent), "--src-netns", lab.source,
             "--dst-netns", lab.destination, "--dst-addr", DESTINATION_ADDRESS],
            capture_output=True, text=True, timeout=TIMEOUT_S)
        if done.returncode != 0:
            return 0.0, (done.stderr.strip().splitlines() or ["QEMU's peer script failed"])[-1]
        return json.loads(done.stdout.strip().splitlines()[-1])["wall_s"], ""
    send, receive = (template.format(image=shlex.quote(str(image)), port=PORT,
                                     address=DESTINATION_ADDRESS,
                                     destination=shlex.quote(str(destination)))
                     for template in PIPES[name])
    receiver = subprocess.Popen([*lab.prefix(lab.destination), "sh", "-c", receive])
    _wait_listening(lab)
    started = time.perf_counter()
    sent = subprocess.run([*lab.prefix(lab.source), "sh", "-c", send], timeout=TIMEOUT_S)
    received = receiver.wait(TIMEOUT_S)
    wall = time.perf_counter() - started
    return wall, "" if sent.returncode == received == 0 else "the pipe failed"


def _wait_listening(lab: LinkLab) -> None:
    """Until the receiving pipe listens (at most 10 s: after that the run fails by itself)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = subprocess.run([*lab.prefix(lab.destination), "ss", "-Hltn",
                                    f"sport = :{PORT}"], capture_output=True, text=True)
        if listening.stdout.strip():
            return
        time.sleep(0.02)


def _wire_bytes(lab: LinkLab) -> int:
    device = lab.devices[lab.source]
    return int(subprocess.run([*lab.prefix(lab.source), "cat",
                               f"/sys/class/net/{device}/statistics/tx_bytes"],
                              capture_output=True, text=True, check=True).stdout)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--link", default="1gbit,10gbit")
    parser.add_argument("--size", default="1G")
    parser.add_argument("--kind", default="mixed")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--runs", default=",".join(["engine auto", "engine zstd:1", *QEMU_RUNS, *PIPES]),
                        help="comma-separated: engine CODEC, QEMU none, QEMU zstd, and the pipes")
    parser.add_argument("--qemu-peer", type=Path, default=QEMU_PEER)
    args = parser.parse_args()
    become_subreaper()
    names = args.runs.split(",")
    folder = ImageFolder()
    try:
        image = folder.image(args.kind, parse_size(args.size), 0)
        with LinkLab() as lab:
            for link in args.link.split(","):
                lab.shape(parse_rate(link))
                results: dict[str, list[Run]] = {name: [] for name in names}
                for repeat, name in schedule(names, args.repeat):
                    run = run_one(lab, name, image, folder.destination(), args.channels,
                                  args.qemu_peer)
                    results[name].append(run)
                    print(f"{link} {repeat} {name}: {run}", file=sys.stderr, flush=True)
                _table(link, args, image.stat().st_size, results)
    finally:
        folder.close()


def _table(link: str, args: argparse.Namespace, size: int, results: dict[str, list[Run]]
           ) -> None:
    print(f"\n**{link}**, {args.kind} {args.size}, {args.channels} channels, medians of "
          f"{args.repeat}\n")
    print("| run | wall s | wall s, each run | CPU s | wire/image | fails |")
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name, runs in results.items():
        good = [r for r in runs if not r.error] or runs
        label = name.replace("|", "\\|")  # a pipe inside a Markdown table cell
        print(f"| {label} | {statistics.median(r.wall_s for r in good):.2f} | "
              f"{', '.join(f'{r.wall_s:.2f}' for r in runs)} | "
              f"{statistics.median(r.cpu_s for r in good):.2f} | "
              f"{statistics.median(r.wire_bytes for r in good) / size:.3f} | "
              f"{sum(bool(r.error) for r in runs)} |", flush=True)


if __name__ == "__main__":
    main()
