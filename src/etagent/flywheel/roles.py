"""The critic and helper roles of the flywheel (docs/method.md 3.1), each with an LLM and an expert form.

- **Critic** (M3 in the paper, a 72B model): locates the first redundant step of a correct
  trajectory and writes its corrected step, locates the earliest flawed step of an incorrect one,
  rewrites the thinking before each action (global refinement) and judges maths answers.
- **Helper** (M2, the policy's size): rewrites a flawed step after analysing it (self-correction).

Every method takes a batch of requests and returns one result per request (None = no usable
output: the operator then produces no candidate and the stage logs why). An LLM role puts the
whole batch into one ``generate()`` call, so a vLLM server sees many requests at once.

A task may bring its own critic without a model (``kind: expert``, :meth:`etagent.tasks.Task.critic`),
such as the tool world's :class:`etagent.tasks.toolworld.critic.ExpertCritic`, which plays both
roles from each question's minimal plan.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import Field

from etagent.backends.base import Generator, SamplingParams, render_chat_text
from etagent.backends.config import BackendConfig
from etagent.config import ConfigError, ConfigModel
from etagent.flywheel import steps as st
from etagent.protocol import tags
from etagent.records import Question
from etagent.tasks.roles import (
    Critic,
    Helper,
    RedundancyEdit,
    StepRewriteRequest,
    StepsRequest,
    ThinkRequest,
)

log = logging.getLogger("etagent.flywheel")


# --------------------------------------------------------------------------------------------
# Configuration


class RoleConfig(ConfigModel):
    """Who plays a role: the task's model-free critic (``expert``; the tool world has one), or a
    language model (any backend)."""

    kind: Literal["expert", "llm"] = "expert"
    backend: BackendConfig | None = Field(
        None, description="llm: the model; None = share the policy's generator (no second copy loaded)"
    )
    temperature: float = Field(
        1.0, ge=0, description="docs/method.md 3.1: every flywheel generation samples at T=1.0"
    )
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(1024, ge=1)
    seed: int | None = None


class CriticConfig(RoleConfig):
    judge_max_attempts: int = Field(
        4, ge=1, description="llm: times a maths verdict is asked (docs/method.md 3.2: 4)"
    )
    judge_cache: bool = Field(True, description="llm: keep maths verdicts in the SQLite verdict cache")


# --------------------------------------------------------------------------------------------
# LLM roles: prompts and tolerant parsers

REDUNDANCY_PROMPT = """\
You are reviewing the reasoning trajectory of an agent that answers questions step by step. It \
thinks inside <think> </think>, calls a search engine with <search> query </search> or a Python \
interpreter with <python> code </python>, receives each tool's output inside <result> </result>, \
and gives the final answer inside <answer> </answer>.

A step is REDUNDANT if its reasoning is unnecessary, verbose or repetitive, or if it calls a tool \
whose information was already available or which repeats an earlier call.

Question: {question}

Trajectory:
{steps}

Find the FIRST redundant step. If there is none, reply exactly "Step: no". Otherwise reply in \
exactly this form:
Step: <the step number>
Analysis: <why the step is redundant>
Corrected Step: <the full simplified step, written with the same tags; if it still calls a tool, \
end right after the closing tool tag and do not write a <result>>"""

FLAWED_STEP_PROMPT = """\
You are reviewing the reasoning trajectory of an agent that answers questions step by step with \
tools (<search> for a search engine, <python> for a Python interpreter; tool outputs are shown in \
<result> </result>). The trajectory reaches a WRONG answer.

Question: {question}
Correct answer: {answer}

Trajectory:
{steps}

Find the EARLIEST flawed step. A step is flawed if it contains a logical error, overthinks, makes \
a redundant tool call, makes an inappropriate tool call, or answers without a tool call it needed.
Reply with the step number first, as "Step: <number>", then "Analysis: <why>"."""

ANALYSIS_PROMPT = """\
Here is the beginning of a reasoning trajectory of an agent that answers questions step by step \
with tools (<search>, <python>; outputs in <result> </result>). The last step shown contains a \
mistake.

Question: {question}

Trajectory:
{steps}

Analyse step {k}: what is wrong with it, and what should the agent do instead?"""

REWRITE_STEP_PROMPT = """\
An agent answers questions step by step: it thinks inside <think> </think>, then either calls a \
tool (<search> query </search> or <python> code </python>) or answers inside <answer> </answer> \
with the final answer in \\boxed{{}}.

Question: {question}

Steps so far:
{steps}

The next step was flawed:
{flawed}

Analysis of the flaw:
{analysis}

Write the corrected step: one <think> </think> block, then one tool call or the final answer. If \
you call a tool, stop right after its closing tag; never write a <result> yourself."""

THINK_REWRITE_PROMPT = """\
You are polishing the reasoning of an agent that solves questions with tools. Rewrite ONLY the \
thinking that precedes the action below: remove redundancy and mistakes, keep the logic, keep it \
short. Do not write any tag, tool call, result or answer: write only the new thinking text, then \
</think>.

Question: {question}

Trajectory so far:
{prefix}

Original thinking:
{think}

The action that follows (kept exactly as it is):
{action}

New thinking:"""

_STEP_NUMBER = re.compile(r"step\s*(?:number)?\s*[*#:：\-]*\s*(?:is\s*)?[*#]*\s*(no\b|none\b|\d+)", re.I)
_LEADING_NUMBER = re.compile(r"^\W*(\d+)")
_CORRECTED = re.compile(r"corrected[\s_]*step\s*\**\s*[:：]\s*\**", re.I)
_ANY_TAG = re.compile(r"</?(?:think|answer|result|search|python)>")


def parse_step_number(reply: str, n_steps: int, allow_no: bool = False) -> int | Literal["no"] | None:
    """The step number in a critic's reply ("Step: 3", "**Step:** 3", "Step 3", a bare "3" after a
    "Step:" prefill); "no" for "Step: no" when allowed; None when unreadable or out of range."""
    m = _STEP_NUMBER.search(reply)
    value = m.group(1).lower() if m else None
    if value is None:
        lead = _LEADING_NUMBER.match(reply)
        value = lead.group(1) if lead else None
    if value in ("no", "none"):
        return "no" if allow_no else None
    if value is None:
        return None
    k = int(value)
    return k if 1 <= k <= n_steps else None


def parse_redundancy(reply: str, n_steps: int) -> RedundancyEdit | Literal["no"] | None:
    k = parse_step_number(reply, n_steps, allow_no=True)
    if k == "no" or k is None:
        return k
    m = _CORRECTED.search(reply)
    if m is None:
        return None
    step = st.repair_step(reply[m.end() :])
    return None if step is None else RedundancyEdit(k, step)


def parse_think(reply: str) -> str | None:
    """New thinking text: up to ``</think>``, without a leading ``<think>``; None when empty or
    when it holds any protocol tag (the rewrite must not touch actions)."""
    text = reply.split(tags.close_tag(tags.THINK), 1)[0].strip()
    text = text.removeprefix(tags.open_tag(tags.THINK)).strip()
    if not text or _ANY_TAG.search(text):
        return None
    return text


class _LLMRole:
    """Shared plumbing: chat prompts with an optional assistant prefill, one batched call."""

    def __init__(self, generator: Generator, cfg: RoleConfig):
        self.generator = generator
        self.cfg = cfg
        self.name = getattr(generator, "name", "llm")

    def _prompt(self, user: str, prefill: str = "") -> list[int]:
        text = render_chat_text(self.generator.tokenizer, [{"role": "user", "content": user}]) + prefill
        return self.generator.tokenizer.encode(text, add_special_tokens=False)

    def _generate(self, prompts: list[list[int]], stop: Sequence[str] = ()) -> list[str | None]:
        if not prompts:
            return []
        params = SamplingParams(  # built per call: no shared, mutated stop list (docs/method.md 9.3)
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            stop=list(stop),
            seed=self.cfg.seed,
        )
        try:
            out = self.generator.generate(list(prompts), params)
        except Exception as e:  # a failing server costs candidates, not the run
            log.warning(
                "%s: generation failed for %d prompts: %s: %s", self.name, len(prompts), type(e).__name__, e
            )
            return [None] * len(prompts)
        return [c[0].text if c else None for c in out]


def _parse_step_replies(
    requests: Sequence[StepsRequest],
    replies: Sequence[str | None],
    parse: Callable[[str, int], Any],
    what: str,
) -> list[Any]:
    """Each reply parsed against its trajectory's step count (None when unreadable, logged)."""
    out = []
    for r, reply in zip(requests, replies, strict=True):
        parsed = None if reply is None else parse(reply, len(r.steps))
        if parsed is None:
            log.info("critic: unreadable %s reply for %s: %r", what, r.question.id, (reply or "")[:200])
        out.append(parsed)
    return out


def _gold(q: Question) -> str:
    return " | ".join(q.answers)


class LLMCritic(_LLMRole):
    """The critic role over any Generator (the paper: Qwen2.5-72B-Instruct behind vLLM)."""

    def __init__(self, generator: Generator, cfg: CriticConfig, judge: Any = None):
        super().__init__(generator, cfg)
        self.judge = judge  # an etagent.scoring.judge.LLMJudge; built on first use when None
        self.cfg: CriticConfig = cfg

    def locate_redundant_steps(self, requests: Sequence[StepsRequest]) -> list[RedundancyEdit | None]:
        prompts = [
            self._prompt(
                REDUNDANCY_PROMPT.format(question=r.question.question, steps=st.render_steps(r.steps))
            )
            for r in requests
        ]
        edits = _parse_step_replies(requests, self._generate(prompts), parse_redundancy, "redundancy")
        return [e if isinstance(e, RedundancyEdit) else None for e in edits]

    def locate_flawed_steps(self, requests: Sequence[StepsRequest]) -> list[int | None]:
        prompts = [
            self._prompt(
                FLAWED_STEP_PROMPT.format(
                    question=r.question.question, answer=_gold(r.question), steps=st.render_steps(r.steps)
                ),
                prefill="Step:",
            )
            for r in requests
        ]
        # only the number is used, so generation stops where the analysis would begin
        replies = self._generate(prompts, stop=["Analysis:"])
        steps = _parse_step_replies(requests, replies, parse_step_number, "flawed-step")
        return [k if isinstance(k, int) else None for k in steps]

    def rewrite_thinks(self, requests: Sequence[ThinkRequest]) -> list[str | None]:
        prompts = [
            self._prompt(
                THINK_REWRITE_PROMPT.format(
                    question=r.question.question,
                    prefix=r.prefix or "(nothing yet)",
                    think=r.think,
                    action=r.action,
                )
            )
            for r in requests
        ]
        replies = self._generate(prompts, stop=[tags.close_tag(tags.THINK)])
        return [None if reply is None else parse_think(reply) for reply in replies]

    def judge_correct(self, items: Sequence[tuple[Question, str]]) -> list[bool]:
        from etagent.scoring.judge import CorrectnessItem, JudgeConfig, LLMJudge
        from etagent.scoring.judge_cache import VerdictCache

        if self.judge is None:
            cfg = JudgeConfig(
                name=f"flywheel-critic:{self.name}",
                max_attempts=self.cfg.judge_max_attempts,
                cache=self.cfg.judge_cache,
                temperature=self.cfg.temperature,
                retry_temperature=self.cfg.temperature,
            )
            self.judge = LLMJudge(self.generator, cfg, VerdictCache() if cfg.cache else None)
        return self.judge.judge_correctness(
            [CorrectnessItem(q.question, q.answers, pred, q.task) for q, pred in items]
        )


class LLMHelper(_LLMRole):
    """The helper role over any Generator: analyse the flawed step, then rewrite it (two calls)."""

    def rewrite_steps(self, requests: Sequence[StepRewriteRequest]) -> list[str | None]:
        analyses = self._generate(
            [
                self._prompt(
                    ANALYSIS_PROMPT.format(
                        question=r.question.question, steps=st.render_steps(r.steps[: r.k]), k=r.k
                    ),
                    prefill=f"Step: {r.k}\nAnalysis: Let me analyze this step.",
                )
                for r in requests
            ]
        )
        todo = [(i, r, a) for i, (r, a) in enumerate(zip(requests, analyses, strict=True)) if a and a.strip()]
        rewrites = self._generate(
            [
                self._prompt(
                    REWRITE_STEP_PROMPT.format(
                        question=r.question.question,
                        steps=st.render_steps(r.steps[: r.k - 1]) or "(none)",
                        flawed=r.steps[r.k - 1].strip(),
                        analysis=a.strip(),
                    )
                )
                for _, r, a in todo
            ]
        )
        out: list[str | None] = [None] * len(requests)
        for (i, r, _), reply in zip(todo, rewrites, strict=True):
            out[i] = None if reply is None else st.repair_step(reply)
            if out[i] is None:
                log.info("helper: unusable step rewrite for %s: %r", r.question.id, (reply or "")[:200])
        return out


#: what a task's critic needs to play each role
_CRITIC_METHODS = ("locate_redundant_steps", "locate_flawed_steps", "rewrite_thinks", "judge_correct")
_HELPER_METHODS = ("rewrite_steps",)


def build_roles(
    critic_cfg: CriticConfig,
    helper_cfg: RoleConfig,
    policy: Generator,
    expert: Critic | Helper | None = None,
) -> tuple[Critic, Helper, list[Generator]]:
    """The critic and helper a config describes; also the generators built for them (to close).

    An llm role without a backend shares the policy's generator. A ``kind: expert`` role is
    ``expert``, the task's critic (:meth:`etagent.tasks.Task.critic`), which must then play that
    role (a critic needs the Critic methods, a helper ``rewrite_steps``).
    """
    from etagent.backends.config import build_generator

    def the_expert(role: str, methods: tuple[str, ...]) -> Any:
        if expert is None:
            raise ConfigError(
                f"{role}.kind is 'expert' but the task has no expert critic; set {role}.kind: llm "
                f"(with {role}.backend, or none to share the policy's model)"
            )
        lacking = [m for m in methods if not callable(getattr(expert, m, None))]
        if lacking:
            raise ConfigError(
                f"{role}.kind is 'expert' but the task's critic {type(expert).__name__} cannot play the "
                f"{role} (it has no {', '.join(lacking)}); set {role}.kind: llm"
            )
        return expert

    owned: list[Generator] = []

    def generator_for(cfg: RoleConfig) -> Generator:
        if cfg.backend is None:
            return policy
        gen = build_generator(cfg.backend)
        owned.append(gen)
        return gen

    critic: Critic = (
        the_expert("critic", _CRITIC_METHODS)
        if critic_cfg.kind == "expert"
        else LLMCritic(generator_for(critic_cfg), critic_cfg)
    )
    helper: Helper = (
        the_expert("helper", _HELPER_METHODS)
        if helper_cfg.kind == "expert"
        else LLMHelper(generator_for(helper_cfg), helper_cfg)
    )
    return critic, helper, owned
