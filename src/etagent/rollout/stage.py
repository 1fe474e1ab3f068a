"""``etagent rollout``: questions in, trajectories out (JSONL), resumable.

Each question's n trajectories are written together in one append + fsync, so after an
interruption a question is either fully on disk or not at all (a torn last line is repaired);
on restart finished question ids are skipped and nothing is written twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from pydantic import Field

from etagent.backends.config import BackendConfig, build_generator
from etagent.config import ConfigModel
from etagent.data.loader import load_questions
from etagent.io import atomic_write_json, atomic_write_jsonl, read_records, repair_torn_tail, resumable_output
from etagent.records import Trajectory
from etagent.rollout.few_shot import expert_few_shot
from etagent.rollout.loop import AgentLoop, BudgetConfig, SamplingConfig
from etagent.scoring.summary import summarize
from etagent.tools.config import ToolsConfig, build_tools

log = logging.getLogger("etagent.rollout")

TRAJECTORIES = "trajectories.jsonl"
SUMMARY = "summary.json"


class RolloutConfig(ConfigModel):
    data: str = Field("toolworld:dev", description="JSONL path, toolworld:<split>, or a datasets file/dir")
    limit: int | None = Field(None, ge=1, description="first N questions only")
    n: int = Field(1, ge=1, description="trajectories per question")
    backend: BackendConfig = Field(default_factory=BackendConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    few_shot: int = Field(0, ge=0, description="expert-written example trajectories in the prompt")
    max_active: int = Field(16, ge=1, description="trajectories generated together (continuous batching)")
    output: str = Field(TRAJECTORIES, description="file name inside the run directory")


def completed_questions(path: Path, n: int) -> set[str]:
    """Question ids already fully written; incomplete groups are removed from the file."""
    if not path.exists():
        return set()
    repair_torn_tail(path)
    trajs = read_records(path, Trajectory)
    counts = Counter(t.question_id for t in trajs)
    complete = {qid for qid, c in counts.items() if c >= n}
    if len(complete) != len(counts):
        dropped = sorted(set(counts) - complete)
        log.warning("dropping %d incomplete question groups from %s: %s", len(dropped), path, dropped[:5])
        atomic_write_jsonl(path, [t for t in trajs if t.question_id in complete])
    return complete


def build_loop(cfg: RolloutConfig) -> AgentLoop:
    generator = build_generator(cfg.backend)
    tools = build_tools(cfg.tools)
    tokenizer_name = cfg.backend.tokenizer or cfg.backend.model
    few_shot = expert_few_shot(cfg.few_shot, cfg.tools, tokenizer_name) if cfg.few_shot else []
    return AgentLoop(
        generator,
        tools,
        budget=cfg.budget,
        sampling=cfg.sampling,
        few_shot=few_shot,
        max_active=cfg.max_active,
    )


def run_rollout(cfg: RolloutConfig, run_dir: Path, loop: AgentLoop | None = None) -> dict:
    """Roll out every question not yet on disk, then write and return the summary."""
    out = run_dir / cfg.output
    questions = load_questions(cfg.data, limit=cfg.limit)
    done = completed_questions(out, cfg.n)
    todo = [q for q in questions if q.id not in done]
    log.info(
        "rollout: %d questions, %d already done, n=%d, backend=%s",
        len(questions),
        len(done),
        cfg.n,
        cfg.backend.kind,
    )
    if todo:
        own_loop = loop is None
        loop = loop or build_loop(cfg)
        try:
            with resumable_output(out, len(questions), len(questions) - len(todo), "rollout") as (
                writer,
                bar,
            ):
                for _, trajs in loop.iter_run(todo, cfg.n):
                    writer.write_group(trajs)
                    bar.update(1)
        finally:
            if own_loop:
                loop.generator.close()
                for tool in loop.tools.values():
                    tool.close()
                loop.close()
    wanted = {q.id for q in questions}
    trajectories = [t for t in read_records(out, Trajectory) if t.question_id in wanted]
    summary = summarize(trajectories)
    summary["data"] = cfg.data
    summary["backend"] = cfg.backend.kind
    summary["model"] = cfg.backend.model
    atomic_write_json(run_dir / out.with_suffix(".summary.json").name, summary)
    return summary
