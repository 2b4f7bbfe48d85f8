"""`python -m engine bench`: its options, and the run that ties the pieces together.

One run: warm the machine up, make the sample images, then for each place (loopback, or
each shaped link rate) measure the ceilings and every cell `--repeat` times in interleaved,
shuffled rounds (the ceilings once per round too), the peers' runs (peers.py) shuffled in
among the engine's, and report.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from engine.tools.bench import ceilings as ceiling
from engine.tools.bench.images import ImageFolder, warm_up
from engine.tools.bench.machine import describe
from engine.tools.bench.matrix import Axis, Cell, cells, schedule, show_value
from engine.tools.bench.measure import become_subreaper
from engine.tools.bench.peers import Peer, chosen_peers, runner_for
from engine.tools.bench.report import Ceilings, summarise, to_json
from engine.tools.bench.runner import ApiRunner, CommandRunner, Runner, Sample
from engine.tools.bench.table import print_table
from engine.errors import UsageError
from engine.settings import DEFAULT_PACKET_PAGES, PAGE_SIZE

MiB = 1 << 20
_SMOKE_IMAGE = 1 << 20


def run(args: argparse.Namespace) -> int:
    from workers.codecs import session_codecs
    for codec in args.compress:
        session_codecs(codec)  # unknown codecs fail before any work
    matrix = cells(_axes(args))
    for cell in matrix:
        cell.settings()  # out-of-range settings fail before any work
    if args.soak is not None and args.link:
        raise UsageError("--soak runs on loopback; leave out --link")
    peers = chosen_peers(args.peer)
    if peers and (args.link or args.soak is not None or args.max_bandwidth):
        raise UsageError("--peer compares uncapped runs on loopback; leave out --link, "
                         "--soak and --max-bandwidth")
    if args.link:
        from engine.tools.bench.link import check_can_run
        check_can_run()
    if args.plot:
        from engine.tools.bench.plot import check_can_plot
        check_can_plot()
    args.runner = args.runner or ("command" if peers else "api")
    become_subreaper()
    images = ImageFolder()
    try:
        room = len(args.kind) * sum(args.size), max(args.size) * 2
        images.check_room(*room)
        # What the run will fault in is what wants warming: its images and destination.
        warm = sum(room) if args.warm_up is None else args.warm_up
        if warm:
            _say(f"warming up: writing and deleting {show_value(warm)} in /dev/shm")
            warm_up(warm)
        _say("making sample images")
        for kind in args.kind:
            for size in args.size:
                images.image(kind, size, args.seed)
        if args.soak is not None:
            return _soak(args, matrix[0], images)
        places = _places(args)
        report: list[dict[str, Any]] = []
        failed = False
        for where, runner, wire in places():
            summaries, found = _measure(args, matrix, peers, images, runner, wire)
            print_table(summaries, found, where, runner.name, bool(args.max_bandwidth),
                        wide=args.wide, stderr=args.json)
            report.append(to_json(summaries, found, where, runner.name, describe()))
            failed |= any(s.failures for s in summaries)
            if args.plot:
                from engine.tools.bench.plot import plot
                path = args.plot if len(report) == 1 else args.plot.with_stem(
                    f"{args.plot.stem}-{where}")
                plot(summaries, path, f"{where}, {runner.name} runs",
                     found.wire_figure().median)
                _say(f"plot written to {path}")
        if args.json:
            print(json.dumps({"runs": report}, default=str), flush=True)
        return 1 if failed else 0
    finally:
        images.close()


def _axes(args: argparse.Namespace) -> list[Axis]:
    axes = [Axis("kind", tuple(args.kind)), Axis("size", tuple(args.size)),
            Axis("channels", tuple(args.channels)), Axis("compress", tuple(args.compress))]
    if args.packet_pages:
        axes.append(Axis("packet_pages", tuple(args.packet_pages)))
    if args.window:
        axes.append(Axis("window", tuple(args.window)))
    if args.curve:
        if args.link:
            raise UsageError("--curve compares encryption on loopback; leave out --link")
        axes.append(Axis("curve", tuple(args.curve)))
    return axes


def _places(args: argparse.Namespace) -> Callable:
    """A generator factory of (where, runner, wire probe): loopback, or each link rate."""
    def loopback():
        runner_type = ApiRunner if args.runner == "api" else CommandRunner
        yield "loopback", runner_type(args.max_bandwidth), (
            lambda packet, nbytes: ceiling.wire_ceiling(packet, nbytes=nbytes))

    def links():
        from engine.tools.bench.link import DESTINATION_ADDRESS, LinkLab, LinkRunner
        with LinkLab() as lab:
            for rate in args.link:
                lab.shape(rate)

                def wire(packet: int, nbytes: int) -> float:
                    return ceiling.wire_ceiling(packet, DESTINATION_ADDRESS,
                                                lab.prefix(lab.destination),
                                                lab.prefix(lab.source), nbytes)

                yield _rate_name(rate), LinkRunner(lab, args.max_bandwidth), wire

    return links if args.link else loopback


def _measure(args, matrix: list[Cell], peers: list[Peer], images: ImageFolder,
             runner: Runner, wire_probe) -> tuple[list, Ceilings]:
    # Ceilings use the first packet size given: one wire ceiling per run keeps the "x wire"
    # column comparable across cells.
    packet_pages = (args.packet_pages or [DEFAULT_PACKET_PAGES])[0]
    wire_bytes = min(ceiling.WIRE_BYTES, max(64 * MiB, max(args.size)))
    destination = images.destination()
    if isinstance(runner, ApiRunner):  # start the forkserver outside any measurement
        runner.run(matrix[0], -1, images.image("mixed", _SMOKE_IMAGE, 0), destination)
    wire: list[float] = []
    floors: dict[tuple[str, int, str], list[float]] = {}
    samples: list[Sample] = []
    plan = schedule([(runner, cell) for cell in matrix] + _peer_runs(peers, matrix),
                    args.repeat, seed=args.seed)
    for number, (repeat, (who, cell)) in enumerate(plan):
        if not args.no_ceilings and (number == 0 or plan[number - 1][0] != repeat):
            wire.append(wire_probe(packet_pages * PAGE_SIZE, wire_bytes))
            for kind in args.kind:
                for size in args.size:
                    for codec in args.compress:
                        # auto's floor is its usual choice's: zstd:1
                        floors.setdefault((kind, size, codec), []).append(ceiling.work_floor(
                            images.image(kind, size, args.seed),
                            "zstd:1" if codec == "auto" else codec, packet_pages))
        sample = who.run(cell, repeat, images.image(cell["kind"], cell["size"], args.seed),
                         destination)
        samples.append(sample)
        _say(f"[{number + 1}/{len(plan)}] {sample.run} {cell.label()}: {sample.wall_s:.2f} s"
             + ("" if sample.ok else f" FAILED: {sample.error}"))
    medians = {key: sorted(v)[len(v) // 2] for key, v in floors.items()}
    order = ["engine", *(peer.name for peer in peers)]  # the peers as the user listed them
    summaries = sorted(summarise(samples), key=lambda s: order.index(s.run))
    return summaries, Ceilings(wire=wire, floors=medians)


def _peer_runs(peers: list[Peer], matrix: list[Cell]) -> list[tuple[Runner, Cell]]:
    """(runner, cell) for each distinct cell each peer can run; a peer that can run none of
    the matrix is named, not silently left out."""
    runs = []
    for peer in peers:
        mine = list(dict.fromkeys(c for c in map(peer.cell_for, matrix) if c is not None))
        if not mine:
            _say(f"{peer.name} runs none of these cells (it has codecs "
                 f"{', '.join(peer.codecs)}, no --curve, sizes in multiples of "
                 f"{show_value(peer.size_multiple)})")
        runner = runner_for(peer)
        runs += [(runner, cell) for cell in mine]
    return runs


def _soak(args: argparse.Namespace, cell: Cell, images: ImageFolder) -> int:
    from engine.tools.bench.soak import soak
    runner = (ApiRunner if args.runner == "api" else CommandRunner)(args.max_bandwidth)
    report = soak(runner, cell, images.image(cell["kind"], cell["size"], args.seed),
                  images.destination(), args.soak)
    if args.json:
        print(json.dumps(report.to_json(), default=str), flush=True)
    else:
        print(f"soak: {len(report.samples)} transfers of {cell.label()}, "
              f"{report.failures} failed; peak anonymous memory {report.first_anon / MiB:.1f} MiB in the "
              f"first quarter, {report.last_anon / MiB:.1f} MiB in the last: memory "
              f"{'GREW' if report.grew else 'did not grow'}")
    return 1 if report.failures or report.grew else 0


def _rate_name(rate: int) -> str:
    bits = rate * 8
    for unit, factor in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits >= factor and bits % factor == 0:
            return f"{bits // factor}{unit}"
    return f"{bits}bit"


def _say(text: str) -> None:
    """Progress for people, on stderr (stdout may carry the JSON)."""
    print(f"bench: {text}", file=sys.stderr, flush=True)
