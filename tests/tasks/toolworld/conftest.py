"""Fixtures for tests on the tool world: its questions, its real tools, the expert as policy and critic.

The flywheel tests use them too (``tests/flywheel/conftest.py`` imports them).
"""

from __future__ import annotations

import pytest

from etagent.loop.agent_loop import AgentLoop, BudgetConfig, SamplingConfig
from etagent.tasks.toolworld import ExpertPolicy, ToolWorldTask, load_split
from etagent.tasks.toolworld.critic import ExpertCritic
from etagent.tools.config import ToolsConfig, build_tools


def toolworld_tools_config() -> ToolsConfig:
    """The default tools, searching the default tool world's corpus."""
    return ToolsConfig().with_section("search", corpus=str(ToolWorldTask().corpus()))


@pytest.fixture(scope="session")
def world_tools():
    tools = build_tools(toolworld_tools_config())
    yield tools
    for tool in tools.values():
        tool.close()


@pytest.fixture(scope="session")
def train_questions():
    return {q.id: q for q in load_split("train")}


def question_of(train_questions, qtype: str, nth: int = 0):
    """The nth train question of a type (no_tool, search1, search2, python1, search1_python, ...)."""
    return [q for q in train_questions.values() if q.meta["qtype"] == qtype][nth]


@pytest.fixture
def make_loop(tokenizer, world_tools):
    """An agent loop whose policy is the expert with the given imperfection rates."""
    loops = []

    def make(redundant_rate: float = 0.0, missing_rate: float = 0.0, seed: int = 0) -> AgentLoop:
        policy = ExpertPolicy(tokenizer, redundant_rate=redundant_rate, missing_rate=missing_rate, seed=seed)
        loop = AgentLoop(
            policy,
            world_tools,
            budget=BudgetConfig(max_calls_per_tool=6, max_tool_calls=12),
            sampling=SamplingConfig(temperature=1.0),
        )
        loops.append(loop)
        return loop

    yield make
    for loop in loops:
        loop.close()


@pytest.fixture(scope="session")
def expert_critic():
    return ExpertCritic()
