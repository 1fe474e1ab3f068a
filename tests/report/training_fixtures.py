"""Tiny RL, Pareto and pipeline run directories (docs/run-directory.md 6-9) with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

from etagent.io import atomic_write_json, atomic_write_jsonl
from tests.report.fixtures import make_traj, write_run

#: train_log.jsonl of an RL run (9.8): entropy is not logged at step 3, branching_rate never
RL_STEPS = [
    {"step": 1, "rollout_step": 1, "reward": 0.1, "correctness": 0.2, "tool_calls": 1.5, "length": 300.0,
     "entropy": 0.9, "branching_rate": None},
    {"step": 2, "rollout_step": 2, "reward": -0.2, "correctness": 0.4, "tool_calls": 2.0, "length": 280.0,
     "entropy": 0.8, "branching_rate": None},
    {"step": 3, "rollout_step": 3, "reward": 0.7, "correctness": 0.6, "tool_calls": 1.0, "length": 250.0,
     "entropy": None, "branching_rate": None},
]  # fmt: skip

#: group_scores.jsonl: question -> [(correctness, tool calls)] per sample
GROUPS = {
    "q-1": [(1.0, 1), (0.0, 3)],  # stage 1: mean 50 %, 2 calls; variances (1.0, 0.25)
    "q-2": [(1.0, 2), (0.5, 2)],  # stage 2: mean 75 %, 2 calls; variances (0.0, 0.0625)
    "q-3": [(0.0, 0), (0.0, 0)],  # not selected, at the same place as q-5
    "q-4": [(1.0, 1), (1.0, 1)],  # not selected
    "q-5": [(0.0, 0), (0.0, 0)],  # not selected
}


def write_rl_run(run_dir: Path, steps: list[dict] = RL_STEPS) -> Path:
    atomic_write_jsonl(run_dir / "train_log.jsonl", steps)
    atomic_write_json(run_dir / "rl_summary.json", {"steps": len(steps), "last": steps[-1]})
    return run_dir


def write_pareto_run(run_dir: Path) -> Path:
    rows = [
        {"question_id": q, "sample_index": i, "correctness": c, "tool_calls": t, "format_ok": True}
        for q, samples in GROUPS.items()
        for i, (c, t) in enumerate(samples)
    ]
    atomic_write_jsonl(run_dir / "group_scores.jsonl", rows)
    stages = {1: ("q-1", 0, 1.0, 0.25, 0.5), 2: ("q-2", 1, 0.0, 0.0625, 0.75)}
    for k, (qid, front, tool, corr, mean) in stages.items():
        meta = {"pareto": {"stage": k, "front": front, "tool_objective": tool,
                           "correctness_objective": corr, "mean_correctness": mean}}  # fmt: skip
        atomic_write_jsonl(
            run_dir / "stages" / f"stage{k}.jsonl",
            [{"id": qid, "question": f"Question {qid}?", "answer": "x", "meta": meta}],
        )
    atomic_write_json(
        run_dir / "stages" / "stages.json",
        {"pool": 5, "selected": 2, "stage_sizes": [1, 1], "files": ["stage1.jsonl", "stage2.jsonl"]},
    )
    atomic_write_json(run_dir / "pareto_summary.json", {"selected": 2})
    return run_dir


def write_pipeline_run(root: Path) -> Path:
    """A finished pipeline directory: 05-pareto-1, 06-rl-1, 07-eval/base (no tool calls), 07-eval/sft
    and 07-eval/rl; pipeline.json gives the run order base, sft, rl (not the alphabetical one)."""
    run = root / "pipeline"
    write_pareto_run(run / "05-pareto-1")
    write_rl_run(run / "06-rl-1")
    search = ("search", "Zorvik", "(1) Zorvik was born in Quenmara.", "ok")
    write_run(run / "07-eval" / "sft", {"alpha": [make_traj("a-1", "Quenmara", "Quenmara", [search])]})
    write_run(run / "07-eval" / "rl", {"alpha": [make_traj("a-1", "Quenmara", "Quenmara", [search, search])]})
    write_run(run / "07-eval" / "base", {"alpha": [make_traj("a-1", "Quenmara", "Lyon", [])]})
    stages = ["05-pareto-1", "06-rl-1", "07-eval/base", "07-eval/sft", "07-eval/rl"]
    (run / "pipeline.json").write_text(json.dumps({key: {} for key in stages}), encoding="utf-8")
    return run
