"""The trajectories the expert writes for a question: its minimal plan and the plan's variants.

A *variant* is the minimal plan (``question.meta["plan"]``) with at most one imperfection of
each kind: one redundant call (a repeated search with a paraphrased query, a re-run of the
computation, or a plausible but unneeded search from ``meta["extra_steps"]``) and/or the last
needed call skipped and the answer guessed (``meta["guess"]``). A variant's trajectory is a list
of model-written segments, ``<think>...</think>`` then one tool call or the final answer; tool
results go between them. Everything here is pure text rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

from etagent.protocol.tags import render_answer, render_call, render_think
from etagent.records import Question
from etagent.tasks.toolworld.steps import Step


@dataclass(frozen=True)
class Variant:
    """Which imperfection a trajectory has: none, one redundant call, a skipped call, or both.

    ``redundant`` indexes :func:`redundancy_options` (computed for the same ``missing``).
    """

    missing: bool = False
    redundant: int | None = None


@dataclass(frozen=True)
class ExpertSegment:
    """One model-written segment: a think block and the call or answer that follows it."""

    think: str
    body: str
    call: tuple[str, str] | None  # (tool, content) for a call; None for the answer

    @property
    def text(self) -> str:
        return render_think(self.think) + self.body


def plan_of(question: Question) -> list[Step]:
    """The question's minimal plan (a ValueError for a question without one)."""
    try:
        return list(question.meta["plan"])
    except KeyError:
        raise ValueError(
            f"question {question.id!r} has no meta['plan']; the expert needs a tool-world question"
        ) from None


def _kept_steps(question: Question, missing: bool) -> list[Step]:
    plan = plan_of(question)
    return plan[:-1] if missing and plan else plan


def _known_entities(question: Question, kept: list[Step]) -> str:
    """Text the trajectory has seen (the question and the kept steps' facts): an unneeded search
    may only ask about an entity named there."""
    return " ".join([question.question] + [s["fact"] for s in kept])


def redundancy_options(question: Question, missing: bool = False) -> list[tuple[str, int]]:
    """The redundant calls a variant can add: ``("repeat", i)`` re-does kept step i (paraphrased
    query / rewritten code); ``("extra", j)`` makes unneeded call ``meta["extra_steps"][j]``."""
    kept = _kept_steps(question, missing)
    options: list[tuple[str, int]] = [("repeat", i) for i in range(len(kept))]
    seen = _known_entities(question, kept)
    for j, step in enumerate(question.meta.get("extra_steps") or []):
        entity = step.get("reveals", {}).get("entity")
        if entity is None or entity in seen:
            options.append(("extra", j))
    return options


def _answer_text(question: Question) -> str:
    return question.answers[0] if question.answers else ""


def _intent(role: str, step: Step | None, first: bool, question: Question) -> str:
    if role == "answer":
        return f"So the answer is {_answer_text(question)}."
    if role == "guess":
        last, guess = plan_of(question)[-1], question.meta.get("guess", "")
        if last["tool"] == "python":
            return (
                f"Working out {last['need']} in my head gives about {guess}, so I will answer "
                f"without running code. The answer is {guess}."
            )
        return f"I am fairly sure that {last['need']} is {guess}, so I will answer without searching."
    assert step is not None
    search = step["tool"] == "search"
    if role == "repeat":
        return (
            f"Let me search again to double-check {step['need']}."
            if search
            else "Let me run the computation again to double-check it."
        )
    if role == "extra":
        if not first:
            return f"I will also look up {step['need']}."
        if not question.meta.get("direct_note"):
            return f"Let me first look up {step['need']}."
        # after the question's own statement of the answer: a confirmation nobody needed
        if search:
            return f"Let me also search for {step['need']} to confirm it."
        return f"Let me also check {step['need']} with Python."
    if search:
        return (
            f"I need {step['need']}, so I will search for it."
            if first
            else f"Now I need {step['need']}, so I will search for it."
        )
    return (
        f"I need to compute {step['need']}, so I will use Python."
        if first
        else f"Now I will compute {step['need']} with Python."
    )


def _commentary(role: str, step: Step) -> str:
    """What the next think says about the result of the previous call."""
    again = " again" if role == "repeat" else ""
    if step["tool"] == "search":
        return f"The search{again} says {step['fact']}."
    return f"The code{again} prints {step['reveals']['facts']['result']}."


def variant_segments(question: Question, variant: Variant = Variant()) -> list[ExpertSegment]:
    """The segments of one variant's trajectory, in order (calls first, the answer last)."""
    plan = plan_of(question)
    missing = variant.missing and bool(plan)
    kept = _kept_steps(question, missing)
    actions: list[tuple[str, Step]] = [("needed", s) for s in kept]
    if variant.redundant is not None:
        options = redundancy_options(question, missing)
        if not 0 <= variant.redundant < len(options):
            raise ValueError(
                f"question {question.id!r}: no redundancy option {variant.redundant} "
                f"({len(options)} available)"
            )
        kind, index = options[variant.redundant]
        if kind == "repeat":
            actions.insert(index + 1, ("repeat", kept[index]))
        else:
            # an unneeded search goes right after the last needed search (its entity is known by then)
            searches = [i for i, (_, s) in enumerate(actions) if s["tool"] == "search"]
            actions.insert(
                searches[-1] + 1 if searches else 0, ("extra", question.meta["extra_steps"][index])
            )
    segments: list[ExpertSegment] = []
    previous: tuple[str, Step] | None = None
    for role, step in [*actions, ("guess" if missing else "answer", None)]:
        parts = []
        if previous is not None:
            parts.append(_commentary(*previous))
        elif question.meta.get("direct_note"):
            parts.append(question.meta["direct_note"])
        parts.append(_intent(role, step, previous is None, question))
        think = " ".join(parts)
        if step is None:
            answer = question.meta.get("guess", "") if role == "guess" else _answer_text(question)
            segments.append(ExpertSegment(think, render_answer(answer), None))
        else:
            tool = step["tool"]
            if tool == "search":
                content = step["alt_query"] if role == "repeat" else step["query"]
            else:
                content = step["alt_code"] if role == "repeat" else step["code"]
            segments.append(ExpertSegment(think, render_call(tool, content), (tool, content.strip())))
            previous = (role, step)
    return segments


def expert_plan_text(question: Question, variant: Variant = Variant()) -> list[str]:
    """The model-written segments of a variant's trajectory as text (tool results go between them)."""
    return [s.text for s in variant_segments(question, variant)]
