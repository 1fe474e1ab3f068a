"""The flywheel's critic and helper for the tool world, without a model (``critic.kind: expert``).

On the embedded tool world a 135M critic is useless, so :class:`ExpertCritic` fills both roles
(:class:`etagent.tasks.roles.Critic` and :class:`~etagent.tasks.roles.Helper`) from each
question's minimal plan (``question.meta["plan"]``): a tool call is *useful* when its result newly
reveals a fact of a plan step, *redundant* otherwise; a corrected step is the plan's next segment
after the facts found so far. Questions without a plan get no edits (None).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from etagent.protocol import tags
from etagent.records import Question
from etagent.scoring.correctness import answer_equal
from etagent.tasks.roles import RedundancyEdit, StepRewriteRequest, StepsRequest, ThinkRequest
from etagent.tasks.toolworld.variants import variant_segments


@dataclass
class StepInfo:
    """What one step does, as the expert sees it."""

    call: tuple[str, str] | None  # (tool, content) of the step's executed call
    new: list[int] = field(default_factory=list)  # plan steps whose facts this call newly revealed


def _mentions(text: str, value: str) -> bool:
    """``value`` appears in ``text`` as a whole token (a number inside a longer number does not count)."""
    return re.search(rf"(?<![\w.]){re.escape(value)}(?![\w]|\.\d)", text) is not None


def _reveals(step: dict[str, Any], tool: str, result: str) -> bool:
    if step["tool"] != tool:
        return False
    reveals = step.get("reveals", {})
    entity = reveals.get("entity")
    facts = [str(v) for v in reveals.get("facts", {}).values()]
    return (entity is None or entity in result) and all(_mentions(result, f) for f in facts)


def _step_call(step: str) -> tuple[str, str, str] | None:
    """(tool, content, result) of the executed call in a step, or None."""
    blocks = [b for b in tags.parse_blocks(step) if not (b.kind == "text" and not b.content.strip())]
    for b, nxt in itertools.pairwise(blocks):
        if b.kind in tags.DEFAULT_TOOL_TAGS and b.closed and nxt.kind == tags.RESULT and nxt.closed:
            return b.kind, b.content.strip(), nxt.content
    return None


def analyse_steps(question: Question, steps: Sequence[str]) -> list[StepInfo]:
    """Per step: its call and the plan steps it newly covers (in the order the steps come)."""
    plan = list(question.meta["plan"])
    covered: set[int] = set()
    infos = []
    for step in steps:
        call = _step_call(step)
        if call is None:
            infos.append(StepInfo(None))
            continue
        tool, content, result = call
        new = [i for i, p in enumerate(plan) if i not in covered and _reveals(p, tool, result)]
        covered.update(new)
        infos.append(StepInfo((tool, content), new))
    return infos


class ExpertCritic:
    """Critic and helper from the tool world's plans (no model). Deterministic."""

    name = "expert"

    @staticmethod
    def _has_plan(q: Question) -> bool:
        return isinstance(q.meta.get("plan"), list)

    def next_step(self, question: Question, done: Sequence[str]) -> str:
        """The plan's next segment after the steps ``done``: the call for the first plan step whose
        facts are still missing, or the answer when none is."""
        covered = {i for info in analyse_steps(question, done) for i in info.new}
        segments = variant_segments(question)  # one call segment per plan step, then the answer
        missing = [i for i in range(len(segments) - 1) if i not in covered]
        return segments[missing[0] if missing else -1].text

    def locate_redundant_steps(self, requests: Sequence[StepsRequest]) -> list[RedundancyEdit | None]:
        out: list[RedundancyEdit | None] = []
        for r in requests:
            if not self._has_plan(r.question):
                out.append(None)
                continue
            infos = analyse_steps(r.question, r.steps)
            k = next((i for i, info in enumerate(infos, 1) if info.call is not None and not info.new), None)
            out.append(None if k is None else RedundancyEdit(k, self.next_step(r.question, r.steps[: k - 1])))
        return out

    def locate_flawed_steps(self, requests: Sequence[StepsRequest]) -> list[int | None]:
        """The first call that reveals nothing new, or else the step that answers (or stops)
        without the missing facts; None when every step is a useful call (no end to fix)."""
        out: list[int | None] = []
        for r in requests:
            if not self._has_plan(r.question):
                out.append(None)
                continue
            infos = analyse_steps(r.question, r.steps)
            out.append(
                next((i for i, info in enumerate(infos, 1) if info.call is None or not info.new), None)
            )
        return out

    def rewrite_steps(self, requests: Sequence[StepRewriteRequest]) -> list[str | None]:
        return [
            self.next_step(r.question, r.steps[: r.k - 1]) if self._has_plan(r.question) else None
            for r in requests
        ]

    def rewrite_thinks(self, requests: Sequence[ThinkRequest]) -> list[str | None]:
        out: list[str | None] = []
        for r in requests:
            if not self._has_plan(r.question):
                out.append(None)
                continue
            plan = r.question.meta["plan"]
            done = tags.split_steps(r.prefix) if r.prefix else []
            infos = analyse_steps(r.question, done)
            covered = {i for info in infos for i in info.new}
            parts = []
            last_call = next((info for info in reversed(infos) if info.call is not None), None)
            if last_call is not None:
                parts += [f"The result shows that {plan[i]['fact']}." for i in last_call.new]
            elif r.question.meta.get("direct_note"):
                parts.append(r.question.meta["direct_note"])
            call = _step_call(r.action)
            if call is None:
                parts.append(f"Therefore the answer is {tags.extract_answer(r.action)}.")
            else:
                tool, _, result = call
                new = [i for i, p in enumerate(plan) if i not in covered and _reveals(p, tool, result)]
                if new:
                    need = plan[new[0]]["need"]
                    how = "a search will find it" if tool == tags.SEARCH else "Python will compute it exactly"
                    parts.append(f"{'Next' if covered else 'First'} I need {need}; {how}.")
                else:
                    parts.append("Let me double-check this with one more call.")
            out.append(" ".join(parts))
        return out

    def judge_correct(self, items: Sequence[tuple[Question, str]]) -> list[bool]:
        return [answer_equal(pred, q.answers, q.task) for q, pred in items]
