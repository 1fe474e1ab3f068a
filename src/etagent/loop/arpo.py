"""ARPO: entropy-driven branching rollouts (docs/method.md 6.2), independent of any training engine.

For each question, ``initial_rollouts`` trajectories start from the prompt. All live branches of
all questions then advance in lockstep, one segment per round, through the agent loop (one
batched generate call per round, tools run concurrently). After a round, every branch that just
received a tool result may spawn ``beam_size - 1`` new branches: a copy of its state right after
the tool result, which re-samples from there. A branch is made when

    clip(U(0, 1) - entropy_weight * dH, 0, 1) <= branch_probability,   dH = H(segment) - H_init

i.e. with probability about ``branch_probability + entropy_weight * dH``: the more uncertain the
model was in the segment it just wrote (relative to the start of its answer), the more likely it
branches. A question whose branches have all finished gets a fresh rollout from the prompt (one
per round, as in the reference; ``refill="unclaimed"`` starts them sooner). This goes on until
every question has ``n`` trajectories; the first ``n`` in creation order are kept.

Fresh rollouts that start late make the rounds that set the time when a batch's cost hardly
depends on its rows (small batches, a CPU): ``reserve_rollouts`` starts some with the initial ones
and holds them back. When a fresh rollout is due, the next reserve in the order they were started
is taken instead, finished or not (the choice does not look at its content, and a rollout from
the prompt is the same sample whenever it starts); the reserves a question does not need are
dropped once its ``n`` slots are taken. A reserve makes no branching decisions before it is taken.

Entropy of a segment (the reference's definition): over its first ``entropy_tokens`` tokens, the
sum of ``-p log p`` over each position's top-k alternatives (plus the sampled token when it is
outside them), divided by ``ln |V|``. When the backend returns no top-k log-probs, the sampled
token's ``-log p`` is used per position instead: an unbiased one-sample estimate of the same
entropy, noisier; the result says which estimate was used (``entropy_method``) and a warning is
logged. Without any log-probs the entropy is 0 and branching falls back to ``branch_probability``.

Differences from the reference, on purpose:
- ``H_init`` is per question and computed afresh on every call: the mean entropy of the initial
  rollouts' first segments (the reference keeps a dictionary keyed by branch index that is never
  reset, so from the second training step on it compares with stale values: docs/method.md 9.3).
- A branch is only made right after a tool result (the reference also copies branches that were
  cut by the per-call token limit, mid-segment).

Every trajectory records its lineage in ``meta["arpo"]``: its branch id (creation order within the
question), parent id and branch point (the response-token index where it starts to differ from
its parent; ``None`` for rollouts from the prompt), the round it was made in, and every branching
decision taken on it (entropy, dH, the uniform draw, whether it branched, the child's id).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field, model_validator

from etagent.config import ConfigModel
from etagent.loop.agent_loop import AgentLoop, LoopState
from etagent.records import Question, Trajectory

log = logging.getLogger("etagent.arpo")

EntropyMethod = Literal["top_k", "sampled", "none"]


class ArpoConfig(ConfigModel):
    """The ARPO rollout's settings (docs/method.md 6.1/6.2; defaults are the reference's)."""

    n: int = Field(16, ge=1, description="trajectories per question")
    initial_rollouts: int = Field(8, ge=1, description="rollouts started from the prompt at the beginning")
    beam_size: int = Field(
        2, ge=1, description="each branch may spawn beam_size - 1 new branches per round (1: no branching)"
    )
    branch_probability: float = Field(0.5, ge=0, le=1, description="branching threshold tau")
    entropy_weight: float = Field(0.2, ge=0, description="weight w of the entropy change dH")
    entropy_tokens: int = Field(20, ge=1, description="segment tokens whose entropy is measured")
    top_k_logprobs: int = Field(
        10, ge=0, description="top-k log-probs the backend is asked for (0: sampled-token estimate)"
    )
    reserve_rollouts: int = Field(
        0,
        ge=0,
        description="rollouts per question started from the prompt with the initial ones and held "
        "back: each fresh rollout due is the next reserve (finished or not) instead of a late "
        "start; unneeded ones are dropped (tokens spent for fewer rounds). 0: the reference",
    )
    refill: Literal["idle", "unclaimed"] = Field(
        "idle",
        description="when fresh rollouts start from the prompt: idle = one per round for a question "
        "with no live branch (reference); unclaimed = every round, as many as the question's open "
        "slots exceed what its live branches could still claim by branching in the next round "
        "(beam_size - 1 each): far fewer rounds when few branches are made (small or CPU runs)",
    )

    @model_validator(mode="after")
    def _initial_within_n(self) -> ArpoConfig:
        if self.initial_rollouts > self.n:
            raise ValueError(f"initial_rollouts ({self.initial_rollouts}) must not exceed n ({self.n})")
        if self.initial_rollouts + self.reserve_rollouts > self.n:
            raise ValueError(
                f"initial_rollouts + reserve_rollouts ({self.initial_rollouts} + {self.reserve_rollouts}) "
                f"must not exceed n ({self.n}): more reserves could never be used"
            )
        return self


# ---------------------------------------------------------------------------------------------
# Entropy


def position_entropy(
    top: dict[int, float], token_id: int | None = None, logprob: float | None = None
) -> float:
    """``-sum p log p`` over one position's top-k alternatives, plus the sampled token when it is
    not among them (as vLLM returns it)."""
    entries = dict(top)
    if token_id is not None and logprob is not None and token_id not in entries:
        entries[token_id] = logprob
    return -sum(math.exp(lp) * lp for lp in entries.values() if lp > -math.inf)


def segment_entropy(
    token_ids: Sequence[int],
    logprobs: Sequence[float | None] | None,
    top_logprobs: Sequence[dict[int, float]] | None,
    vocab_size: int,
    max_tokens: int = 20,
) -> tuple[float, EntropyMethod]:
    """Entropy of the first ``max_tokens`` tokens of a segment, normalised by ``ln vocab_size``.

    Summed over positions like the reference (so that ``entropy_weight = 0.2`` keeps its scale).
    Uses the top-k log-probs when there are any, else the sampled tokens' ``-log p``; positions
    without a log-prob (tokens re-encoded at a stop string) are skipped.
    """
    n = min(max_tokens, len(token_ids))
    scale = math.log(vocab_size)
    if top_logprobs is not None and any(top_logprobs[:n]):
        total = 0.0
        for i in range(n):
            if top_logprobs[i]:
                lp = logprobs[i] if logprobs is not None else None
                total += position_entropy(top_logprobs[i], token_ids[i], lp)
        return total / scale, "top_k"
    if logprobs is not None and any(lp is not None for lp in logprobs[:n]):
        return sum(-lp for lp in logprobs[:n] if lp is not None) / scale, "sampled"
    return 0.0, "none"


def _model_tokens(traj: Trajectory) -> tuple[list[int], list[float | None], list[dict[int, float]] | None]:
    """The model-written tokens of a trajectory in order, with their log-probs and top-k."""
    ids: list[int] = []
    lps: list[float | None] = []
    tops: list[dict[int, float]] | None = []
    for seg in traj.segments:
        if seg.role != "model":
            continue
        ids += seg.token_ids
        lps += seg.logprobs if seg.logprobs is not None else [None] * len(seg.token_ids)
        if tops is not None:
            tops = tops + seg.top_logprobs if seg.top_logprobs is not None else None
    return ids, lps, tops


# ---------------------------------------------------------------------------------------------
# Branch bookkeeping


@dataclass
class _Branch:
    state: LoopState
    question: int  # index of the question in the call
    branch_id: int  # creation order within the question; -1: a reserve not taken yet
    parent_id: int | None = None
    branch_point: int | None = None  # response-token index where it leaves its parent
    round_created: int = 0
    initial: bool = False
    reserve: bool = False  # started as a reserve (see ArpoConfig.reserve_rollouts)
    done: bool = False  # finished (a reserve may finish before it is taken)
    last_entropy: float = 0.0
    first_entropy: float | None = None
    decisions: list[dict[str, Any]] = field(default_factory=list)

    @property
    def traj(self) -> Trajectory:
        return self.state.traj

    @property
    def after_tool_result(self) -> bool:
        """The last segment is a tool result: the only place a branch is made."""
        return bool(self.traj.segments) and self.traj.segments[-1].role == "tool"


@dataclass
class _Question:
    question: Question
    index: int  # in the call
    branches: list[_Branch] = field(default_factory=list)
    reserves: list[_Branch] = field(default_factory=list)  # not taken yet, in the order started
    h_init: float | None = None


@dataclass
class _Call:
    """What one :meth:`ArpoRollout.run` call keeps between rounds: its questions, the random draws
    of the branching decisions, and the statistics it returns."""

    questions: list[_Question]
    rng: random.Random
    started: float  # time.perf_counter() at the start
    round: int = 0
    methods: set[str] = field(default_factory=set)  # entropy methods of the segments measured
    entropies: list[float] = field(default_factory=list)
    decisions: int = 0
    branches_made: int = 0
    fresh_made: int = 0
    reserves_used: int = 0
    reserves_dropped: int = 0
    generated: int = 0
    round_rows: list[int] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)


@dataclass
class ArpoResult:
    """Trajectories of one call (``n`` per question, grouped by question in input order) and its statistics."""

    trajectories: list[Trajectory]
    stats: dict[str, Any]

    @property
    def entropy_method(self) -> EntropyMethod:
        return self.stats["entropy_method"]


class ArpoRollout:
    """ARPO branching over an :class:`AgentLoop`. One instance serves many calls; nothing carries over
    between calls (``H_init`` included)."""

    def __init__(self, loop: AgentLoop, cfg: ArpoConfig | None = None):
        self.loop = loop
        self.cfg = cfg or ArpoConfig()
        self.vocab_size = len(loop.tokenizer)
        self._warned_sampled = False

    # -- the rollout -------------------------------------------------------------------------------

    def run(self, questions: Sequence[Question], seed: int = 0) -> ArpoResult:
        """``cfg.n`` trajectories for every question; ``seed`` drives the branching decisions."""
        qs = [_Question(q, qi) for qi, q in enumerate(questions)]
        call = _Call(qs, random.Random(seed), started=time.perf_counter())
        active = self._start(call)
        progress = self.loop.progress
        if progress is not None:
            progress.total = self.cfg.n * len(qs)
        while active:
            call.round += 1
            # every live branch writes one segment (one batched generate call, tools run concurrently)
            before = [b.traj.num_model_tokens for b in active]
            t_round = time.perf_counter()
            if progress is not None:
                progress.start_round(len(active))
            live = {id(s) for s in self.loop.step([b.state for b in active])}
            call.round_rows.append(len(active))
            call.round_s.append(time.perf_counter() - t_round)
            self._measure_entropy(call, active, before)
            survivors = _finish_ended(self.loop, active, live)
            if progress is not None:  # the trajectories kept so far that have finished
                progress.set_finished(sum(b.done for q in qs for b in q.branches))
            children = self._branch(call, survivors)
            running = survivors + children
            fresh = self._refill(call, running)
            active = _next_round(call, running, fresh)
        return self._collect(call)

    # -- the steps of a call -----------------------------------------------------------------------

    def _start(self, call: _Call) -> list[_Branch]:
        """The initial rollouts and the reserves of every question, all started from the prompt."""
        active: list[_Branch] = []
        for q in call.questions:
            for _ in range(self.cfg.initial_rollouts):
                active.append(self._new_branch(q, initial=True, round_created=0))
            for _ in range(self.cfg.reserve_rollouts):
                reserve = _Branch(self.loop.start(q.question, -1), q.index, branch_id=-1, reserve=True)
                q.reserves.append(reserve)
                active.append(reserve)
        return active

    def _measure_entropy(self, call: _Call, active: list[_Branch], before: list[int]) -> None:
        """The entropy of what each branch wrote this round (from model token ``before`` on), and
        ``H_init`` of every question without one: the mean over its initial rollouts' first
        segments, this call only."""
        for b, start in zip(active, before, strict=True):
            ids, lps, tops = _model_tokens(b.traj)
            call.generated += len(ids) - start
            h, method = segment_entropy(
                ids[start:],
                lps[start:],
                tops[start:] if tops is not None else None,
                self.vocab_size,
                self.cfg.entropy_tokens,
            )
            b.last_entropy = h
            if b.first_entropy is None:
                b.first_entropy = h
            if len(ids) > start:
                call.methods.add(method)
                call.entropies.append(h)
        for q in call.questions:
            if q.h_init is None:
                firsts = [b.first_entropy for b in q.branches if b.initial and b.first_entropy is not None]
                q.h_init = sum(firsts) / len(firsts) if firsts else 0.0

    def _branch(self, call: _Call, survivors: list[_Branch]) -> list[_Branch]:
        """The branching decisions of this round, question by question, branches in creation order:
        up to ``beam_size - 1`` per branch that just received a tool result, while slots are open.
        Returns the new branches."""
        cfg = self.cfg
        children: list[_Branch] = []
        for q in call.questions:
            for b in [s for s in survivors if s.question == q.index and s.branch_id >= 0]:
                if not b.after_tool_result:
                    continue
                for _ in range(min(cfg.beam_size - 1, cfg.n - len(q.branches))):
                    child = self._decide(call, q, b)
                    if child is not None:
                        children.append(child)
        return children

    def _decide(self, call: _Call, q: _Question, b: _Branch) -> _Branch | None:
        """One branching decision on ``b`` (one uniform draw), recorded on ``b``; the child if made."""
        cfg = self.cfg
        assert q.h_init is not None
        dh = b.last_entropy - q.h_init
        u = call.rng.random()
        branched = min(1.0, max(0.0, u - cfg.entropy_weight * dh)) <= cfg.branch_probability
        call.decisions += 1
        record: dict[str, Any] = {
            "round": call.round,
            "entropy": b.last_entropy,
            "delta_h": dh,
            "u": u,
            "branched": branched,
            "child_id": None,
        }
        b.decisions.append(record)
        if not branched:
            return None
        child = _Branch(
            state=b.state.fork(),
            question=q.index,
            branch_id=len(q.branches),
            parent_id=b.branch_id,
            branch_point=len(b.traj.response_ids),
            round_created=call.round,
            last_entropy=b.last_entropy,
        )
        q.branches.append(child)
        record["child_id"] = child.branch_id
        call.branches_made += 1
        return child

    def _refill(self, call: _Call, running: list[_Branch]) -> list[_Branch]:
        """Fresh rollouts from the prompt for the slots no branch can claim (see ArpoConfig.refill):
        the next reserve when a question has one left, else a rollout started now (returned).
        A question whose slots are all taken drops the reserves it has left."""
        fresh: list[_Branch] = []
        for q in call.questions:
            live = sum(b.question == q.index and b.branch_id >= 0 for b in running)
            # again while every fresh one taken was a reserve that had finished
            while (k := self._fresh_due(q, live)) > 0:
                for _ in range(k):
                    call.fresh_made += 1
                    if q.reserves:
                        b = q.reserves.pop(0)
                        b.branch_id, b.round_created = len(q.branches), call.round
                        q.branches.append(b)
                        call.reserves_used += 1
                        live += not b.done
                    else:
                        fresh.append(self._new_branch(q, initial=False, round_created=call.round))
                        live += 1
            if len(q.branches) >= self.cfg.n:
                call.reserves_dropped += len(q.reserves)
                q.reserves.clear()
        return fresh

    def _fresh_due(self, q: _Question, live: int) -> int:
        """How many fresh rollouts ``q`` starts now, with ``live`` branches still running."""
        open_slots = self.cfg.n - len(q.branches)
        if self.cfg.refill == "idle":
            return min(1, open_slots) if live == 0 else 0
        return max(0, open_slots - live * (self.cfg.beam_size - 1))

    def _collect(self, call: _Call) -> ArpoResult:
        """The first ``n`` branches of every question, with their lineage, and the call's statistics."""
        cfg = self.cfg
        method = self._entropy_method(call.methods)
        out: list[Trajectory] = []
        for q in call.questions:
            kept = q.branches[: cfg.n]
            assert len(kept) == cfg.n, "every question ends with n branches"
            for k, b in enumerate(kept):
                b.traj.sample_index = k
                b.traj.meta["arpo"] = {
                    "branch_id": b.branch_id,
                    "parent_id": b.parent_id,
                    "branch_point": b.branch_point,
                    "round_created": b.round_created,
                    "initial": b.initial,
                    "reserve": b.reserve,
                    "h_init": q.h_init,
                    "entropy_method": method,
                    "decisions": b.decisions,
                }
                out.append(b.traj)
        stats = {
            "questions": len(call.questions),
            "trajectories": len(out),
            "rounds": call.round,
            "branches": call.branches_made,
            "fresh_rollouts": call.fresh_made,
            "reserves_used": call.reserves_used,
            "reserves_dropped": call.reserves_dropped,
            "decisions": call.decisions,
            "branching_rate": call.branches_made / call.decisions if call.decisions else 0.0,
            "branched_fraction": call.branches_made / len(out) if out else 0.0,
            "mean_entropy": sum(call.entropies) / len(call.entropies) if call.entropies else 0.0,
            "entropy_method": method,
            "generated_tokens": call.generated,
            "round_rows": call.round_rows,
            "round_s": [round(x, 3) for x in call.round_s],
            "time_s": time.perf_counter() - call.started,
        }
        return ArpoResult(out, stats)

    def _entropy_method(self, methods: set[str]) -> EntropyMethod:
        """The estimate the call's entropies used; warns once per instance when it is not top-k."""
        method: EntropyMethod = (
            "top_k" if methods == {"top_k"} else "sampled" if "sampled" in methods else "none"
        )
        if method != "top_k" and not self._warned_sampled:
            log.warning(
                "ARPO: the backend returned no top-k log-probs; branching uses the %s entropy estimate",
                "sampled-token" if method == "sampled" else "constant (no log-probs at all)",
            )
            self._warned_sampled = True
        return method

    def _new_branch(self, q: _Question, initial: bool, round_created: int) -> _Branch:
        b = _Branch(
            state=self.loop.start(q.question, len(q.branches)),
            question=q.index,
            branch_id=len(q.branches),
            round_created=round_created,
            initial=initial,
        )
        q.branches.append(b)
        return b


def _finish_ended(loop: AgentLoop, active: list[_Branch], live: set[int]) -> list[_Branch]:
    """Close the branches whose state the loop no longer returned (``live``: ids of the states it
    returned); the others, in order."""
    for b in active:
        if id(b.state) not in live:
            loop.finish(b.state)
            b.done = True
    return [b for b in active if id(b.state) in live]


def _next_round(call: _Call, running: list[_Branch], fresh: list[_Branch]) -> list[_Branch]:
    """The branches of the next round: the running ones still kept (dropped reserves leave) and the
    fresh ones, by question and branch id (reserves not taken, id -1, first)."""
    kept = {id(b) for q in call.questions for b in q.branches + q.reserves}
    return sorted([b for b in running if id(b) in kept] + fresh, key=lambda b: (b.question, b.branch_id))
