"""The agent: one config (model, tools, budget, sampling, prompt examples, concurrency) and one
builder that every stage uses (rollout, eval, flywheel, Pareto sampling, RL).

The task completes what the config leaves open: the search tool searches the task's corpus unless
``tools.search.corpus`` names one, prompt examples come from the task and call only the enabled
tools, and ``backend.kind: expert`` is the task's oracle.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from etagent.backends.base import Generator
from etagent.backends.config import ORACLE, BackendConfig, build_generator
from etagent.config import ConfigModel
from etagent.loop.agent_loop import AgentLoop, BudgetConfig, SamplingConfig
from etagent.tasks import Task
from etagent.tools.base import Tool
from etagent.tools.config import ToolsConfig, build_tools

SEARCH = "search"


class AgentConfig(ConfigModel):
    """Who acts and with what: the part of every stage's config that builds the agent."""

    backend: BackendConfig = Field(default_factory=BackendConfig, description="the model that acts")
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    few_shot: int = Field(
        0, ge=0, description="example trajectories in the prompt, from the task, calling only enabled tools"
    )
    max_active: int = Field(16, ge=1, description="trajectories generated together (continuous batching)")

    def with_model(self, model: str) -> AgentConfig:
        """A copy whose backend runs ``model`` (a pipeline hands each stage the latest policy)."""
        return self.model_copy(update={"backend": self.backend.model_copy(update={"model": model})})

    def with_oracle(self, settings: dict[str, Any] | None = None) -> AgentConfig:
        """A copy whose backend is the task's oracle (``settings``: its own, e.g. the tool world's
        redundant and missing rates), writing for this agent's tokenizer with its tools and budget."""
        oracle = BackendConfig.model_validate(
            {"kind": ORACLE, "model": self.backend.tokenizer_name, ORACLE: settings or {}}
        )
        return self.model_copy(update={"backend": oracle})


def build_generator_for(backend: BackendConfig, task: Task) -> Generator:
    """The backend's Generator; ``kind: expert`` is the task's oracle."""
    if backend.kind == ORACLE:
        return task.oracle(backend.tokenizer_name, backend.section(ORACLE))
    return build_generator(backend)


def task_tools(tools: ToolsConfig, task: Task) -> ToolsConfig:
    """``tools`` with the task's corpus filled in where the search tool names none."""
    if SEARCH not in tools.enabled or tools.section(SEARCH).corpus is not None:
        return tools
    corpus = task.corpus()
    return tools if corpus is None else tools.with_section(SEARCH, corpus=str(corpus))


def build_agent(
    cfg: AgentConfig,
    task: Task,
    *,
    generator: Generator | None = None,
    tools: dict[str, Tool] | None = None,
) -> AgentLoop:
    """The agent loop ``cfg`` describes for ``task``.

    ``generator`` / ``tools`` replace the ones the config would build (RL's live policy, tests'
    scripted tools); the loop closes only what it built, when it is closed.
    """
    owned: list[Generator | Tool] = []
    try:
        if generator is None:
            generator = build_generator_for(cfg.backend, task)
            owned.append(generator)
        tools_cfg = task_tools(cfg.tools, task)
        if tools is None:
            tools = build_tools(tools_cfg)
            owned.extend(tools.values())
        examples = task.prompt_examples(cfg.few_shot, tools_cfg, cfg.backend.tokenizer_name)
        return AgentLoop(
            generator,
            tools,
            budget=cfg.budget,
            sampling=cfg.sampling,
            few_shot=examples,
            max_active=cfg.max_active,
            owned=owned,
        )
    except BaseException:
        for resource in reversed(owned):
            resource.close()
        raise
