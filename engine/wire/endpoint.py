"""TCP endpoints as users write them: tcp://HOST:PORT, with HOST a name, IPv4 or [IPv6]."""
from __future__ import annotations

import re
from dataclasses import dataclass

from engine.errors import UsageError

_ENDPOINT = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class Endpoint:
    host: str  # as written, brackets included for IPv6
    port: int

    @property
    def ipv6(self) -> bool:
        return self.host.startswith("[")

    @property
    def is_loopback(self) -> bool:
        return self.host in ("localhost", "[::1]") or self.host.startswith("127.")

    def with_port(self, port: int) -> "Endpoint":
        return Endpoint(self.host, port)

    def __str__(self) -> str:
        return f"tcp://{self.host}:{self.port}"


def parse_endpoint(text: str, allow_any_port: bool = False) -> Endpoint:
    """Parse tcp://HOST:PORT; port 0 ("any free port") only where `allow_any_port`."""
    match = _ENDPOINT.match(text)
    if not match:
        raise UsageError(f"malformed endpoint {text!r}; expected tcp://HOST:PORT")
    port = int(match.group(2))
    if port > 65535 or (port == 0 and not allow_any_port):
        raise UsageError(f"port {port} in {text!r} is not a usable TCP port")
    return Endpoint(match.group(1), port)
