"""The ``etagent pareto`` stage: group sampling, scoring, selection and stage files, resumable."""

from __future__ import annotations

import json

from etagent.io import read_records
from etagent.pareto.stage import GROUPS, SCORES, ParetoStageConfig, run_pareto
from etagent.records import Trajectory
from etagent.tasks import load_questions


def _config(**selection) -> ParetoStageConfig:
    return ParetoStageConfig.model_validate(
        {
            "rollout": {
                "data": "toolworld:train",
                "limit": 12,
                "n": 4,
                "agent": {
                    "backend": {"kind": "expert", "expert": {"missing_rate": 0.5, "redundant_rate": 0.3}}
                },
            },
            "selection": {"budget": 4, **selection},
        }
    )


def test_pareto_stage_selects_mixed_groups_and_writes_stages(tmp_path):
    summary = run_pareto(_config(stages=2, mixed_outcome_filter="before_cap"), tmp_path)

    trajs = read_records(tmp_path / GROUPS, Trajectory)
    assert len(trajs) == 12 * 4
    scores = [json.loads(line) for line in (tmp_path / SCORES).read_text().splitlines()]
    assert len(scores) == 48 and {"correctness", "tool_calls"} <= set(scores[0])
    # a missing call makes the expert wrong: groups are mixed, and correctness tracks the calls
    by_q: dict[str, list[dict]] = {}
    for row in scores:
        by_q.setdefault(row["question_id"], []).append(row)
    mixed = [q for q, rows in by_q.items() if len({r["correctness"] for r in rows}) > 1]
    assert mixed

    assert 0 < summary["selection_mixed"] <= len(mixed)
    assert summary["selected"] == min(4, summary["selection_mixed"])
    stage1 = load_questions(str(tmp_path / "stages" / "stage1.jsonl"))
    stage2 = load_questions(str(tmp_path / "stages" / "stage2.jsonl"))
    chosen = [q.id for q in stage1 + stage2]
    assert len(chosen) == summary["selected"] and set(chosen) <= set(mixed)
    assert all(q.meta["pareto"]["stage"] == 1 for q in stage1)
    assert all("min_tool_calls" in q.meta for q in stage1 + stage2)  # the tool world's plan survives


def test_pareto_stage_resumes_without_resampling(tmp_path):
    cfg = _config()
    first = run_pareto(cfg, tmp_path)
    before = (tmp_path / GROUPS).read_bytes()
    (tmp_path / "pareto_summary.json").unlink()  # interrupted after the rollout
    second = run_pareto(cfg, tmp_path)
    assert (tmp_path / GROUPS).read_bytes() == before
    assert second == first


def test_excluded_questions_are_not_selected_again(tmp_path):
    run_pareto(_config(), tmp_path / "a")
    stage = tmp_path / "a" / "stages" / "stage1.jsonl"
    first_ids = {q.id for q in load_questions(str(stage))}
    cfg = _config()
    cfg.exclude = [str(stage)]
    run_pareto(cfg, tmp_path / "b")
    second_ids = {q.id for q in load_questions(str(tmp_path / "b" / "stages" / "stage1.jsonl"))}
    assert first_ids and not first_ids & second_ids
