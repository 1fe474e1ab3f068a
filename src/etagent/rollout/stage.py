"""``etagent rollout``: questions in, trajectories out (JSONL), resumable.

Each question's n trajectories are written together in one append + fsync, so after an
interruption a question is either fully on disk or not at all (a torn last line is repaired);
on restart finished question ids are skipped and nothing is written twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from pydantic import Field

from etagent.agent import AgentConfig, build_agent
from etagent.config import ConfigModel
from etagent.io import atomic_write_json, atomic_write_jsonl, read_records, repair_torn_tail, resumable_output
from etagent.loop.agent_loop import AgentLoop
from etagent.progress import LOG_INTERVAL_S, Progress, ProgressDisplay
from etagent.records import Trajectory
from etagent.scoring.summary import summarize
from etagent.tasks import DataRef, Task, resolve_data

log = logging.getLogger("etagent.rollout")

TRAJECTORIES = "trajectories.jsonl"
SUMMARY = "summary.json"


DATA_HELP = "task:split (toolworld:dev), a task YAML file[:split], or a question file (JSONL, datasets)"
TASK_HELP = "the task of a question file given as data (its corpus, answer check, oracle, examples)"


class RolloutConfig(ConfigModel):
    data: str = Field("toolworld:dev", description=DATA_HELP)
    task: str | None = Field(None, description=TASK_HELP)
    limit: int | None = Field(None, ge=1, description="first N questions only")
    n: int = Field(1, ge=1, description="trajectories per question")
    agent: AgentConfig = Field(default_factory=AgentConfig)
    output: str = Field(TRAJECTORIES, description="file name inside the run directory")

    def data_ref(self) -> DataRef:
        return resolve_data(self.data, self.task)


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


def load_agent(agent: AgentConfig, task: Task) -> AgentLoop:
    """``build_agent`` with a log line before (loading a model takes a while, before any bar
    moves) and one after saying how long it took."""
    log.info("rollout: loading the %s backend (%s) ...", agent.backend.kind, agent.backend.model)
    t0 = time.perf_counter()
    loop = build_agent(agent, task)
    log.info("rollout: agent ready in %.1f s", time.perf_counter() - t0)
    return loop


def run_rollout(
    cfg: RolloutConfig,
    run_dir: Path,
    loop: AgentLoop | None = None,
    progress_interval_s: float = LOG_INTERVAL_S,
) -> dict:
    """Roll out every question not yet on disk, then write and return the summary.

    ``loop`` replaces the agent built from ``cfg.agent`` (eval shares one across data sets).
    The bar counts finished questions; inside a question its postfix shows the agent loop's round,
    the trajectories finished and the tokens generated (on a terminal), or a log line says so
    every ``progress_interval_s`` seconds (elsewhere).
    """
    out = run_dir / cfg.output
    data = cfg.data_ref()
    questions = data.questions(cfg.limit)
    done = completed_questions(out, cfg.n)
    todo = [q for q in questions if q.id not in done]
    log.info(
        "rollout: %d questions, %d already done, n=%d, backend=%s",
        len(questions),
        len(done),
        cfg.n,
        cfg.agent.backend.kind,
    )
    if todo:
        own_loop = loop is None
        if loop is None:
            loop = load_agent(cfg.agent, data.task)
        try:
            with (
                resumable_output(out, len(questions), len(questions) - len(todo), "rollout") as (writer, bar),
                loop.reporting(Progress("rollout", total=len(todo) * cfg.n)) as progress,
                ProgressDisplay(progress, bar=bar, logger=log, interval_s=progress_interval_s),
            ):
                for _, trajs in loop.iter_run(todo, cfg.n):
                    writer.write_group(trajs)
                    bar.update(1)
        finally:
            if own_loop:
                loop.close()
    wanted = {q.id for q in questions}
    trajectories = [t for t in read_records(out, Trajectory) if t.question_id in wanted]
    summary = summarize(trajectories)
    summary["data"] = cfg.data
    summary["backend"] = cfg.agent.backend.kind
    summary["model"] = cfg.agent.backend.model
    atomic_write_json(run_dir / out.with_suffix(".summary.json").name, summary)
    return summary
