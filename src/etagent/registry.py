"""Registries of extension points (tools, backends, tasks, reward terms) by name.

Each entry is a dotted ``"package.module:Attribute"`` string that is imported only when the entry
is first used, so a registry never imports its implementations and a layer never imports the
layers that plug into it. A name that is not registered but contains ``":"`` is itself taken as a
dotted path, so a user's own class is used from config alone::

    tools:
      enabled: [search, my_pkg.tools:Calculator]

and a package can add a short name with ``TOOLS.register("calculator", "my_pkg.tools:Calculator")``.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name or a dotted path that does not import; the message says which and why."""

    def __str__(self) -> str:  # KeyError quotes its message; ours is a sentence
        return str(self.args[0]) if self.args else ""


def import_object(path: str) -> Any:
    """The object a ``"package.module:Attribute"`` path names (``Attribute`` may be dotted)."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise RegistryError(f"{path!r} is not a dotted path of the form 'package.module:Attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise RegistryError(f"{path!r}: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise RegistryError(f"{path!r}: module {module_name!r} has no attribute {attr!r}") from None
    return obj


_DOTTED = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_dotted_path(name: str) -> bool:
    """``"package.module:Attribute"`` (checked by shape only; nothing is imported)."""
    return bool(_DOTTED.match(name))


class Registry(Generic[T]):
    """Names -> dotted paths (or objects), resolved and cached on first use."""

    def __init__(self, kind: str, entries: Mapping[str, str] | None = None):
        self.kind = kind
        self._entries: dict[str, str | T] = dict(entries or {})
        self._resolved: dict[str, T] = {}
        self._lock = threading.Lock()

    def register(self, name: str, target: str | T) -> None:
        """Add ``name``; registering the same target again is a no-op, another target an error."""
        with self._lock:
            old = self._entries.get(name)
            if old is not None and old is not target and old != target:
                raise RegistryError(f"{self.kind} {name!r} is already registered as {old!r}")
            self._entries[name] = target
            self._resolved.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def knows(self, name: str) -> bool:
        """Registered, or a dotted path (which is checked only when it is resolved)."""
        return name in self._entries or is_dotted_path(name)

    def get(self, name: str) -> T:
        """The object registered as ``name``, or the object the dotted path ``name`` names."""
        cached = self._resolved.get(name)
        if cached is not None:
            return cached
        target = self._entries.get(name)
        if target is None:
            if not is_dotted_path(name):
                raise RegistryError(
                    f"unknown {self.kind} {name!r}; registered: {', '.join(self.names())}; "
                    "or give a dotted path 'package.module:Class'"
                )
            target = name
        obj = import_object(target) if isinstance(target, str) else target
        with self._lock:
            self._resolved[name] = obj
        return obj
