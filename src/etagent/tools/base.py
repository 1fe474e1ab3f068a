"""Tools: a class per tool, found by name in :data:`TOOLS`; the agent loop only sees this interface.

Adding a tool is one file and config. The class::

    class Calculator(Tool):
        name = "calculator"                                   # the tag: <calculator>2*(3+4)</calculator>
        spec = ToolSpec("calculator", "evaluates an arithmetic expression", "2*(3+4)")
        config_class = CalculatorConfig                       # optional; its section in tools:
        @classmethod
        def from_config(cls, cfg: CalculatorConfig) -> Calculator: ...
        def call(self, content: str) -> ToolResult: ...

and the config: ``tools: {enabled: [search, my_pkg.calc:Calculator], calculator: {...}}`` (a short
name via ``TOOLS.register("calculator", "my_pkg.calc:Calculator")``).

A tool never raises for a bad call: empty input, timeouts, crashes and limits come back as a
``ToolResult`` with an error status and a text the model can read, because the text is inserted
into the trajectory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from etagent.config import ConfigModel
from etagent.protocol.tags import ToolSpec
from etagent.records import ToolStatus
from etagent.registry import Registry, RegistryError


class NoSettings(ConfigModel):
    """The config section of a tool that has no settings."""


@dataclass
class ToolResult:
    text: str
    status: ToolStatus = "ok"


class Tool(ABC):
    """A tool the model can call with ``<name>content</name>``."""

    #: the tag the model writes (``<name>...</name>``) and the key of its config section
    name: ClassVar[str]
    spec: ClassVar[ToolSpec]
    #: the settings of the tool's ``tools.<name>`` section
    config_class: ClassVar[type[ConfigModel]] = NoSettings

    @classmethod
    def from_config(cls, cfg: Any) -> Tool:
        """The tool its config section describes."""
        return cls()

    @abstractmethod
    def call(self, content: str) -> ToolResult:
        """Run one call. Must be thread-safe: the agent loop runs calls concurrently."""

    def call_batch(self, contents: list[str]) -> list[ToolResult]:
        """Run several calls; tools with a batch API (search) override this."""
        return [self.call(c) for c in contents]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (worker processes, connections)."""


#: tool name -> "module:Class"; the classes are imported when first used
TOOLS: Registry[type[Tool]] = Registry(
    "tool",
    {"search": "etagent.tools.search.tool:SearchTool", "python": "etagent.tools.python_tool:PythonTool"},
)


def tool_class(name: str) -> type[Tool]:
    """The tool class a registered name or dotted path names."""
    cls = TOOLS.get(name)
    if not (isinstance(cls, type) and issubclass(cls, Tool)):
        raise RegistryError(f"tool {name!r} is {cls!r}, not a subclass of etagent.tools.base.Tool")
    return cls


def build_tool(name: str, config: Any = None) -> Tool:
    """Instantiate a registered tool (or a dotted path) from its config section (None: defaults)."""
    cls = tool_class(name)
    return cls.from_config(config if config is not None else cls.config_class())
