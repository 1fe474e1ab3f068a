"""The flywheel's operators (docs/method.md 3.3), one function each, all batched over parents.

Correct set (enhancement): :func:`rerollout`, :func:`modify_redundancy`, :func:`refine_globally`.
Incorrect set (reflection): :func:`self_correct`, :func:`step_hint`, :func:`trajectory_hint`
(the first two need the earliest flawed step from :func:`locate_flaws`).

An operator turns each parent into a :class:`Draft` (the candidate's text so far; None for a fresh
rollout) or a :class:`Miss` (why it produced nothing: the critic found no redundancy, its reply
was unreadable...). :func:`continue_drafts` then lets the policy finish every draft of a batch in
one batched run: an edited step that calls a tool has its call executed first, a hint is
continued from inside the open think, a complete text is returned as it is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from etagent.flywheel import steps as st
from etagent.flywheel.roles import Critic, Helper, StepRewriteRequest, StepsRequest, ThinkRequest
from etagent.loop.agent_loop import AgentLoop, BudgetConfig, SamplingConfig
from etagent.records import Question, Trajectory

INITIAL = "initial"  # the first rollout of a question (the cold start's expert rollouts: "expert")
EXPERT = "expert"
REROLLOUT = "rerollout"
REDUNDANCY = "redundancy"
REFINE = "refine"
SELF_CORRECTION = "self_correction"
STEP_HINT = "step_hint"
TRAJECTORY_HINT = "trajectory_hint"
CORRECT_SET = (REROLLOUT, REDUNDANCY, REFINE)
INCORRECT_SET = (SELF_CORRECTION, STEP_HINT, TRAJECTORY_HINT)
OPERATORS = (INITIAL, EXPERT, *CORRECT_SET, *INCORRECT_SET)


@dataclass(frozen=True)
class Parent:
    """The buffer trajectory an operator starts from."""

    entry_id: str
    trajectory: Trajectory
    round: int

    @property
    def question(self) -> Question:
        return self.trajectory.question

    @property
    def text(self) -> str:
        return self.trajectory.response_text


@dataclass(frozen=True)
class Draft:
    """A candidate before the policy finishes it: its text so far (None = a fresh rollout)."""

    parent: Parent
    operator: str
    text: str | None


@dataclass(frozen=True)
class Miss:
    """An operator that produced no candidate for a parent, and why."""

    parent: Parent
    operator: str
    reason: str


Outcome = Draft | Miss
#: (parent, operator) -> one full hint sentence (seeded per question, round and operator)
HintSource = Callable[[Parent, str], str]


def seeded_hints(seed: int, pools: dict[str, str], default_pool: str = "search") -> HintSource:
    """Hints drawn from the pool of the question's task, with an rng seeded by (seed, question id,
    round, operator): the same run gives the same hints, whatever the batching."""

    def hint(parent: Parent, operator: str) -> str:
        rng = random.Random(f"{seed}|{parent.question.id}|{parent.round}|{operator}")
        return st.pick_hint(pools.get(parent.question.task, default_pool), rng)

    return hint


# --------------------------------------------------------------------------------------------
# Correct set


def rerollout(parents: Sequence[Parent]) -> list[Outcome]:
    """A fresh policy sample from scratch (diversity)."""
    return [Draft(p, REROLLOUT, None) for p in parents]


def modify_redundancy(parents: Sequence[Parent], critic: Critic) -> list[Outcome]:
    """The critic finds the first redundant step and simplifies it; later steps are dropped and
    the policy continues (after running the corrected step's tool call, if it has one)."""
    split = [st.split_steps(p.text) for p in parents]
    edits = critic.locate_redundant_steps(
        [StepsRequest(p.question, s) for p, s in zip(parents, split, strict=True)]
    )
    out: list[Outcome] = []
    for p, steps, edit in zip(parents, split, edits, strict=True):
        if edit is None:
            out.append(Miss(p, REDUNDANCY, "the critic found no redundant step (or its reply was unusable)"))
        else:
            out.append(Draft(p, REDUNDANCY, st.replace_step(steps, edit.k, edit.corrected_step)))
    return out


def refine_globally(parents: Sequence[Parent], critic: Critic) -> list[Outcome]:
    """The critic rewrites the thinking before every action, in order; every tool call, result and
    the answer are kept byte for byte."""
    units = [st.action_units(p.text) for p in parents]
    thinks: list[list[str | None]] = [[None] * len(u) for u, _ in units]
    failed: dict[int, str] = {}
    for j in range(max((len(u) for u, _ in units), default=0)):
        asks = [
            i for i, (u, _) in enumerate(units) if j < len(u) and i not in failed and u[j].think is not None
        ]
        requests = []
        for i in asks:
            u, _ = units[i]
            prefix = st.assemble_units(u[:j], thinks[i][:j], "")
            requests.append(ThinkRequest(parents[i].question, prefix, u[j].think or "", u[j].action))
        for i, new in zip(asks, critic.rewrite_thinks(requests), strict=True):
            if new is None:
                failed[i] = f"the critic gave no usable thinking for action {j + 1}"
            thinks[i][j] = new
    out: list[Outcome] = []
    for i, p in enumerate(parents):
        if i in failed:
            out.append(Miss(p, REFINE, failed[i]))
            continue
        u, tail = units[i]
        text = st.assemble_units(u, thinks[i], tail)
        if not u:
            out.append(Miss(p, REFINE, "the trajectory has no action to refine"))
        elif text == p.text:
            out.append(Miss(p, REFINE, "the rewrite changed nothing"))
        else:
            out.append(Draft(p, REFINE, text))
    return out


# --------------------------------------------------------------------------------------------
# Incorrect set


def locate_flaws(parents: Sequence[Parent], critic: Critic) -> list[int | None]:
    """The earliest flawed step of each (incorrect) parent, or None."""
    return critic.locate_flawed_steps([StepsRequest(p.question, st.split_steps(p.text)) for p in parents])


def self_correct(parents: Sequence[Parent], flawed: Sequence[int | None], helper: Helper) -> list[Outcome]:
    """The helper rewrites the flawed step k; steps after it are dropped and the policy continues."""
    split = [st.split_steps(p.text) for p in parents]
    asks = [i for i, k in enumerate(flawed) if k is not None]
    rewrites = helper.rewrite_steps(
        [StepRewriteRequest(parents[i].question, split[i], flawed[i]) for i in asks]  # type: ignore[arg-type]
    )
    new_step = dict(zip(asks, rewrites, strict=True))
    out: list[Outcome] = []
    for i, p in enumerate(parents):
        k = flawed[i]
        if k is None:
            out.append(Miss(p, SELF_CORRECTION, "no flawed step was located"))
        elif new_step[i] is None:
            out.append(Miss(p, SELF_CORRECTION, f"the helper gave no usable rewrite of step {k}"))
        else:
            out.append(Draft(p, SELF_CORRECTION, st.replace_step(split[i], k, new_step[i])))  # type: ignore[arg-type]
    return out


def step_hint(parents: Sequence[Parent], flawed: Sequence[int | None], hints: HintSource) -> list[Outcome]:
    """Keep steps 1..k (k = the flawed step), then a hint inside a re-opened thought."""
    out: list[Outcome] = []
    for p, k in zip(parents, flawed, strict=True):
        if k is None:
            out.append(Miss(p, STEP_HINT, "no flawed step was located"))
        else:
            out.append(Draft(p, STEP_HINT, st.step_hint_text(st.split_steps(p.text), k, hints(p, STEP_HINT))))
    return out


def trajectory_hint(parents: Sequence[Parent], hints: HintSource) -> list[Outcome]:
    """The whole trajectory without its answer, then a hint inside its re-opened last thought."""
    return [
        Draft(p, TRAJECTORY_HINT, st.trajectory_hint_text(p.text, hints(p, TRAJECTORY_HINT))) for p in parents
    ]


# --------------------------------------------------------------------------------------------
# Finishing drafts with the policy


def continue_drafts(
    drafts: Sequence[Draft],
    loop: AgentLoop,
    fresh_budget: BudgetConfig,
    edit_budget: BudgetConfig,
    sampling: SamplingConfig | None = None,
) -> list[Trajectory]:
    """The policy finishes every draft (input order): fresh rollouts under ``fresh_budget``, edited
    ones under the enlarged ``edit_budget`` (docs/method.md 1.4: 10 calls per tool)."""
    out: list[Trajectory | None] = [None] * len(drafts)
    fresh = [i for i, d in enumerate(drafts) if d.text is None]
    edited = [i for i, d in enumerate(drafts) if d.text is not None]
    for indices, budget in ((fresh, fresh_budget), (edited, edit_budget)):
        if not indices:
            continue
        partials = []
        for i in indices:
            d = drafts[i]
            if d.text is None:
                partials.append(loop.new_trajectory(d.parent.question, 0))
            else:
                partials.append(
                    loop.partial_trajectory(
                        d.parent.question, d.text, known_calls=d.parent.trajectory.tool_calls
                    )
                )
        for i, traj in zip(
            indices, loop.continue_run(partials, budget=budget, sampling=sampling), strict=True
        ):
            out[i] = traj
    return [t for t in out if t is not None]
