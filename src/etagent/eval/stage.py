"""``etagent eval`` / ``etagent score``: rollouts on several data sets, metrics, and the reports.

Run directory (docs/run-directory.md 3)::

    config.yaml                            resolved EvalConfig
    datasets/<name>/trajectories.jsonl     rollouts (the resumable rollout stage, one per data set)
    scores.jsonl, metrics.json             etagent.scoring.metrics.score_run
    report.md, report.html                 etagent.report

Resumable: finished questions are skipped, and scoring and the reports are recomputed from disk
(cheap; judge verdicts come from the judge's cache). The model is loaded once for all data sets.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from etagent.agent import AgentConfig, build_agent, build_generator_for
from etagent.backends.base import Generator
from etagent.config import ConfigModel
from etagent.io import DataError, atomic_write_json, read_records
from etagent.loop.agent_loop import SamplingConfig
from etagent.progress import LOG_INTERVAL_S
from etagent.records import Trajectory
from etagent.registry import is_dotted_path
from etagent.report.build import ReportConfig, write_report
from etagent.report.loader import DATASETS_DIR, METRICS_FILE
from etagent.rollout.stage import (
    DATA_HELP,
    MAX_TOOL_FAILURE_HELP,
    MAX_TOOL_FAILURE_SETTING,
    TASK_HELP,
    TRAJECTORIES,
    RolloutConfig,
    ToolFailureError,
    check_tool_failures,
    completed_questions,
    run_rollout,
    tool_failures,
)
from etagent.scoring.correctness import QAMetric
from etagent.scoring.judge import JudgeConfig, LLMJudge
from etagent.scoring.metrics import score_run
from etagent.tasks import TASKS, resolve_data

log = logging.getLogger("etagent.eval")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SPLIT_STEMS = {"test", "dev", "val", "valid", "validation", "train", "eval"}


def default_dataset_name(data: str) -> str:
    """``toolworld:dev`` -> ``toolworld-dev``; ``.../hotpotqa/test.jsonl`` -> ``hotpotqa-test``."""
    task, colon, split = data.rpartition(":")
    if colon and (task in TASKS or is_dotted_path(task)):
        raw = f"{task.rpartition(':')[2]}-{split}"  # toolworld-dev, ArithmeticTask-dev
    elif colon and task.endswith((".yaml", ".yml")):
        path = Path(task)
        raw = f"{path.parent.name if path.stem == 'task' else path.stem}-{split}"  # capitals-dev
    else:
        path = Path(data.rstrip("/"))
        raw = (
            f"{path.parent.name}-{path.stem}"
            if path.stem.lower() in _SPLIT_STEMS and path.parent.name
            else path.stem
        )
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "-", raw).strip("-.")
    return name or "data"


class EvalDataset(ConfigModel):
    data: str = Field(description=DATA_HELP)
    task: str | None = Field(None, description=TASK_HELP)
    name: str | None = Field(
        None, description="directory under datasets/ and the label in reports; None = from data"
    )
    limit: int | None = Field(None, ge=1, description="first N questions only")
    n: int = Field(1, ge=1, description="trajectories per question")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str | None) -> str | None:
        if name is not None and not _NAME_RE.match(name):
            raise ValueError(f"{name!r} must be letters, digits, '_', '-' or '.' (it names a directory)")
        return name

    @property
    def dataset_name(self) -> str:
        return self.name or default_dataset_name(self.data)


def _greedy_agent() -> AgentConfig:
    return AgentConfig(sampling=SamplingConfig(temperature=0.0))


class EvalConfig(ConfigModel):
    datasets: list[EvalDataset] = Field(
        default_factory=lambda: [EvalDataset(data="toolworld:dev")], min_length=1
    )
    agent: AgentConfig = Field(
        default_factory=_greedy_agent, description="the agent; default sampling: greedy"
    )
    judge: JudgeConfig | None = Field(
        None, description="LLM judge: maths correctness and conciseness; None = rules only"
    )
    conciseness_votes: int = Field(
        10, ge=0, description="judge votes per trajectory (0 = no conciseness judging)"
    )
    qa_metric: QAMetric = Field("f1", description="QA correctness: f1 (docs/method.md 7.3) or exact_match")
    report: ReportConfig = Field(default_factory=ReportConfig)
    max_tool_failure_rate: float | None = Field(
        0.5, ge=0, le=1, description=MAX_TOOL_FAILURE_HELP + "; over all data sets, checked after the reports"
    )

    @model_validator(mode="after")
    def _unique_names(self) -> EvalConfig:
        names = [d.dataset_name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"data set names must be unique, got {dupes} twice; set datasets.<i>.name")
        return self

    def rollout_config(self, dataset: EvalDataset) -> RolloutConfig:
        """The rollout stage's config for one data set (the run directory is datasets/<name>)."""
        return RolloutConfig(
            data=dataset.data,
            task=dataset.task,
            limit=dataset.limit,
            n=dataset.n,
            agent=self.agent,
            output=TRAJECTORIES,
            max_tool_failure_rate=None,  # checked over all data sets once the reports are written
        )


def dataset_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / DATASETS_DIR / name


def _has_work(cfg: RolloutConfig, out_dir: Path) -> bool:
    questions = cfg.data_ref().questions(cfg.limit)
    done = completed_questions(out_dir / cfg.output, cfg.n)
    return any(q.id not in done for q in questions)


def run_rollouts(
    cfg: EvalConfig, run_dir: Path, progress_interval_s: float = LOG_INTERVAL_S
) -> dict[str, dict[str, Any]]:
    """Roll out every data set not yet complete; the model is loaded once for all of them, the
    tools and prompt examples are each data set's task's.

    Returns the rollout stage's summary per data set. ``progress_interval_s``: seconds between the
    rollout's progress log lines when the output is not a terminal.
    """
    summaries: dict[str, dict[str, Any]] = {}
    generator: Generator | None = None
    try:
        for dataset in cfg.datasets:
            name = dataset.dataset_name
            rollout_cfg = cfg.rollout_config(dataset)
            out_dir = dataset_dir(run_dir, name)
            log.info("eval: data set %s (%s)", name, dataset.data)
            if not _has_work(rollout_cfg, out_dir):
                summaries[name] = run_rollout(rollout_cfg, out_dir)
                continue
            task = rollout_cfg.data_ref().task
            if generator is None:
                backend = cfg.agent.backend
                log.info("eval: loading the %s backend (%s) ...", backend.kind, backend.model)
                t0 = time.perf_counter()
                generator = build_generator_for(backend, task)
                log.info("eval: model ready in %.1f s", time.perf_counter() - t0)
            loop = build_agent(cfg.agent, task, generator=generator)
            try:
                summaries[name] = run_rollout(
                    rollout_cfg, out_dir, loop=loop, progress_interval_s=progress_interval_s
                )
            finally:
                loop.close()
    finally:
        if generator is not None:
            generator.close()
    return summaries


def check_eval_run_dir(run_dir: str | Path) -> None:
    """A clear error unless ``run_dir`` holds eval trajectories (datasets/<name>/trajectories.jsonl)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory does not exist")
    if not any((run_dir / DATASETS_DIR).glob(f"*/{TRAJECTORIES}")):
        raise DataError(
            f"{run_dir}: no {DATASETS_DIR}/<name>/{TRAJECTORIES}; is this an `etagent eval` run directory?"
        )


def rescore(run_dir: str | Path, cfg: EvalConfig | None = None) -> dict[str, Any]:
    """Score the saved trajectories (no generation) and rewrite report.md / report.html."""
    run_dir = Path(run_dir)
    cfg = cfg or EvalConfig()
    check_eval_run_dir(run_dir)
    judge = LLMJudge.from_config(cfg.judge) if cfg.judge is not None else None
    checks = {d.dataset_name: resolve_data(d.data, d.task).task.check_answer for d in cfg.datasets}
    try:
        metrics = score_run(
            run_dir,
            judge=judge,
            qa_metric=cfg.qa_metric,
            conciseness_votes=cfg.conciseness_votes,
            checks=checks,
        )
    finally:
        if judge is not None:
            judge.close()
    for name, table in metrics["datasets"].items():  # the tool calls that failed, per data set
        path = dataset_dir(run_dir, name) / TRAJECTORIES
        if table is not None and path.exists():
            table.update(tool_failures(read_records(path, Trajectory)))
    atomic_write_json(run_dir / METRICS_FILE, metrics)
    write_report([run_dir], cfg=cfg.report)
    return metrics


def run_eval(cfg: EvalConfig, run_dir: str | Path) -> dict[str, Any]:
    """Rollouts on every data set, then metrics and reports; returns the metrics (metrics.json)."""
    run_dir = Path(run_dir)
    run_rollouts(cfg, run_dir)
    metrics = rescore(run_dir, cfg)
    tables = [t for t in metrics["datasets"].values() if t is not None]
    first = next((t["first_tool_failure"] for t in tables if t.get("first_tool_failure")), None)
    totals = {
        "tool_calls_run": sum(t.get("tool_calls_run", 0) for t in tables),
        "failed_tool_calls": sum(t.get("failed_tool_calls", 0) for t in tables),
        "first_tool_failure": first,
    }
    try:
        check_tool_failures(totals, cfg.max_tool_failure_rate, "eval", run_dir, MAX_TOOL_FAILURE_SETTING)
    except ToolFailureError as e:
        raise ToolFailureError(str(e), metrics, e.setting) from None
    return metrics
