"""Comparisons over seeds: what the benchmarks that compare training recipes print.

Two kinds of interval, both at 95% by default:

- across seeds: each seed is one whole run (cold start included), so the mean of a metric over
  seeds gets a Student t-interval (:func:`across_seeds`); with 2-3 seeds it is wide, and honest;
- per question: two recipes evaluated on the same questions give a paired difference per question.
  Each question's difference is averaged over the seeds, then the questions are resampled
  (:func:`pooled_paired_difference`, scipy's percentile bootstrap).

:data:`PER_QUESTION` holds the per-question values read from an eval's ``scores.jsonl``.

A comparison over seeds runs for hours and spans sessions whose machines do not keep their files,
so each finished run's result is kept apart from its models (:func:`keep_result`): the eval's
metrics and scores and a few facts, kilobytes a run, small enough to commit (``benchmarks/results``).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from etagent.io import atomic_write_json, atomic_write_text, read_records
from etagent.scoring.metrics import METRICS_FILE, SCORES_FILE, TrajectoryScore

#: label -> the value of one trajectory's score (a row of an eval's scores.jsonl); the rates are
#: per trajectory what etagent.scoring.metrics averages
PER_QUESTION: dict[str, Callable[[TrajectoryScore], float]] = {
    "correctness": lambda r: r.correctness,
    "Effi": lambda r: r.effi,
    "redundant-call rate": lambda r: float((r.redundant_calls or 0) > 0),
    "insufficient-call rate": lambda r: float((r.missing_calls or 0) > 0),
    "model tokens": lambda r: float(r.model_tokens),
}

#: a trajectory's key in an eval run: (dataset, question id, sample index)
ScoreKey = tuple[str, str, int]


@dataclass(frozen=True)
class Estimate:
    """A mean and its interval (``low``/``high`` None when there is none: a single seed)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    def format(self, digits: int = 3, signed: bool = False) -> str:
        sign = "+" if signed else ""
        mean = f"{self.mean:{sign}.{digits}f}"
        if self.low is None or self.high is None:
            return mean
        return f"{mean} [{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]"


def across_seeds(values: Sequence[float], confidence: float = 0.95) -> Estimate:
    """Mean over seeds with a Student t-interval (none for one seed; zero width if all agree)."""
    if not values:
        raise ValueError("across_seeds: no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return Estimate(mean, None, None, 1)
    sem = statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0:
        return Estimate(mean, mean, mean, len(values))
    low, high = stats.t.interval(confidence, len(values) - 1, loc=mean, scale=sem)
    return Estimate(mean, float(low), float(high), len(values))


def pooled_paired_difference(
    runs_a: Sequence[Mapping[Any, float]],
    runs_b: Sequence[Mapping[Any, float]],
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """a - b per question, over seeds: ``runs_a[s]`` and ``runs_b[s]`` map question id -> value for
    seed s (keys: question ids, or :data:`ScoreKey`). Each question's difference is its mean over the seeds; the interval resamples questions.
    Only questions present in every run count."""
    if len(runs_a) != len(runs_b) or not runs_a:
        raise ValueError(f"pooled_paired_difference: {len(runs_a)} runs against {len(runs_b)}")
    ids = sorted(set.intersection(*(set(run) for run in (*runs_a, *runs_b))))
    if not ids:
        raise ValueError("pooled_paired_difference: no question was evaluated in every run")
    diffs = np.array(
        [statistics.fmean(a[i] - b[i] for a, b in zip(runs_a, runs_b, strict=True)) for i in ids]
    )
    mean = float(diffs.mean())
    if len(ids) == 1 or np.all(diffs == diffs[0]):
        return Estimate(mean, mean, mean, len(ids))
    res = stats.bootstrap(
        (diffs,),
        np.mean,
        confidence_level=confidence,
        n_resamples=resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return Estimate(mean, float(res.confidence_interval.low), float(res.confidence_interval.high), len(ids))


def read_metrics(eval_dir: Path) -> dict[str, Any]:
    """An eval directory's aggregated metrics (``metrics.json``) of its first data set."""
    metrics = json.loads((Path(eval_dir) / METRICS_FILE).read_text(encoding="utf-8"))
    return next(iter(metrics["datasets"].values()))


def read_scores(eval_dir: Path) -> dict[ScoreKey, TrajectoryScore]:
    """An eval directory's trajectory scores (``scores.jsonl``) by (dataset, question id, sample)."""
    rows = read_records(Path(eval_dir) / SCORES_FILE, TrajectoryScore)
    return {(r.dataset, r.question_id, r.sample_index): r for r in rows}


def per_question(scores: Mapping[ScoreKey, TrajectoryScore], label: str) -> dict[ScoreKey, float]:
    """One :data:`PER_QUESTION` value of every trajectory of an eval's scores."""
    value = PER_QUESTION[label]
    return {key: value(row) for key, row in scores.items()}


def paired_differences(
    scores_a: Sequence[Mapping[ScoreKey, TrajectoryScore]],
    scores_b: Sequence[Mapping[ScoreKey, TrajectoryScore]],
) -> dict[str, Estimate]:
    """Every :data:`PER_QUESTION` value's pooled paired difference a - b; ``scores_a[s]`` is seed
    s's :func:`read_scores`."""
    return {
        label: pooled_paired_difference(
            [per_question(s, label) for s in scores_a], [per_question(s, label) for s in scores_b]
        )
        for label in PER_QUESTION
    }


#: what a kept result holds besides its eval's metrics.json and scores.jsonl
FACTS_FILE = "facts.json"


def keep_result(eval_dir: Path | None, dest: Path, facts: dict[str, Any]) -> None:
    """Keep one finished run's result in ``dest``: its eval's ``metrics.json`` and ``scores.jsonl``
    (none when ``eval_dir`` is None: the facts then say where the result is) and ``facts``. Each
    file is written atomically, the facts last, so a ``dest`` with facts is complete."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if eval_dir is not None:
        for name in (METRICS_FILE, SCORES_FILE):
            atomic_write_text(dest / name, (Path(eval_dir) / name).read_text(encoding="utf-8"))
    atomic_write_json(dest / FACTS_FILE, facts)


def kept_facts(dest: Path, expected: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The facts of a result kept in ``dest`` by :func:`keep_result`, or None when none is kept.

    With ``expected`` (the settings every result of one comparison must share), a kept result made
    with other values of those keys raises ValueError naming ``dest`` and both sets of values."""
    path = Path(dest) / FACTS_FILE
    if not path.is_file():
        return None
    facts = json.loads(path.read_text(encoding="utf-8"))
    if expected is not None:
        made = {key: facts.get(key) for key in expected}
        if made != expected:
            raise ValueError(f"{dest}: made with {made}, not {expected}")
    return facts
