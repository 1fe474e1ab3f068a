"""``etagent pareto``: sample a group per question, score it, Pareto-select, write curriculum stages.

docs/method.md 5: G samples per question with the current policy (5.1), each annotated with its
correctness and number of complete tool calls (5.2, the step the reference lacks), then the
group-wise Pareto selection of :mod:`etagent.pareto.selection` (5.3) and the curriculum stage
files (5.5). Every step resumes from disk: the rollout skips finished questions, the scores are
recomputed from the saved trajectories (cheap), and finished stage files are kept.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from etagent.agent import AgentConfig
from etagent.config import ConfigModel
from etagent.io import atomic_write_json, atomic_write_jsonl, read_records
from etagent.loop.agent_loop import SamplingConfig
from etagent.pareto.selection import ParetoConfig, select_groups, stages_complete, write_stages
from etagent.protocol import tags
from etagent.records import Trajectory
from etagent.rollout.stage import (
    MAX_TOOL_FAILURE_SETTING,
    RolloutConfig,
    check_tool_failures,
    run_rollout,
    tool_failures,
)
from etagent.scoring.correctness import AnswerCheck, QAMetric
from etagent.scoring.reward import trajectory_correctness
from etagent.tasks import resolve_data

log = logging.getLogger("etagent.pareto")

GROUPS = "groups.jsonl"
SCORES = "group_scores.jsonl"
STAGES_DIR = "stages"
SUMMARY = "pareto_summary.json"


def _default_rollout() -> RolloutConfig:
    # G = 8 samples per question at T = 1 (docs/method.md 5.1)
    return RolloutConfig(
        data="toolworld:train",
        n=8,
        output=GROUPS,
        agent=AgentConfig(sampling=SamplingConfig(temperature=1.0)),
    )


class ParetoStageConfig(ConfigModel):
    rollout: RolloutConfig = Field(
        default_factory=_default_rollout, description="group sampling: data, n = G, the current policy"
    )
    selection: ParetoConfig = Field(default_factory=ParetoConfig)
    qa_metric: QAMetric = Field("f1", description="correctness of QA samples: f1 or exact_match")
    exclude: list[str] = Field(
        default_factory=list,
        description="question JSONL files (e.g. earlier stages) whose questions are not selected again",
    )


def pareto_objectives(
    trajectories: list[Trajectory],
    qa_metric: QAMetric = "f1",
    check: AnswerCheck | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
) -> list[dict[str, Any]]:
    """One row per sample, the objectives of the Pareto selection: question id, sample index,
    correctness (``check``: the task's answer check) and complete tool calls (and the format check)."""
    return [
        {
            "question_id": t.question_id,
            "sample_index": t.sample_index,
            "correctness": trajectory_correctness(t, qa_metric, check=check),
            "tool_calls": tags.count_tool_calls(t.response_text, tool_tags),
            "format_ok": tags.check_format(t.response_text, tool_tags).ok,
        }
        for t in trajectories
    ]


def run_pareto(cfg: ParetoStageConfig, run_dir: Path) -> dict[str, Any]:
    """Sample, score and select; returns (and writes) the selection summary."""
    stages_dir = run_dir / STAGES_DIR
    summary_path = run_dir / SUMMARY
    if stages_complete(stages_dir) and summary_path.exists():
        log.info("pareto: stages already written in %s", stages_dir)
        stored: dict[str, Any] = json.loads(summary_path.read_text(encoding="utf-8"))
        _check_tools(stored, cfg, run_dir)
        return stored

    # one name in every run directory; tool failures are checked once the stages are written
    rollout = cfg.rollout.model_copy(update={"output": GROUPS, "max_tool_failure_rate": None})
    run_rollout(rollout, run_dir)
    data = cfg.rollout.data_ref()
    questions = {q.id: q for q in data.questions(cfg.rollout.limit)}
    excluded = {q.id for path in cfg.exclude for q in resolve_data(path).questions()}
    trajectories = [t for t in read_records(run_dir / GROUPS, Trajectory) if t.question_id in questions]
    rows = pareto_objectives(
        trajectories, cfg.qa_metric, data.task.check_answer, cfg.rollout.agent.tools.tags
    )
    atomic_write_jsonl(run_dir / SCORES, rows)

    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["question_id"] not in excluded:
            groups.setdefault(row["question_id"], []).append(row)
    selection = select_groups(groups, cfg.selection)
    files = write_stages(stages_dir, selection, questions)
    summary = {
        "questions_sampled": len(questions),
        "excluded": len(excluded & set(questions)),
        "samples": len(rows),
        "mean_correctness": sum(r["correctness"] for r in rows) / max(len(rows), 1),
        "mean_tool_calls": sum(r["tool_calls"] for r in rows) / max(len(rows), 1),
        "selected": len(selection.ids),
        "stages": [str(f.relative_to(run_dir)) for f in files],
        **{f"selection_{k}": v for k, v in selection.stats.items()},
        **tool_failures(trajectories),
    }
    atomic_write_json(summary_path, summary)
    _check_tools(summary, cfg, run_dir)
    return summary


def _check_tools(summary: dict[str, Any], cfg: ParetoStageConfig, run_dir: Path) -> None:
    setting = f"rollout.{MAX_TOOL_FAILURE_SETTING}"
    check_tool_failures(summary, cfg.rollout.max_tool_failure_rate, "pareto", run_dir, setting)
