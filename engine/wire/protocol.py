"""The wire protocol between the two ends, as plain Python with no sockets.

Two conversations cross the network:
- control, between the coordinators (one TCP connection):
  HELLO -> WELCOME, then SYNCED per round, COMPLETE -> VERDICT, FAULT at any time, and
  HEARTBEAT both ways so that a dead peer is noticed;
- data, one per channel between a source worker and a destination worker:
  INIT, then PACKETs and SYNCs one way, ACKs (cumulative) and FAULT the other way.
A PACKET is a ZeroMQ multipart message: this module's header, then raw payload frames.

`ChannelRules` holds everything a destination worker needs to validate what arrives on its
channel before any byte is used; it is unit-tested without sockets.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Sequence

import xxhash

from engine.storage.aliases import FileId
from engine.errors import CorruptPayload, ProtocolError, UsageError
from engine.wire.framing import decode, message
from engine.settings import PAGE_SIZE, TransferSettings

MAGIC = "multifd-engine"
VERSION = 2
SESSION_BYTES = 16
# Each side sends a HEARTBEAT this often on control when it has nothing else to say.
HEARTBEAT_S = 0.5


# -- control: coordinator <-> coordinator -------------------------------------------------

@message("hello")
class Hello:
    magic: str
    version: int
    session: bytes
    image_size: int
    page_size: int
    channels: int
    compress: str
    device_compress: str
    packet_pages: int
    window: int
    chunk_size: int
    handlers: list[str]
    resume: bool = False
    # Which file the source image is (boot id, device, inode), so that a receiver on the same
    # host refuses to write it (engine/storage/aliases.py); and what its data occupies, so that a
    # receiver without room for it says so before it starts.
    source_host: str = ""
    source_file: list[int] | None = None
    stored_bytes: int = 0
    verify: str = "fold"  # TransferSettings.verify
    name: str = ""  # `send --name`: what a serving receiver names the destination after

    def source_id(self) -> FileId | None:
        if self.source_file is None or len(self.source_file) != 2:
            return None
        return FileId(self.source_host, *self.source_file)

    def settings(self) -> TransferSettings:
        return TransferSettings(channels=self.channels, compress=self.compress,
                                device_compress=self.device_compress,
                                packet_pages=self.packet_pages, window=self.window,
                                chunk_size=self.chunk_size, verify=self.verify)


@message("welcome")
class Welcome:
    """The destination's data ports, one per channel, on the host the source dialled.
    When resuming: the pages still missing (zstd of a packed bit per page) and, per device,
    the chunks already there."""

    session: bytes
    ports: list[int]
    missing: bytes = b""
    chunks: dict[str, list[int]] | None = None


@message("synced")
class Synced:
    round: int


@message("complete")
class Complete:
    """The source's digests: folded ones (`digest`, `devices`), and with --verify reread
    also the image as read back from storage (`stored`, else "")."""

    digest: str
    devices: dict[str, str]
    rounds: int
    stored: str = ""


@message("verdict")
class Verdict:
    """The destination's word on the transfer; `vm`: the run state of the destination QEMU
    it started (receive --qemu), "" without one."""

    ok: bool
    message: str
    digest: str
    devices: dict[str, int]
    vm: str = ""


@message("fault")
class Fault:
    """Sent by whichever side fails first; the other side stops and reports `message`.
    `kind` names the error (engine/errors.py), so that a refusal for bad usage makes both
    ends exit with the same code."""

    message: str
    kind: str = ""


@message("heartbeat")
class Heartbeat:
    """Sent every second. From the receiver it also says how many rounds it has released, so
    a SYNCED lost in a broken control connection is made good by the next heartbeat."""

    released: int = 0


# -- data: source worker <-> destination worker -------------------------------------------

@message("init")
class Init:
    """Opens (or, after a failure, re-opens) a channel: packets follow from `first_seq` on."""

    magic: str
    version: int
    session: bytes
    channel: int
    first_seq: int


@message("pkt")
class Packet:
    """Header of a payload packet: `body` belongs to the handler named by `kind`."""

    session: bytes
    channel: int
    seq: int
    kind: str
    sizes: list[int]
    checksum: int
    body: dict[str, Any]


@message("sync")
class Sync:
    session: bytes
    channel: int
    round: int


@message("ack")
class Ack:
    """Everything up to and including packet `seq` on this channel has been applied."""

    seq: int


def checksum(frames: Sequence[Any]) -> int:
    """xxh3-64 of the payload frames in order: cheap (tens of GB/s) and catches corruption."""
    h = xxhash.xxh3_64()
    for frame in frames:
        h.update(frame)
    return h.intdigest()


def new_hello(session: bytes, image_size: int, settings: TransferSettings,
              handlers: list[str], resume: bool = False, source: FileId | None = None,
              stored_bytes: int = 0, name: str = "") -> Hello:
    return Hello(magic=MAGIC, version=VERSION, session=session, image_size=image_size,
                 page_size=PAGE_SIZE, channels=settings.channels, compress=settings.compress,
                 device_compress=settings.device_compress,
                 packet_pages=settings.packet_pages, window=settings.window,
                 chunk_size=settings.chunk_size, handlers=handlers, resume=resume,
                 source_host=source.host if source else "",
                 source_file=[source.device, source.inode] if source else None,
                 stored_bytes=stored_bytes, verify=settings.verify, name=name)


def check_hello(hello: Hello, handlers: Collection[str],
                check_codecs: Callable[[str, str], None],
                max_image_size: int = 1 << 46) -> TransferSettings:
    """Validate a HELLO on the receiving side; returns the settings it announces.

    `handlers`: the payload handlers this receiver's workers can load; `check_codecs(ram,
    device)`: raises UsageError unless its workers can load both codec specs. The receiver
    hands both in (the wire format knows no plugins).
    """
    if hello.magic != MAGIC or hello.version != VERSION:
        raise ProtocolError(f"peer speaks {hello.magic[:40]!r} version {hello.version}, "
                            f"we speak {MAGIC!r} version {VERSION}")
    if len(hello.session) != SESSION_BYTES:
        raise ProtocolError("session id has the wrong length")
    if hello.page_size != PAGE_SIZE:
        raise ProtocolError(f"page size {hello.page_size} is not {PAGE_SIZE}")
    if not 0 <= hello.image_size <= max_image_size:
        raise ProtocolError(f"image size {hello.image_size} is out of range")
    if not 0 <= hello.stored_bytes <= hello.image_size:
        raise ProtocolError(f"stored bytes {hello.stored_bytes} are not within the image")
    known = set(handlers)
    if "ram" not in hello.handlers or not set(hello.handlers) <= known:
        raise ProtocolError(f"peer announced payload handlers {hello.handlers[:8]}; this "
                            f"receiver has {sorted(known)} and needs 'ram'")
    try:
        check_codecs(hello.compress, hello.device_compress)
        return hello.settings()
    except UsageError as exc:  # a bad codec or setting is the peer's fault here
        raise ProtocolError(f"peer announced bad settings: {exc}") from None


class ChannelRules:
    """What one destination worker accepts on its channel, checked before anything is used."""

    def __init__(self, session: bytes, channel: int, settings: TransferSettings,
                 kinds: Sequence[str], max_payload: int) -> None:
        self.session = session
        self.channel = channel
        self.settings = settings
        self.kinds = frozenset(kinds)
        self.max_payload = max_payload
        self.next_seq: int | None = None  # set by the first INIT


    def check_init(self, frames: Sequence[Any]) -> Init:
        if len(frames) != 1:
            raise ProtocolError("INIT must be a single frame")
        init = decode(frames[0], Init)
        if init.magic != MAGIC or init.version != VERSION:
            raise ProtocolError(f"INIT speaks {init.magic[:40]!r} version {init.version}")
        if init.session != self.session:
            raise ProtocolError("INIT carries another session id")
        self._check_channel(init.channel)
        if init.first_seq < 0 or (self.next_seq is not None and init.first_seq > self.next_seq):
            raise ProtocolError(f"INIT resumes at packet {init.first_seq}, but packet "
                                f"{self.next_seq} is the next one due")
        if self.next_seq is None:
            self.next_seq = init.first_seq
        return init

    def accept(self, packet: "Packet") -> bool:
        """True if `packet` is the next one due (and counts it); False if it was applied
        already and is being re-sent after a reconnect. A gap is a protocol error."""
        if packet.seq > self.next_seq:
            raise ProtocolError(f"packet {packet.seq} arrived where {self.next_seq} was due")
        if packet.seq < self.next_seq:
            return False
        self.next_seq += 1
        return True

    def check_message(self, frames: Sequence[Any]) -> Packet | Sync:
        """Validate a PACKET (header, checksum, sizes) or a SYNC arriving on this channel.
        Ordering is checked separately, by accept()."""
        if not frames:
            raise ProtocolError("empty message")
        msg = decode(frames[0], Packet, Sync)
        if msg.session != self.session:
            raise ProtocolError("message carries another session id")
        self._check_channel(msg.channel)
        if isinstance(msg, Sync):
            if len(frames) != 1:
                raise ProtocolError("SYNC must be a single frame")
            return msg
        payload = frames[1:]
        if msg.kind not in self.kinds:
            raise ProtocolError(f"packet of unannounced kind {msg.kind[:40]!r}")
        if len(msg.sizes) != len(payload):
            raise ProtocolError(f"header lists {len(msg.sizes)} frames, {len(payload)} came")
        if sum(len(f) for f in payload) > self.max_payload:
            raise ProtocolError(f"packet payload is larger than {self.max_payload} bytes")
        for size, frame in zip(msg.sizes, payload):
            if size != len(frame):
                raise ProtocolError(f"frame of {len(frame)} bytes announced as {size}")
        if checksum(payload) != msg.checksum:
            raise CorruptPayload(f"checksum mismatch in packet {msg.seq}")
        return msg

    def _check_channel(self, channel: int) -> None:
        if channel != self.channel:
            raise ProtocolError(f"channel id {channel} on the socket of channel {self.channel}"
                                f" (channels: {self.settings.channels})")

