"""Failed tool calls are shown in every stage's summary, and a stage fails (after writing
everything) when their share passes ``max_tool_failure_rate``."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from etagent.eval.stage import EvalConfig, EvalDataset, run_eval
from etagent.pareto.stage import ParetoStageConfig, run_pareto
from etagent.records import Question, ToolCall, Trajectory
from etagent.report.format import terminal_table
from etagent.rollout.stage import ToolFailureError, check_tool_failures, tool_call_failed, tool_failures
from etagent.tools.python_tool import TOOL_FAILED
from etagent.tools.search.tool import EMPTY_QUERY

ETAGENT = str(Path(sys.executable).with_name("etagent"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search_down() -> list[str]:
    """Overrides that point the search tool at a port nobody listens on, without retries."""
    return [
        "agent.tools.search.backend=remote",
        f"agent.tools.search.url=http://127.0.0.1:{_closed_port()}",
        "agent.tools.search.retries=0",
    ]


def _rollout(tmp_path: Path, extra: list[str]) -> subprocess.CompletedProcess[str]:
    args = ["rollout", "--backend", "expert", "--data", "toolworld:train", "--n", "1", "--limit", "5"]
    args += ["--run-dir", str(tmp_path / "run")]
    for override in _search_down() + extra:
        args += ["--set", override]
    return subprocess.run([ETAGENT, *args], capture_output=True, text=True, timeout=300)


def _counts(run_dir: Path) -> tuple[int, int]:
    summary = json.loads((run_dir / "trajectories.summary.json").read_text())
    return summary["failed_tool_calls"], summary["tool_calls_run"]


def test_rollout_over_the_threshold_fails_after_writing_everything(tmp_path: Path) -> None:
    done = _rollout(tmp_path, ["max_tool_failure_rate=0.2"])
    assert done.returncode == 2, done.stderr
    run_dir = tmp_path / "run"
    lines = (run_dir / "trajectories.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(x)["question_id"] for x in lines}) == 5
    failed, run = _counts(run_dir)
    assert 0 < failed <= run and failed / run > 0.2
    assert re.search(rf"failed tool calls\s*│\s*{failed} of {run}", done.stderr), done.stderr
    message = done.stderr[done.stderr.index("error:") :]
    message = " ".join(message.split())  # the console wraps long lines
    assert f"{failed} of {run} tool calls failed" in message
    assert "the first: search(" in message and "Search failed" in message
    assert "--set max_tool_failure_rate=" in message
    assert str(run_dir) in message


def test_rollout_under_the_threshold_exits_0_and_still_shows_the_failures(tmp_path: Path) -> None:
    done = _rollout(tmp_path, ["max_tool_failure_rate=1"])
    assert done.returncode == 0, done.stderr
    failed, run = _counts(tmp_path / "run")
    assert failed > 0
    assert re.search(rf"failed tool calls\s*│\s*{failed} of {run}", done.stderr), done.stderr
    assert "error:" not in done.stderr


def _agent_search_down() -> dict[str, object]:
    url = f"http://127.0.0.1:{_closed_port()}"
    return {
        "backend": {"kind": "expert"},
        "tools": {"search": {"backend": "remote", "url": url, "retries": 0}},
    }


def test_eval_fails_after_its_metrics_and_reports_and_shows_the_failures(tmp_path: Path) -> None:
    cfg = EvalConfig(
        datasets=[EvalDataset(data="toolworld:dev", limit=4)],
        agent=_agent_search_down(),  # type: ignore[arg-type]
        conciseness_votes=0,
        max_tool_failure_rate=0.1,
    )
    with pytest.raises(ToolFailureError, match=r"eval: \d+ of \d+ tool calls failed") as e:
        run_eval(cfg, tmp_path)
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "report.html").exists()
    table = e.value.summary["datasets"]["toolworld-dev"]
    assert table["failed_tool_calls"] > 0
    assert json.loads((tmp_path / "metrics.json").read_text()) == e.value.summary
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(terminal_table("eval", e.value.summary["datasets"], e.value.summary["overall"]))
    shown = f"{table['failed_tool_calls']} of {table['tool_calls_run']}"
    assert re.search(rf"failed tool calls\s*│\s*{shown}\s*│\s*{shown}", console.export_text())

    cfg.max_tool_failure_rate = None  # the check off: the same run passes, counts still there
    metrics = run_eval(cfg, tmp_path)
    assert metrics["datasets"]["toolworld-dev"]["failed_tool_calls"] == table["failed_tool_calls"]


def test_pareto_fails_after_writing_its_stages_and_again_on_resume(tmp_path: Path) -> None:
    rollout = {"data": "toolworld:train", "limit": 3, "n": 2, "agent": _agent_search_down()}
    cfg = ParetoStageConfig.model_validate({"rollout": {**rollout, "max_tool_failure_rate": 0.1}})
    with pytest.raises(ToolFailureError, match=r"--set rollout\.max_tool_failure_rate="):
        run_pareto(cfg, tmp_path)
    assert (tmp_path / "stages" / "stages.json").exists()
    stored = json.loads((tmp_path / "pareto_summary.json").read_text())
    assert stored["failed_tool_calls"] > 0
    with pytest.raises(ToolFailureError):  # a resume checks the stored summary again
        run_pareto(cfg, tmp_path)
    cfg.rollout.max_tool_failure_rate = 1.0
    assert run_pareto(cfg, tmp_path)["failed_tool_calls"] == stored["failed_tool_calls"]


def _traj(*calls: ToolCall) -> Trajectory:
    q = Question(id="q", question="?", answer="a")
    return Trajectory(question_id="q", question=q, prompt_text="", prompt_ids=[], tool_calls=list(calls))


def test_which_calls_count_as_failed() -> None:
    def call(tool: str, result: str, status: str) -> ToolCall:
        return ToolCall(tool=tool, input="x", result=result, status=status)  # type: ignore[arg-type]

    assert tool_call_failed(call("search", "Search failed: x", "error"))
    assert tool_call_failed(call("search", "Search failed: x", "timeout"))
    assert tool_call_failed(call("calculator", "Tool calculator failed: ValueError: no", "error"))
    assert tool_call_failed(call("python", TOOL_FAILED, "error"))
    assert tool_call_failed(call("python", "Tool python failed: OSError: x", "error"))
    # the model's doing: its program's traceback or endless loop, an empty query, refused calls
    assert not tool_call_failed(call("python", "ZeroDivisionError: division by zero", "error"))
    assert not tool_call_failed(call("python", "Execution Timeout: the code ran longer than 5 s", "timeout"))
    assert not tool_call_failed(call("search", EMPTY_QUERY, "error"))
    assert not tool_call_failed(call("search", "(1) ...", "ok"))

    counts = tool_failures(
        [
            _traj(call("search", "Search failed: q1", "error"), call("search", "(1) ok", "ok")),
            _traj(call("search", "no more", "budget_exceeded"), call("foo", "unknown", "unknown_tool")),
        ]
    )
    assert counts == {
        "tool_calls_run": 2,
        "failed_tool_calls": 1,
        "first_tool_failure": "search('x') -> 'Search failed: q1'",
    }


def test_the_threshold_is_a_strict_upper_bound(tmp_path: Path) -> None:
    summary = {"tool_calls_run": 4, "failed_tool_calls": 2, "first_tool_failure": "f"}
    check_tool_failures(summary, 0.5, "rollout", tmp_path, "max_tool_failure_rate")  # 50% is allowed
    check_tool_failures(summary, None, "rollout", tmp_path, "max_tool_failure_rate")
    check_tool_failures({"tool_calls_run": 0, "failed_tool_calls": 0}, 0.0, "r", tmp_path, "s")
    with pytest.raises(ToolFailureError, match="2 of 4 tool calls failed") as e:
        check_tool_failures(summary, 0.49, "rollout", tmp_path, "max_tool_failure_rate")
    assert e.value.summary is summary


def test_flywheel_fails_after_writing_its_buffers_and_export(tmp_path: Path) -> None:
    from etagent.flywheel import FlywheelConfig, run_flywheel

    cfg = FlywheelConfig.model_validate(
        {
            "data": "toolworld:train",
            "limit": 2,
            "cold_start": {"enabled": True},
            "agent": {"tools": _agent_search_down()["tools"]},
            "max_tool_failure_rate": 0.1,
        }
    )
    with pytest.raises(ToolFailureError, match=r"flywheel: \d+ of \d+ tool calls failed") as e:
        run_flywheel(cfg, tmp_path)
    assert len((tmp_path / "buffers.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "sft.jsonl").exists()
    stored = json.loads((tmp_path / "flywheel.summary.json").read_text())
    assert stored["failed_tool_calls"] == e.value.summary["failed_tool_calls"] > 0


def _setting_value(cfg: object, setting: str) -> object:
    for part in setting.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_a_pipeline_stage_names_its_threshold_as_the_pipeline_config_spells_it(tmp_path: Path) -> None:
    from etagent.config import load_config
    from etagent.pipeline import PipelineConfig, run_pipeline

    cold_start = {"data": "toolworld:train", "limit": 2, "agent": {"tools": _agent_search_down()["tools"]}}
    cfg = PipelineConfig.model_validate({"cold_start_data": {**cold_start, "max_tool_failure_rate": 0.1}})
    with pytest.raises(ToolFailureError, match=r"--set cold_start_data\.max_tool_failure_rate=") as e:
        run_pipeline(cfg, tmp_path)
    assert (tmp_path / "01-cold-start-data" / "buffers.jsonl").exists()  # written before the error
    # each named key is one the pipeline's --set takes: the flywheel's, and the Pareto stage's nested one
    for error in (
        e.value,
        ToolFailureError(
            "x rollout.max_tool_failure_rate=0.5", {}, "rollout.max_tool_failure_rate"
        ).in_section("pareto"),
    ):
        loaded = load_config(PipelineConfig, overrides=[f"{error.setting}=0.9"])
        assert _setting_value(loaded, error.setting) == 0.9
    assert "pareto.rollout.max_tool_failure_rate=0.5" in str(error)
