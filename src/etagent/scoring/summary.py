"""The summary of a set of trajectories that ``etagent rollout`` and the demo print and save.

A thin view over :mod:`etagent.scoring.metrics` (no judge): the dataset metrics of the whole set,
without the keys that do not apply (None), plus a few counts of the rollout itself.
"""

from __future__ import annotations

from collections import Counter
from statistics import mean
from typing import Any

from etagent.records import Trajectory
from etagent.scoring.metrics import dataset_metrics, score_trajectory


def trajectory_scores(traj: Trajectory, dataset: str = "") -> dict[str, Any]:
    """Per-trajectory numbers (a ``TrajectoryScore`` as a dict)."""
    return score_trajectory(traj, dataset).model_dump()


def summarize(trajectories: list[Trajectory]) -> dict[str, Any]:
    if not trajectories:
        return {"trajectories": 0}
    rows = [score_trajectory(t, "") for t in trajectories]
    metrics = dataset_metrics(rows)
    summary: dict[str, Any] = {
        "trajectories": len(trajectories),
        "questions": len({t.question_id for t in trajectories}),
        **{k: v for k, v in metrics.items() if v is not None and k != "n"},
        "mean_model_tokens": metrics["reasoning_length"],
        "tool_call_status": dict(Counter(c.status for t in trajectories for c in t.tool_calls)),
        "tool_calls_by_tool": dict(
            Counter(c.tool for t in trajectories for c in t.tool_calls if c.status == "ok")
        ),
    }
    with_min = [r for r in rows if r.min_tool_calls is not None]
    if with_min:
        summary["correct_at_min_tool_calls"] = mean(
            float(r.exact_match == 1.0 and r.tool_calls == r.min_tool_calls) for r in with_min
        )
    return summary
