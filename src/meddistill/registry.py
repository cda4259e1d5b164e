"""One registry shape for every pluggable part: methods, nets, data sources, initialisations,
DOM spaces and rules.

A :class:`Registry` maps names to entries (each registry's own frozen dataclass, defined beside
the code it registers); a module adds its parts when it is imported, and the package that owns
a registry imports every module that registers into it. Lookups of unknown names are one-line
:class:`~meddistill.errors.ConfigError` s that list the registered names.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from meddistill.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry, in registration order; ``kind`` names the entries in messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    @contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """``entry`` registered under ``name`` for the block only (tests, plug-in trials)."""
        self.add(name, entry)
        try:
            yield entry
        finally:
            del self._entries[name]
