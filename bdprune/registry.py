"""A name -> object registry in the style of timm's model registry.

``@REGISTRY.register("name")`` adds an entry, ``REGISTRY.get(name)`` looks it up and answers an
unknown name with the closest registered ones, ``REGISTRY.names("res*")`` lists by pattern.
"""

from __future__ import annotations

import difflib
import fnmatch
from typing import Callable, Generic, Iterator, TypeVar

from .errors import BdpruneError

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of named entries of one kind (architectures, methods, report formats)."""

    def __init__(self, kind: str, *, list_command: str | None = None):
        self.kind = kind
        self.list_command = list_command
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name`` and returns it unchanged."""

        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """Return the entry called ``name``; an unknown name raises with the close matches."""
        try:
            return self._entries[name]
        except KeyError:
            pass
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else None
        if self.list_command:
            seen = f"`{self.list_command}` lists them"
            hint = f"{hint} {seen}" if hint else seen
        raise BdpruneError(f"unknown {self.kind} {name!r}", hint=hint)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted names matching a shell-style ``pattern``."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))
