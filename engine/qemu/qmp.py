"""A small synchronous client for QEMU's machine protocol (QMP) over a unix socket.

QMP is one JSON object per line. On connect QEMU greets with {"QMP": {...}}; the client
answers `qmp_capabilities` and may then `execute` commands. Each answer is {"return": ...}
or {"error": {"class", "desc"}}; asynchronous {"event": ...} objects can come at any time,
between answers too. We tag every command with an `id`, so an answer that arrives after its
command timed out is recognised and dropped instead of being taken for the next one's.

A QMP server serves one client at a time: while another client (libvirt, a forgotten
socat) is connected, QEMU accepts the connection at the kernel level but never greets. So a
missing greeting means "not QMP, or busy", and we say so after `greeting_timeout` seconds
rather than hang.
"""
from __future__ import annotations

import collections
import json
import os
import socket
import stat
import struct
import time
from typing import Any, Iterable

DEFAULT_TIMEOUT_S = 10.0
GREETING_TIMEOUT_S = 2.0
MAX_LINE = 16 << 20  # query-qmp-schema is ~200 KB; anything near this is not QMP
MAX_EVENTS = 1000  # events kept for wait_event(); older ones are dropped


class QMPError(Exception):
    """Base of every error this module raises; its message is one line for a user."""


class NotQMP(QMPError):
    """The path is not a QEMU QMP socket: missing, a plain file, nobody listening, silent,
    the human monitor (HMP), or something else that does not speak QMP."""


class QMPConnectionLost(QMPError):
    """QEMU closed the connection (it quit, crashed, or was killed)."""


class QMPTimeout(QMPError):
    """QEMU did not answer in time. The connection stays usable: a late answer is dropped."""


class CommandFailed(QMPError):
    """QEMU answered a command with an error; `desc` is QEMU's own sentence."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"QEMU refused {command}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QMP:
    """One QMP session. Connects, reads the greeting and negotiates capabilities.

    `wait_s` > 0 retries while the socket does not exist or refuses connections (a QEMU
    that is still starting); 0 fails at once, which is what a user-given path wants.
    Use as a context manager, or call close().
    """

    def __init__(self, path: str | os.PathLike, *, timeout: float = DEFAULT_TIMEOUT_S,
                 greeting_timeout: float = GREETING_TIMEOUT_S, wait_s: float = 0.0) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self.events: collections.deque[dict] = collections.deque(maxlen=MAX_EVENTS)
        self._buffer = bytearray()
        self._next_id = 0
        self._sock = _connect(self.path, wait_s)
        try:
            self.greeting = self._read_greeting(greeting_timeout)
            self.execute("qmp_capabilities")
        except BaseException:
            self._sock.close()
            raise

    # -- public surface --------------------------------------------------------------

    @property
    def version(self) -> tuple[int, int, int]:
        """QEMU's version from the greeting, e.g. (7, 2, 22)."""
        v = self.greeting["version"]["qemu"]
        return v["major"], v["minor"], v["micro"]

    @property
    def peer_pid(self) -> int:
        """Process id of the QEMU at the other end (SO_PEERCRED: the kernel's word)."""
        creds = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                      struct.calcsize("3i"))
        return struct.unpack("3i", creds)[0]

    def execute(self, command: str, arguments: dict[str, Any] | None = None, *,
                timeout: float | None = None, fds: Iterable[int] = ()) -> Any:
        """Run one command and return its "return" value.

        `fds` go along as SCM_RIGHTS with the command (for `getfd`, `add-fd`): QEMU takes
        file descriptors that arrive with a command's bytes. Raises CommandFailed with
        QEMU's description, QMPTimeout, or QMPConnectionLost. Events read meanwhile are
        kept in `events`.
        """
        self._next_id += 1
        tag = f"multifd-{self._next_id}"
        message = {"execute": command, "id": tag}
        if arguments:
            message["arguments"] = arguments
        self._send(json.dumps(message).encode() + b"\n", list(fds), command)
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._read_message(deadline)
            except QMPTimeout:
                raise QMPTimeout(f"QEMU ({self.path}) did not answer {command} within "
                                 f"{timeout:g} s") from None
            if "event" in reply:
                self.events.append(reply)
            elif reply.get("id") != tag:
                continue  # the late answer to a command that timed out
            elif "error" in reply:
                error = reply["error"]
                raise CommandFailed(command, error.get("class", "GenericError"),
                                    error.get("desc", "no description"))
            else:
                return reply.get("return")

    def wait_event(self, name: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT_S) -> dict | None:
        """Return (and remove) the oldest event called `name` (any event if None), reading
        from QEMU for up to `timeout` seconds; None if none came."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events:
                if name is None or event["event"] == name:
                    self.events.remove(event)
                    return event
            try:
                message = self._read_message(deadline)
            except QMPTimeout:
                return None
            if "event" in message:
                self.events.append(message)

    def close(self) -> None:
        """Close the connection. QEMU goes on running; it accepts the next client."""
        try:
            self._sock.close()
        except OSError:
            pass

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- wire ------------------------------------------------------------------------

    def _read_greeting(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        try:
            line = self._read_line(deadline)
        except QMPTimeout:
            raise NotQMP(f"{self.path}: no QMP greeting within {timeout:g} s (not a QEMU QMP "
                         f"socket, or another client such as libvirt holds it)") from None
        except QMPConnectionLost:
            raise NotQMP(f"{self.path}: the peer closed the connection without a QMP "
                         f"greeting (not a QEMU QMP socket)") from None
        if line.startswith(b"QEMU ") and b"monitor" in line:
            raise NotQMP(f"{self.path} is QEMU's human monitor (HMP), not QMP: start QEMU "
                         f"with -qmp unix:PATH,server=on,wait=off")
        try:
            greeting = json.loads(line)
        except ValueError:
            raise NotQMP(f"{self.path}: not a QMP socket (it said {bytes(line[:40])!r})") from None
        if not isinstance(greeting, dict) or not isinstance(greeting.get("QMP"), dict):
            raise NotQMP(f"{self.path}: not a QMP socket (no QMP greeting: {bytes(line[:60])!r})")
        return greeting["QMP"]

    def _send(self, data: bytes, fds: list[int], command: str) -> None:
        try:
            if fds:
                sent = socket.send_fds(self._sock, [data], fds)
                data = data[sent:]
            self._sock.sendall(data)
        except OSError as e:
            raise QMPConnectionLost(f"lost the QMP connection to {self.path} while sending "
                                    f"{command}: {e.strerror or e}") from None

    def _read_message(self, deadline: float) -> dict:
        line = self._read_line(deadline)
        try:
            message = json.loads(line)
        except ValueError:
            raise QMPConnectionLost(f"{self.path}: QEMU sent a line that is not JSON: "
                                    f"{bytes(line[:60])!r}") from None
        if not isinstance(message, dict):
            raise QMPConnectionLost(f"{self.path}: QEMU sent {bytes(line[:60])!r}")
        return message

    def _read_line(self, deadline: float) -> bytes:
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                if line.strip():
                    return line
                continue
            if len(self._buffer) > MAX_LINE:
                raise QMPConnectionLost(f"{self.path}: a line longer than {MAX_LINE} bytes")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QMPTimeout("timed out")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise QMPTimeout("timed out") from None
            except OSError as e:
                raise QMPConnectionLost(f"lost the QMP connection to {self.path}: "
                                        f"{e.strerror or e}") from None
            if not chunk:
                raise QMPConnectionLost(f"QEMU closed the QMP connection {self.path} "
                                        f"(it quit or died)")
            self._buffer += chunk


def _connect(path: str, wait_s: float) -> socket.socket:
    deadline = time.monotonic() + wait_s
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(wait_s, 1.0))
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            if time.monotonic() >= deadline:
                raise NotQMP(_connect_failure(path, e)) from None
            time.sleep(0.01)
        except OSError as e:
            sock.close()
            raise NotQMP(f"{path}: cannot connect: {e.strerror or e}") from None


def _connect_failure(path: str, error: OSError) -> str:
    if isinstance(error, FileNotFoundError):
        return f"{path}: no such QMP socket"
    if os.path.exists(path) and not _is_socket(path):
        return f"{path} is not a socket (a QMP socket comes from -qmp unix:PATH,server=on)"
    return f"{path}: nobody is listening on this socket (has QEMU exited?)"


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False
