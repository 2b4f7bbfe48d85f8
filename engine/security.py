"""CURVE keys: who may write into a receiver, and encryption of every byte between hosts.

A receiver is a CURVE *server*: its control socket and every destination worker's data socket
hold its key pair, and a ZAP authenticator in each process (ZAP is per zmq.Context) admits
only the client keys found in the `--allow` folder. A sender is a CURVE *client*: it holds its
own key pair and the receiver's public key, so it also knows it talks to the right receiver.
Keys are ZeroMQ certificate files (NAME.key public, NAME.key_secret secret), as written by
`multifd keygen`. Secret keys never appear in a repr, a log line or an error message.
"""
from __future__ import annotations

import os
import re
import stat
import struct
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import zmq

from engine.errors import AuthenticationFailed, PeerLost, UsageError
from engine.log import warn

if TYPE_CHECKING:
    from zmq.auth.thread import ThreadAuthenticator

_Z85_KEY = re.compile(rb"[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}")
_NAME = re.compile(r"[A-Za-z0-9._-]{1,100}")
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"


@dataclass(frozen=True)
class ServerKeys:
    """A receiver's side: its own key pair and the public keys of the senders it admits."""

    public: bytes
    secret: bytes = field(repr=False)
    allowed: frozenset[bytes]

    def __post_init__(self) -> None:
        _check_pair(self.public, self.secret, "receiver keys")
        if not self.allowed or not all(_Z85_KEY.fullmatch(key) for key in self.allowed):
            raise UsageError("a receiver needs at least one allowed sender key (40 Z85 chars)")

    def configure(self, socket: zmq.Socket) -> None:
        """Make `socket` (before it binds) a CURVE server with our key pair."""
        socket.curve_server = True
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret

    def start_authenticator(self, context: zmq.Context, refusal: str,
                            on_refused: Callable[[str], None] | None = None
                            ) -> "ThreadAuthenticator":
        """Admit only `allowed` keys on every CURVE server socket of `context`; print
        `refusal` on stderr for each connection refused, and hand `on_refused` the refused
        public key (Z85), on the authenticator's thread. Start it before any socket binds:
        without a ZAP handler libzmq admits every client."""
        # Here, not at the top: it imports asyncio, tens of ms that a plain transfer never uses.
        from zmq.auth.thread import ThreadAuthenticator
        authenticator = ThreadAuthenticator(context)
        authenticator.start()
        authenticator.configure_curve_callback("*", _AllowList(self.allowed, refusal,
                                                               on_refused))
        return authenticator


@dataclass(frozen=True)
class ClientKeys:
    """A sender's side: its own key pair and the receiver's public key."""

    public: bytes
    secret: bytes = field(repr=False)
    server: bytes

    def __post_init__(self) -> None:
        _check_pair(self.public, self.secret, "sender keys")
        if not _Z85_KEY.fullmatch(self.server):
            raise UsageError("the receiver's public key must be 40 Z85 characters")

    def configure(self, socket: zmq.Socket) -> None:
        """Make `socket` (before it connects) a CURVE client of the receiver."""
        socket.curve_serverkey = self.server
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret


class _AllowList:
    """ZAP credentials provider (zmq.auth's callback protocol) that reports each refusal."""

    def __init__(self, allowed: frozenset[bytes], refusal: str,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.allowed = allowed
        self.refusal = refusal
        self.on_refused = on_refused

    def callback(self, domain: str, key: bytes) -> bool:
        """`key`: the client's public key, Z85-encoded (zmq.auth's convention)."""
        if key in self.allowed:
            return True
        warn(self.refusal)
        if self.on_refused is not None:
            self.on_refused(key.decode("ascii", "replace"))
        return False


# -- key files -----------------------------------------------------------------------------

def load_server_keys(secret_file: str | os.PathLike, allow_dir: str | os.PathLike) -> ServerKeys:
    """The receiver's key pair from its secret certificate, and every NAME.key in
    `allow_dir` as an admitted sender."""
    public, secret = _read_secret(Path(secret_file))
    folder = Path(allow_dir)
    if not folder.is_dir():
        raise UsageError(f"--allow {folder}: not a folder of senders' public keys")
    allowed = frozenset(_read_public(path) for path in sorted(folder.glob("*" + PUBLIC_SUFFIX)))
    if not allowed:
        raise UsageError(f"--allow {folder}: no public key files (*{PUBLIC_SUFFIX}) in it, "
                         "so no sender could connect")
    return ServerKeys(public=public, secret=secret, allowed=allowed)


def key_names(allow_dir: str | os.PathLike) -> dict[str, str]:
    """Each allowed sender's public key (Z85) and the name of its file (NAME.key: NAME), to
    say in a log whose key a transfer came with."""
    return {_read_public(path).decode("ascii"): path.name[:-len(PUBLIC_SUFFIX)]
            for path in sorted(Path(allow_dir).glob("*" + PUBLIC_SUFFIX))}


def load_client_keys(secret_file: str | os.PathLike,
                     server_public_file: str | os.PathLike) -> ClientKeys:
    """The sender's key pair from its secret certificate, and the receiver's public key."""
    public, secret = _read_secret(Path(secret_file))
    return ClientKeys(public=public, secret=secret, server=_read_public(Path(server_public_file)))


def ephemeral_keys() -> tuple[ServerKeys, ClientKeys]:
    """A fresh server and client pair that know each other, for one transfer on this machine."""
    server_public, server_secret = zmq.curve_keypair()
    client_public, client_secret = zmq.curve_keypair()
    return (ServerKeys(public=server_public, secret=server_secret,
                       allowed=frozenset([client_public])),
            ClientKeys(public=client_public, secret=client_secret, server=server_public))


def write_key_pair(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (owner-only) into `folder`.

    The files are made in a private temporary folder beside their final place and moved in
    with their final permissions, so the secret is never readable by others, not even briefly.
    """
    if not _NAME.fullmatch(name):
        raise UsageError(f"key name {name!r} must be letters, digits, '.', '_' or '-'")
    target = Path(folder)
    try:
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {target}: {exc.strerror}") from None
    public_path, secret_path = target / (name + PUBLIC_SUFFIX), target / (name + SECRET_SUFFIX)
    for path in (public_path, secret_path):
        if path.exists():
            raise UsageError(f"{path} exists; remove it first or choose another --name")
    try:
        with tempfile.TemporaryDirectory(prefix=".multifd-keygen-", dir=target) as private:
            import zmq.auth  # asyncio with it: only where keys are made or read
            public, secret = zmq.auth.create_certificates(private, name)
            os.chmod(public, 0o644)
            os.chmod(secret, 0o600)
            os.replace(secret, secret_path)
            os.replace(public, public_path)
    except OSError as exc:
        raise UsageError(f"cannot write keys into {target}: {exc.strerror}") from None
    return public_path, secret_path


def _read_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate that only its owner can read."""
    public, secret = _load_certificate(path)
    if secret is None:
        raise UsageError(f"{path} holds no secret key: give the {SECRET_SUFFIX} file")
    mode = path.stat().st_mode
    if mode & 0o077:
        raise UsageError(f"secret key {path} is open to other users (mode "
                         f"{stat.S_IMODE(mode):04o}); refusing it: chmod 600 {path}")
    _check_pair(public, secret, str(path))
    return public, secret


def _read_public(path: Path) -> bytes:
    public, secret = _load_certificate(path)
    if secret is not None:
        raise UsageError(f"{path} holds a secret key; give the public {PUBLIC_SUFFIX} file, "
                         "and keep the secret one on its own host")
    return public


def _load_certificate(path: Path) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise UsageError(f"cannot read key {path}: no such file")
    try:
        import zmq.auth  # asyncio with it: only where keys are made or read
        public, secret = zmq.auth.load_certificate(path)
    except OSError as exc:
        raise UsageError(f"cannot read key {path}: {exc.strerror or exc}") from None
    except (ValueError, IndexError):  # its message may quote the file: never show it
        raise UsageError(f"{path} is not a ZeroMQ certificate (see 'multifd keygen')") from None
    if not _Z85_KEY.fullmatch(public):
        raise UsageError(f"{path} is not a ZeroMQ certificate: bad public key")
    return public, secret


def _check_pair(public: bytes, secret: bytes, where: str) -> None:
    if not _Z85_KEY.fullmatch(public) or not _Z85_KEY.fullmatch(secret):
        raise UsageError(f"{where}: a CURVE key is 40 Z85 characters")
    if zmq.curve_public(secret) != public:
        raise UsageError(f"{where}: the public key does not belong to the secret key")


# -- the handshake, as a client sees it ----------------------------------------------------

_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def connect_checked(socket: zmq.Socket, endpoint: str, keys: ClientKeys | None,
                    timeout_s: float) -> None:
    """Connect `socket` and wait until the receiver accepted the ZMTP handshake.

    ZeroMQ hides a refused handshake (it just retries), so we watch the socket's monitor and
    turn each outcome into one clear error: our key refused by the receiver's ZAP, the wrong
    server key (the receiver cannot decrypt us and drops the connection), a mismatch between
    an encrypted and a plain end, or no answer within `timeout_s`.
    """
    monitor = socket.get_monitor_socket(_HANDSHAKE_EVENTS)
    deadline = time.monotonic() + timeout_s
    try:
        socket.connect(endpoint)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not monitor.poll(remaining * 1000):
                raise PeerLost(f"the receiver at {endpoint} did not accept our key (or is not "
                               f"there) within {timeout_s:.0f} s" if keys else
                               f"no receiver answered at {endpoint} within {timeout_s:.0f} s")
            # A monitor event's first frame: the event (uint16) and its value (uint32). Read
            # here rather than with zmq.utils.monitor, which imports asyncio (tens of ms).
            event = struct.unpack_from("=H", monitor.recv_multipart()[0])[0]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                raise AuthenticationFailed(f"the receiver at {endpoint} refused our key: it is "
                                           "not among the sender keys it allows (--allow)")
            if keys is None and event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
                raise AuthenticationFailed(f"the receiver at {endpoint} requires encryption: "
                                           "give --server-key and --key")
            if keys is not None:  # the receiver dropped what it could not decrypt
                raise AuthenticationFailed(
                    f"encrypted handshake with {endpoint} failed: the receiver's key is not "
                    "the one given as --server-key (or the receiver runs without keys)")
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)
