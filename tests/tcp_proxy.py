"""A TCP forwarding proxy for tests: records what crosses it, and can cut connections."""
from __future__ import annotations

import random
import socket
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class TcpProxy:
    """Forwards TCP connections from 127.0.0.1:PORT to (upstream host, port), one listener per
    port, and records every byte it forwards in both directions, per listening port.
    `cut()` breaks every connection open at that moment, as a failing network would; the
    listeners stay, so the peers can connect again."""

    def __init__(self) -> None:
        self.recorded: dict[int, bytearray] = {}
        self._lock = threading.Lock()
        self._listeners: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []
        self.cuts = 0

    def forward(self, port: int, upstream: tuple[str, int]) -> int:
        listener = socket.create_server(("127.0.0.1", port))
        port = listener.getsockname()[1]
        self.recorded[port] = bytearray()
        self._listeners.append(listener)
        self._spawn(self._accept, listener, upstream, port)
        return port

    def cut(self) -> None:
        with self._lock:
            connections, self._open = self._open, []
            self.cuts += 1
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        for listener in self._listeners:
            listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for thread in self._threads:
            thread.join(10)

    def _spawn(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self, listener: socket.socket, upstream: tuple[str, int], port: int) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except OSError:  # closed
                return
            up = socket.create_connection(upstream)
            with self._lock:
                self._open += [downstream, up]
            self._spawn(self._pump, downstream, up, port)
            self._spawn(self._pump, up, downstream, port)

    def _pump(self, source: socket.socket, sink: socket.socket, port: int) -> None:
        try:
            while data := source.recv(1 << 16):
                with self._lock:
                    self.recorded[port] += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def free_port_run(count: int, hosts: tuple[str, ...]) -> int:
    """A first port such that `count` consecutive ports are free on every host (below the
    kernel's ephemeral range, so no outgoing connection takes one meanwhile)."""
    rng = random.Random()
    for _ in range(100):
        base = rng.randrange(20000, 32000)
        probes = []
        try:
            for host in hosts:
                for port in range(base, base + count):
                    probes.append(socket.create_server((host, port)))
            return base
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
    raise RuntimeError("no run of free ports found")


@contextmanager
def receiver_behind_proxy(dest: Path, host: str, channels: int, *extra: str
                          ) -> Iterator[tuple[subprocess.Popen, TcpProxy, str, range]]:
    """A `receive` process on `host` with pinned data ports, and a proxy on 127.0.0.1 that
    forwards its control port and the same data port numbers (the sender dials the data ports
    on the host it dialled for control). Yields (receiver, proxy, endpoint to dial, data ports).
    """
    from test_cli import start_receiver
    base = free_port_run(channels, ("127.0.0.1", host))
    ports = range(base, base + channels)
    receiver, endpoint = start_receiver(dest, "--data-ports", str(base), *extra,
                                        listen=f"tcp://{host}:0")
    proxy = TcpProxy()
    try:
        control = proxy.forward(0, (host, int(endpoint.rsplit(":", 1)[1])))
        for port in ports:
            proxy.forward(port, (host, port))
        yield receiver, proxy, f"tcp://127.0.0.1:{control}", ports
    finally:
        receiver.kill()
        proxy.close()
