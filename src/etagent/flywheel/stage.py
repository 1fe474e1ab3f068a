"""``etagent flywheel``: the self-evolving data flywheel (docs/method.md 3), then the export to the SFT set.

Per question a buffer starts with one policy rollout and grows over ``rounds`` rounds: select the
best entry not yet expanded, apply the correct-set operators (fresh re-rollout, redundancy
modification, global refinement) or the incorrect-set ones (self-correction at the earliest
flawed step, step-level hint, trajectory-level hint), let the policy finish every candidate, judge
each, add it to the buffer (at most ``buffer_size``). Questions are evolved ``concurrency`` at a
time in lockstep, so every policy, critic and helper call carries the candidates of many
questions (one batched ``generate()``).

Two starts, both from configuration alone:
- from the policy directly (the paper: a 7B instruct model follows the tool format from the prompt);
- the **cold start** (``cold_start.enabled: true``), for a model that cannot: the task's oracle
  (the tool world's expert policy, with some redundant and missing calls) writes
  ``cold_start.samples`` trajectories per question; they are judged and exported like any buffer, so the policy can first be
  fine-tuned on them (``etagent sft``) and the flywheel then run with the fine-tuned model.

Outputs in the run directory: ``buffers.jsonl`` (one :class:`BufferRecord` line per finished
question, appended with fsync, so an interrupted run resumes: finished questions are skipped and
a torn last line is repaired), then ``sft.jsonl`` and ``export_stats.json``
(:mod:`etagent.flywheel.export`) and ``flywheel.summary.json``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from etagent.agent import AgentConfig, build_agent
from etagent.config import ConfigModel
from etagent.flywheel import operators as ops
from etagent.flywheel.buffer import (
    BufferRecord,
    FlywheelEvent,
    Verdict,
    admit,
    judge_trajectories,
    make_entry,
    select_parent,
)
from etagent.flywheel.export import write_sft
from etagent.flywheel.roles import Critic, CriticConfig, Helper, RoleConfig, build_roles
from etagent.flywheel.steps import HINT_POOLS
from etagent.io import atomic_write_json, read_records, repair_torn_tail, resumable_output
from etagent.loop.agent_loop import AgentLoop, BudgetConfig, SamplingConfig
from etagent.records import Question, Trajectory
from etagent.rollout.stage import (
    DATA_HELP,
    MAX_TOOL_FAILURE_HELP,
    MAX_TOOL_FAILURE_SETTING,
    TASK_HELP,
    check_tool_failures,
    tool_failures,
)
from etagent.scoring.correctness import AnswerCheck
from etagent.tasks import DataRef, Task, resolve_data

log = logging.getLogger("etagent.flywheel")

BUFFERS = "buffers.jsonl"
SUMMARY = "flywheel.summary.json"


class ColdStartConfig(ConfigModel):
    """Expert-written SFT data for a policy that cannot follow the tool format yet."""

    enabled: bool = Field(
        False, description="write the expert's trajectories instead of evolving the policy's"
    )
    samples: int = Field(2, ge=1, description="expert trajectories per question")
    expert: dict[str, Any] = Field(
        default_factory=lambda: {"redundant_rate": 0.2, "missing_rate": 0.1},
        description="the task's oracle settings; for the tool world how often the expert makes a "
        "redundant call or skips a needed one (skipped calls mostly give wrong answers, which the "
        "export filters out)",
    )


def _policy_agent() -> AgentConfig:
    return AgentConfig(
        # initial rollouts and fresh re-rollouts (docs/method.md 1.4: 6 python + 6 search)
        budget=BudgetConfig(max_calls_per_tool=6, max_tool_calls=12),
        # docs/method.md 3.1: T=1.0, top_p 0.95; the seed is derived per call
        sampling=SamplingConfig(temperature=1.0, top_p=0.95),
        max_active=64,
    )


class FlywheelConfig(ConfigModel):
    data: str = Field("toolworld:train", description=DATA_HELP)
    task: str | None = Field(None, description=TASK_HELP)
    limit: int | None = Field(None, ge=1, description="first N questions only")
    rounds: int = Field(3, ge=0, description="evolution rounds per question (docs/method.md 3.3: 3)")
    buffer_size: int = Field(10, ge=1, description="trajectories kept per question (docs/method.md 3.3: 10)")
    agent: AgentConfig = Field(
        default_factory=_policy_agent,
        description="M1, the policy: rollouts and continuations (budget: initial rollouts and fresh "
        "re-rollouts; sampling: docs/method.md 3.1, its seed derived per call)",
    )
    helper: RoleConfig = Field(default_factory=RoleConfig, description="M2: rewrites flawed steps")
    critic: CriticConfig = Field(
        default_factory=CriticConfig,
        description="M3: locates redundant/flawed steps, rewrites thinking, judges maths answers",
    )
    continuation_budget: BudgetConfig = Field(
        default_factory=lambda: BudgetConfig(max_calls_per_tool=10, max_tool_calls=20),
        description="continuations after an edit (docs/method.md 1.4: 6+4 per tool); calls in the prefix count",
    )
    qa_f1_threshold: float = Field(0.8, ge=0, le=1, description="a QA answer is correct at F1 >= this")
    hint_pools: dict[str, str] = Field(
        default_factory=lambda: {"qa": "search", "math": "python"},
        description="task -> hint pool (search, python, general); other tasks use search",
    )
    seed: int = 0
    concurrency: int = Field(16, ge=1, description="questions evolved together (their calls are batched)")
    cold_start: ColdStartConfig = Field(default_factory=ColdStartConfig)
    output: str = Field(BUFFERS, description="buffer file name inside the run directory")
    max_tool_failure_rate: float | None = Field(
        0.5, ge=0, le=1, description=MAX_TOOL_FAILURE_HELP + "; over every trajectory in the buffers"
    )

    @field_validator("hint_pools")
    @classmethod
    def _known_pools(cls, pools: dict[str, str]) -> dict[str, str]:
        for task, pool in pools.items():
            if pool not in HINT_POOLS:
                raise ValueError(f"task {task!r}: unknown hint pool {pool!r}; known: {sorted(HINT_POOLS)}")
        return pools

    def data_ref(self) -> DataRef:
        return resolve_data(self.data, self.task)

    def policy_agent(self) -> AgentConfig:
        """The policy's agent; for a cold start, the task's oracle (with the cold start's settings)."""
        if not self.cold_start.enabled:
            return self.agent
        return self.agent.with_oracle(self.cold_start.expert)


# --------------------------------------------------------------------------------------------
# Resume


def completed_records(path: Path) -> set[str]:
    """Question ids whose record is on disk (a torn last line is removed first)."""
    if not path.exists():
        return set()
    repair_torn_tail(path)
    return {r.question_id for r in read_records(path, BufferRecord)}


# --------------------------------------------------------------------------------------------
# Evolution of a batch of questions


def _call_seed(seed: int, *parts: Any) -> int:
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:4], "big")


class Flywheel:
    """The roles and settings of one flywheel run; :meth:`evolve` does a batch of questions."""

    def __init__(
        self,
        cfg: FlywheelConfig,
        loop: AgentLoop,
        critic: Critic,
        helper: Helper,
        check: AnswerCheck | None = None,
    ):
        """``check``: the task's answer check (:meth:`etagent.tasks.Task.check_answer`)."""
        self.cfg = cfg
        self.check = check
        self.loop = loop
        self.critic = critic
        self.helper = helper
        self.hints = ops.seeded_hints(cfg.seed, cfg.hint_pools)

    def _sampling(self, *parts: Any) -> SamplingConfig:
        return self.cfg.agent.sampling.model_copy(update={"seed": _call_seed(self.cfg.seed, *parts)})

    def _judge(self, trajectories: Sequence[Trajectory]) -> list[Verdict]:
        return judge_trajectories(trajectories, self.critic, self.cfg.qa_f1_threshold, check=self.check)

    def evolve(self, questions: Sequence[Question]) -> list[BufferRecord]:
        """Initial rollouts, then the rounds, for a batch of questions evolved together."""
        records = [BufferRecord(question_id=q.id, question=q) for q in questions]
        cold = self.cfg.cold_start.enabled
        samples = self.cfg.cold_start.samples if cold else 1
        batch_key = questions[0].id if questions else ""
        partials = [self.loop.new_trajectory(q, k) for q in questions for k in range(samples)]
        initial = self.loop.continue_run(
            partials, budget=self.cfg.agent.budget, sampling=self._sampling(batch_key, 0)
        )
        by_question = {r.question_id: r for r in records}
        for traj, verdict in zip(initial, self._judge(initial), strict=True):
            record = by_question[traj.question_id]
            admit(
                record,
                make_entry(record, traj, verdict, ops.EXPERT if cold else ops.INITIAL, None, 0),
                self.cfg.buffer_size,
            )
        rounds = 0 if cold else self.cfg.rounds
        for r in range(1, rounds + 1):
            self._round(records, r, batch_key)
        return records

    def _round(self, records: list[BufferRecord], r: int, batch_key: str) -> None:
        correct: list[ops.Parent] = []
        incorrect: list[ops.Parent] = []
        owner: dict[str, BufferRecord] = {}
        for record in records:
            entry = select_parent(record)
            if entry is None:
                continue
            entry.expanded = True
            record.rounds_run = r
            parent = ops.Parent(entry.id, entry.trajectory, r)
            owner[entry.id] = record
            (correct if entry.verdict else incorrect).append(parent)
        outcomes: list[ops.Outcome] = []
        if correct:
            outcomes += ops.rerollout(correct)
            outcomes += ops.modify_redundancy(correct, self.critic)
            outcomes += ops.refine_globally(correct, self.critic)
        if incorrect:
            flawed = ops.locate_flaws(incorrect, self.critic)
            outcomes += ops.self_correct(incorrect, flawed, self.helper)
            outcomes += ops.step_hint(incorrect, flawed, self.hints)
            outcomes += ops.trajectory_hint(incorrect, self.hints)
        drafts = [o for o in outcomes if isinstance(o, ops.Draft)]
        for miss in (o for o in outcomes if isinstance(o, ops.Miss)):
            owner[miss.parent.entry_id].events.append(
                FlywheelEvent(
                    round=r,
                    operator=miss.operator,
                    parent=miss.parent.entry_id,
                    status="no_candidate",
                    reason=miss.reason,
                )
            )
        finished = ops.continue_drafts(
            drafts,
            self.loop,
            self.cfg.agent.budget,
            self.cfg.continuation_budget,
            self._sampling(batch_key, r),
        )
        # buffer order per question: the operators' order above, whatever the batch order
        for draft, traj, verdict in sorted(
            zip(drafts, finished, self._judge(finished), strict=True),
            key=lambda x: ops.OPERATORS.index(x[0].operator),
        ):
            record = owner[draft.parent.entry_id]
            entry = make_entry(record, traj, verdict, draft.operator, draft.parent.entry_id, r)
            admit(record, entry, self.cfg.buffer_size)


# --------------------------------------------------------------------------------------------
# The stage


def _summary(records: Sequence[BufferRecord], export: dict[str, Any]) -> dict[str, Any]:
    entries = [e for r in records for e in r.entries]
    initial = [e for e in entries if e.round == 0]
    by_operator: dict[str, Counter[str]] = {}
    for e in entries:
        c = by_operator.setdefault(e.operator, Counter())
        c["candidates"] += 1
        c["correct"] += e.verdict
    return {
        "questions": len(records),
        "trajectories": len(entries),
        "mean_buffer_size": len(entries) / len(records) if records else 0.0,
        "initial_correct": sum(e.verdict for e in initial) / len(initial) if initial else 0.0,
        "questions_with_a_correct_trajectory": sum(any(e.verdict for e in r.entries) for r in records),
        "candidates_by_operator": {op: dict(c) for op, c in sorted(by_operator.items())},
        "sft_examples": export["examples"],
    }


def build_flywheel(cfg: FlywheelConfig, task: Task) -> tuple[Flywheel, list[Any]]:
    """The flywheel a config describes for ``task``, and what to close afterwards."""
    loop = build_agent(cfg.policy_agent(), task)
    try:
        critic, helper, owned = build_roles(cfg.critic, cfg.helper, loop.generator, task.critic())
    except BaseException:
        loop.close()
        raise
    return Flywheel(cfg, loop, critic, helper, task.check_answer), [*owned, loop]


def run_flywheel(cfg: FlywheelConfig, run_dir: Path, flywheel: Flywheel | None = None) -> dict[str, Any]:
    """Evolve every question not yet in ``buffers.jsonl``, then export; returns the summary.

    ``flywheel`` replaces the one built from ``cfg`` (tests pass scripted roles).
    """
    out = run_dir / cfg.output
    data = cfg.data_ref()
    questions = data.questions(cfg.limit)
    done = completed_records(out)
    todo = [q for q in questions if q.id not in done]
    log.info(
        "flywheel: %d questions, %d already done, rounds=%d, policy=%s, critic=%s, helper=%s%s",
        len(questions),
        len(done),
        cfg.rounds,
        cfg.policy_agent().backend.kind,
        cfg.critic.kind,
        cfg.helper.kind,
        " (cold start)" if cfg.cold_start.enabled else "",
    )
    if todo:
        to_close: list[Any] = []
        if flywheel is None:
            flywheel, to_close = build_flywheel(cfg, data.task)
        try:
            with resumable_output(out, len(questions), len(questions) - len(todo), "flywheel") as (
                writer,
                bar,
            ):
                # Batches are cut from the whole question list, not from what is left: a batch's
                # seeds and batching decide its questions' samples, so a resumed run evolves the
                # same batches as an uninterrupted one (a batch cut short is evolved again whole,
                # and only its missing questions are kept). A batch is written at once, fsynced.
                for start in range(0, len(questions), cfg.concurrency):
                    batch = questions[start : start + cfg.concurrency]
                    missing = [q for q in batch if q.id not in done]
                    if not missing:
                        continue
                    writer.write_group([r for r in flywheel.evolve(batch) if r.question_id not in done])
                    bar.update(len(missing))
        finally:
            for obj in to_close:
                obj.close()
    wanted = {q.id for q in questions}
    records = [r for r in read_records(out, BufferRecord) if r.question_id in wanted]
    export = write_sft(run_dir, records, tool_tags=cfg.agent.tools.tags)
    summary = _summary(records, export)
    summary.update(data=cfg.data, policy=cfg.policy_agent().backend.kind, cold_start=cfg.cold_start.enabled)
    summary.update(tool_failures(e.trajectory for r in records for e in r.entries))
    atomic_write_json(run_dir / SUMMARY, summary)
    check_tool_failures(summary, cfg.max_tool_failure_rate, "flywheel", run_dir, MAX_TOOL_FAILURE_SETTING)
    return summary
