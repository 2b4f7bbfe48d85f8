"""The options of `python -m engine bench`, kept apart from the run so that building the
command line (for every command) imports nothing heavy."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from engine.errors import UsageError
from engine.tools.samples import KINDS
from engine.units import parse_rate, parse_size


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", type=_listed(_kind), default=["mixed"], metavar="KINDS",
                   help=f"sample image kinds, comma-separated: {', '.join(KINDS)} "
                        "(default mixed)")
    p.add_argument("--size", type=_listed(parse_size), default=[1 << 30], metavar="SIZES",
                   help="image sizes, comma-separated, e.g. 1G,4G (default 1G)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default 0)")
    p.add_argument("--channels", type=_listed(_whole), default=[1, 2, 4], metavar="LIST",
                   help="channel counts (default 1,2,4)")
    p.add_argument("--compress", type=_listed(str), default=["none", "zstd:1", "zlib:1"],
                   metavar="LIST", help="codecs (default none,zstd:1,zlib:1)")
    p.add_argument("--packet-pages", type=_listed(_whole), metavar="LIST",
                   help="pages per packet to compare (default: the engine's default only)")
    p.add_argument("--window", type=_listed(_whole), metavar="LIST",
                   help="send windows to compare (default: the engine's default only)")
    p.add_argument("--curve", type=_listed(_switch), metavar="LIST",
                   help="encryption to compare, e.g. off,on: the cost of CURVE (default off)")
    p.add_argument("--repeat", type=_whole, default=3, help="runs of each cell (default 3)")
    p.add_argument("--runner", choices=("api", "command"),
                   help="api: engine.migrate() in this process; command: the whole "
                        "'python -m engine migrate' command, start-up included (default api; "
                        "command with --peer, as the peers are whole commands)")
    p.add_argument("--peer", type=_listed(str), default=[], metavar="PEERS",
                   help="run these beside the engine, on the same images in the same "
                        "shuffled rounds: qemu (QEMU's multifd), lean (a bare Python "
                        "pipeline), cp; the table gives the ratios engine/peer")
    p.add_argument("--link", type=_listed(parse_rate), metavar="RATES",
                   help="run across two network namespaces joined by a veth pair shaped "
                        "to each rate, e.g. 1gbit,10gbit (root needed)")
    p.add_argument("--max-bandwidth", type=parse_rate, metavar="RATE",
                   help="cap every transfer, all channels together (e.g. 500mbit, 100M)")
    p.add_argument("--soak", type=float, metavar="SECONDS",
                   help="run transfers of the first cell back to back this long; report "
                        "each, the failures, and whether memory grew")
    p.add_argument("--warm-up", type=parse_size, metavar="SIZE",
                   help="write and delete this much in /dev/shm first (default: what the "
                        "images and the destination will take; 0: no warm-up)")
    p.add_argument("--no-ceilings", action="store_true",
                   help="skip the wire ceiling and the work floor")
    p.add_argument("--json", action="store_true",
                   help="print one JSON document at the end (the tables go to stderr)")
    p.add_argument("--wide", action="store_true",
                   help="every column in the table (the default view fits 100 columns)")
    p.add_argument("--plot", type=Path, metavar="FILE.png",
                   help="plot throughput against channels, one line per codec, with the "
                        "wire ceiling")


def _listed(parse: Callable[[str], Any]) -> Callable[[str], list]:
    def parse_list(text: str) -> list:
        values = [parse(part) for part in text.split(",") if part.strip()]
        if not values:
            raise UsageError(f"an empty list: {text!r}")
        return values
    return parse_list


def _kind(text: str) -> str:
    if text not in KINDS:
        raise UsageError(f"unknown image kind {text!r}; known: {', '.join(KINDS)}")
    return text


def _switch(text: str) -> bool:
    if text not in ("on", "off"):
        raise UsageError(f"{text!r} is not on or off")
    return text == "on"


def _whole(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise UsageError(f"{text!r} must be at least 1")
    return value
