"""The CLI end to end on the embedded task: real tools, the expert policy, resume, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etagent.cli import app
from etagent.io import read_records
from etagent.records import Trajectory
from tests.cli_helpers import invoke_ok

runner = CliRunner()


def _etagent(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The installed console entry point, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "etagent.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def _assert_aligned(tokenizer, trajs: list[Trajectory]) -> None:
    """Token ids, masks and text agree (no mask drift) on trajectories read back from disk."""
    for t in trajs:
        assert tokenizer.decode(t.response_ids, skip_special_tokens=False) == t.response_text
        assert len(t.response_mask) == len(t.response_ids)
        masked = [i for i, m in zip(t.response_ids, t.response_mask, strict=True) if m == 0]
        assert tokenizer.decode(masked, skip_special_tokens=False) == "".join(
            s.text for s in t.segments if s.role == "tool"
        )


def test_expert_rollout_is_correct_at_minimal_calls_with_real_tools(tmp_path, tokenizer):
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, ["rollout", "--backend", "expert", "--data", "toolworld:dev", "--run-dir", str(run_dir)]
    )
    assert result.exit_code == 0, result.output
    trajs = read_records(run_dir / "trajectories.jsonl", Trajectory)
    summary = json.loads((run_dir / "trajectories.summary.json").read_text())
    assert summary["exact_match"] == 1.0
    assert summary["format_valid"] == 1.0
    assert summary["at_min_tool_calls"] == 1.0
    assert summary["tool_call_status"].get("ok", 0) == sum(len(t.tool_calls) for t in trajs)
    used = {c.tool for t in trajs for c in t.tool_calls}
    assert used == {"search", "python"}
    # the results really come from the tools: search returns corpus passages, python prints
    for t in trajs:
        for call in t.tool_calls:
            assert call.result and call.status == "ok"
            if call.tool == "python":
                assert call.result.strip().lstrip("-").replace(".", "").isdigit()
    assert (run_dir / "config.yaml").exists()
    _assert_aligned(tokenizer, trajs)

    # a second invocation on the same run directory has nothing left to do and duplicates nothing
    again = runner.invoke(app, ["rollout", "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert len(read_records(run_dir / "trajectories.jsonl", Trajectory)) == len(trajs)


def test_expert_with_redundant_and_missing_calls(tmp_path):
    run_dir = tmp_path / "run"
    invoke_ok(
        "rollout", "--backend", "expert", "--data", "toolworld:dev", "--limit", "16",
        "--set", "agent.backend.expert.redundant_rate=1.0", "--run-dir", str(run_dir),
    )  # fmt: skip
    summary = json.loads((run_dir / "trajectories.summary.json").read_text())
    assert summary["redundant_call_rate"] == 1.0 and summary["exact_match"] == 1.0


def test_tool_commands_print_what_the_agent_sees(tmp_path):
    code = tmp_path / "c.py"
    code.write_text("x = 6\nx * 7\n")
    out = _etagent("tool", "python", "--code-file", str(code))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    bad = tmp_path / "bad.py"
    bad.write_text("1/0\n")
    out = _etagent("tool", "python", "--code-file", str(bad))
    assert out.returncode == 1 and "ZeroDivisionError" in out.stdout

    from etagent.tasks.toolworld import load_split

    q = next(q for q in load_split("dev") if q.meta["min_search"] >= 1)
    query = q.meta["plan"][0]["query"]
    out = _etagent("tool", "search", "--query", query)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n\n") >= 1  # several passages, blank-line separated


def test_bad_input_gets_a_clear_error(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "question": "q?", "answer": "x"}\n{"id": "b", "answer": "y"}\n')
    out = _etagent("rollout", "--backend", "expert", "--data", str(bad), "--run-dir", str(tmp_path / "r"))
    assert out.returncode == 2
    assert f"{bad}:2" in out.stderr and "question" in out.stderr
    assert "Traceback" not in out.stderr

    out = _etagent("rollout", "--set", "agent.budget.max_tool_calls=lots", "--run-dir", str(tmp_path / "r2"))
    assert out.returncode == 2 and "agent.budget.max_tool_calls" in out.stderr

    out = _etagent(
        "rollout", "--backend", "openai", "--model", "tiny", "--limit", "1", "--run-dir", str(tmp_path / "r4"),
        "--set", "agent.backend.openai.base_url=http://127.0.0.1:9/v1", "--set", "agent.backend.openai.max_retries=0",
    )  # fmt: skip
    assert out.returncode == 2 and "127.0.0.1:9" in out.stderr and "Traceback" not in out.stderr

    out = _etagent(
        "rollout",
        "--model",
        str(tmp_path / "no-such-model"),
        "--limit",
        "1",
        "--run-dir",
        str(tmp_path / "r3"),
    )
    assert out.returncode == 2 and "no-such-model" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
def test_embedded_model_rollout_writes_real_trajectories(tmp_path, tokenizer):
    run_dir = tmp_path / "run"
    invoke_ok(
        "rollout", "--model", "embedded", "--data", "toolworld:dev", "--limit", "3", "--few-shot", "2",
        "--set", "agent.sampling.temperature=0", "--set", "agent.budget.max_new_tokens_per_call=64",
        "--set", "agent.budget.max_response_tokens=256", "--run-dir", str(run_dir),
    )  # fmt: skip
    trajs = read_records(run_dir / "trajectories.jsonl", Trajectory)
    assert len(trajs) == 3
    # few-shot prompted, the 135M model writes the tool format and its calls are executed
    assert sum(len(t.tool_calls) for t in trajs) >= 1
    _assert_aligned(tokenizer, trajs)
    assert Path(run_dir / "trajectories.summary.json").exists()
