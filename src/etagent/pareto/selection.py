"""Group-wise Pareto selection of RL questions and their curriculum stages (docs/method.md 5.3, 5.5).

Every question of the RL pool comes with a *group* of G scored rollouts of the current policy,
each sample ``{correctness: float in [0, 1], tool_calls: int}``. Two per-group objectives, both
maximised (docs/method.md 5.3):

- ``tool``: the population variance of the samples' tool-call counts (diversity of behaviour);
- ``correctness``: the population variance of the samples' correctness (``p(1 - p)`` for 0/1
  scores: largest at a 50% pass rate).

g dominates h iff g >= h in both objectives and > in at least one (identical points do not
dominate each other and share a front). Selection is NSGA-II style: whole non-dominated fronts in
rank order while they fit into ``budget``; the first front that does not fit is cut by crowding
distance. The mixed-outcome filter keeps groups where at least one sample scores >=
``mixed_threshold`` and one scores below it (for 0/1 math correctness: "a 0 and a 1", the
reference's math rule; for QA F1: its 0.75 rule). The reference applies it after the cap
(``after_cap``, so fewer than ``budget`` survive); ``before_cap`` filters the pool first and
ranks only the mixed groups.

Speed: the reference ranks with Deb's O(N^2) pairwise loop. With two objectives the front of a
point is the length of the longest dominance chain above it, which one sweep in descending
order of the first objective finds with a binary search per point over the fronts' running
maxima of the second objective (patience sorting): O(N log N) (``benchmarks/bench_pareto.py``).

Deterministic tie-breaking. Every tie is broken by a *tie rank*, a seeded random permutation of
the pool (by default ``default_tie_rank(n, seed)``; :func:`select_groups` first sorts question
ids, so the result does not depend on the order the groups arrive in):
- crowding distance sorts each objective by (value, tie rank): among equal values at an end of the
  range, the lowest tie rank gets the low extreme and the highest tie rank the high extreme;
- the cut front is taken by (distance descending, tie rank ascending).
A random rather than index-ordered tie-break matters in practice: 0/1 correctness and small tool
counts give many identical points, and index order would favour whatever source comes first in
the file. (The reference breaks ties by the order its earlier stable sorts left, which depends
on the file order.) Objectives are rounded to 12 decimals so that the same outcomes in another
sample order tie exactly instead of differing in the last bit.

Curriculum (docs/method.md 5.5): the reference re-runs sampling and selection with the newest policy
before each of its 3 stages; whether stages share the pool is not specified. Run that way, each
call uses ``stages=1``. With ``stages=k > 1`` the selected questions are split into k disjoint
datasets of near-equal size, ordered ``easy_first`` (mean group correctness descending) or
``random``, written as ``stage1.jsonl`` ... ``stage{k}.jsonl`` (:func:`write_stages`). [inferred]
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from etagent.config import ConfigModel
from etagent.io import DataError, atomic_write_json, atomic_write_jsonl
from etagent.records import Question

FilterPosition = Literal["before_cap", "after_cap", "off"]
Spread = Literal["variance", "std"]

#: decimals objectives are rounded to, so that permuted samples give bit-identical values
OBJECTIVE_DECIMALS = 12
STAGES_MANIFEST = "stages.json"


class ObjectivesConfig(ConfigModel):
    """How a group's two objectives are computed from its samples (both are maximised)."""

    tool: Spread = Field("variance", description="spread of the samples' tool-call counts")
    correctness: Spread = Field("variance", description="spread of the samples' correctness")
    ddof: int = Field(0, ge=0, le=1, description="0: population (reference, numpy var), 1: sample")


class ParetoConfig(ConfigModel):
    """Group-wise Pareto selection of RL questions (docs/method.md 5.3) and curriculum split (5.5)."""

    budget: int = Field(8000, ge=1, description="most questions selected (reference --counts 8000)")
    mixed_outcome_filter: FilterPosition = Field(
        "after_cap",
        description="keep only groups with mixed outcomes: after the budget cap (reference; the "
        "result may be smaller than budget), before it (rank only mixed groups), or off",
    )
    mixed_threshold: float = Field(
        0.75, ge=0.0, le=1.0, description="mixed = one sample >= threshold and one below it"
    )
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    stages: int = Field(1, ge=1, description="curriculum stages the selection is split into")
    stage_order: Literal["easy_first", "random"] = Field(
        "easy_first", description="easy_first: stage 1 holds the groups with the highest mean correctness"
    )
    seed: int = Field(0, description="seed of the tie-breaking permutation")


# --------------------------------------------------------------------------------------------
# objectives and the mixed-outcome test


def _ragged(values: Sequence[Sequence[float]], what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flatten a list of lists: (flat values [total], group index of each value [total])."""
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    flat = np.fromiter((x for v in values for x in v), dtype=np.float64, count=int(lengths.sum()))
    if not np.isfinite(flat).all():
        raise ValueError(f"{what}: values must be finite numbers")
    return flat, np.repeat(np.arange(len(values)), lengths)


def _spread(values: Sequence[Sequence[float]], kind: Spread, ddof: int, what: str) -> np.ndarray:
    """Per-group variance (or std) of ragged groups, vectorised; 0 for groups of <= ddof samples."""
    n_groups = len(values)
    flat, group = _ragged(values, what)
    count = np.bincount(group, minlength=n_groups).astype(np.float64)  # [N]
    mean = np.bincount(group, weights=flat, minlength=n_groups) / np.maximum(count, 1)  # [N]
    squares = np.bincount(group, weights=(flat - mean[group]) ** 2, minlength=n_groups)  # [N]
    var = np.where(count > ddof, squares / np.maximum(count - ddof, 1), 0.0)
    out = np.sqrt(var) if kind == "std" else var
    return np.round(out, OBJECTIVE_DECIMALS)


def group_objectives(
    correctness: Sequence[Sequence[float]],
    tool_calls: Sequence[Sequence[int]],
    objectives: ObjectivesConfig | None = None,
) -> np.ndarray:
    """[N, 2] float64: column 0 the tool-call objective, column 1 the correctness objective.

    An empty group scores (0, 0), as in the reference.
    """
    if len(correctness) != len(tool_calls):
        raise ValueError(f"{len(correctness)} correctness groups but {len(tool_calls)} tool-call groups")
    for i, (c, t) in enumerate(zip(correctness, tool_calls, strict=True)):
        if len(c) != len(t):
            raise ValueError(f"group {i}: {len(c)} correctness values but {len(t)} tool-call counts")
    o = objectives or ObjectivesConfig()
    tool = _spread(tool_calls, o.tool, o.ddof, "tool_calls")
    corr = _spread(correctness, o.correctness, o.ddof, "correctness")
    return np.stack([tool, corr], axis=1) if len(correctness) else np.zeros((0, 2))


def mixed_outcomes(correctness: Sequence[Sequence[float]], threshold: float = 0.75) -> np.ndarray:
    """[N] bool: the group has a sample scoring >= threshold and one scoring below it.

    Empty groups are not mixed (the reference drops groups without correctness).
    """
    n_groups = len(correctness)
    flat, group = _ragged(correctness, "correctness")
    high = np.bincount(group, weights=flat >= threshold, minlength=n_groups) > 0
    low = np.bincount(group, weights=flat < threshold, minlength=n_groups) > 0
    return high & low


def mean_correctness(correctness: Sequence[Sequence[float]]) -> np.ndarray:
    """[N] mean correctness per group (0 for an empty group): the difficulty the curriculum sorts by."""
    n_groups = len(correctness)
    flat, group = _ragged(correctness, "correctness")
    count = np.bincount(group, minlength=n_groups)
    return np.bincount(group, weights=flat, minlength=n_groups) / np.maximum(count, 1)


# --------------------------------------------------------------------------------------------
# non-dominated sorting and crowding distance


def _check_points(points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape [N, 2], got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("points must be finite (no NaN or inf objectives)")
    return points


def non_dominated_ranks(points: np.ndarray) -> np.ndarray:
    """[N] int front index (0 = nobody dominates it) of every point, both objectives maximised.

    Same fronts as Deb's fast non-dominated sort, in O(N log N): a point's front is one more than
    the highest front among its dominators. Sweeping the distinct points in descending order of
    (objective 0, objective 1), every dominator of a point comes before it, and the dominators are
    exactly the points already seen whose objective 1 is >= its own. ``best[f]``, the largest
    objective 1 seen in front f, does not increase with f (each point of front f+1 has a
    dominator in front f), so the point's front is the number of fronts with ``best[f] >= y``:
    one binary search. Duplicates are ranked once and share the front.
    """
    points = _check_points(points)
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    distinct, inverse = np.unique(points, axis=0, return_inverse=True)  # lexicographic ascending
    # negated running maxima per front, ascending, so that bisect applies
    neg_best: list[float] = []
    ranks = np.empty(len(distinct), dtype=np.int64)
    ys = distinct[:, 1].tolist()
    for i in range(len(distinct) - 1, -1, -1):  # descending (x, y)
        neg_y = -ys[i]
        front = bisect.bisect_right(neg_best, neg_y)  # fronts holding a point with y' >= y
        if front == len(neg_best):
            neg_best.append(neg_y)
        else:
            neg_best[front] = neg_y  # best[front] was < y
        ranks[i] = front
    return ranks[inverse.reshape(-1)]


def default_tie_rank(n: int, seed: int = 0) -> np.ndarray:
    """[n] int: position of each item in a seeded random order; lower wins ties."""
    order = np.random.default_rng(seed).permutation(n)
    tie_rank = np.empty(n, dtype=np.int64)
    tie_rank[order] = np.arange(n)
    return tie_rank


def crowding_distance(points: np.ndarray, tie_rank: np.ndarray | None = None) -> np.ndarray:
    """[N] NSGA-II crowding distance of the points of one front (docs/method.md 5.3 step 3).

    Per objective: sort by (value, tie rank); if the range is 0 the objective adds nothing;
    otherwise both ends get +inf and every interior point adds (next - previous) / range.
    """
    points = _check_points(points)
    n = len(points)
    tie_rank = np.arange(n) if tie_rank is None else np.asarray(tie_rank)
    distance = np.zeros(n, dtype=np.float64)
    ends: list[np.ndarray] = []
    for j in range(points.shape[1]):
        order = np.lexsort((tie_rank, points[:, j]))  # by value, then tie rank
        values = points[order, j]
        span = values[-1] - values[0] if n else 0.0
        if span == 0:
            continue
        distance[order[1:-1]] += (values[2:] - values[:-2]) / span
        ends.append(order[[0, -1]])
    for e in ends:  # inf + finite stays inf, so setting the ends last equals the reference's order
        distance[e] = np.inf
    return distance


def fill_budget(points: np.ndarray, ranks: np.ndarray, budget: int, tie_rank: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the ``budget`` points kept: whole fronts in rank order, then the
    first front that does not fit, cut by (crowding distance desc, tie rank asc)."""
    n = len(points)
    if budget >= n:
        return np.arange(n)
    sizes = np.bincount(ranks)
    taken = np.cumsum(sizes)
    cut = int(np.searchsorted(taken, budget, side="right"))  # first front that does not fit whole
    keep = np.flatnonzero(ranks < cut)
    room = budget - len(keep)
    if room > 0:
        front = np.flatnonzero(ranks == cut)
        distance = crowding_distance(points[front], tie_rank[front])
        best = np.lexsort((tie_rank[front], -distance))[:room]
        keep = np.concatenate([keep, front[best]])
    return np.sort(keep)


def _select(
    objectives: np.ndarray, mixed: np.ndarray, cfg: ParetoConfig, tie_rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept indices ascending, the ranked pool's indices, their fronts)."""
    pool = np.flatnonzero(mixed) if cfg.mixed_outcome_filter == "before_cap" else np.arange(len(objectives))
    points = objectives[pool]
    ranks = non_dominated_ranks(points)
    kept = pool[fill_budget(points, ranks, cfg.budget, tie_rank[pool])]
    if cfg.mixed_outcome_filter == "after_cap":
        kept = kept[mixed[kept]]
    return kept, pool, ranks


def select(
    objectives: np.ndarray, mixed: np.ndarray, cfg: ParetoConfig, tie_rank: np.ndarray | None = None
) -> list[int]:
    """Indices (ascending) of the groups selected from ``objectives`` [N, 2] with ``mixed`` [N] bool.

    ``tie_rank`` [N] breaks ties (lower wins); default :func:`default_tie_rank` with ``cfg.seed``.
    """
    objectives = _check_points(objectives)
    mixed = np.asarray(mixed, dtype=bool)
    if mixed.shape != (len(objectives),):
        raise ValueError(f"mixed must have shape [{len(objectives)}], got {mixed.shape}")
    tie_rank = default_tie_rank(len(objectives), cfg.seed) if tie_rank is None else np.asarray(tie_rank)
    return _select(objectives, mixed, cfg, tie_rank)[0].tolist()


def curriculum_order(
    difficulty: np.ndarray, order: Literal["easy_first", "random"], tie_rank: np.ndarray
) -> np.ndarray:
    """Positions of the groups in curriculum order: easiest (highest mean correctness) first, ties
    by tie rank; or by tie rank only for ``random``."""
    if order == "easy_first":
        return np.lexsort((tie_rank, -np.asarray(difficulty, dtype=np.float64)))
    return np.argsort(tie_rank, kind="stable")


def curriculum_stages(
    difficulty: np.ndarray,
    stages: int,
    order: Literal["easy_first", "random"] = "easy_first",
    tie_rank: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """[N] int stage (1-based) of each selected group: ``stages`` near-equal contiguous parts.

    ``difficulty`` is the mean correctness (higher = easier); ``easy_first`` puts the easiest
    groups in stage 1 (ties by tie rank), ``random`` orders by tie rank only. Part sizes differ by
    at most one, larger parts first (``numpy.array_split``).
    """
    difficulty = np.asarray(difficulty, dtype=np.float64)
    n = len(difficulty)
    tie_rank = default_tie_rank(n, seed) if tie_rank is None else np.asarray(tie_rank)
    ordered = curriculum_order(difficulty, order, tie_rank)
    stage = np.empty(n, dtype=np.int64)
    for k, part in enumerate(np.array_split(ordered, stages), start=1):
        stage[part] = k
    return stage


# --------------------------------------------------------------------------------------------
# scored groups in, selection and stage files out


@dataclass
class ParetoSelection:
    """The outcome of :func:`select_groups`.

    ``ids`` are the selected question ids, by stage and, within a stage, in curriculum order.
    ``front`` holds the front of every ranked question (the whole pool, or the mixed groups for
    ``before_cap``); ``objectives`` (tool, correctness) and ``mean_correctness`` cover the pool.
    """

    ids: list[str]
    stage: dict[str, int]
    front: dict[str, int]
    objectives: dict[str, tuple[float, float]]
    mean_correctness: dict[str, float]
    mixed: dict[str, bool]
    stats: dict[str, Any] = field(default_factory=dict)

    def stage_ids(self, k: int) -> list[str]:
        return [q for q in self.ids if self.stage[q] == k]


def _sample_fields(qid: str, i: int, sample: Mapping[str, Any]) -> tuple[float, int]:
    where = f"group {qid!r} sample {i}"
    if not isinstance(sample, Mapping):
        raise DataError(f"{where}: expected an object with correctness and tool_calls")
    for key in ("correctness", "tool_calls"):
        if key not in sample:
            raise DataError(f"{where}: field '{key}' is missing")
    c, t = sample["correctness"], sample["tool_calls"]
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
        raise DataError(f"{where}: field 'correctness' must be a number in [0, 1], got {c!r}")
    if isinstance(t, bool) or not isinstance(t, int) or t < 0:
        raise DataError(f"{where}: field 'tool_calls' must be an integer >= 0, got {t!r}")
    return float(c), t


def select_groups(groups: Mapping[str, Sequence[Mapping[str, Any]]], cfg: ParetoConfig) -> ParetoSelection:
    """Pareto-select question ids from scored groups and assign curriculum stages.

    ``groups`` maps a question id to its samples ``[{correctness, tool_calls}, ...]``. Ids are
    sorted first, so the result depends on the groups and the seed only, not on their order.
    """
    ids = sorted(groups)
    correctness: list[list[float]] = []
    tool_calls: list[list[int]] = []
    for qid in ids:
        fields = [_sample_fields(qid, i, s) for i, s in enumerate(groups[qid])]
        correctness.append([c for c, _ in fields])
        tool_calls.append([t for _, t in fields])
    objectives = group_objectives(correctness, tool_calls, cfg.objectives)
    mixed = mixed_outcomes(correctness, cfg.mixed_threshold)
    mean = mean_correctness(correctness)
    tie_rank = default_tie_rank(len(ids), cfg.seed)

    chosen, ranked, ranks = _select(objectives, mixed, cfg, tie_rank)
    stage = curriculum_stages(mean[chosen], cfg.stages, cfg.stage_order, tie_rank[chosen])
    # stages are contiguous runs of the curriculum order, so this lists stage 1 first
    in_order = curriculum_order(mean[chosen], cfg.stage_order, tie_rank[chosen])
    stats = {
        "pool": len(ids),
        "mixed": int(mixed.sum()),
        "ranked": len(ranked),
        "fronts": int(ranks.max()) + 1 if len(ranks) else 0,
        "selected": len(chosen),
        "budget": cfg.budget,
        "mixed_outcome_filter": cfg.mixed_outcome_filter,
        "stage_sizes": [int((stage == k).sum()) for k in range(1, cfg.stages + 1)],
    }
    return ParetoSelection(
        ids=[ids[i] for i in chosen[in_order]],
        stage={ids[i]: int(s) for i, s in zip(chosen, stage, strict=True)},
        front={ids[i]: int(r) for i, r in zip(ranked, ranks, strict=True)},
        objectives={q: (float(a), float(b)) for q, (a, b) in zip(ids, objectives, strict=True)},
        mean_correctness={q: float(m) for q, m in zip(ids, mean, strict=True)},
        mixed={q: bool(m) for q, m in zip(ids, mixed, strict=True)},
        stats=stats,
    )


def stage_file(out_dir: str | Path, k: int) -> Path:
    return Path(out_dir) / f"stage{k}.jsonl"


def write_stages(
    out_dir: str | Path, selection: ParetoSelection, questions: Iterable[Question] | Mapping[str, Question]
) -> list[Path]:
    """Write ``stage{k}.jsonl`` (benchmark-schema questions) for every stage, then ``stages.json``.

    Each file is written atomically and the manifest last, so a directory with ``stages.json``
    is complete (:func:`stages_complete`). Each question gets ``meta["pareto"]`` = {stage, front,
    tool_objective, correctness_objective, mean_correctness}. Returns the stage files.
    """
    by_id = dict(questions) if isinstance(questions, Mapping) else {q.id: q for q in questions}
    missing = [q for q in selection.ids if q not in by_id]
    if missing:
        raise DataError(
            f"selected question ids not among the questions given: {missing[:5]} ({len(missing)} in all)"
        )
    n_stages = len(selection.stats.get("stage_sizes", [])) or max(selection.stage.values(), default=1)
    paths = []
    for k in range(1, n_stages + 1):
        rows = []
        for qid in selection.stage_ids(k):
            tool, corr = selection.objectives[qid]
            info = {
                "stage": k,
                "front": selection.front.get(qid),
                "tool_objective": tool,
                "correctness_objective": corr,
                "mean_correctness": selection.mean_correctness[qid],
            }
            q = by_id[qid]
            rows.append(q.model_copy(update={"meta": {**q.meta, "pareto": info}}))
        path = stage_file(out_dir, k)
        atomic_write_jsonl(path, rows)
        paths.append(path)
    manifest = {**selection.stats, "files": [p.name for p in paths]}
    atomic_write_json(Path(out_dir) / STAGES_MANIFEST, manifest)
    return paths


def stages_complete(out_dir: str | Path) -> bool:
    """True when :func:`write_stages` finished in ``out_dir`` (a resumed stage can skip it)."""
    manifest = Path(out_dir) / STAGES_MANIFEST
    if not manifest.exists():
        return False
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("files", [])
    except (json.JSONDecodeError, AttributeError):
        return False
    return all((Path(out_dir) / f).exists() for f in files)
