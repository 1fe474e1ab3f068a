"""Deterministic text operations of the flywheel (docs/method.md 3.3): no model is called here.

Splitting a trajectory into steps, rendering them numbered for a critic, repairing the tags of a
step a model wrote, cutting after step k, inserting hints and splitting into action units for the
think rewrite. Tag knowledge comes from :mod:`etagent.protocol.tags`.

A *step* is the text up to and including each ``</result>``; the remainder is the last step, so
``"".join(split_steps(t)) == t``. Steps are numbered from 1, as the critic sees them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from etagent.protocol import tags

TOOL_TAGS = tags.DEFAULT_TOOL_TAGS
_THINK_OPEN, _THINK_CLOSE = tags.open_tag(tags.THINK), tags.close_tag(tags.THINK)
_RESULT_OPEN, _RESULT_CLOSE = tags.open_tag(tags.RESULT), tags.close_tag(tags.RESULT)


def split_steps(text: str) -> list[str]:
    return tags.split_steps(text)


def render_steps(steps: Sequence[str]) -> str:
    """Steps as the critic reads them: ``#### Step i: ...`` blocks separated by blank lines."""
    return "\n\n".join(f"#### Step {i}: {step.strip()}" for i, step in enumerate(steps, 1))


def truncate_after(steps: Sequence[str], k: int) -> str:
    """Steps 1..k as one text."""
    _check_step(steps, k)
    return "".join(steps[:k])


def replace_step(steps: Sequence[str], k: int, new_step: str) -> str:
    """Steps 1..k-1, then ``new_step`` in place of step k; everything after step k is dropped."""
    _check_step(steps, k)
    return "".join(steps[: k - 1]) + new_step


def _check_step(steps: Sequence[str], k: int) -> None:
    if not 1 <= k <= len(steps):
        raise ValueError(f"step {k} out of range: the trajectory has {len(steps)} steps")


def normalise(text: str) -> str:
    """Whitespace-collapsed text: the key for de-duplicating trajectories."""
    return " ".join(text.split())


# --------------------------------------------------------------------------------------------
# Hints


def remove_answer(text: str) -> str:
    """The text without its final answer block (and anything after it)."""
    i = text.rfind(tags.open_tag(tags.ANSWER))
    return text if i < 0 else text[:i]


def insert_hint(text: str, hint: str, tool_tags: Sequence[str] = TOOL_TAGS) -> str:
    """Re-open the trajectory's last thought after its last tool result and append ``hint``.

    The answer block is removed; a tool call written after the last result but never executed is
    dropped; a last think that is closed is re-opened (its ``</think>`` removed), an open one is
    extended, and where the text after the last result has no think a new one is opened. The
    result ends inside an open think, ready for the policy to continue.
    """
    body = remove_answer(text)
    cut = body.rfind(_RESULT_CLOSE)
    head_end = 0 if cut < 0 else cut + len(_RESULT_CLOSE)
    head, tail = body[:head_end], body[head_end:]
    dangling = [i for i in (tail.find(tags.open_tag(t)) for t in tool_tags) if i >= 0]
    if dangling:
        tail = tail[: min(dangling)]
    tail = tail.rstrip()
    if tail.endswith(_THINK_CLOSE):
        tail = tail[: -len(_THINK_CLOSE)]
        return head + tail + _separator(tail) + hint
    if tail.rfind(_THINK_OPEN) > tail.rfind(_THINK_CLOSE):  # an open think
        return head + tail + _separator(tail) + hint
    return head + tail + _THINK_OPEN + hint


def _separator(text: str) -> str:
    return "" if not text or text[-1].isspace() or text.endswith(_THINK_OPEN) else " "


def step_hint_text(steps: Sequence[str], k: int, hint: str) -> str:
    """Step-level hint: keep steps 1..k, then continue the thought with the hint."""
    return insert_hint(truncate_after(steps, k), hint)


def trajectory_hint_text(text: str, hint: str) -> str:
    """Trajectory-level hint: the whole trajectory without its answer, then the hint."""
    return insert_hint(text, hint)


#: Hint sentences (docs/method.md 3.3; full sentences, never a single character). ``search`` for QA,
#: ``python`` for maths, ``general`` (either tool) where a task needs both kinds.
HINT_POOLS: dict[str, tuple[str, ...]] = {
    "search": (
        "Wait, the information I have may be incomplete or wrong, so let me search again with a "
        "more specific query.",
        "Hmm, I am not sure this is right; let me issue a new search query to verify the key fact "
        "before answering.",
        "Wait, I should not rely on my memory here; let me look this up with a new search.",
        "Let me rethink this: a fact I need is still missing, so I will search for it.",
        "Hold on, my conclusion might be mistaken, so I will check it with another search.",
        "Wait, let me reconsider which fact the question really asks for and search for it directly.",
    ),
    "python": (
        "Wait, computing this by hand is error-prone, so let me use the Python tool to calculate it exactly.",
        "Hmm, let me re-check this calculation by writing a short Python program.",
        "Wait, I may have made an arithmetic mistake; let me verify the result with Python.",
        "Let me rethink the problem step by step and compute the key quantity with Python.",
        "Hold on, I should not guess the number; a Python computation will give it exactly.",
        "Wait, let me write Python code to check my reasoning before giving the final answer.",
    ),
    "general": (
        "Wait, I am not certain yet; let me use a tool to check before answering: a search for a "
        "missing fact, or Python for an exact computation.",
        "Hmm, part of my reasoning rests on a guess, so let me verify it with the right tool.",
        "Wait, I should not rely on memory or mental arithmetic here; let me call a tool to get it right.",
        "Let me rethink this: a fact or a number I need is still missing, so I will get it with a tool.",
        "Hold on, my answer might be wrong; let me check the key step with a search or a short "
        "Python program.",
        "Wait, let me reconsider what the question needs and use a tool for the step I am unsure about.",
    ),
}


def pick_hint(pool: str, rng: random.Random) -> str:
    """One full hint sentence from a pool, chosen by ``rng``."""
    try:
        sentences = HINT_POOLS[pool]
    except KeyError:
        raise ValueError(f"unknown hint pool {pool!r}; known: {sorted(HINT_POOLS)}") from None
    return rng.choice(sentences)


# --------------------------------------------------------------------------------------------
# Repairing a step written by a model

_FENCE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_HEADER = re.compile(
    r"^\s*(?:#+\s*)?(?:\*\*)?\s*(?:corrected\s+)?step\s*\d*\s*(?:\*\*)?\s*[:：]\s*(?:\*\*)?\s*", re.I
)


def repair_step(raw: str, tool_tags: Sequence[str] = TOOL_TAGS) -> str | None:
    """A step written by a critic or helper, made well-formed, or None when nothing usable is left.

    Markdown fences and a ``Step k:`` header are stripped; anything from a ``<result>`` on is
    dropped (tool output is never the model's to write); ``<think>`` is prefixed when missing and
    ``</think>`` inserted before the first action (a tool call or the answer) when the think is not
    closed; the step ends after its first complete action (an unclosed action is dropped, so the
    policy writes it). The think must hold some text.
    """
    text = _FENCE.sub("", raw.strip()).strip()
    text = _HEADER.sub("", text, count=1).strip()
    first_think = text.find(_THINK_OPEN)
    if first_think > 0:  # a preamble before the step ("Here is the corrected step: <think>...")
        text = text[first_think:]
    r = text.find(_RESULT_OPEN)
    if r >= 0:
        text = text[:r]
    if not text.startswith(_THINK_OPEN):
        text = _THINK_OPEN + text
    action_tags = (*tool_tags, tags.ANSWER)
    opens = [(i, t) for t in action_tags if (i := text.find(tags.open_tag(t))) >= 0]
    action = min(opens) if opens else None
    think_close = text.find(_THINK_CLOSE)
    if action is None:
        body = text if think_close >= 0 else text.rstrip() + _THINK_CLOSE
        end = body.find(_THINK_CLOSE) + len(_THINK_CLOSE)
        text = body[:end]
    else:
        at, tag = action
        if think_close < 0 or think_close > at:
            text = text[:at].replace(_THINK_CLOSE, "").rstrip() + _THINK_CLOSE + text[at:]
            at = text.find(tags.open_tag(tag), text.find(_THINK_CLOSE))
        close_at = text.find(tags.close_tag(tag), at)
        # an unfinished action is dropped (the thought stays): the policy writes the action
        text = text[:at] if close_at < 0 else text[: close_at + len(tags.close_tag(tag))]
    think = text[len(_THINK_OPEN) : text.find(_THINK_CLOSE)]
    if not think.strip() or _THINK_OPEN in think:
        return None
    return text


# --------------------------------------------------------------------------------------------
# Action units for the think rewrite (global refinement)


@dataclass(frozen=True)
class ActionUnit:
    """The thinking before one action, and the action verbatim: a tool call with its result, or
    the answer block."""

    lead: str
    action: str

    @property
    def think(self) -> str | None:
        """The thinking text of the lead (its think blocks' contents), or None when it has none."""
        parts = [b.content.strip() for b in tags.parse_blocks(self.lead) if b.kind == tags.THINK]
        return " ".join(p for p in parts if p) if parts else None


def action_units(text: str, tool_tags: Sequence[str] = TOOL_TAGS) -> tuple[list[ActionUnit], str]:
    """Split a trajectory into action units plus the text after the last action.

    ``"".join(u.lead + u.action for u in units) + tail == text``.
    """
    blocks = tags.parse_blocks(text, tags.STRUCTURE_TAGS + tuple(tool_tags))
    units: list[ActionUnit] = []
    lead_start = 0
    i = 0
    while i < len(blocks):
        b = blocks[i]
        if (b.kind in tool_tags and b.closed) or b.kind == tags.ANSWER:
            end = b.end
            if b.kind != tags.ANSWER:
                j = i + 1
                while j < len(blocks) and blocks[j].kind == "text" and not blocks[j].content.strip():
                    j += 1
                if j < len(blocks) and blocks[j].kind == tags.RESULT and blocks[j].closed:
                    end, i = blocks[j].end, j
            units.append(ActionUnit(text[lead_start : b.start], text[b.start : end]))
            lead_start = end
        i += 1
    return units, text[lead_start:]


def assemble_units(units: Sequence[ActionUnit], new_thinks: Sequence[str | None], tail: str) -> str:
    """Rebuild a trajectory with each unit's lead replaced by its new think (None: lead kept)."""
    out = []
    for unit, think in zip(units, new_thinks, strict=True):
        out.append(unit.lead if think is None else tags.render_think(think))
        out.append(unit.action)
    return "".join(out) + tail
