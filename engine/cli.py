"""The command line: migrate, send, receive, demo. Exit codes are part of the contract:
0 verified, 1 transfer or verification failed, 2 bad usage or unreadable input,
130 interrupted (143 for SIGTERM)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Sequence

from engine import __version__
from engine.errors import EngineError, Interrupted, UsageError
from engine.settings import (DEFAULT_CHANNELS, DEFAULT_CHUNK_SIZE, DEFAULT_PACKET_PAGES,
                             DEFAULT_WINDOW, TransferSettings)
from engine.units import parse_rate


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2 like every other error."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="multifd", description="Move memory images and device state over "
                     "parallel ZeroMQ channels, verified end to end.")
    parser.add_argument("--version", action="store_true", help="show versions and exit")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)

    migrate = commands.add_parser("migrate", help="copy SRC to DEST on this machine over "
                                  "loopback TCP (both ends)")
    migrate.add_argument("src", metavar="SRC", help="source image: a file or shm:NAME")
    migrate.add_argument("dest", metavar="DEST", help="destination image: a file or shm:NAME")
    _add_sender_options(migrate)
    _add_receiver_options(migrate)

    send = commands.add_parser("send", help="send SRC to a waiting receiver")
    send.add_argument("src", metavar="SRC", help="source image: a file or shm:NAME")
    send.add_argument("--to", required=True, metavar="tcp://HOST:PORT",
                      help="the receiver's --listen endpoint")
    _add_sender_options(send)

    receive = commands.add_parser("receive", help="wait for one transfer into DEST")
    receive.add_argument("dest", metavar="DEST", help="destination image: a file or shm:NAME")
    receive.add_argument("--listen", required=True, metavar="tcp://HOST:PORT",
                         help="control endpoint to listen on (port 0: any free port)")
    _add_receiver_options(receive)

    demo = commands.add_parser("demo", help="build a sample (1 GiB image, two devices), "
                               "migrate it with zstd over 2 channels, verify, clean up")
    demo.add_argument("--size", default="1G", help="image size, e.g. 256M or 1G (default 1G)")
    demo.add_argument("--json", action="store_true", help="print one JSON line at the end")

    bench = commands.add_parser("bench", help="load test: a matrix of transfers of sample "
                                "images, measured against the wire and the work floor")
    from engine.bench.options import add_arguments
    add_arguments(bench)
    return parser


def _add_sender_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels", type=int, default=DEFAULT_CHANNELS,
                   help=f"parallel channels (default {DEFAULT_CHANNELS})")
    p.add_argument("--compress", default="none", metavar="CODEC",
                   help="RAM codec: none, zlib[:LEVEL], zstd[:LEVEL], or auto (per packet, "
                        "none, zstd:1 or zstd:3 by how busy the link is) (default none)")
    p.add_argument("--device-compress", default="none", metavar="CODEC",
                   help="codec for device state (default none: passthrough)")
    p.add_argument("--device", action="append", default=[], metavar="NAME=PATH",
                   help="device state to send from a file (repeatable)")
    p.add_argument("--packet-pages", type=int, default=DEFAULT_PACKET_PAGES,
                   help=f"pages per RAM packet (default {DEFAULT_PACKET_PAGES})")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"unacknowledged packets per channel (default {DEFAULT_WINDOW})")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help=f"device chunk bytes (default {DEFAULT_CHUNK_SIZE})")
    p.add_argument("--max-bandwidth", type=parse_rate, metavar="RATE",
                   help="cap on the wire, all channels together: 1gbit, 500mbit, or bytes "
                        "per second like 100M (default: no cap)")
    p.add_argument("--json", action="store_true", help="print one JSON line at the end")


def _add_receiver_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-dir", metavar="DIR",
                   help="folder for received device state (default DEST.devices)")
    p.add_argument("--force", action="store_true", help="replace an existing DEST")
    if not any(a.dest == "json" for a in p._actions):
        p.add_argument("--json", action="store_true", help="print one JSON line at the end")


def settings_from(args: argparse.Namespace) -> TransferSettings:
    from workers.codecs import make_codec, session_codecs
    settings = TransferSettings(channels=args.channels, compress=args.compress,
                                device_compress=args.device_compress,
                                packet_pages=args.packet_pages, window=args.window,
                                chunk_size=args.chunk_size)
    session_codecs(settings.compress)  # unknown codecs and levels fail here, before any work
    make_codec(settings.device_compress)
    return settings


def devices_from(specs: list[str]) -> dict[str, Path]:
    devices: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--device takes NAME=PATH, not {spec!r}")
        if name in devices:
            raise UsageError(f"device {name!r} is given twice")
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise UsageError(f"device {name}: {path} is not a readable file")
        devices[name] = Path(path)
    return devices


def run(args: argparse.Namespace) -> int:
    from engine.destination import Receiver
    from engine.image import parse_location, source_size
    from engine.local import migrate
    from engine.progress import progress_bar
    from engine.report import json_line, print_summary
    from engine.source import Sender

    if args.command == "demo":
        from engine.demo import run_demo
        return run_demo(args.size, args.json)
    if args.command == "bench":
        from engine.bench.command import run as run_bench
        return run_bench(args)
    if args.command == "receive":
        with Receiver(args.dest, args.listen, device_dir=args.device_dir,
                      force=args.force) as receiver:
            print(f"multifd: listening on {receiver.endpoint}", file=sys.stderr, flush=True)
            result = receiver.run()
    else:
        settings = settings_from(args)
        devices = devices_from(args.device)
        size = source_size(parse_location(args.src))
        with progress_bar(size, "migrating" if args.command == "migrate" else "sending") as tick:
            if args.command == "migrate":
                result = migrate(args.src, args.dest, settings, devices=devices,
                                 device_dir=args.device_dir, force=args.force, progress=tick,
                                 max_bandwidth=args.max_bandwidth)
            else:
                with Sender(args.src, args.to, settings, progress=tick,
                            max_bandwidth=args.max_bandwidth) as sender:
                    sender.send_range()
                    for name, path in devices.items():
                        sender.send_device(name, path)
                    result = sender.finish()
    if args.json:
        print(json_line(result), flush=True)
    else:
        print_summary(result)
    return 0


def print_versions() -> None:
    import msgpack
    import numpy
    import xxhash
    import zmq
    import zstandard
    print(f"multifd-engine {__version__}")
    print(f"python {sys.version.split()[0]}")
    print(f"pyzmq {zmq.pyzmq_version()}, libzmq {zmq.zmq_version()}, "
          f"CURVE {'yes' if zmq.has('curve') else 'no'}")
    print(f"zstandard {zstandard.__version__} ({zstandard.backend} backend)")
    print(f"msgpack {'.'.join(map(str, msgpack.version))}, numpy {numpy.__version__}, "
          f"xxhash {xxhash.VERSION}")



def main(argv: Sequence[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        args = build_parser().parse_args(argv)
        if args.version:
            print_versions()
            return 0
        if args.command is None:
            raise UsageError("a command is needed: migrate, send, receive, demo or bench "
                             "(see 'multifd --help')")
        return run(args)
    except Interrupted as exc:
        print(f"multifd: {exc}; stopped", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("multifd: interrupted; stopped", file=sys.stderr)
        return 130
    except EngineError as exc:
        print(f"multifd: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _on_sigterm(signum, frame) -> None:
    exc = Interrupted("terminated by SIGTERM")
    exc.exit_code = 143
    raise exc
