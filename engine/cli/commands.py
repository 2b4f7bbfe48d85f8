"""The command line: migrate, send, receive, keygen, demo. Exit codes are part of the contract:
0 verified, 1 transfer or verification failed, 2 bad usage or unreadable input,
130 interrupted (143 for SIGTERM)."""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Sequence

from engine import __version__, log
from engine.cli.failure import Failure
from engine.cli.progress import print_status
from engine.coordinator import forkserver
from engine.wire.endpoint import parse_endpoint
from engine.errors import Interrupted, UsageError
from engine.security import (ClientKeys, ServerKeys, load_client_keys, load_server_keys,
                             write_key_pair)
from engine.settings import (CONNECT_TIMEOUT_S, DEFAULT_CHANNELS, DEFAULT_CHUNK_SIZE, DEFAULT_DOWNTIME_LIMIT_MS,
                             DEFAULT_MAX_ROUNDS, DEFAULT_PACKET_PAGES, DEFAULT_WINDOW,
                             DIRTY_TRACKERS, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE,
                             NO_CONVERGENCE_POLICIES, VERIFY_MODES, LiveSettings, TransferSettings,
                             check_bandwidth)

if TYPE_CHECKING:
    from engine.cli.status import Tracker
    from engine.live.rounds import RoundReport
    from engine.coordinator.result import LiveResult, TransferResult, VmResult
from engine.units import parse_size


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line and exit code 2 like every other error, and
    an unknown option is answered by the subcommand it was given to, with the closest one."""

    commands: dict[str, "_Parser"] = {}  # the subcommands' parsers, set on the top one

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see '{self.prog} --help')")

    def parse_args(self, args: Sequence[str] | None = None,
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = getattr(parsed, "command", None)
            self.commands.get(command, self).refuse(extras)
        return parsed

    def refuse(self, extras: list[str]) -> None:
        """The error for arguments this parser does not take: for a mistyped option, the
        option it probably meant."""
        given = extras[0].split("=", 1)[0]
        if given.startswith("--"):
            options = [o for a in self._actions for o in a.option_strings
                       if o.startswith("--") and o != "--help"]
            close = difflib.get_close_matches(given, options, n=1, cutoff=0.8)
            if close:
                self.error(f"unknown option {given}; did you mean {close[0]}?")
            self.error(f"unknown option {given}")
        self.error(f"unrecognized arguments: {' '.join(extras)}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="multifd", description="Move memory images and device state over "
                     "parallel ZeroMQ channels, verified end to end.")
    parser.add_argument("--version", action="store_true", help="show versions and exit")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    parser.commands = commands.choices  # by name, for the errors each answers (_Parser)
    common = [_verbosity_options()]  # every subcommand takes -q and -v

    migrate = commands.add_parser("migrate", parents=common, help="copy SRC to DEST on this "
                                  "machine over loopback TCP (both ends)")
    migrate.add_argument("src", metavar="SRC", help="source image: a file or shm:NAME")
    migrate.add_argument("dest", metavar="DEST", help="destination image: a file or shm:NAME")
    _add_sender_options(migrate)
    _add_live_options(migrate)
    _add_receiver_options(migrate)
    migrate.add_argument("--curve", action="store_true",
                         help="encrypt loopback too (CURVE, fresh keys for this transfer)")
    _add_qemu_option(migrate, "--qemu", "source")
    _add_qemu_option(migrate, "--dest-qemu", "destination")
    _add_progress_option(migrate)

    send = commands.add_parser("send", parents=common, help="send SRC to a waiting receiver")
    send.add_argument("src", metavar="SRC", help="source image: a file or shm:NAME")
    send.add_argument("--to", required=True, metavar="tcp://HOST:PORT",
                      help="the receiver's --listen endpoint")
    send.add_argument("--server-key", metavar="PUBLIC",
                      help="the receiver's public key (NAME.key); encrypts every channel")
    send.add_argument("--key", metavar="SECRET",
                      help="our secret key (NAME.key_secret), whose public half the receiver "
                      "allows")
    send.add_argument("--name", default="", metavar="NAME",
                      help="this transfer's name, after which a receiver started with --serve "
                      "names the destination (letters, digits, '.', '_', '-')")
    _add_sender_options(send)
    _add_live_options(send)
    _add_qemu_option(send, "--qemu", "source")
    _add_progress_option(send)

    receive = commands.add_parser("receive", parents=common,
                                  help="wait for one transfer into DEST (or serve many: "
                                  "--serve)")
    receive.add_argument("dest", metavar="DEST", nargs="?",
                         help="destination image: a file or shm:NAME")
    receive.add_argument("--serve", action="store_true",
                         help="keep serving: one transfer after another, each into "
                         "--dest-template with the name its sender gave (send --name); one "
                         "JSON line per transfer on stdout; SIGTERM stops")
    receive.add_argument("--dest-template", metavar="TEMPLATE",
                         help="with --serve: each transfer's DEST, {name} standing for the "
                         "sender's name, e.g. '/dev/shm/{name}'")
    receive.add_argument("--listen", required=True, metavar="tcp://HOST:PORT",
                         help="control endpoint to listen on (port 0: any free port)")
    receive.add_argument("--key", metavar="SECRET",
                         help="our secret key (NAME.key_secret); encrypts every channel")
    receive.add_argument("--allow", metavar="DIR",
                         help="folder of the public keys (*.key) of senders let in")
    receive.add_argument("--insecure", action="store_true",
                         help="allow listening on a non-loopback address without keys")
    receive.add_argument("--data-ports", type=int, default=0, metavar="START",
                         help="channel i listens on port START+i (default: any free ports)")
    _add_qemu_option(receive, "--qemu", "destination")
    _add_receiver_options(receive)
    _add_progress_option(receive)

    keygen = commands.add_parser("keygen", parents=common, help="write a CURVE key pair: "
                                 "DIR/NAME.key (public) and DIR/NAME.key_secret (owner-only)")
    keygen.add_argument("dir", metavar="DIR", help="folder for the key files (created if needed)")
    keygen.add_argument("--name", default=socket.gethostname(), metavar="NAME",
                        help="file name without extension (default: this host's name)")

    demo = commands.add_parser("demo", parents=common, help="build a sample (1 GiB image, two "
                               "devices), migrate it with zstd over 2 channels, verify, clean up")
    demo.add_argument("--size", default="1G", metavar="SIZE",
                      help="image size, e.g. 256M or 1G (default 1G)")
    demo.add_argument("--json", action="store_true", help="print one JSON line at the end")

    bench = commands.add_parser("bench", parents=common, help="load test: a matrix of transfers "
                                "of sample images, measured against the wire and the work floor")
    from engine.tools.bench.options import add_arguments
    add_arguments(bench)
    return parser


def _verbosity_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=log.QUIET,
                       default=log.NORMAL, help="errors only (and --json's line)")
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const",
                       const=log.VERBOSE, help="also each channel's events: workers, "
                       "connections, reconnects, replays, rounds")
    return options


def _add_sender_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted transfer: send only what DEST.partial lacks "
                   "(its DEST.journal says what that is)")
    p.add_argument("--channels", type=int, default=DEFAULT_CHANNELS, metavar="N",
                   help=f"parallel channels (default {DEFAULT_CHANNELS})")
    p.add_argument("--compress", default="none", metavar="CODEC",
                   help="RAM codec: none, zlib[:LEVEL], zstd[:LEVEL], or auto (per packet, "
                        "none or zstd:1-3, whichever the measured link and CPU finish soonest) "
                        "(default none)")
    p.add_argument("--device-compress", default="none", metavar="CODEC",
                   help="codec for device state (default none: passthrough)")
    p.add_argument("--device", action="append", default=[], metavar="NAME=PATH",
                   help="device state to send from a file (repeatable)")
    p.add_argument("--packet-pages", type=int, default=DEFAULT_PACKET_PAGES, metavar="N",
                   help=f"pages per RAM packet (default {DEFAULT_PACKET_PAGES})")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="N",
                   help=f"unacknowledged packets per channel (default {DEFAULT_WINDOW})")
    p.add_argument("--chunk-size", type=parse_size, default=DEFAULT_CHUNK_SIZE, metavar="SIZE",
                   help=f"device chunk size, from {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE >> 20}M "
                   f"(default {DEFAULT_CHUNK_SIZE >> 20}M)")
    p.add_argument("--max-bandwidth", type=check_bandwidth, metavar="RATE",
                   help="cap on the wire, all channels together: 1gbit, 500mbit, or bytes "
                        "per second like 100M; at least 1M (default: no cap)")
    p.add_argument("--connect-timeout", type=_seconds, default=CONNECT_TIMEOUT_S, metavar="S",
                   help="how long to wait for the receiver to answer, in seconds "
                   f"(default {CONNECT_TIMEOUT_S:.0f})")
    p.add_argument("--verify", choices=VERIFY_MODES, default="fold",
                   help="fold: both ends hash every page as it passes and compare at the end "
                   "(nothing is read again); reread: also read both images back from storage "
                   "and compare those (default fold)")
    p.add_argument("--json", action="store_true", help="print one JSON line at the end")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise UsageError(f"a timeout is a number of seconds above zero, not {text!r}")
    return value


def _add_live_options(p: argparse.ArgumentParser) -> None:
    # Defaults are None so that a live option given without --live can be refused;
    # LiveSettings holds the real defaults.
    live = p.add_argument_group("live migration: the source keeps running during the copy")
    live.add_argument("--live", action="store_true",
                      help="send in rounds while the source runs, then pause it for the rest")
    live.add_argument("--dirty", choices=DIRTY_TRACKERS,
                      help="how changed pages are found: log (the writer keeps SRC.dirty) or "
                           "hash (compare page hashes; default)")
    live.add_argument("--downtime-limit", type=int, metavar="MS",
                      help=f"longest acceptable pause (default {DEFAULT_DOWNTIME_LIMIT_MS})")
    live.add_argument("--max-rounds", type=int, metavar="N",
                      help="rounds before giving up on converging "
                           f"(default {DEFAULT_MAX_ROUNDS})")
    live.add_argument("--on-no-convergence", choices=NO_CONVERGENCE_POLICIES,
                      help="after --max-rounds: pause anyway (switchover, default) or fail "
                           "and leave the source running")
    live.add_argument("--pause-pid", type=int, metavar="PID",
                      help="pause the source process with SIGSTOP (SIGCONT if the migration "
                           "then fails)")
    live.add_argument("--pause-cmd", metavar="CMD",
                      help="shell command that pauses the source and returns once it stopped")
    live.add_argument("--resume-cmd", metavar="CMD",
                      help="shell command run if the migration fails after --pause-cmd")


def _add_qemu_option(p: argparse.ArgumentParser, flag: str, side: str) -> None:
    help = {"source": "the source VM's QMP socket: SRC is its shared RAM file; the engine "
                      "pauses it (stop), sends its device state as device 'qemu', and "
                      "resumes it if the migration fails",
            "destination": "QMP socket of a destination QEMU waiting with -incoming defer "
                           "whose shared RAM file is DEST: DEST is written in place, and "
                           "once verified the guest runs there"}[side]
    p.add_argument(flag, metavar="QMP_SOCKET", help=help)


def _add_progress_option(p: argparse.ArgumentParser) -> None:
    from engine.cli.progress import MODES
    p.add_argument("--progress", choices=MODES, default="auto", metavar="MODE",
                   help="how to follow the transfer on stderr: bar, json (one JSON line a "
                   "second, whatever stderr is) or none (default auto: the bar on a "
                   "terminal); kill -USR1 PID prints one status line at any time")


def _add_receiver_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device-dir", metavar="DIR",
                   help="folder for received device state (default DEST.devices)")
    p.add_argument("--force", action="store_true", help="replace an existing DEST, or start "
                   "over on an interrupted DEST.partial")
    if not any(a.dest == "json" for a in p._actions):
        p.add_argument("--json", action="store_true", help="print one JSON line at the end")


def settings_from(args: argparse.Namespace) -> TransferSettings:
    from workers.codecs import make_codec, session_codecs
    settings = TransferSettings(channels=args.channels, compress=args.compress,
                                device_compress=args.device_compress,
                                packet_pages=args.packet_pages, window=args.window,
                                chunk_size=args.chunk_size, verify=args.verify)
    session_codecs(settings.compress)  # unknown codecs and levels fail here, before any work
    make_codec(settings.device_compress)
    return settings


# The live options besides --live itself (their flags are these with dashes).
_LIVE_OPTIONS = ("dirty", "downtime_limit", "max_rounds", "on_no_convergence", "pause_pid",
                 "pause_cmd", "resume_cmd")


def live_from(args: argparse.Namespace) -> LiveSettings | None:
    """The live settings, or None for a plain transfer; refuses live options without --live."""
    given = [f"--{dest.replace('_', '-')}" for dest in _LIVE_OPTIONS
             if getattr(args, dest) is not None]
    if not args.live:
        if given:
            raise UsageError(f"{given[0]} needs --live")
        return None
    ways = [way for way in ("pause_pid", "pause_cmd", "qemu") if getattr(args, way) is not None]
    if len(ways) != 1:
        raise UsageError("--live needs one way to pause the source: --pause-pid, --pause-cmd "
                         "or --qemu")
    if args.qemu is not None and args.dirty == "log":
        raise UsageError("--dirty log needs a writer that keeps SRC.dirty; QEMU exports no "
                         "dirty log: use --dirty hash with --qemu")
    if args.resume_cmd is not None and args.pause_cmd is None:
        raise UsageError("--resume-cmd goes with --pause-cmd (--pause-pid resumes by itself)")
    chosen = {"dirty": args.dirty, "downtime_limit_ms": args.downtime_limit,
              "max_rounds": args.max_rounds, "on_no_convergence": args.on_no_convergence}
    return LiveSettings(**{key: value for key, value in chosen.items() if value is not None})


def devices_from(specs: list[str]) -> dict[str, Path]:
    from engine.coordinator.sender import check_device
    devices: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--device takes NAME=PATH, not {spec!r}")
        if name in devices:
            raise UsageError(f"device {name!r} is given twice")
        devices[name] = check_device(name, path)
    return devices


def receiver_keys(args: argparse.Namespace) -> ServerKeys | None:
    """The receiver's CURVE keys; without them, only a loopback address (or --insecure)."""
    if (args.key is None) != (args.allow is None):
        raise UsageError("--key and --allow go together: the receiver's secret key and the "
                         "folder of the senders' public keys")
    if args.key is not None:
        if args.insecure:
            raise UsageError("--insecure contradicts --key and --allow")
        return load_server_keys(args.key, args.allow)
    if not parse_endpoint(args.listen, allow_any_port=True).is_loopback and not args.insecure:
        raise UsageError(f"refusing to listen on {args.listen} without keys: anyone who can "
                         "reach it could read or overwrite the image; give --key and --allow "
                         "(see 'multifd keygen --help'), or --insecure on a network you trust")
    return None


def sender_keys(args: argparse.Namespace) -> ClientKeys | None:
    if (args.key is None) != (args.server_key is None):
        raise UsageError("--server-key and --key go together: the receiver's public key and "
                         "our secret key")
    return load_client_keys(args.key, args.server_key) if args.key is not None else None


def run(args: argparse.Namespace) -> int:
    from engine.cli.summary import json_line, print_summary

    if args.command == "demo":
        from engine.cli.demo import run_demo
        return run_demo(args.size, args.json)
    if args.command == "keygen":
        public, secret = write_key_pair(args.dir, args.name)
        log.notice(f"wrote {public} (public: give it to the other side) and {secret} (secret: "
                   "keep it on this host)")
        return 0
    if args.command == "bench":
        from engine.tools.bench.command import run as run_bench
        return run_bench(args)
    if args.command == "receive" and args.serve:
        from engine.cli.serve import serve
        return serve(args, receiver_keys(args))
    if args.command == "receive":
        result = run_receive(args)
    else:
        result = run_source(args)
    if args.json:
        print(json_line(result), flush=True)
    elif log.verbosity() > log.QUIET:
        print_summary(result)
    return 0


def run_receive(args: argparse.Namespace) -> "TransferResult":
    """`receive`: one transfer into DEST, followed as --progress says."""
    from engine.cli.progress import following
    from engine.cli.status import Tracker
    from engine.coordinator.receiver import Receiver

    if args.dest is None:
        raise UsageError("receive needs DEST, or --serve with --dest-template")
    if args.dest_template is not None:
        raise UsageError("--dest-template goes with --serve")
    keys = receiver_keys(args)
    tracker = Tracker("destination", 0, "listening")
    with Receiver(args.dest, args.listen, device_dir=args.device_dir, force=args.force,
                  keys=keys, data_ports=args.data_ports, qemu=args.qemu,
                  progress=tracker.arrived) as receiver:
        note = f" (encrypted; sender keys allowed: {len(keys.allowed)})" if keys else ""
        log.notice(f"listening on {receiver.endpoint}{note}")
        with following(tracker, args.progress, "receiving"):
            return receiver.run()


def run_source(args: argparse.Namespace) -> "TransferResult | LiveResult | VmResult":
    """`migrate` and `send`, in one pass, live or of a QEMU VM, followed as --progress says
    (the source's view: it knows the wire bytes and the live rounds)."""
    from engine.cli.progress import following
    from engine.cli.status import Tracker
    from engine.storage.image import parse_location, source_size
    from engine.storage.names import name_problem

    size = source_size(parse_location(args.src))
    problem = name_problem(args.name) if getattr(args, "name", "") else None
    if problem is not None:
        raise UsageError(f"--name: {problem}")
    vm = args.qemu is not None or getattr(args, "dest_qemu", None) is not None
    live = live_from(args)
    if live is not None and args.resume and not vm:
        raise UsageError("--resume continues a one-pass transfer; it does not apply to --live")
    tracker = Tracker("source", size, "starting", live=live is not None)
    label = "migrating" if args.command == "migrate" else "sending"
    if vm:
        run_checked = run_vm_command(args, live, tracker)
    elif live is not None:
        run_checked = run_live_command(args, live, tracker)
    else:
        run_checked = run_once(args, tracker)
    with following(tracker, args.progress, label):  # once the inputs checked out
        return run_checked()


def run_once(args: argparse.Namespace, tracker: "Tracker") -> Callable[[], "TransferResult"]:
    """`migrate` / `send` in one pass: checks the inputs, returns what runs the transfer."""
    from engine.coordinator.local import check_inputs, migrate
    from engine.coordinator.sender import Sender

    settings = settings_from(args)
    devices = devices_from(args.device)
    if args.command == "migrate":
        check_inputs(args.src, args.dest, devices, args.device_dir, args.force, args.resume)
        return lambda: migrate(args.src, args.dest, settings, devices=devices,
                               device_dir=args.device_dir, force=args.force,
                               progress=tracker.acked, curve=args.curve, resume=args.resume,
                               max_bandwidth=args.max_bandwidth,
                               connect_timeout=args.connect_timeout)
    keys = sender_keys(args)

    def send() -> "TransferResult":
        say_connecting(args.to)
        with Sender(args.src, args.to, settings, progress=tracker.acked, keys=keys, name=args.name,
                    resume=args.resume, max_bandwidth=args.max_bandwidth,
                    connect_timeout=args.connect_timeout) as sender:
            sender.send_range()
            for name, path in devices.items():
                sender.send_device(name, path)
            return sender.finish()
    return send


def run_live_command(args: argparse.Namespace, live: LiveSettings, tracker: "Tracker"
                     ) -> Callable[[], "LiveResult"]:
    """`migrate --live` / `send --live`: rounds while the source runs, one line per round."""
    from engine.live.rounds import migrate_live, run_live
    from engine.live.pause import CommandPause, ProcessPause
    from engine.coordinator.sender import Sender

    settings = settings_from(args)
    devices = devices_from(args.device)
    source = (ProcessPause(args.pause_pid) if args.pause_pid is not None
              else CommandPause(args.pause_cmd, args.resume_cmd))
    on_round = _round_printer(tracker)

    def pause() -> None:
        tracker.phase = "switchover"
        source.pause()

    if args.command == "migrate":
        return lambda: migrate_live(args.src, args.dest, settings, live, pause=pause,
                                    resume=source.resume, devices=devices,
                                    device_dir=args.device_dir, force=args.force,
                                    on_round=on_round, connect_timeout=args.connect_timeout,
                                    progress=tracker.acked, max_bandwidth=args.max_bandwidth)
    keys = sender_keys(args)

    def send() -> "LiveResult":
        say_connecting(args.to)
        with Sender(args.src, args.to, settings, keys=keys, progress=tracker.acked,
                    max_bandwidth=args.max_bandwidth, connect_timeout=args.connect_timeout,
                    name=args.name) as sender:
            return run_live(sender, live, pause=pause, resume=source.resume, devices=devices,
                            on_round=on_round)
    return send


def run_vm_command(args: argparse.Namespace, live: LiveSettings | None, tracker: "Tracker"
                   ) -> Callable[[], "VmResult"]:
    """`migrate/send --qemu`: a QEMU guest, paused for the copy or live (--live)."""
    from engine.storage.image import parse_location
    from engine.coordinator.local import check_inputs, run_locally
    from engine.qemu.migration import migrate_vm, open_source
    from engine.coordinator.sender import Sender

    if args.qemu is None:
        raise UsageError("--dest-qemu needs --qemu: the destination QEMU loads the device "
                         "state that the source QEMU saves")
    if args.resume:
        raise UsageError("--resume does not apply to --qemu: migrate the running VM again")
    settings = settings_from(args)
    devices = devices_from(args.device)
    on_round = _round_printer(tracker)
    if args.command == "migrate":
        check_inputs(args.src, args.dest, devices, args.device_dir, args.force,
                     in_place=args.dest_qemu is not None)
    keys = sender_keys(args) if args.command == "send" else None

    def run_vm() -> "VmResult":
        with open_source(args.qemu, parse_location(args.src).path) as vm:
            def transfer(sender: Sender) -> "VmResult":
                return migrate_vm(sender, vm, live, devices, on_round)

            if args.command == "migrate":
                return run_locally(args.src, args.dest, transfer, settings, args.device_dir,
                                   args.force, progress=tracker.acked, curve=args.curve,
                                   max_bandwidth=args.max_bandwidth, dest_qemu=args.dest_qemu,
                                   connect_timeout=args.connect_timeout)
            say_connecting(args.to)
            with Sender(args.src, args.to, settings, keys=keys, progress=tracker.acked,
                        max_bandwidth=args.max_bandwidth,
                        connect_timeout=args.connect_timeout, name=args.name) as sender:
                return transfer(sender)
    return run_vm


def say_connecting(to: str) -> None:
    """Tell the user whom a sender waits for (a malformed endpoint fails first, alone)."""
    parse_endpoint(to)
    log.notice(f"connecting to {to}")


def _round_printer(tracker: "Tracker") -> Callable[["RoundReport"], None]:
    """Each live round's report to the tracker, and one line per round: on a terminal, or
    anywhere with -v."""
    level = log.verbosity()
    printing = level == log.VERBOSE or (level == log.NORMAL and sys.stderr.isatty())

    def on_round(report: "RoundReport") -> None:
        tracker.on_round(report)
        if printing:
            log.notice(str(report))
    return on_round


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



def console_main() -> NoReturn:
    """The `multifd` command and `python -m engine`: main(), then out without the interpreter's
    teardown. Every process, socket and file of ours is closed by then; unloading numpy, zmq
    and the rest one by one cost each command ~80 ms on its way out."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGUSR1, print_status)  # a status line, as dd prints; never a kill
    args = None
    try:
        args = build_parser().parse_args(argv)
        if args.version:
            print_versions()
            return 0
        log.set_verbosity(getattr(args, "verbosity", log.NORMAL))
        if args.command is None:
            raise UsageError("a command is needed: migrate, send, receive, keygen, demo or bench "
                             "(see 'multifd --help')")
        return run(args)
    except BaseException as exc:
        failure = Failure.of(exc)
        if failure is None:
            raise
        failure.report(args, argv)
        return failure.exit_code
    finally:
        forkserver.stop()  # a command that returned leaves no process of its own behind


def _on_sigterm(signum, frame) -> None:
    exc = Interrupted("terminated by SIGTERM")
    exc.exit_code = 143
    raise exc
