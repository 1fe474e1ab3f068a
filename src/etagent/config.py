"""Config machinery: YAML files map 1:1 onto pydantic models, overridable from the command line.

    cfg = load_config(RolloutConfig, "configs/rollout.yaml", ["backend.kind=openai", "n=4"])

Override values are parsed as YAML scalars/collections (``n=4`` is an int, ``stop=[a, b]`` a
list). Unknown keys are errors that name the key and the file, never silently ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

C = TypeVar("C", bound=BaseModel)


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys are rejected.

    A section given as a mapping is laid over the section's default, not over its class's
    defaults: when a stage's default agent samples at T=1.0, top_p 0.95, then ``agent: {budget:
    ...}`` in a file changes the budget and keeps that sampling.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _over_field_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        merged = None
        for name, field in cls.model_fields.items():
            key = field.alias or name
            given = data.get(key)
            if not isinstance(given, dict) or field.default_factory is None:
                continue
            default = field.default_factory()  # type: ignore[call-arg]
            if not isinstance(default, BaseModel):
                continue
            # the fields the default sets, each in full: a set field's own unset fields keep the
            # default's values (the demo's flywheel sets continuation_budget=BudgetConfig(...), whose
            # max_calls_per_tool is the BudgetConfig default, not the flywheel field's default)
            chosen = {
                (sub.alias or sub_name): _dumped(getattr(default, sub_name))
                for sub_name, sub in type(default).model_fields.items()
                if sub_name in default.model_fields_set
            }
            if chosen:
                merged = merged if merged is not None else dict(data)
                merged[key] = _deep_merged(chosen, given)
        return merged if merged is not None else data


def _dumped(value: Any) -> Any:
    return value.model_dump(by_alias=True) if isinstance(value, BaseModel) else value


def validate_section(key: str, value: Any, cls: type[C]) -> C:
    """``value`` (a mapping, None or already a ``cls``) as the typed section ``key``; errors name
    ``key.field`` (a plugin's section is validated inside its parent's validator)."""
    if isinstance(value, cls):
        return value
    try:
        return cls.model_validate(value if value is not None else {})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join([key, *map(str, err['loc'])])}: {err['msg']}" for err in e.errors())
        raise ValueError(problems) from None


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads on/off/yes/no as booleans, which
    turns ``mixed_outcome_filter: off`` or an answer ``no`` into False."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and field."""


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b=3"`` -> (["a", "b"], 3)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``tree[a][b]... = value``; a numeric part indexes an existing list (``datasets.0.limit``)."""
    node: Any = tree
    for depth, part in enumerate(path):
        key: Any = part
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(path[:depth])
                raise ConfigError(
                    f"override {'.'.join(path)}: {where} has {len(node)} items, no index {part!r}"
                )
            key = int(part)
        if depth == len(path) - 1:
            node[key] = value
            return
        child = node[key] if isinstance(node, list) else node.get(key)
        if not isinstance(child, (dict, list)):
            child = {}
            node[key] = child
        node = child


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path} must hold a mapping at the top level, got {type(data).__name__}"
        )
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        lines.append(f"  {loc}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
) -> C:
    """Build ``cls`` from defaults <- ``base`` <- YAML file <- ``key=value`` overrides."""
    tree: dict[str, Any] = dict(base or {})
    sources = []
    if path is not None:
        deep_update(tree, read_yaml(path))
        sources.append(str(path))
    for item in overrides or []:
        keys, value = parse_override(item)
        set_dotted(tree, keys, value)
    if overrides:
        sources.append("overrides " + " ".join(overrides))
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, ", ".join(sources) or "defaults")) from None


def _deep_merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    deep_update(out, over)
    return out


def deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    """Lay ``src`` over ``dst`` in place: mappings merged key by key, anything else replaced."""
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            deep_update(dst[k], v)
        else:
            dst[k] = v


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
