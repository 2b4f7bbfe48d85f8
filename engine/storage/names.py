"""Transfer names and the destinations a serving receiver makes of them.

A sender announces a name (`send --name NAME`); `receive --serve --dest-template
'/dev/shm/{name}'` writes each transfer to the template with that name in it. The name comes
from the network, so it is held to a strict rule before it is put into a path: letters,
digits, '.', '_' and '-', starting with a letter or a digit (no path separator, no hidden
file), no '..' anywhere, at most NAME_MAX_CHARS characters.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass

from engine.errors import UsageError

NAME_MAX_CHARS = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def name_problem(name: str) -> str | None:
    """What is wrong with `name` as a transfer's name (None: nothing)."""
    if not isinstance(name, str) or not name:
        return "a transfer name cannot be empty"
    if len(name) > NAME_MAX_CHARS:
        return f"a transfer name has at most {NAME_MAX_CHARS} characters, not {len(name)}"
    if not _NAME.fullmatch(name) or ".." in name:
        return (f"transfer name {name[:NAME_MAX_CHARS]!r} must be letters, digits, '.', '_' "
                "or '-', start with a letter or a digit and hold no '..'")
    return None


@dataclass(frozen=True)
class DestinationTemplate:
    """A destination ("PATH" or "shm:NAME") with `{name}` where each transfer's name goes."""

    text: str

    def __post_init__(self) -> None:
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(self.text)
                      if field is not None]
        except ValueError:  # an unmatched brace
            fields = []
        if fields != ["name"]:
            raise UsageError(f"--dest-template {self.text!r} must hold {{name}} once (and no "
                             "other {...}), e.g. '/dev/shm/{name}'")

    def resolve(self, name: str) -> str:
        """The destination of transfer `name`; ValueError for a name that breaks the rule."""
        problem = name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        return self.text.format(name=name)

    def __str__(self) -> str:
        return self.text
