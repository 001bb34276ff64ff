"""One list per extension axis (recipes, preference objectives, eval suites, data sources).

An entry describes itself (name, config model, what it reads and writes, its run function); the config schema,
the CLI, the pipeline and the report derive from the lists, so adding an entry never means editing a table
elsewhere. Entries live in their own modules inside an axis package (`rutune/train/recipes/`,
`rutune/eval/suites/`, `rutune/data/sources/`) and are found by walking that package: a module that defines the
axis' entry name (`RECIPE`, `SUITE`, `SOURCE`, `OBJECTIVE`) is one entry. Tests (and plugins) can add entries
at run time with `Registry.add` / `Registry.added`.

Discovery imports the entry modules, so they must stay cheap to import (no torch at module level): the config
is validated without loading any model.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import pkgutil
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class RegistryError(ValueError):
    """A name that is not registered (with a "did you mean"), or one registered twice."""


class Registry(Generic[T]):
    """Ordered entries of one axis, discovered lazily from `package` (entry attribute `attr`)."""

    def __init__(self, axis: str, package: str, attr: str):
        self.axis, self.package, self.attr = axis, package, attr
        self._entries: dict[str, T] | None = None
        self.version = 0  # bumped on every change, so derived schemas know when to rebuild

    def _load(self) -> dict[str, T]:
        if self._entries is None:
            entries: dict[str, T] = {}
            pkg = importlib.import_module(self.package)
            for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
                if info.name.startswith("_"):
                    continue
                module = importlib.import_module(f"{self.package}.{info.name}")
                entry = getattr(module, self.attr, None)
                if entry is not None:
                    self._check_new(entries, entry)
                    entries[entry.name] = entry
            self._entries = dict(sorted(entries.items(), key=lambda kv: (getattr(kv[1], "order", 100), kv[0])))
            self.version += 1
        return self._entries

    def _check_new(self, entries: dict[str, T], entry: T) -> None:
        if entry.name in entries:
            raise RegistryError(f"{self.axis} {entry.name!r} is registered twice")

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._load().values()))

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __len__(self) -> int:
        return len(self._load())

    def names(self) -> list[str]:
        return list(self._load())

    def get(self, name: str) -> T:
        entries = self._load()
        if name not in entries:
            close = difflib.get_close_matches(str(name), list(entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise RegistryError(f"unknown {self.axis} {name!r}{hint} (known: {', '.join(entries)})")
        return entries[name]

    def add(self, entry: T) -> T:
        entries = self._load()
        self._check_new(entries, entry)
        entries[entry.name] = entry
        self.version += 1
        return entry

    def remove(self, name: str) -> None:
        self._load().pop(name, None)
        self.version += 1

    @contextlib.contextmanager
    def added(self, entry: T) -> Iterator[T]:
        """Register `entry` for the duration of a `with` block (tests, one-off plugins)."""
        self.add(entry)
        try:
            yield entry
        finally:
            self.remove(entry.name)
