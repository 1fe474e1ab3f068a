"""Tools: a registered class per tool; the agent loop only sees this interface.

Adding a tool is one class::

    @register_tool("calculator")
    class Calculator(Tool):
        spec = ToolSpec("calculator", "evaluates an arithmetic expression", "2*(3+4)")
        def call(self, content: str) -> ToolResult: ...

A tool never raises for a bad call: empty input, timeouts, crashes and limits come back as a
``ToolResult`` with an error status and a text the model can read, because the text is inserted
into the trajectory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from etagent.protocol.tags import ToolSpec
from etagent.records import ToolStatus


@dataclass
class ToolResult:
    text: str
    status: ToolStatus = "ok"


class Tool(ABC):
    """A tool the model can call with ``<name>content</name>``."""

    name: ClassVar[str]
    spec: ClassVar[ToolSpec]

    @abstractmethod
    def call(self, content: str) -> ToolResult:
        """Run one call. Must be thread-safe: the agent loop runs calls concurrently."""

    def call_batch(self, contents: list[str]) -> list[ToolResult]:
        """Run several calls; tools with a batch API (search) override this."""
        return [self.call(c) for c in contents]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (worker processes, connections)."""


_REGISTRY: dict[str, type[Tool]] = {}


def register_tool(name: str) -> Callable[[type[Tool]], type[Tool]]:
    def deco(cls: type[Tool]) -> type[Tool]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(
                f"tool {name!r} is registered twice ({_REGISTRY[name].__name__}, {cls.__name__})"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def tool_class(name: str) -> type[Tool]:
    _import_builtin_tools()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown tool {name!r}; registered tools: {sorted(_REGISTRY)}") from None


def registered_tools() -> list[str]:
    _import_builtin_tools()
    return sorted(_REGISTRY)


def _import_builtin_tools() -> None:
    # importing the modules runs their @register_tool decorators
    import etagent.tools.python_tool
    import etagent.tools.search  # noqa: F401


def build_tool(name: str, config: Any) -> Tool:
    """Instantiate a registered tool from its config section."""
    return tool_class(name).from_config(config)  # type: ignore[attr-defined]
