"""``etagent rollout``: questions in, trajectories out (JSONL), resumable.

Each question's n trajectories are written together in one append + fsync, so after an
interruption a question is either fully on disk or not at all (a torn last line is repaired);
on restart finished question ids are skipped and nothing is written twice.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field

from etagent.agent import AgentConfig, build_agent
from etagent.config import ConfigModel
from etagent.io import atomic_write_json, atomic_write_jsonl, read_records, repair_torn_tail, resumable_output
from etagent.loop.agent_loop import AgentLoop
from etagent.progress import LOG_INTERVAL_S, Progress, ProgressDisplay
from etagent.records import ToolCall, Trajectory
from etagent.rundir import LOG_FILE
from etagent.scoring.summary import summarize
from etagent.tasks import DataRef, Task, resolve_data

log = logging.getLogger("etagent.rollout")

TRAJECTORIES = "trajectories.jsonl"
SUMMARY = "summary.json"


DATA_HELP = "task:split (toolworld:dev), a task YAML file[:split], or a question file (JSONL, datasets)"
TASK_HELP = "the task of a question file given as data (its corpus, answer check, oracle, examples)"
MAX_TOOL_FAILURE_HELP = (
    "fail the stage (after writing everything) when more than this share of the tool calls run "
    "failed (a tool down or crashing, docs/run-directory.md 9.9); null: never"
)
#: the setting's name in every inference stage's config
MAX_TOOL_FAILURE_SETTING = "max_tool_failure_rate"


class RolloutConfig(ConfigModel):
    data: str = Field("toolworld:dev", description=DATA_HELP)
    task: str | None = Field(None, description=TASK_HELP)
    limit: int | None = Field(None, ge=1, description="first N questions only")
    n: int = Field(1, ge=1, description="trajectories per question")
    agent: AgentConfig = Field(default_factory=AgentConfig)
    output: str = Field(TRAJECTORIES, description="file name inside the run directory")
    max_tool_failure_rate: float | None = Field(0.5, ge=0, le=1, description=MAX_TOOL_FAILURE_HELP)

    def data_ref(self) -> DataRef:
        return resolve_data(self.data, self.task)


# -- tool failures -------------------------------------------------------------------------------

#: statuses of a call the tool did not answer; refused calls (budget_exceeded, unknown_tool) were
#: never run, and ``limit`` is the model's code hitting a sandbox limit
_FAILED_STATUSES = ("error", "timeout")
#: the python tool's results with status error/timeout are the model's program failing (a
#: traceback, an endless loop), except this text: the sandbox could not run the code
_PROGRAM_TOOLS = ("python",)


def tool_call_failed(call: ToolCall) -> bool:
    """Whether the tool itself failed on this call (its backend unreachable, a crash, a timeout),
    as opposed to answering it: a search that failed or timed out, any tool that raised (the agent
    loop's "Tool <name> failed: ..."), a python call the sandbox could not run. A traceback of the
    model's own program and an empty search query are answers, not failures."""
    if call.status not in _FAILED_STATUSES:
        return False
    if call.tool in _PROGRAM_TOOLS:
        from etagent.tools.python_tool import TOOL_FAILED

        return call.result == TOOL_FAILED or call.result.startswith(f"Tool {call.tool} failed:")
    from etagent.tools.search.tool import EMPTY_QUERY

    return call.result != EMPTY_QUERY


def tool_failures(trajectories: Iterable[Trajectory]) -> dict[str, Any]:
    """The tool calls run (refused ones left out), how many failed (:func:`tool_call_failed`) and
    the first failure, ``tool(input) -> result``; the summaries' ``tool_calls_run``,
    ``failed_tool_calls`` and ``first_tool_failure`` (docs/run-directory.md 9.9)."""
    run = failed = 0
    first: str | None = None
    for traj in trajectories:
        for call in traj.tool_calls:
            if call.status in ("budget_exceeded", "unknown_tool"):
                continue
            run += 1
            if tool_call_failed(call):
                failed += 1
                if first is None:
                    first = f"{call.tool}({_clip(call.input)!r}) -> {_clip(call.result)!r}"
    return {"tool_calls_run": run, "failed_tool_calls": failed, "first_tool_failure": first}


def _clip(text: str, chars: int = 200) -> str:
    text = text.strip()
    return text if len(text) <= chars else text[:chars] + "..."


class ToolFailureError(RuntimeError):
    """A stage whose share of failed tool calls passed its threshold; everything it produced is
    written. ``summary``: the summary it wrote, for the command line to print before the error."""

    def __init__(self, message: str, summary: dict[str, Any], setting: str = "") -> None:
        super().__init__(message)
        self.summary = summary
        self.setting = setting

    def in_section(self, section: str) -> ToolFailureError:
        """The same error for the stage run as ``section`` of a larger config (the pipeline's):
        the threshold it names becomes ``section.<setting>``, the key ``--set`` takes there."""
        setting = f"{section}.{self.setting}"
        message = str(self).replace(f"{self.setting}=", f"{setting}=")
        return ToolFailureError(message, self.summary, setting)


def check_tool_failures(
    summary: dict[str, Any], max_rate: float | None, stage: str, run_dir: Path, setting: str
) -> None:
    """Raise :class:`ToolFailureError` when ``summary``'s failed tool calls are more than
    ``max_rate`` of those run (None: never). ``setting``: the threshold's key path in the stage's
    config, named in the message."""
    run, failed = summary.get("tool_calls_run") or 0, summary.get("failed_tool_calls") or 0
    if max_rate is None or not run or failed / run <= max_rate:
        return
    raise ToolFailureError(
        f"{stage}: {failed} of {run} tool calls failed ({failed / run:.0%}, more than "
        f"{setting}={max_rate:g}); the first: {summary.get('first_tool_failure')}. "
        f"Everything produced is kept in {run_dir} (the reasons are in its {LOG_FILE}). Fix the tool "
        "(is the retrieval server up?) and run again in a new run directory (a resume keeps the "
        f"trajectories with failed calls), or allow more failures with --set {setting}=<0..1> "
        "(null: no check).",
        summary,
        setting,
    )


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
    summary.update(tool_failures(trajectories))
    atomic_write_json(run_dir / out.with_suffix(".summary.json").name, summary)
    check_tool_failures(summary, cfg.max_tool_failure_rate, "rollout", run_dir, MAX_TOOL_FAILURE_SETTING)
    return summary
