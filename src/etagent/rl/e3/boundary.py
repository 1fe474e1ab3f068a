"""The knowledge boundary: how much expert guidance each question's group gets (docs/e3tir.md 4).

A question's guidance is ``(1 - pass rate) x anneal(step)``: none where the policy already solves
it alone, most where it fails, and less and less as the warm-up goes on. The pass rate is a moving
average of the question's self-explored trajectories that pass; a question not seen yet takes the
moving average over all questions (the policy's overall boundary), and before any step
``initial_pass_rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from etagent.rl.e3.config import E3Config


@dataclass(frozen=True)
class GroupPlan:
    """A question's group for one step: how many trajectories of each kind, and the prefix length."""

    self_explored: int
    prefix: int  # continuations of one expert prefix
    guided: int  # whole expert trajectories
    guidance: float  # (1 - pass rate) x anneal(step), in [0, 1]
    prefix_fraction: float  # share of the expert's tool steps the prefix keeps

    @property
    def size(self) -> int:
        return self.self_explored + self.prefix + self.guided


class KnowledgeBoundary:
    """Per-question pass rates and the group plans they give; saved with each checkpoint."""

    def __init__(self, cfg: E3Config, group_size: int, total_steps: int):
        if cfg.min_self > group_size:
            raise ValueError(f"warmup.min_self ({cfg.min_self}) exceeds num_generations ({group_size})")
        self.cfg = cfg
        self.group_size = group_size
        self.anneal_steps = cfg.anneal_steps or max(1, total_steps - 1)
        self.pass_rates: dict[str, float] = {}
        self.overall: float | None = None  # moving average over all questions

    def anneal(self, step: int) -> float:
        """1 at step 1, falling linearly to 0 at step ``anneal_steps + 1`` (default: the last step)."""
        return min(1.0, max(0.0, 1.0 - (step - 1) / self.anneal_steps))

    def pass_rate(self, question_id: str) -> float:
        if question_id in self.pass_rates:
            return self.pass_rates[question_id]
        return self.overall if self.overall is not None else self.cfg.initial_pass_rate

    def plan(self, question_id: str, step: int, expert_steps: int | None) -> GroupPlan:
        """The group of ``question_id`` at ``step``. ``expert_steps``: the tool calls of the expert
        trajectory its prefix would be cut from, None when the question has no verified expert."""
        cfg = self.cfg
        guidance = (1.0 - self.pass_rate(question_id)) * self.anneal(step)
        if expert_steps is None:
            return GroupPlan(self.group_size, 0, 0, guidance, 0.0)
        experts = min(
            _round_half_up(self.group_size * cfg.max_expert_share * guidance), self.group_size - cfg.min_self
        )
        prefix = (
            _round_half_up(experts * cfg.prefix_share) if expert_steps > 0 else 0
        )  # no tool call: nothing to cut at
        fraction = cfg.max_prefix_fraction * guidance if prefix else 0.0
        return GroupPlan(self.group_size - experts, prefix, experts - prefix, guidance, fraction)

    def update(self, question_id: str, passed: list[bool]) -> None:
        """Fold in one step's self-explored results of a question."""
        if not passed:
            return
        self.pass_rates[question_id] = self._moved(self.pass_rate(question_id), passed)

    def update_overall(self, passed: list[bool]) -> None:
        """Fold in one step's self-explored results over all its questions."""
        if not passed:
            return
        self.overall = (
            sum(passed) / len(passed) if self.overall is None else self._moved(self.overall, passed)
        )

    def _moved(self, old: float, passed: list[bool]) -> float:
        """The moving average ``old`` after one step's results."""
        m = self.cfg.pass_rate_momentum
        return m * old + (1 - m) * sum(passed) / len(passed)

    def state_dict(self) -> dict[str, Any]:
        return {"pass_rates": dict(self.pass_rates), "overall": self.overall}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pass_rates = {str(k): float(v) for k, v in state.get("pass_rates", {}).items()}
        overall = state.get("overall")
        self.overall = None if overall is None else float(overall)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)


def prefix_steps(expert_steps: int, fraction: float) -> int:
    """Tool steps an expert prefix keeps: ``fraction`` of the expert's, at least one, and fewer
    than all of them when the expert made several (the policy should write at least one step)."""
    if expert_steps <= 0:
        return 0
    keep = max(1, math.ceil(fraction * expert_steps - 1e-9))
    return min(keep, expert_steps - 1) if expert_steps > 1 else 1
