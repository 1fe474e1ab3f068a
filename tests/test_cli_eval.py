"""`etagent eval`, `score` and `report` end to end: expert rollouts, rescoring, comparison, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from etagent.cli import app
from tests.cli_helpers import invoke_ok

runner = CliRunner()


def _etagent(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; a wide terminal so that messages are not wrapped."""
    env = {**os.environ, "COLUMNS": "500"}
    return subprocess.run(
        [sys.executable, "-m", "etagent.cli", *args], capture_output=True, text=True, timeout=timeout, env=env
    )


def _metrics(run_dir: Path) -> dict:
    m = json.loads((run_dir / "metrics.json").read_text())
    m.pop("created")
    return m


def test_eval_score_and_report_on_the_command_line(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    config = Path(__file__).resolve().parents[1] / "configs" / "eval_toolworld.yaml"
    result = runner.invoke(
        app, ["eval", "-c", str(config), "--backend", "expert", "--limit", "4", "--run-dir", str(a)]
    )
    assert result.exit_code == 0, result.output
    assert "correctness P" in result.output and "100.0" in result.output
    assert _metrics(a)["datasets"]["toolworld-dev"]["n"] == 4
    saved = (a / "config.yaml").read_text()
    assert "limit: 4" in saved and "kind: expert" in saved

    # --data replaces the data sets; redundant calls make run b less efficient than a
    invoke_ok(
        "eval", "--backend", "expert", "--data", "toolworld:dev", "--limit", "4",
        "--set", "agent.backend.expert.redundant_rate=1.0", "--run-dir", str(b),
    )  # fmt: skip
    assert _metrics(b)["overall"]["Effi"] < _metrics(a)["overall"]["Effi"]

    before = _metrics(a)
    (a / "metrics.json").unlink()
    result = runner.invoke(app, ["score", str(a)])  # reads the run's saved config
    assert result.exit_code == 0, result.output
    assert _metrics(a) == before

    out = tmp_path / "cmp" / "before_after.html"
    result = runner.invoke(app, ["report", str(a), str(b), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stdout
    md = out.with_suffix(".md").read_text()
    assert "| metric | a | b | Δ b − a |" in md and "| with redundant calls | 0.0 | 100.0 | +100.0 |" in md
    assert 'id="radar"' in out.read_text()


def test_eval_errors_are_one_line(tmp_path):
    out = _etagent("score", str(tmp_path / "nope"))
    assert out.returncode == 2 and "nope: run directory does not exist" in out.stderr
    assert "Traceback" not in out.stderr
    out = _etagent("report", str(tmp_path))
    assert out.returncode == 2 and "no metrics.json; run `etagent score" in out.stderr
    out = _etagent(
        "eval",
        "--backend",
        "expert",
        "--data",
        str(tmp_path / "missing.jsonl"),
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert out.returncode == 2 and "missing.jsonl" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
def test_eval_with_the_embedded_model(tmp_path):
    run_dir = tmp_path / "run"
    config = Path(__file__).resolve().parents[1] / "configs" / "eval_toolworld.yaml"
    result = runner.invoke(
        app,
        [
            "eval", "-c", str(config), "--limit", "2", "--set", "agent.budget.max_new_tokens_per_call=48",
            "--set", "agent.budget.max_response_tokens=160", "--run-dir", str(run_dir),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["model"] == "hf:embedded" and metrics["datasets"]["toolworld-dev"]["n"] == 2
    assert (run_dir / "report.html").exists() and (run_dir / "report.md").exists()
