"""The per-question buffer: records with provenance, judging, the selection rule (docs/method.md 3.2-3.3).

One :class:`BufferRecord` per question is one line of ``buffers.jsonl``. Each buffer entry keeps
its trajectory and its provenance (operator, parent, round, verdict), so a person can see which
operators produce accepted data; operators that produced nothing, or whose candidate did not fit
into the full buffer, are kept as :class:`FlywheelEvent`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from etagent.flywheel.roles import Critic
from etagent.protocol import tags
from etagent.records import Question, Trajectory
from etagent.scoring.correctness import AnswerCheck, CorrectnessMetric, answer_correctness


class FlywheelEntry(BaseModel):
    """One trajectory in a question's buffer, with where it came from and how it was judged."""

    id: str = Field(description="<question id>#<index in the order entries were created>")
    operator: str
    parent: str | None = Field(None, description="id of the entry the operator started from")
    round: int = Field(description="0 = initial rollout, then 1..rounds")
    verdict: bool = Field(description="judged correct")
    correctness: float = Field(description="token F1 (QA), 1/0 (maths judge) or the task's answer check")
    metric: CorrectnessMetric
    prediction: str
    tool_calls: int
    format_ok: bool
    expanded: bool = Field(False, description="already selected as a parent")
    trajectory: Trajectory

    @property
    def text(self) -> str:
        return self.trajectory.response_text


class FlywheelEvent(BaseModel):
    """An operator application that added nothing to the buffer."""

    round: int
    operator: str
    parent: str
    status: Literal["no_candidate", "buffer_full"]
    reason: str = ""
    verdict: bool | None = None  # for a judged candidate that did not fit


class BufferRecord(BaseModel):
    """Everything the flywheel did for one question."""

    question_id: str
    question: Question
    entries: list[FlywheelEntry] = Field(default_factory=list)
    events: list[FlywheelEvent] = Field(default_factory=list)
    rounds_run: int = 0

    def next_id(self) -> str:
        return f"{self.question_id}#{len(self.entries) + sum(e.status == 'buffer_full' for e in self.events)}"


@dataclass(frozen=True)
class Verdict:
    correct: bool
    correctness: float
    metric: CorrectnessMetric


def judge_trajectories(
    trajectories: Sequence[Trajectory],
    critic: Critic,
    qa_f1_threshold: float = 0.8,
    check: AnswerCheck | None = None,
) -> list[Verdict]:
    """docs/method.md 3.2 with our scorers: maths answers by the critic's judge (one batched call), every
    other task by token F1 (SQuAD normalisation; a blank answer scores 0) at or above
    ``qa_f1_threshold``. ``check`` (the task's ``check_answer``) replaces F1 where it gives a
    number, judged against the same threshold; the judge keeps precedence for maths."""
    maths = [i for i, t in enumerate(trajectories) if t.question.task == "math"]
    judged: dict[int, bool] = {}
    if maths:
        verdicts = critic.judge_correct(
            [(trajectories[i].question, trajectories[i].prediction) for i in maths]
        )
        judged = {i: bool(v) for i, v in zip(maths, verdicts, strict=True)}
    out: list[Verdict] = []
    for i, t in enumerate(trajectories):
        c = answer_correctness(
            t.question,
            t.prediction,
            qa_metric="f1",
            normalisation="squad",
            judge_verdict=judged.get(i),
            check=check,
            blank_is_wrong=True,
        )
        correct = c.value == 1.0 if c.metric == "judge" else c.value >= qa_f1_threshold
        out.append(Verdict(correct, c.value, c.metric))
    return out


def make_entry(
    record: BufferRecord,
    trajectory: Trajectory,
    verdict: Verdict,
    operator: str,
    parent: str | None,
    round_: int,
) -> FlywheelEntry:
    text = trajectory.response_text
    entry_id = record.next_id()
    trajectory.sample_index = int(entry_id.rsplit("#", 1)[1])
    return FlywheelEntry(
        id=entry_id,
        operator=operator,
        parent=parent,
        round=round_,
        verdict=verdict.correct,
        correctness=verdict.correctness,
        metric=verdict.metric,
        prediction=trajectory.prediction,
        tool_calls=tags.count_tool_calls(text),
        format_ok=tags.check_format(text).ok,
        trajectory=trajectory,
    )


def admit(record: BufferRecord, entry: FlywheelEntry, buffer_size: int) -> bool:
    """Add an entry to the buffer, or log it as not fitting when the buffer is full."""
    if len(record.entries) < buffer_size:
        record.entries.append(entry)
        return True
    record.events.append(
        FlywheelEvent(
            round=entry.round,
            operator=entry.operator,
            parent=entry.parent or "",
            status="buffer_full",
            reason=f"buffer holds {buffer_size} trajectories",
            verdict=entry.verdict,
        )
    )
    return False


def select_parent(record: BufferRecord) -> FlywheelEntry | None:
    """The best entry not yet expanded: higher correctness first (maths: correct before
    incorrect; QA: higher F1), then fewer tool calls, then the earlier entry. None when every
    entry has been expanded (the question stops evolving)."""
    candidates = [(k, e) for k, e in enumerate(record.entries) if not e.expanded]
    if not candidates:
        return None
    _, best = min(candidates, key=lambda ke: (-ke[1].correctness, ke[1].tool_calls, ke[0]))
    return best
