"""The tool world as a task: its splits, corpus, oracle, critic and prompt examples."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel

from etagent.config import validate_section
from etagent.records import Question
from etagent.tasks.base import PromptExample, Task, TaskError, uses_only
from etagent.tasks.toolworld.entities import SPLITS
from etagent.tasks.toolworld.expert import ExpertConfig, ExpertPolicy
from etagent.tasks.toolworld.storage import corpus_path, load_split

if TYPE_CHECKING:
    from etagent.tasks.toolworld.critic import ExpertCritic
    from etagent.tools.config import ToolsConfig

SEARCH = "search"
#: the split prompt examples come from (never a split that is evaluated)
EXAMPLES_SPLIT = "train"


def pick_examples(questions: list[Question], k: int) -> list[Question]:
    """k questions covering as many tool-use types as possible (round-robin over types, those
    that call tools first)."""
    by_type: dict[str, list[Question]] = {}
    for q in questions:
        by_type.setdefault(str(q.meta.get("qtype", "?")), []).append(q)
    order = sorted(by_type, key=lambda t: (-int(by_type[t][0].meta.get("min_tool_calls", 0) > 0), t))
    picked: list[Question] = []
    while len(picked) < k and any(by_type.values()):
        for t in order:
            if by_type[t] and len(picked) < k:
                picked.append(by_type[t].pop(0))
    return picked


def plan_tools(question: Question) -> set[str]:
    """The tools the question's minimal plan calls."""
    return {step["tool"] for step in question.meta.get("plan") or ()}


def expert_settings(settings: Any) -> ExpertConfig:
    """``settings`` (None, an :class:`ExpertConfig`, a mapping or another config model with the same
    fields) as an ExpertConfig; a :class:`TaskError` names the invalid field."""
    if isinstance(settings, BaseModel) and not isinstance(settings, ExpertConfig):
        settings = settings.model_dump()
    try:
        return validate_section("expert", settings, ExpertConfig)
    except ValueError as e:
        raise TaskError(f"task 'toolworld': invalid expert settings: {e}") from None


class ToolWorldTask(Task):
    """The embedded synthetic tool world of ``seed`` (:mod:`etagent.tasks.toolworld`).

    Questions and corpus are generated into the etagent cache on first use. The oracle is the
    scripted :class:`~etagent.tasks.toolworld.expert.ExpertPolicy`, the critic the plan-based
    :class:`~etagent.tasks.toolworld.critic.ExpertCritic`; prompt examples are expert-written
    trajectories over train questions, with real results of the enabled tools.
    """

    name: ClassVar[str] = "toolworld"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def splits(self) -> list[str]:
        return list(SPLITS)

    def questions(self, split: str) -> list[Question]:
        self.require_split(split)
        return load_split(split, self.seed)

    def corpus(self) -> Path:
        return corpus_path(self.seed)

    def oracle(self, tokenizer: str, settings: Any = None) -> ExpertPolicy:
        """The expert policy (``settings``: None, an :class:`ExpertConfig` or its mapping). It knows
        the questions of this task's world, of the default world and of the world of its own seed."""
        cfg = expert_settings(settings)
        return ExpertPolicy.from_settings(tokenizer, cfg, world_seeds=sorted({0, self.seed, cfg.seed}))

    def critic(self) -> ExpertCritic:
        from etagent.tasks.toolworld.critic import ExpertCritic

        return ExpertCritic()

    def prompt_examples(self, k: int, tools: ToolsConfig, tokenizer: str) -> list[PromptExample]:
        """k expert trajectories over train questions whose minimal plan calls only enabled tools.

        The expert runs with the enabled tools of ``tools``; search always runs BM25 over this
        world's corpus (whatever corpus the task at hand searches), so its results really contain
        the facts the expert uses.
        """
        if k <= 0:
            return []
        from etagent.loop.agent_loop import AgentLoop, SamplingConfig
        from etagent.tools.base import tool_class
        from etagent.tools.config import build_tools

        enabled = [tool_class(name).name for name in tools.enabled]
        usable = [q for q in load_split(EXAMPLES_SPLIT, self.seed) if plan_tools(q) <= set(enabled)]
        if len(usable) < k:
            raise TaskError(
                f"task {self.describe()!r}: {len(usable)} {EXAMPLES_SPLIT} questions can be solved with "
                f"the enabled tools {enabled}; few_shot asks for {k} prompt examples"
            )
        examples = pick_examples(usable, k)
        world_tools = (
            tools.with_section(SEARCH, backend="bm25", corpus=str(self.corpus()))
            if SEARCH in enabled
            else tools.model_copy(deep=True)
        )
        expert = ExpertPolicy.from_settings(tokenizer, world_seeds=[], questions=examples)
        built = build_tools(world_tools)
        loop = AgentLoop(expert, built, sampling=SamplingConfig(temperature=0.0), owned=built.values())
        try:
            out = [(t.question.question, t.response_text) for t in loop.run(examples, n=1)]
        finally:
            loop.close()
        for (_, text), q in zip(out, examples, strict=True):
            if not uses_only(text, enabled):
                raise TaskError(
                    f"task {self.describe()!r}: the prompt example for {q.id} calls a tool other than "
                    f"{enabled}: {text[:300]!r}"
                )
        return out

    def describe(self) -> str:
        return self.name if self.seed == 0 else f"{self.name}@{self.seed}"
