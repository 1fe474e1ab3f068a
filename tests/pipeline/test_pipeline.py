"""The one-command pipeline on the tiny model: every stage runs, hands its model on, and resumes."""

from __future__ import annotations

import json

import pytest

import etagent.pipeline as pipeline_mod
from etagent.config import dump_config
from etagent.pipeline import STAGE_DONE, PipelineConfig, run_pipeline
from tests.cli_helpers import invoke_ok

SMALL_BUDGET = {"max_tool_calls": 2, "max_new_tokens_per_call": 16, "max_response_tokens": 48}


def _config() -> PipelineConfig:
    return PipelineConfig.model_validate(
        {
            "base_model": "tiny",
            "cold_start_data": {"data": "toolworld:train", "limit": 6},
            "cold_start_sft": {"data": "", "max_steps": 1, "grad_accum": 1, "max_length": 512},
            "flywheel": {
                "data": "toolworld:train",
                "limit": 2,
                "rounds": 1,
                "agent": {"budget": SMALL_BUDGET},
                "continuation_budget": SMALL_BUDGET,
            },
            "sft": {"data": "", "max_steps": 1, "grad_accum": 1, "max_length": 512},
            "pareto": {
                "rollout": {"data": "toolworld:train", "limit": 3, "n": 2, "agent": {"budget": SMALL_BUDGET}},
                "selection": {"budget": 2, "mixed_outcome_filter": "off"},
            },
            "rl": {
                "num_generations": 2,
                "use_arpo": False,
                "arpo": {"n": 2, "initial_rollouts": 2},
                "questions_per_step": 1,
                "micro_batch_size": 2,
                "max_steps": 1,
                "agent": {"budget": SMALL_BUDGET},
            },
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
    for stage in (
        "01-cold-start-data",
        "02-cold-start-sft",
        "03-flywheel",
        "04-sft",
        "05-pareto-1",
        "06-rl-1",
    ):
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

    # finished training stages keep their model, not their checkpoints (the pipeline's default)
    for stage in ("02-cold-start-sft", "04-sft", "06-rl-1"):
        assert not (tmp_path / stage / "checkpoints").exists(), stage

    # the end of `etagent pipeline` (here on the finished run): the models' results side by side,
    # the time of each stage and the run directory's size
    config_file = tmp_path.parent / f"{tmp_path.name}-pipeline.yaml"
    config_file.write_text(dump_config(_config()))
    out = invoke_ok("pipeline", "-c", str(config_file), "--run-dir", str(tmp_path)).output
    assert calls["run_rl"] == 2 and calls["run_eval"] == 3
    results = out[out.index("results: toolworld-dev") : out.index("stage times")]
    header = next(line for line in results.splitlines() if "metric" in line)
    assert [c.strip() for c in header.strip("│┃ ").split("┃")][1:] == ["base", "sft", "rl"]
    assert "correctness P (F1)" in results and "trajectories" in results
    times = out[out.index("stage times") : out.index("run directory")]
    for stage in ("01-cold-start-data", "04-sft", "06-rl-1", "07-eval/rl", "total"):
        assert stage in times, stage
    assert f"run directory: {tmp_path} (" in out.replace("\n", "") and " on disk)" in out


def test_pipeline_with_the_e3_warmup_instead_of_sft(tmp_path):
    """warmup: e3 replaces cold start, flywheel and SFT by the E3-TIR warm-up (RL on mixed expert
    and own experience, from the base model); its model is evaluated as "e3" and its curves reach the report."""
    cfg = PipelineConfig.model_validate(
        {
            "base_model": "tiny",
            "warmup": "e3",
            "e3_warmup": {
                "data": "toolworld:train",
                "limit": 2,
                "warmup": {"method": "e3", "max_expert_share": 1.0, "min_self": 1},
                "use_arpo": False,
                "num_generations": 2,
                "arpo": {"n": 2, "initial_rollouts": 1},
                "questions_per_step": 2,
                "micro_batch_size": 2,
                "max_steps": 1,
                "threads": 1,
                "agent": {
                    # short expert trajectories: they must fit the budget
                    "tools": {"enabled": ["search", "python"], "search": {"top_k": 1, "max_doc_chars": 160}},
                    "budget": {
                        "max_tool_calls": 3,
                        "max_new_tokens_per_call": 200,
                        "max_response_tokens": 360,
                    },
                },
            },
            "curriculum_stages": 0,
            "eval": {"datasets": [{"data": "toolworld:dev", "limit": 1}], "agent": {"budget": SMALL_BUDGET}},
        }
    )
    run_pipeline(cfg, tmp_path)
    assert not (tmp_path / "04-sft").exists() and not (tmp_path / "01-cold-start-data").exists()
    summary = json.loads((tmp_path / "02-e3-warmup" / STAGE_DONE).read_text())
    assert summary["e3"]["experts_used"] > 0
    assert (tmp_path / "02-e3-warmup" / "model" / "config.json").exists()
    assert {p.name for p in (tmp_path / "07-eval").iterdir()} == {"base", "e3"}
    html = (tmp_path / "report.html").read_text()
    assert "02-e3-warmup" in html
    with pytest.raises(ValueError, match=r"e3_warmup\.warmup must be set"):
        PipelineConfig.model_validate({"warmup": "e3", "e3_warmup": {"warmup": None}})


def _seeded_zero_rl(seed: int):
    """The demo's zero-RL arm at tiny size, every random stage seeded (ARPO branching on)."""
    from etagent.demo import seeded_demo_config

    agent = {"budget": SMALL_BUDGET}
    return seeded_demo_config(
        seed,
        threads=1,
        overrides={
            "base_model": "tiny",
            "warmup": "none",
            "curriculum_stages": 1,
            "eval_base": False,
            "pareto": {
                "rollout": {"limit": 2, "n": 2, "agent": agent},
                "selection": {"budget": 2, "mixed_outcome_filter": "off"},
            },
            "rl": {
                "num_generations": 4,
                "use_arpo": True,
                "micro_batch_size": 4,
                "questions_per_step": 1,
                "arpo": {"n": 4, "initial_rollouts": 2, "reserve_rollouts": 2},
                "max_steps": 2,
                "agent": agent,
            },
            "eval": {"datasets": [{"data": "toolworld:dev", "limit": 2}], "agent": agent},
        },
    )


def _what_the_run_made(run) -> dict[str, list]:
    """Every sampled text, every training metric but times, every evaluated answer."""
    rows = lambda path: [json.loads(line) for line in path.read_text().splitlines()]  # noqa: E731
    return {
        "pareto": [
            (g["question_id"], g["segments"], g["prediction"])
            for g in rows(run / "05-pareto-1" / "groups.jsonl")
        ],
        "rl": [
            {k: v for k, v in r.items() if "seconds" not in k and "time" not in k}
            for r in rows(run / "06-rl-1" / "train_log.jsonl")
        ],
        "eval": [
            (t["question_id"], t["segments"], t["prediction"])
            for t in rows(run / "07-eval" / "rl" / "datasets" / "toolworld-dev" / "trajectories.jsonl")
        ],
    }


def test_a_seeds_run_does_not_depend_on_what_ran_before_it_in_the_process(tmp_path):
    """Comparisons over seeds run several seeds in one process: a seed's results must be the same
    whether it runs first or after another seed (no random or cached state outlives a run)."""
    run_pipeline(_seeded_zero_rl(1), tmp_path / "first")
    run_pipeline(_seeded_zero_rl(0), tmp_path / "other-seed")
    run_pipeline(_seeded_zero_rl(1), tmp_path / "again")
    first = _what_the_run_made(tmp_path / "first")
    assert len(first["rl"]) == 2 and first["pareto"] and first["eval"]
    assert _what_the_run_made(tmp_path / "again") == first
    assert _what_the_run_made(tmp_path / "other-seed")["pareto"] != first["pareto"]  # the seed matters
