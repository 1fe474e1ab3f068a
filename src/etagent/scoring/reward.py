"""The ET-Agent efficiency reward (METHOD 6.4, Decisions 2, 3 and 5), over one question's group.

For every trajectory s of a group G (the samples of one question):

    reward(s) = r(s) * f_tool(s) * f_len(s) + f_format(s)
    f_tool(s) = 2 / (1 + exp(sigma_tool   * (c(s) - mean_G c)))     in (0, 2), 1 at the group mean
    f_len(s)  = 2 / (1 + exp(sigma_length * z(s)))                  in (0, 2), z = length z-score
    f_format  = -1 if the strict format check fails, else 0

r is the raw correctness in [0, 1]; c counts complete tool-call pairs; z uses the population
standard deviation over G (all zeros when it is 0). The range is [-1, 4). With both sigmas 0 the
reward is r + f_format, which is what the released scripts train with.

The sigmas can decay linearly over training (METHOD 6.3): ``sigma * sigma_factor(step, total)``.

``et_rewards`` is the pure arithmetic on numbers; ``group_rewards`` measures trajectories
(correctness, calls, length, format) and calls it. The RL and Pareto stages call these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from pydantic import Field

from etagent.config import ConfigModel
from etagent.protocol import tags
from etagent.records import Trajectory
from etagent.scoring.correctness import QAMetric, exact_match, math_equal, token_f1


class RewardConfig(ConfigModel):
    """Settings of the efficiency reward. ``sigma_tool = sigma_length = 0`` reproduces the released scripts."""

    sigma_tool: float = Field(0.2, ge=0, description="steepness of the tool-call factor (paper: 0.2)")
    sigma_length: float = Field(0.5, ge=0, description="steepness of the length factor (paper: 0.5)")
    decay: bool = Field(
        True,
        description="scale both sigmas by max(0, (T - t) / (T - 1)) at training step t of T (METHOD 6.3)",
    )
    qa_metric: QAMetric = Field(
        "f1",
        description="QA correctness: real token F1 (SQuAD normalisation), or 'exact_match' to reproduce "
        "the reference reward (normalised, spaces deleted: METHOD 6.4)",
    )
    length_includes_tool_tokens: bool = Field(
        False, description="count tool-output tokens in the length z-score, as the reference does"
    )


@dataclass(frozen=True)
class RewardParts:
    """One trajectory's reward and what it is made of."""

    score: float  # r * f_tool * f_len + f_format
    correctness: float  # r, the raw correctness in [0, 1]
    f_tool: float
    f_len: float
    f_format: float  # 0 or -1
    tool_calls: int
    length: int
    length_z: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def sigma_factor(step: int, total_steps: int) -> float:
    """The linear decay of the sigmas (METHOD 6.3): 1 at the first step, 0 at the last.

    ``step`` is 1-based like the reference's global step (1 = the first update, ``total_steps`` =
    the last); past the end the factor stays 0. With ``total_steps == 1`` the only step is also the
    last, so the factor is 0 (the reference does the same).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 1:
        raise ValueError(f"step is 1-based (1 = the first training step), got {step}")
    if total_steps == 1:
        return 0.0
    return max(0.0, (total_steps - step) / (total_steps - 1))


def _twice_sigmoid_of_neg(x: float) -> float:
    """2 / (1 + exp(x)), without overflow for large |x|."""
    if x >= 0:
        e = math.exp(-x)
        return 2.0 * e / (1.0 + e)
    return 2.0 / (1.0 + math.exp(x))


def et_rewards(
    correctness: Sequence[float],
    tool_calls: Sequence[int],
    lengths: Sequence[int | float],
    format_ok: Sequence[bool],
    sigma_tool: float = 0.2,
    sigma_length: float = 0.5,
) -> list[RewardParts]:
    """The reward of every member of one group (pure: numbers in, numbers out)."""
    n = len(correctness)
    if not (len(tool_calls) == len(lengths) == len(format_ok) == n):
        raise ValueError(
            f"one value per trajectory expected: {n} correctness, {len(tool_calls)} tool_calls, "
            f"{len(lengths)} lengths, {len(format_ok)} format_ok"
        )
    if n == 0:
        return []
    for r in correctness:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"correctness must lie in [0, 1], got {r}")
    mean_calls = sum(tool_calls) / n
    mean_len = sum(lengths) / n
    sd = math.sqrt(sum((x - mean_len) ** 2 for x in lengths) / n)  # population std (ddof = 0)
    # the z-scores average to 0 by construction, so z - mean(z) is z itself
    z = [(x - mean_len) / sd if sd > 0 else 0.0 for x in lengths]
    parts = []
    for r, c, length, zi, ok in zip(correctness, tool_calls, lengths, z, format_ok, strict=True):
        f_tool = _twice_sigmoid_of_neg(sigma_tool * (c - mean_calls))
        f_len = _twice_sigmoid_of_neg(sigma_length * zi)
        f_format = 0.0 if ok else -1.0
        parts.append(
            RewardParts(
                score=r * f_tool * f_len + f_format,
                correctness=float(r),
                f_tool=f_tool,
                f_len=f_len,
                f_format=f_format,
                tool_calls=int(c),
                length=int(length),
                length_z=zi,
            )
        )
    return parts


def trajectory_correctness(traj: Trajectory, qa_metric: QAMetric = "f1") -> float:
    """The reward's raw correctness r: math equivalence for maths, F1 or exact match otherwise."""
    prediction = traj.prediction or tags.extract_answer(traj.response_text)
    golds = traj.question.answers
    if traj.question.task == "math":
        return float(math_equal(prediction, golds))
    if qa_metric == "f1":
        return token_f1(prediction, golds, "squad")
    if qa_metric == "exact_match":
        return exact_match(prediction, golds, "compact")
    raise ValueError(f"unknown qa_metric {qa_metric!r}")


def trajectory_length(traj: Trajectory, include_tool_tokens: bool = False) -> int:
    return traj.num_model_tokens + (traj.num_tool_tokens if include_tool_tokens else 0)


def group_rewards(
    trajectories: Sequence[Trajectory],
    cfg: RewardConfig | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
) -> list[RewardParts]:
    """Rewards of one question's group of trajectories, in order.

    ``step``/``total_steps`` (1-based training step of the run's total) apply the decay when
    ``cfg.decay`` is on; without them (scoring outside training) the sigmas are used as given.
    """
    cfg = cfg or RewardConfig()
    if len({t.question_id for t in trajectories}) > 1:
        raise ValueError("group_rewards takes the trajectories of one question; got several question ids")
    factor = 1.0
    if cfg.decay and (step is not None or total_steps is not None):
        if step is None or total_steps is None:
            raise ValueError("give both step and total_steps for the decay schedule, or neither")
        factor = sigma_factor(step, total_steps)
    texts = [t.response_text for t in trajectories]
    return et_rewards(
        correctness=[trajectory_correctness(t, cfg.qa_metric) for t in trajectories],
        tool_calls=[tags.count_tool_calls(x, tool_tags) for x in texts],
        lengths=[trajectory_length(t, cfg.length_includes_tool_tokens) for t in trajectories],
        format_ok=[tags.check_format(x, tool_tags).ok for x in texts],
        sigma_tool=cfg.sigma_tool * factor,
        sigma_length=cfg.sigma_length * factor,
    )
