"""The engine's own exceptions, each mapped to one exit code.

Library errors (zmq.ZMQError, zstandard.ZstdError, msgpack's) are translated into these at
the boundary where they happen, so a user sees one clear sentence, never a traceback.
"""
from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine reports to a user."""

    exit_code = 1


class UsageError(EngineError):
    """Bad arguments or unreadable input: nothing was transferred."""

    exit_code = 2


class DestinationRefused(UsageError):
    """The destination refused the transfer before it created anything: it would destroy
    the source, has no room for it, or cannot be created. Both ends exit with code 2."""


class TransferError(EngineError):
    """The transfer started but did not complete."""


class ProtocolError(TransferError):
    """A peer sent a message that breaks the wire rules."""


class CorruptPayload(ProtocolError):
    """A payload failed its checksum, did not decode, or decoded to the wrong size."""


class PeerLost(TransferError):
    """The other side, or one of our own workers, went away."""


class AuthenticationFailed(TransferError):
    """The receiver refused our key, or is not the receiver whose key we were given."""


class VerificationFailed(TransferError):
    """Everything arrived, but the destination's digest differs from the source's."""


class NotConverged(TransferError):
    """Live migration gave up: the source dirtied pages faster than the link carried them."""


class Interrupted(EngineError):
    """The user asked us to stop (Ctrl-C or SIGTERM)."""

    exit_code = 130


def peer_error(kind: str, message: str) -> EngineError:
    """The error to raise for the other end's FAULT of `kind`: its refusal of our transfer
    and its verdict keep their meaning here; anything else failed the transfer."""
    known = {cls.__name__: cls for cls in (DestinationRefused, VerificationFailed)}
    return known.get(kind, TransferError)(message)


def error_named(kind: str, message: str) -> EngineError:
    """Rebuild an error that a worker reported by class name (unknown names: TransferError)."""
    known = {cls.__name__: cls for cls in (TransferError, ProtocolError, CorruptPayload, PeerLost,
                                           VerificationFailed, UsageError)}
    return known.get(kind, TransferError)(message)
