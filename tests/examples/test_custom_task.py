"""The worked example under examples/custom_task trains and evaluates end to end from config
alone: a task declared in YAML (its own corpus and prompt examples) and a task class named by its
dotted path (its own answer check)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etagent.io import read_records
from etagent.records import Trajectory
from etagent.scoring.correctness import math_equal
from etagent.tasks import resolve_data
from tests.cli_helpers import invoke_ok

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_task"


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(EXAMPLE.parents[1])  # the example's configs name paths from the repository root


def test_yaml_task_trains_and_evaluates(tmp_path, tiny_model_path):
    data = resolve_data("examples/custom_task/capitals/task.yaml:train")
    assert data.task.name == "capitals" and len(data.questions()) == 12
    rl_dir, eval_dir = tmp_path / "rl", tmp_path / "eval"
    invoke_ok(
        "rl", "-c", str(EXAMPLE / "rl_capitals.yaml"), "--model", str(tiny_model_path),
        "--set", "max_steps=1", "--set", "threads=1", "--set", "logging.report_to=none",
        "--set", "agent.budget.max_new_tokens_per_call=16", "--set", "agent.budget.max_response_tokens=48",
        "--run-dir", str(rl_dir),
    )  # fmt: skip
    log = [json.loads(line) for line in (rl_dir / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1]
    assert (rl_dir / "model" / "config.json").exists()

    invoke_ok(
        "eval", "-c", str(EXAMPLE / "eval_capitals.yaml"), "--model", str(rl_dir / "model"),
        "--limit", "2", "--set", "agent.budget.max_new_tokens_per_call=16",
        "--set", "agent.budget.max_response_tokens=48", "--run-dir", str(eval_dir),
    )  # fmt: skip
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["datasets"]["capitals-dev"]["n"] == 2
    trajs = read_records(eval_dir / "datasets" / "capitals-dev" / "trajectories.jsonl", Trajectory)
    # the prompt carries the task's own example, the one that calls only the enabled search tool
    assert all("capital of Veldoria" in t.prompt_text and "<python>" not in t.prompt_text for t in trajs)


def test_yaml_task_search_reads_the_task_corpus(tmp_path):
    run_dir = tmp_path / "run"
    invoke_ok(
        "rollout", "--data", "examples/custom_task/capitals/task.yaml:dev", "--backend", "tests.plugins:ScriptBackend",
        "--set", "agent.backend.settings.text=<search>capital of Karvelle</search>",
        "--set", "agent.tools.enabled=[search]", "--set", "agent.tools.search.cache=false",
        "--limit", "1", "--run-dir", str(run_dir),
    )  # fmt: skip
    (traj,) = read_records(run_dir / "trajectories.jsonl", Trajectory)
    assert "Tamsworth" in traj.tool_calls[0].result  # found in examples/custom_task/capitals/corpus.jsonl


def test_python_task_class_by_dotted_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    ref = resolve_data("arithmetic:ArithmeticTask:dev")
    q = ref.questions()[0]
    run_dir = tmp_path / "eval"
    answer = f"<answer>The final answer is \\[ \\boxed{{{int(q.answer):,} apples}} \\]</answer>"
    invoke_ok(
        "eval", "--data", "arithmetic:ArithmeticTask:dev", "--limit", "1",
        "--backend", "tests.plugins:ScriptBackend", "--set", f"agent.backend.settings.text={answer}",
        "--set", "agent.tools.enabled=[python]", "--set", "agent.few_shot=1", "--run-dir", str(run_dir),
    )  # fmt: skip
    metrics = json.loads((run_dir / "metrics.json").read_text())
    (dataset,) = metrics["datasets"].values()
    # "12,345 apples" is right by the task's own check; the standard maths check says wrong
    assert not math_equal(f"{int(q.answer):,} apples", q.answer)
    assert dataset["correctness"] == 1.0
