"""Error paths of `etagent rl`, `pipeline` and `demo`: a bad config field, a missing config or data
file, a missing model directory. Each ends with exit status 2 and one clear line naming the field
or the file, without a traceback, and before any heavy work: no stage of a pipeline has run, no
model is loaded. Run in-process through the real entry point (``etagent.cli.main``) for speed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from etagent.cli import main


@pytest.fixture
def etagent(capsys, monkeypatch):
    """``etagent ARGS...`` as the console script runs it: (exit status, stderr on one line)."""
    monkeypatch.setenv("COLUMNS", "400")  # rich wraps at the terminal width; keep paths whole

    def run(*args: str) -> tuple[int, str]:
        monkeypatch.setattr(sys, "argv", ["etagent", *args])
        with pytest.raises(SystemExit) as ended:
            main()
        err = capsys.readouterr().err
        return ended.value.code, " ".join(err.split())

    return run


def _assert_clear(code: int, err: str, *names: str) -> None:
    assert code == 2, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    for name in names:
        assert name in err, err


def _stages_run(run_dir: Path) -> list[str]:
    """What a pipeline left in its run directory besides its config and log."""
    if not run_dir.exists():
        return []
    return sorted(p.name for p in run_dir.iterdir() if p.name not in ("config.yaml", "log.txt"))


@pytest.mark.parametrize("command", ["rl", "pipeline", "demo"])
def test_unknown_config_field(etagent, tmp_path, command):
    field = "rl.max_stepz" if command != "rl" else "max_stepz"
    code, err = etagent(command, "--set", f"{field}=3", "--run-dir", str(tmp_path / "r"))
    _assert_clear(code, err, field, "Extra inputs are not permitted")
    assert _stages_run(tmp_path / "r") == []


@pytest.mark.parametrize("command", ["rl", "pipeline", "demo"])
def test_invalid_value_in_a_config_file(etagent, tmp_path, command):
    config = tmp_path / "bad.yaml"
    config.write_text("max_steps: 0\n" if command == "rl" else "curriculum_stages: -1\n")
    code, err = etagent(command, "-c", str(config), "--run-dir", str(tmp_path / "r"))
    _assert_clear(code, err, "bad.yaml", "max_steps" if command == "rl" else "curriculum_stages")


@pytest.mark.parametrize("command", ["rl", "pipeline", "demo"])
def test_missing_config_file(etagent, tmp_path, command):
    code, err = etagent(command, "-c", str(tmp_path / "nowhere.yaml"), "--run-dir", str(tmp_path / "r"))
    _assert_clear(code, err, f"{tmp_path / 'nowhere.yaml'} does not exist")


def test_rl_missing_data_file(etagent, tmp_path):
    missing = tmp_path / "stage1.jsonl"
    code, err = etagent("rl", "--data", str(missing), "--task", "toolworld", "--run-dir", str(tmp_path / "r"))
    _assert_clear(code, err, str(missing))
    code, err = etagent("rl", "--data", str(missing), "--run-dir", str(tmp_path / "r2"))
    _assert_clear(code, err, str(missing), "no such file")


def test_rl_missing_model(etagent, tmp_path):
    code, err = etagent("rl", "--model", str(tmp_path / "no-model"), "--run-dir", str(tmp_path / "r"))
    _assert_clear(code, err, f"model '{tmp_path / 'no-model'}' is not a local directory")
    assert not (tmp_path / "r" / "checkpoints").exists()


@pytest.mark.parametrize("command", ["pipeline", "demo"])
@pytest.mark.parametrize(
    "setting",
    ["flywheel.data", "pareto.rollout.data", "eval.datasets.0.data", "cold_start_data.data"],
)
def test_pipeline_missing_data_file_fails_before_any_stage(etagent, tmp_path, command, setting):
    missing = tmp_path / "questions.jsonl"
    run_dir = tmp_path / "r"
    code, err = etagent(command, "--set", f"{setting}={missing}", "--run-dir", str(run_dir))
    _assert_clear(code, err, str(missing))
    assert _stages_run(run_dir) == []  # before: minutes of cold start ran first


@pytest.mark.parametrize("command", ["pipeline", "demo"])
def test_pipeline_missing_model_fails_before_any_stage(etagent, tmp_path, command):
    run_dir = tmp_path / "r"
    code, err = etagent(command, "--set", f"base_model={tmp_path / 'no-model'}", "--run-dir", str(run_dir))
    _assert_clear(code, err, f"model '{tmp_path / 'no-model'}' is not a local directory")
    assert _stages_run(run_dir) == []
