"""Evaluation metrics per trajectory, per dataset and averaged over datasets (docs/method.md 7.3-7.5).

Follows the contract in docs/run-directory.md 9.3 (score rows) and 9.4 (metrics.json):

- ``score_trajectory``: one ``TrajectoryScore`` row (correctness, tool calls, results that failed,
  model tokens, format, Effi, calls against the known minimum, the judges' verdicts);
- ``dataset_metrics``: the paper's numbers for one dataset (correctness, Effi, Conciseness,
  Successful Execution in both variants, Reasoning Length) plus tool-usage rates and, on the tool
  world where each question's minimal number of calls is known, exact redundant / insufficient call
  rates (a judge-free conciseness);
- ``overall_metrics``: the averages over datasets of the paper's table (P, Effi) and radar;
- ``score_run``: an eval run directory in, ``scores.jsonl`` and ``metrics.json`` out.

Values are fractions in [0, 1], except counts, token lengths and ``correctness_per_ktoken``
(correctness per 1000 model tokens).
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from etagent.io import atomic_write_json, atomic_write_jsonl, read_records
from etagent.protocol import tags
from etagent.records import Trajectory
from etagent.scoring.correctness import (
    AnswerCheck,
    CorrectnessMetric,
    Normalisation,
    QAMetric,
    answer_correctness,
    exact_match,
    final_answer,
    token_f1,
)

if TYPE_CHECKING:
    from etagent.scoring.judge import LLMJudge

log = logging.getLogger(__name__)

#: Substrings that mark a tool result as failed (docs/method.md 7.5, radar ``evaluate_tool_execute_errors``).
#: "error" is matched case-insensitively, like the reference (so a passage mentioning the word counts).
FAILED_RESULT_MARKERS = ("execution timeout", "tool execute failed", "error")

TRAJECTORIES_FILE = "trajectories.jsonl"
SCORES_FILE = "scores.jsonl"
METRICS_FILE = "metrics.json"


class TrajectoryScore(BaseModel):
    """Everything the metrics need about one trajectory (one row of scores.jsonl)."""

    dataset: str
    question_id: str
    sample_index: int
    task: str
    correctness: float  # in [0, 1]: F1 (or EM) for QA, judge verdict or math equivalence for maths,
    # or the task's own answer check
    correctness_metric: CorrectnessMetric
    exact_match: float
    f1: float
    judge: bool | None = None
    tool_calls: int  # complete <tool>...</tool> pairs in the text (docs/method.md 6.4 / 7.4)
    search_calls: int
    python_calls: int
    results: int  # tool results the trajectory received
    failed_results: int
    model_tokens: int
    format_ok: bool
    effi: float  # correctness / tool_calls, or correctness when there is no call (docs/method.md 7.4)
    min_tool_calls: int | None = None
    redundant_calls: int | None = None
    missing_calls: int | None = None
    concise: bool | None = None  # conciseness judge verdict (docs/method.md 7.5)
    finish_reason: str
    prediction: str


# --------------------------------------------------------------------------------------------
# One trajectory


def result_failed(text: str) -> bool:
    """The reference rule for a failed tool result: empty, or holding a failure marker."""
    low = text.strip().lower()
    return not low or any(m in low for m in FAILED_RESULT_MARKERS)


def tool_results(traj: Trajectory) -> list[tuple[str, bool]]:
    """(result text, failed) for every tool result of a trajectory.

    From the recorded tool calls: failed by the reference rule or by a non-"ok" status (errors,
    timeouts, refused calls). A trajectory without call records (e.g. imported) falls back to the
    ``<result>`` blocks of its text, judged by the reference rule alone.
    """
    if traj.tool_calls:
        return [(c.result, c.status != "ok" or result_failed(c.result)) for c in traj.tool_calls]
    blocks = [b for b in tags.parse_blocks(traj.response_text) if b.kind == tags.RESULT]
    return [(b.content, result_failed(b.content)) for b in blocks]


def efficiency(correctness: float, tool_calls: int) -> float:
    """Effi of one sample (docs/method.md 7.4): a correct answer with k >= 1 calls earns 1/k."""
    return correctness / tool_calls if tool_calls > 0 else correctness


def score_trajectory(
    traj: Trajectory,
    dataset: str,
    judge_verdict: bool | None = None,
    concise: bool | None = None,
    qa_metric: QAMetric = "f1",
    normalisation: Normalisation = "reference",
    check: AnswerCheck | None = None,
) -> TrajectoryScore:
    """Score one trajectory. Correctness (:func:`~etagent.scoring.correctness.answer_correctness`):
    ``judge_verdict`` (LLM-as-judge, maths) when given, else the task's ``check`` when it gives a
    number, else math equivalence for maths and F1 (or exact match) with the docs/method.md 7.3
    normalisation for QA."""
    text = traj.response_text
    q = traj.question
    prediction = final_answer(traj)
    golds = q.answers
    em = exact_match(prediction, golds, normalisation)
    f1 = token_f1(prediction, golds, normalisation)
    correct = answer_correctness(
        q,
        prediction,
        qa_metric=qa_metric,
        normalisation=normalisation,
        judge_verdict=judge_verdict,
        check=check,
    )
    correctness = correct.value
    by_tool = tags.count_calls_by_tool(text)
    calls = sum(by_tool.values())
    results = tool_results(traj)
    minimum = q.meta.get("min_tool_calls")
    minimum = int(minimum) if minimum is not None else None
    return TrajectoryScore(
        dataset=dataset,
        question_id=traj.question_id,
        sample_index=traj.sample_index,
        task=q.task,
        correctness=correctness,
        correctness_metric=correct.metric,
        exact_match=em,
        f1=f1,
        judge=judge_verdict,
        tool_calls=calls,
        search_calls=by_tool.get(tags.SEARCH, 0),
        python_calls=by_tool.get(tags.PYTHON, 0),
        results=len(results),
        failed_results=sum(failed for _, failed in results),
        model_tokens=traj.num_model_tokens,
        format_ok=tags.check_format(text).ok,
        effi=efficiency(correctness, calls),
        min_tool_calls=minimum,
        redundant_calls=None if minimum is None else max(0, calls - minimum),
        missing_calls=None if minimum is None else max(0, minimum - calls),
        concise=concise,
        finish_reason=traj.finish_reason,
        prediction=prediction,
    )


# --------------------------------------------------------------------------------------------
# One dataset, all datasets


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return mean(values) if values else None


def _most_common(values: Iterable[str]) -> str | None:
    counts = Counter(values)
    if not counts:
        return None
    if len(counts) > 1:
        return "mixed"
    return next(iter(counts))


def dataset_metrics(rows: Sequence[TrajectoryScore]) -> dict[str, Any]:
    """The metrics of one dataset (see docs/run-directory.md 9.4 for every key)."""
    if not rows:
        raise ValueError("dataset_metrics needs at least one scored trajectory")
    all_results = sum(r.results for r in rows)
    judged = [r for r in rows if r.concise is not None]
    with_min = [r for r in rows if r.min_tool_calls is not None]
    return {
        "n": len(rows),
        "task": _most_common(r.task for r in rows),
        "correctness": mean(r.correctness for r in rows),
        "correctness_metric": _most_common(r.correctness_metric for r in rows),
        "exact_match": mean(r.exact_match for r in rows),
        "f1": mean(r.f1 for r in rows),
        "effi": mean(r.effi for r in rows),
        "format_valid": mean(float(r.format_ok) for r in rows),
        "mean_tool_calls": mean(r.tool_calls for r in rows),
        "mean_search_calls": mean(r.search_calls for r in rows),
        "mean_python_calls": mean(r.python_calls for r in rows),
        "tool_usage_rate": mean(float(r.tool_calls > 0) for r in rows),
        # Successful Execution (docs/method.md 7.5): (a) pooled, (b) correctness-weighted per sample
        "success_exec_rate": (
            (all_results - sum(r.failed_results for r in rows)) / all_results if all_results else None
        ),
        "success_exec_weighted": mean(r.correctness / max(r.failed_results, 1) for r in rows),
        # Reasoning Length (docs/method.md 7.5): model-written tokens, tool results excluded
        "reasoning_length": mean(r.model_tokens for r in rows),
        "correctness_per_ktoken": mean(r.correctness / max(r.model_tokens, 1) for r in rows) * 1000,
        # Conciseness (docs/method.md 7.5): the judge's verdicts; the exact one where the minimum is known
        "conciseness": _mean(float(r.concise) for r in judged),
        "conciseness_exact": _mean(float(r.redundant_calls == 0) for r in with_min),
        "redundant_call_rate": _mean(float((r.redundant_calls or 0) > 0) for r in with_min),
        "insufficient_call_rate": _mean(float((r.missing_calls or 0) > 0) for r in with_min),
        "at_min_tool_calls": _mean(float(r.tool_calls == r.min_tool_calls) for r in with_min),
        "finish_reasons": dict(sorted(Counter(r.finish_reason for r in rows).items())),
    }


def overall_metrics(per_dataset: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Averages over datasets, as in the paper's table (P, Effi) and radar; None values are ignored."""

    def avg(key: str) -> float | None:
        return _mean(m[key] for m in per_dataset.values() if m.get(key) is not None)

    judged = avg("conciseness")
    return {
        "P": avg("correctness"),
        "Effi": avg("effi"),
        "conciseness": judged if judged is not None else avg("conciseness_exact"),
        "success_exec": avg("success_exec_weighted"),
        "reasoning_length": avg("reasoning_length"),
        "correctness_per_ktoken": avg("correctness_per_ktoken"),
    }


# --------------------------------------------------------------------------------------------
# A run directory


def read_run(run_dir: Path) -> dict[str, list[Trajectory]]:
    """``datasets/<name>/trajectories.jsonl`` of an eval run, by dataset name (sorted)."""
    root = Path(run_dir) / "datasets"
    files = sorted(root.glob(f"*/{TRAJECTORIES_FILE}")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{root}: no datasets/<name>/{TRAJECTORIES_FILE} to score")
    runs: dict[str, list[Trajectory]] = {}
    for f in files:
        trajs = read_records(f, Trajectory)
        if not trajs:
            log.warning("%s holds no trajectory: dataset %s is not scored", f, f.parent.name)
            continue
        # sorted by (question, sample) so that scores do not depend on the order a resumed run wrote
        runs[f.parent.name] = sorted(trajs, key=lambda t: (t.question_id, t.sample_index))
    if not runs:
        raise FileNotFoundError(f"{root}: every datasets/<name>/{TRAJECTORIES_FILE} is empty")
    return runs


def score_run(
    run_dir: Path,
    judge: LLMJudge | None = None,
    qa_metric: QAMetric = "f1",
    conciseness_votes: int = 10,
    checks: Mapping[str, AnswerCheck] | None = None,
) -> dict[str, Any]:
    """Score every dataset of an eval run; write ``scores.jsonl`` and ``metrics.json`` atomically.

    ``checks`` maps a data set's name to its task's answer check (``Task.check_answer``); a data
    set without one is scored by the standard rule.

    With a judge: maths correctness is the judge's verdict (docs/method.md 7.2) and every trajectory that
    calls a tool gets a conciseness verdict from ``conciseness_votes`` votes (docs/method.md 7.5; 0 skips
    it). A trajectory without tool calls cannot hold a redundant call and counts as concise without
    asking. The judge's SQLite cache makes a re-run free and gives the same verdicts.
    """
    run_dir = Path(run_dir)
    by_dataset = read_run(run_dir)
    everything = [(name, t) for name, trajs in by_dataset.items() for t in trajs]
    verdicts: list[bool | None] = [None] * len(everything)
    concise: list[bool | None] = [None] * len(everything)
    if judge is not None:
        math_idx = [i for i, (_, t) in enumerate(everything) if t.question.task == "math"]
        math_verdicts = judge.judge_correctness([everything[i][1] for i in math_idx])
        for i, v in zip(math_idx, math_verdicts, strict=True):
            verdicts[i] = v
        if conciseness_votes > 0:
            calls = [tags.count_tool_calls(t.response_text) for _, t in everything]
            asked = [i for i, c in enumerate(calls) if c > 0]
            answers = judge.judge_conciseness([everything[i][1] for i in asked], votes=conciseness_votes)
            for i, c in enumerate(calls):
                if c == 0:
                    concise[i] = True
            for i, v in zip(asked, answers, strict=True):
                concise[i] = v
    rows = [
        score_trajectory(
            t,
            name,
            judge_verdict=verdicts[i],
            concise=concise[i],
            qa_metric=qa_metric,
            check=(checks or {}).get(name),
        )
        for i, (name, t) in enumerate(everything)
    ]
    per_dataset: dict[str, dict[str, Any]] = {}
    for name in by_dataset:
        per_dataset[name] = dataset_metrics([r for r in rows if r.dataset == name])
    first = everything[0][1] if everything else None
    metrics = {
        "run": run_dir.resolve().name,
        "model": first.model if first is not None else None,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "datasets": per_dataset,
        "overall": overall_metrics(per_dataset),
        "judge": judge.model if judge is not None else None,
    }
    atomic_write_jsonl(run_dir / SCORES_FILE, rows)
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    log.info(
        "scored %d trajectories in %d datasets -> %s", len(rows), len(per_dataset), run_dir / METRICS_FILE
    )
    return metrics
