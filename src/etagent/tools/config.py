"""Which tools an agent gets, and each tool's settings.

``enabled`` lists tools by registered name or dotted path (:data:`etagent.tools.base.TOOLS`); each
tool's settings are the section named after its tag, validated by the tool class's
``config_class``. A section for a tool that is not enabled is allowed (and validated) so that one
config can switch tools on and off.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from etagent.config import ConfigModel, validate_section
from etagent.registry import RegistryError
from etagent.tools.base import TOOLS, Tool, tool_class


class ToolsConfig(ConfigModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    enabled: list[str] = Field(
        default_factory=lambda: ["search", "python"],
        description="tools the agent may call: registered names or package.module:Class paths",
    )

    @model_validator(mode="after")
    def _typed_sections(self) -> ToolsConfig:
        sections = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        try:
            classes = {cls.name: cls for cls in map(tool_class, self.enabled)}
        except RegistryError as e:
            raise ValueError(str(e)) from None
        tags = list(classes)
        if len(set(tags)) != len(tags):
            raise ValueError(f"two enabled tools share a tag: {tags}")
        for key, value in list(sections.items()):
            cls = classes.get(key)
            if cls is None:
                if key not in TOOLS:
                    raise ValueError(
                        f"{key!r} is neither an enabled tool nor a registered one ({', '.join(TOOLS.names())})"
                    )
                cls = tool_class(key)
            sections[key] = validate_section(key, value, cls.config_class)
        for tag, cls in classes.items():
            if tag not in sections:
                sections[tag] = cls.config_class()
        return self

    @property
    def tags(self) -> tuple[str, ...]:
        """The enabled tools' tags, in order (a dotted-path tool's tag is its class's ``name``)."""
        return tuple(tool_class(name).name for name in self.enabled)

    def section(self, tag: str) -> Any:
        """The settings of the tool with this tag (its defaults when the config has none)."""
        extra = self.__pydantic_extra__ or {}
        return extra[tag] if tag in extra else tool_class(tag).config_class()

    def with_section(self, tag: str, **changes: Any) -> ToolsConfig:
        """A copy with some settings of one tool's section changed."""
        out = self.model_copy(deep=True)
        setattr(out, tag, out.section(tag).model_copy(update=changes))
        return out


def build_tools(cfg: ToolsConfig) -> dict[str, Tool]:
    """Instantiate the enabled tools, keyed by tag name, in the configured order."""
    tools: dict[str, Tool] = {}
    try:
        for name in cfg.enabled:
            cls = tool_class(name)
            tools[cls.name] = cls.from_config(cfg.section(cls.name))
    except BaseException:
        for tool in tools.values():
            tool.close()
        raise
    return tools
