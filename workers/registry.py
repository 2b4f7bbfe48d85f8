"""Name-keyed registries of payload handlers and codecs, open to third parties.

Built-in entries are listed here as "module:attribute" strings so that a worker imports only
what its session uses; anything else is looked up in a Python entry-point group, so another
package can add a handler or codec without touching the engine.
"""
from __future__ import annotations

import importlib
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, group: str, builtins: dict[str, str]) -> None:
        self.what = what
        self.group = group
        self._builtins = dict(builtins)
        self._loaded: dict[str, type[T]] = {}

    def names(self) -> list[str]:
        from importlib.metadata import entry_points  # slow to import: only when needed
        found = set(self._builtins)
        found.update(ep.name for ep in entry_points(group=self.group))
        return sorted(found)

    def load(self, name: str) -> type[T]:
        """The class registered under `name`; ValueError listing the known names if none."""
        if name in self._loaded:
            return self._loaded[name]
        target = self._builtins.get(name)
        if target is None:
            # importlib.metadata costs about a tenth of a second to import (BENCHMARKS.md,
            # "start-up"), so built-in names never touch it.
            from importlib.metadata import entry_points
            matches = [ep for ep in entry_points(group=self.group) if ep.name == name]
            if not matches:
                raise ValueError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
            target = matches[0].value
        module, _, attribute = target.partition(":")
        cls = getattr(importlib.import_module(module), attribute)
        self._loaded[name] = cls
        return cls
