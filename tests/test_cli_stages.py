"""The training-side stage commands from the shell: flywheel (cold start), sft, pareto, errors."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from etagent.cli import app
from etagent.tasks import load_questions

runner = CliRunner()


def test_cold_start_flywheel_then_sft_then_pareto(tmp_path):
    fly = tmp_path / "fly"
    result = runner.invoke(app, ["flywheel", "--cold-start", "--limit", "6", "--run-dir", str(fly)])
    assert result.exit_code == 0, result.output
    examples = [json.loads(line) for line in (fly / "sft.jsonl").read_text().splitlines()]
    assert examples and [m["role"] for m in examples[0]["messages"]] == ["system", "user", "assistant"]

    sft = tmp_path / "sft"
    result = runner.invoke(
        app,
        [
            "sft",
            "--data",
            str(fly / "sft.jsonl"),
            "--model",
            "tiny",
            "--max-steps",
            "1",
            "--set",
            "grad_accum=1",
            "--run-dir",
            str(sft),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (sft / "model" / "config.json").exists()

    par = tmp_path / "par"
    result = runner.invoke(
        app,
        [
            "pareto",
            "--limit",
            "6",
            "-g",
            "3",
            "--set",
            "rollout.agent.backend.kind=expert",
            "--set",
            "rollout.agent.backend.expert.missing_rate=0.5",
            "--set",
            "selection.mixed_outcome_filter=off",
            "--set",
            "selection.budget=2",
            "--run-dir",
            str(par),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(load_questions(str(par / "stages" / "stage1.jsonl"))) == 2


def test_stage_commands_report_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "messages": []}\nnot json\n')
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "etagent.cli",
            "sft",
            "--data",
            str(bad),
            "--model",
            "tiny",
            "--run-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2, out.stderr
    assert "bad.jsonl" in out.stderr and "Traceback" not in out.stderr
