"""The ET-Agent efficiency reward (docs/method.md 6.4, Decisions 2, 3 and 5), over one question's group.

For every trajectory s of a group G (the samples of one question):

    reward(s) = r(s) * f_tool(s) * f_len(s) + f_format(s)
    f_tool(s) = 2 / (1 + exp(sigma_tool   * (c(s) - mean_G c)))     in (0, 2), 1 at the group mean
    f_len(s)  = 2 / (1 + exp(sigma_length * z(s)))                  in (0, 2), z = length z-score
    f_format  = -1 if the reference's format check fails, else 0

r is the raw correctness in [0, 1]; c counts complete tool-call pairs; z uses the population
standard deviation over G (all zeros when it is 0). The format check is the reference's
``validate_format`` (``tags.check_reward_format``, docs/method.md 6.4 and Decision 2), looser than
the strict check of the fine-tuning export (``tags.check_format``). The range is [-1, 4). With
both sigmas 0 the reward is r + f_format, which is what the released scripts train with.

The sigmas can decay linearly over training (docs/method.md 6.3): ``sigma * sigma_factor(step, total)``.

Each factor is a pure function over one group (``tool_factor``, ``length_factor``,
``format_penalty``); ``et_rewards`` combines them on numbers; ``group_rewards`` measures
trajectories (correctness, calls, length, format), calls it, and adds the config's extra terms
(``RewardConfig.extra_terms``: ``weight * term(group)`` per trajectory, see
:mod:`etagent.scoring.reward_terms`). The RL and Pareto stages call these.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pydantic import Field, field_validator

from etagent.config import ConfigModel
from etagent.protocol import tags
from etagent.records import Trajectory
from etagent.scoring.correctness import AnswerCheck, Normalisation, QAMetric, answer_correctness, final_answer
from etagent.scoring.reward_terms import REWARD_TERMS

#: the QA normalisation of each reward metric: real token F1 (SQuAD), or the reference's
#: space-deleting exact match (docs/method.md 6.4)
REWARD_NORMALISATION: dict[str, Normalisation] = {"f1": "squad", "exact_match": "compact"}


class RewardTermConfig(ConfigModel):
    """One term added to the reward: ``weight * fn(group, **options)`` for every trajectory."""

    name: str = Field(
        description="a registered term (etagent.scoring.reward_terms.REWARD_TERMS: format, tool_calls, "
        "answered, model_tokens) or the dotted path 'package.module:function' of a term function "
        "fn(trajectories, **options) -> one float per trajectory"
    )
    weight: float = Field(1.0, allow_inf_nan=False, description="the score gains weight * value")
    options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the term function"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if not REWARD_TERMS.knows(name):
            raise ValueError(
                f"unknown reward term {name!r}; registered: {', '.join(REWARD_TERMS.names())}; "
                "or give a dotted path 'package.module:function'"
            )
        return name


class RewardConfig(ConfigModel):
    """Settings of the efficiency reward. ``sigma_tool = sigma_length = 0`` reproduces the released scripts."""

    sigma_tool: float = Field(0.2, ge=0, description="steepness of the tool-call factor (paper: 0.2)")
    sigma_length: float = Field(0.5, ge=0, description="steepness of the length factor (paper: 0.5)")
    decay: bool = Field(
        True,
        description="scale both sigmas by max(0, (T - t) / (T - 1)) at training step t of T (docs/method.md 6.3)",
    )
    qa_metric: QAMetric = Field(
        "f1",
        description="QA correctness: real token F1 (SQuAD normalisation), or 'exact_match' to reproduce "
        "the reference reward (normalised, spaces deleted: docs/method.md 6.4)",
    )
    length_includes_tool_tokens: bool = Field(
        False, description="count tool-output tokens in the length z-score, as the reference does"
    )
    extra_terms: list[RewardTermConfig] = Field(
        default_factory=list,
        description="terms added to the score: [{name, weight, options}], each adding weight * value "
        "(see etagent.scoring.reward_terms)",
    )

    @field_validator("extra_terms")
    @classmethod
    def _distinct_terms(cls, terms: list[RewardTermConfig]) -> list[RewardTermConfig]:
        names = [t.name for t in terms]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"reward terms must be distinct; repeated: {', '.join(repeated)}")
        return terms


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
    #: the config's extra terms: name -> weight * value (already in ``score``)
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, float | int]:
        """Flat: the fields above, then every extra term as ``extra/<name>``."""
        out: dict[str, float | int] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"
        }
        out.update({f"extra/{name}": value for name, value in self.extra.items()})
        return out


def sigma_factor(step: int, total_steps: int) -> float:
    """The linear decay of the sigmas (docs/method.md 6.3): 1 at the first step, 0 at the last.

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


def tool_factor(tool_calls: Sequence[int | float], sigma: float) -> list[float]:
    """f_tool of every member of one group: ``2 / (1 + exp(sigma * (c - mean c)))``, 1 at the mean."""
    if not tool_calls:
        return []
    mean_calls = sum(tool_calls) / len(tool_calls)
    return [_twice_sigmoid_of_neg(sigma * (c - mean_calls)) for c in tool_calls]


def length_z_scores(lengths: Sequence[int | float]) -> list[float]:
    """z-scores of the lengths of one group (population standard deviation; all 0 when it is 0)."""
    if not lengths:
        return []
    n = len(lengths)
    mean_len = sum(lengths) / n
    sd = math.sqrt(sum((x - mean_len) ** 2 for x in lengths) / n)  # population std (ddof = 0)
    # the z-scores average to 0 by construction, so z - mean(z) is z itself
    return [(x - mean_len) / sd if sd > 0 else 0.0 for x in lengths]


def length_factor(lengths: Sequence[int | float], sigma: float) -> list[float]:
    """f_len of every member of one group: ``2 / (1 + exp(sigma * z))``, z the length z-score."""
    return [_twice_sigmoid_of_neg(sigma * z) for z in length_z_scores(lengths)]


def format_penalty(format_ok: Sequence[bool]) -> list[float]:
    """f_format: -1 for a trajectory that fails the reward's format check, else 0."""
    return [0.0 if ok else -1.0 for ok in format_ok]


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
    for r in correctness:
        if not 0.0 <= r <= 1.0:
            raise ValueError(f"correctness must lie in [0, 1], got {r}")
    columns = zip(
        correctness,
        tool_factor(tool_calls, sigma_tool),
        length_factor(lengths, sigma_length),
        format_penalty(format_ok),
        tool_calls,
        lengths,
        length_z_scores(lengths),
        strict=True,
    )
    return [
        RewardParts(
            score=r * f_tool * f_len + f_format,
            correctness=float(r),
            f_tool=f_tool,
            f_len=f_len,
            f_format=f_format,
            tool_calls=int(c),
            length=int(length),
            length_z=z,
        )
        for r, f_tool, f_len, f_format, c, length, z in columns
    ]


def term_values(term: RewardTermConfig, trajectories: Sequence[Trajectory]) -> list[float]:
    """The values of one extra term over one group (unweighted), checked: one finite number per
    trajectory."""
    fn = REWARD_TERMS.get(term.name)
    raw = fn(trajectories, **term.options)
    try:
        values = list(raw)
    except TypeError:
        raise ValueError(
            f"reward term {term.name!r} returned {type(raw).__name__}, not a list of one float per trajectory"
        ) from None
    if len(values) != len(trajectories):
        raise ValueError(
            f"reward term {term.name!r} returned {len(values)} values for a group of {len(trajectories)} "
            "trajectories (one float per trajectory expected)"
        )
    for i, v in enumerate(values):
        if not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(
                f"reward term {term.name!r} returned {v!r} for trajectory {i} of its group "
                "(a finite float expected)"
            )
    return [float(v) for v in values]


def add_terms(
    parts: Sequence[RewardParts], trajectories: Sequence[Trajectory], terms: Sequence[RewardTermConfig]
) -> list[RewardParts]:
    """``parts`` with ``weight * value`` of every term added to the score (in the order of
    ``terms``) and recorded in ``extra``."""
    if not terms:
        return list(parts)
    weighted = [[term.weight * v for v in term_values(term, trajectories)] for term in terms]
    out = []
    for i, p in enumerate(parts):
        score, extra = p.score, dict(p.extra)
        for term, values in zip(terms, weighted, strict=True):
            score += values[i]
            extra[term.name] = values[i]
        out.append(replace(p, score=score, extra=extra))
    return out


def trajectory_correctness(
    traj: Trajectory, qa_metric: QAMetric = "f1", check: AnswerCheck | None = None
) -> float:
    """The reward's raw correctness r: the task's ``check`` when it gives a number, else math
    equivalence for maths, F1 (SQuAD normalisation) or exact match ("compact") otherwise."""
    normalisation = REWARD_NORMALISATION.get(qa_metric, "squad")
    return answer_correctness(
        traj.question, final_answer(traj), qa_metric=qa_metric, normalisation=normalisation, check=check
    ).value


def trajectory_length(traj: Trajectory, include_tool_tokens: bool = False) -> int:
    return traj.num_model_tokens + (traj.num_tool_tokens if include_tool_tokens else 0)


def group_rewards(
    trajectories: Sequence[Trajectory],
    cfg: RewardConfig | None = None,
    step: int | None = None,
    total_steps: int | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
    check: AnswerCheck | None = None,
) -> list[RewardParts]:
    """Rewards of one question's group of trajectories, in order.

    ``step``/``total_steps`` (1-based training step of the run's total) apply the decay when
    ``cfg.decay`` is on; without them (scoring outside training) the sigmas are used as given.
    ``check`` is the task's answer check (``Task.check_answer``); None: the standard rule.
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
    parts = et_rewards(
        correctness=[trajectory_correctness(t, cfg.qa_metric, check) for t in trajectories],
        tool_calls=[tags.count_tool_calls(x, tool_tags) for x in texts],
        lengths=[trajectory_length(t, cfg.length_includes_tool_tokens) for t in trajectories],
        format_ok=[tags.check_reward_format(x, tool_tags).ok for x in texts],
        sigma_tool=cfg.sigma_tool * factor,
        sigma_length=cfg.sigma_length * factor,
    )
    return add_terms(parts, trajectories, cfg.extra_terms)
