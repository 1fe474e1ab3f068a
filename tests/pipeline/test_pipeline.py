"""The one-command pipeline on the tiny model: every stage runs, hands its model on, and resumes."""

from __future__ import annotations

import json

import pytest

import etagent.pipeline as pipeline_mod
from etagent.pipeline import STAGE_DONE, PipelineConfig, run_pipeline

SMALL_BUDGET = {"max_tool_calls": 2, "max_new_tokens_per_call": 16, "max_response_tokens": 48}


def _config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "base_model": "tiny",
            "cold_start_data": {"data": "toolworld:train", "limit": 6},
            "cold_start_sft": {"data": "", "max_steps": 1, "grad_accum": 1, "max_length": 512},
            "flywheel": {"data": "toolworld:train", "limit": 2, "rounds": 1, "agent": {"budget": SMALL_BUDGET},
                         "continuation_budget": SMALL_BUDGET},
            "sft": {"data": "", "max_steps": 1, "grad_accum": 1, "max_length": 512},
            "pareto": {
                "rollout": {"data": "toolworld:train", "limit": 3, "n": 2, "agent": {"budget": SMALL_BUDGET}},
                "selection": {"budget": 2, "mixed_outcome_filter": "off"},
            },
            "rl": {"num_generations": 2, "use_arpo": False, "arpo": {"n": 2, "initial_rollouts": 2},
                   "questions_per_step": 1, "micro_batch_size": 2, "max_steps": 1, "agent": {"budget": SMALL_BUDGET}},
            "eval": {"datasets": [{"data": "toolworld:dev", "limit": 2}], "agent": {"budget": SMALL_BUDGET}},
        }
    )


def test_pipeline_runs_every_stage_and_resumes_after_a_kill(tmp_path, monkeypatch):
    calls: dict[str, int] = {}

    def counted(name, fn, fail_once=False):
        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            if fail_once and calls[name] == 1:
                raise KeyboardInterrupt  # the user kills the run during RL
            return fn(*args, **kwargs)

        return wrapper

    for name in ("run_flywheel", "run_sft", "run_pareto", "run_eval"):
        monkeypatch.setattr(pipeline_mod, name, counted(name, getattr(pipeline_mod, name)))
    monkeypatch.setattr(pipeline_mod, "run_rl", counted("run_rl", pipeline_mod.run_rl, fail_once=True))

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(_config(), tmp_path)
    assert calls == {"run_flywheel": 2, "run_sft": 2, "run_pareto": 1, "run_rl": 1}
    assert not (tmp_path / "06-rl-1" / STAGE_DONE).exists()

    summary = run_pipeline(_config(), tmp_path)
    # finished stages were not run again; RL and the evaluations ran once more
    assert calls == {"run_flywheel": 2, "run_sft": 2, "run_pareto": 1, "run_rl": 2, "run_eval": 3}
    for stage in ("01-cold-start-data", "02-cold-start-sft", "03-flywheel", "04-sft", "05-pareto-1", "06-rl-1"):
        assert (tmp_path / stage / STAGE_DONE).exists(), stage
    for model_dir in ("02-cold-start-sft/model", "04-sft/model", "06-rl-1/model"):
        assert (tmp_path / model_dir / "config.json").exists(), model_dir
    # each stage started from the previous stage's model
    flywheel_cfg = json.loads((tmp_path / "03-flywheel" / "flywheel.summary.json").read_text())
    assert flywheel_cfg["cold_start"] is False
    evals = {p.name for p in (tmp_path / "07-eval").iterdir()}
    assert evals == {"base", "sft", "rl"}
    html = (tmp_path / "report.html").read_text()
    assert all(label in html for label in ("base", "sft", "rl"))
    assert summary["report"]["html"] == str(tmp_path / "report.html")

    # a third call finds everything done and only rewrites the report
    run_pipeline(_config(), tmp_path)
    assert calls["run_rl"] == 2 and calls["run_eval"] == 3
