"""Worker process entry point: map the image, load the handlers by name, run one channel.

A worker is started by its coordinator (engine/coordinator/processes.py) with a WorkerConfig and talks to
it over an IPC socket. Every failure becomes a Failure message with one clear sentence; the
coordinator decides what the user sees.
"""
from __future__ import annotations

import errno
import os
import signal
import traceback
from pathlib import Path

import numpy as np
import zmq

from engine.wire import jobs
from workers.config import WorkerConfig
from engine.errors import EngineError, UsageError
from engine.wire.framing import MAX_HEADER_BYTES, encode
from engine.storage.image import map_file
from engine.storage.journal import HEADER_BYTES
from engine.settings import PAGE_SIZE
from workers.channel import DestinationChannel, SourceChannel
from workers.handlers import HANDLERS, HandlerContext


def run_worker(config: WorkerConfig) -> None:
    # Ctrl-C reaches the whole process group; the coordinator handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _name_process(f"multifd-{'src' if config.side == 'source' else 'dst'}{config.channel}")
    context = zmq.Context()
    control = context.socket(zmq.PAIR)
    control.linger = 2000
    control.connect(config.control)
    handlers = {}
    authenticator = None
    try:
        destination = config.side == "destination"
        image = map_file(config.image_path, writable=destination) if config.image_size else None
        pages = (config.image_size + PAGE_SIZE - 1) // PAGE_SIZE
        written = hashes = None
        if config.journal_path and pages:
            page_map = map_file(config.journal_path, writable=True, offset=HEADER_BYTES,
                                length=pages)
            written = np.frombuffer(page_map, dtype=np.uint8)
        if config.hashes_path and pages:
            hash_map = map_file(config.hashes_path, writable=True, offset=config.hashes_offset,
                                length=8 * pages)
            hashes = np.frombuffer(hash_map, dtype=np.uint64)
        handler_context = HandlerContext(
            settings=config.settings, image_size=config.image_size, image=image,
            image_path=config.image_path if config.image_size else None,
            fresh=config.fresh, written=written, hashes=hashes, fault=config.fault,
            device_dir=Path(config.device_dir) if config.device_dir else None)
        handlers = {kind: HANDLERS.load(kind)(handler_context) for kind in config.handlers}
        data = context.socket(zmq.ROUTER if destination else zmq.DEALER)
        data.linger = 0
        if config.keys is not None:
            if destination:  # ZAP is per context: this process admits senders itself
                authenticator = config.keys.start_authenticator(
                    context, f"channel {config.channel}: refused a connection whose key is "
                    "not allowed (--allow)")
            config.keys.configure(data)
        common = dict(channel=config.channel, control=control, data=data,
                      coordinator_pid=config.coordinator_pid, handlers=handlers, image=image,
                      image_path=config.image_path)
        if destination:
            loop = DestinationChannel(**common, session=config.session, settings=config.settings,
                                      round_=config.round)
            _bind_data(data, config, loop)
            endpoint = data.getsockopt_string(zmq.LAST_ENDPOINT)
            control.send(encode(jobs.Bound(endpoint=endpoint)))
        else:
            loop = SourceChannel(**common, session=config.session,
                                 window=config.settings.window, pace=config.pace)
            handler_context.link = loop.link
            control.send(encode(jobs.Ready(pid=os.getpid())))
        loop.run()
    except EngineError as exc:
        control.send(encode(jobs.Failure(error=type(exc).__name__, message=str(exc))))
    except zmq.ZMQError as exc:
        control.send(encode(jobs.Failure(
            error="PeerLost", message=f"channel {config.channel}: network error: {exc}")))
    except OSError as exc:  # the files under us: a full disk, a folder gone, an I/O error
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        reason = "the destination is full" if full else exc.strerror
        control.send(encode(jobs.Failure(
            error="TransferError",
            message=f"channel {config.channel}: {reason} ({exc.filename or config.image_path})")))
    except Exception as exc:  # a bug: say where, keep the trace for whoever debugs it
        detail = traceback.format_exc() if os.environ.get("MULTIFD_DEBUG") else ""
        control.send(encode(jobs.Failure(
            error="TransferError",
            message=f"internal error in {config.side} worker {config.channel}: "
                    f"{type(exc).__name__}: {exc}{detail}")))
    finally:
        for handler in handlers.values():
            handler.close()
        if authenticator is not None:
            authenticator.stop()
        context.destroy()  # each socket keeps its own linger


def _bind_data(data: zmq.Socket, config: WorkerConfig, loop: DestinationChannel) -> None:
    data.setsockopt(zmq.ROUTER_MANDATORY, 1)
    data.setsockopt(zmq.MAXMSGSIZE, loop.rules.max_payload + MAX_HEADER_BYTES)
    data.rcvhwm = config.settings.window + 8
    data.ipv6 = config.listen_host.startswith("[")
    # A replacement worker binds its predecessor's port; --data-ports pins them all.
    port = config.listen_port or (config.data_ports + config.channel if config.data_ports else 0)
    endpoint = f"tcp://{config.listen_host}:{port}"
    try:
        data.bind(endpoint)
    except zmq.ZMQError as exc:
        raise UsageError(f"channel {config.channel} cannot listen on {endpoint}: {exc}") \
            from None


def _name_process(name: str) -> None:
    """Show which worker this is in ps/top (and to tests that look for one channel's worker)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass  # not Linux: the name is only a convenience
