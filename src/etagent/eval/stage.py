"""``etagent eval`` / ``etagent score``: rollouts on several data sets, metrics, and the reports.

Run directory (notes/schema.md)::

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
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from etagent.backends.config import BackendConfig
from etagent.config import ConfigModel
from etagent.data.loader import TOOLWORLD_PREFIX, load_questions
from etagent.io import DataError
from etagent.report.build import ReportConfig, write_report
from etagent.report.loader import DATASETS_DIR
from etagent.rollout.loop import AgentLoop, BudgetConfig, SamplingConfig
from etagent.rollout.stage import TRAJECTORIES, RolloutConfig, build_loop, completed_questions, run_rollout
from etagent.scoring.correctness import QAMetric
from etagent.scoring.judge import JudgeConfig, LLMJudge
from etagent.scoring.metrics import score_run
from etagent.tools.config import ToolsConfig

log = logging.getLogger("etagent.eval")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_SPLIT_STEMS = {"test", "dev", "val", "valid", "validation", "train", "eval"}


def default_dataset_name(data: str) -> str:
    """``toolworld:dev`` -> ``toolworld-dev``; ``.../hotpotqa/test.jsonl`` -> ``hotpotqa-test``."""
    if data.startswith(TOOLWORLD_PREFIX):
        raw = "toolworld-" + data[len(TOOLWORLD_PREFIX) :]
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
    data: str = Field(description="JSONL path, toolworld:<split>, or a datasets file/dir")
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


def _greedy() -> SamplingConfig:
    return SamplingConfig(temperature=0.0)


class EvalConfig(ConfigModel):
    datasets: list[EvalDataset] = Field(
        default_factory=lambda: [EvalDataset(data="toolworld:dev")], min_length=1
    )
    backend: BackendConfig = Field(default_factory=BackendConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    sampling: SamplingConfig = Field(default_factory=_greedy, description="default: greedy")
    few_shot: int = Field(0, ge=0, description="expert-written example trajectories in the prompt")
    max_active: int = Field(16, ge=1, description="trajectories generated together (continuous batching)")
    judge: JudgeConfig | None = Field(
        None, description="LLM judge: maths correctness and conciseness; None = rules only"
    )
    conciseness_votes: int = Field(
        10, ge=0, description="judge votes per trajectory (0 = no conciseness judging)"
    )
    qa_metric: QAMetric = Field("f1", description="QA correctness: f1 (METHOD 7.3) or exact_match")
    report: ReportConfig = Field(default_factory=ReportConfig)

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
            limit=dataset.limit,
            n=dataset.n,
            backend=self.backend,
            tools=self.tools,
            budget=self.budget,
            sampling=self.sampling,
            few_shot=self.few_shot,
            max_active=self.max_active,
            output=TRAJECTORIES,
        )


def dataset_dir(run_dir: Path, name: str) -> Path:
    return Path(run_dir) / DATASETS_DIR / name


def _has_work(cfg: RolloutConfig, out_dir: Path) -> bool:
    questions = load_questions(cfg.data, limit=cfg.limit)
    done = completed_questions(out_dir / cfg.output, cfg.n)
    return any(q.id not in done for q in questions)


def _close_loop(loop: AgentLoop) -> None:
    loop.generator.close()
    for tool in loop.tools.values():
        tool.close()
    loop.close()


def run_rollouts(cfg: EvalConfig, run_dir: Path) -> dict[str, dict[str, Any]]:
    """Roll out every data set not yet complete, sharing one AgentLoop (one model load).

    Returns the rollout stage's summary per data set.
    """
    summaries: dict[str, dict[str, Any]] = {}
    loop: AgentLoop | None = None
    try:
        for dataset in cfg.datasets:
            name = dataset.dataset_name
            rollout_cfg = cfg.rollout_config(dataset)
            out_dir = dataset_dir(run_dir, name)
            if loop is None and _has_work(rollout_cfg, out_dir):
                loop = build_loop(rollout_cfg)
            log.info("eval: data set %s (%s)", name, dataset.data)
            summaries[name] = run_rollout(rollout_cfg, out_dir, loop=loop)
    finally:
        if loop is not None:
            _close_loop(loop)
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
    try:
        metrics = score_run(
            run_dir, judge=judge, qa_metric=cfg.qa_metric, conciseness_votes=cfg.conciseness_votes
        )
    finally:
        if judge is not None:
            judge.close()
    write_report([run_dir], cfg=cfg.report)
    return metrics


def run_eval(cfg: EvalConfig, run_dir: str | Path) -> dict[str, Any]:
    """Rollouts on every data set, then metrics and reports; returns the metrics (metrics.json)."""
    run_dir = Path(run_dir)
    run_rollouts(cfg, run_dir)
    return rescore(run_dir, cfg)
