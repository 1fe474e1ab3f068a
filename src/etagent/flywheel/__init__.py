"""The self-evolving data flywheel (docs/method.md 3) and its export to the fine-tuning set (docs/method.md 3.4)."""

from etagent.flywheel.buffer import BufferRecord, FlywheelEntry, FlywheelEvent, select_parent
from etagent.flywheel.export import export_sft, write_sft
from etagent.flywheel.roles import (
    Critic,
    CriticConfig,
    Helper,
    LLMCritic,
    LLMHelper,
    RoleConfig,
    build_roles,
)
from etagent.flywheel.stage import ColdStartConfig, Flywheel, FlywheelConfig, build_flywheel, run_flywheel

__all__ = [
    "BufferRecord",
    "ColdStartConfig",
    "Critic",
    "CriticConfig",
    "Flywheel",
    "FlywheelConfig",
    "FlywheelEntry",
    "FlywheelEvent",
    "Helper",
    "LLMCritic",
    "LLMHelper",
    "RoleConfig",
    "build_flywheel",
    "build_roles",
    "export_sft",
    "run_flywheel",
    "select_parent",
    "write_sft",
]
