"""The eval stage: expert rollouts on the tool world, metrics, reports, rescoring, resume, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import etagent.eval.stage as stage
from etagent.agent import AgentConfig
from etagent.backends.config import BackendConfig
from etagent.config import ConfigError, load_config
from etagent.eval import EvalConfig, EvalDataset, rescore, run_eval
from etagent.eval.stage import default_dataset_name
from etagent.io import DataError, read_records
from etagent.records import Trajectory

LIMIT = 8


def _expert_cfg(*datasets: EvalDataset) -> EvalConfig:
    return EvalConfig(
        datasets=list(datasets) or [EvalDataset(data="toolworld:dev", limit=LIMIT)],
        agent=AgentConfig(backend=BackendConfig(kind="expert"), sampling={"temperature": 0.0}),
    )


@pytest.fixture(scope="module")
def expert_run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    return run_dir, run_eval(_expert_cfg(), run_dir)


def _without_time(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "created"}


def test_expert_eval_writes_metrics_and_reports(expert_run):
    run_dir, metrics = expert_run
    trajs = read_records(run_dir / "datasets" / "toolworld-dev" / "trajectories.jsonl", Trajectory)
    assert len(trajs) == LIMIT
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    tw = metrics["datasets"]["toolworld-dev"]
    assert tw["n"] == LIMIT and tw["correctness"] == 1.0 and tw["exact_match"] == 1.0
    assert tw["format_valid"] == 1.0 and tw["at_min_tool_calls"] == 1.0 and tw["success_exec_rate"] == 1.0
    assert 0 < metrics["overall"]["Effi"] < 1  # correct answers after k > 1 calls earn 1/k
    assert metrics["model"] == "expert"
    assert len((run_dir / "scores.jsonl").read_text().splitlines()) == LIMIT
    md = (run_dir / "report.md").read_text()
    assert "## toolworld-dev" in md and "| correctness | 100.0 |" in md
    html = (run_dir / "report.html").read_text()
    assert 'id="radar"' in html and html.count('class="chart bars dataset-bars"') >= 5


def test_score_reproduces_the_metrics(expert_run, tmp_path):
    run_dir = shutil.copytree(expert_run[0], tmp_path / "copy")
    scores = (run_dir / "scores.jsonl").read_bytes()
    before = json.loads((run_dir / "metrics.json").read_text())
    (run_dir / "metrics.json").unlink()
    (run_dir / "scores.jsonl").unlink()
    again = rescore(run_dir, _expert_cfg())
    assert (run_dir / "scores.jsonl").read_bytes() == scores
    assert _without_time(again) == {**_without_time(before), "run": "copy"}


def test_resume_regenerates_reports_without_rolling_out(expert_run, tmp_path, monkeypatch):
    run_dir = shutil.copytree(expert_run[0], tmp_path / "run")
    path = run_dir / "datasets" / "toolworld-dev" / "trajectories.jsonl"
    lines = path.read_bytes()
    for name in ("report.md", "report.html"):
        (run_dir / name).unlink()

    def no_model(*args, **kwargs):
        raise AssertionError("nothing is left to generate: the model must not be loaded")

    monkeypatch.setattr(stage, "build_generator_for", no_model)
    monkeypatch.setattr(stage, "build_agent", no_model)
    metrics = run_eval(_expert_cfg(), run_dir)
    assert (run_dir / "report.md").exists() and (run_dir / "report.html").exists()
    assert path.read_bytes() == lines
    assert metrics["datasets"]["toolworld-dev"]["correctness"] == 1.0


def test_interrupted_eval_finishes_only_the_missing_questions(expert_run, tmp_path):
    run_dir = shutil.copytree(expert_run[0], tmp_path / "run")
    path = run_dir / "datasets" / "toolworld-dev" / "trajectories.jsonl"
    kept = path.read_text().splitlines()[:3]
    path.write_text("\n".join(kept) + "\n" + kept[0][:50])  # three done, one torn write
    run_eval(_expert_cfg(), run_dir)
    trajs = read_records(path, Trajectory)
    assert len(trajs) == LIMIT and len({t.question_id for t in trajs}) == LIMIT
    assert path.read_text().splitlines()[:3] == kept


def test_datasets_share_one_model_load(tmp_path, monkeypatch):
    loaded, agents = [], []
    real_generator, real_agent = stage.build_generator_for, stage.build_agent

    def counting_generator(backend, task):
        loaded.append(backend.kind)
        return real_generator(backend, task)

    def counting_agent(cfg, task, **kwargs):
        agents.append(kwargs["generator"])
        return real_agent(cfg, task, **kwargs)

    monkeypatch.setattr(stage, "build_generator_for", counting_generator)
    monkeypatch.setattr(stage, "build_agent", counting_agent)
    cfg = _expert_cfg(EvalDataset(data="toolworld:dev", limit=3), EvalDataset(data="toolworld:test", limit=2))
    metrics = run_eval(cfg, tmp_path / "run")
    assert (
        loaded == ["expert"] and len(agents) == 2 and agents[0] is agents[1]
    )  # one model, an agent per data set
    assert {k: v["n"] for k, v in metrics["datasets"].items()} == {"toolworld-dev": 3, "toolworld-test": 2}
    assert "## toolworld-test" in (tmp_path / "run" / "report.md").read_text()


def test_bad_run_directories_get_clear_errors(tmp_path):
    with pytest.raises(DataError, match="run directory does not exist"):
        rescore(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no datasets/<name>/trajectories\.jsonl; is this an `etagent eval`"):
        rescore(tmp_path / "empty")


def test_dataset_names_and_config_errors(tmp_path):
    assert default_dataset_name("toolworld:dev") == "toolworld-dev"
    assert default_dataset_name("../shared/data/benchmarks/hotpotqa/test.jsonl") == "hotpotqa-test"
    assert default_dataset_name("/data/my set.jsonl") == "my-set"
    cfg_file = tmp_path / "e.yaml"
    cfg_file.write_text("datasets:\n  - data: toolworld:dev\n  - data: toolworld:dev\n")
    with pytest.raises(ConfigError, match="unique"):
        load_config(EvalConfig, cfg_file)
    cfg_file.write_text("datasets:\n  - data: toolworld:dev\n    name: ../escape\n")
    with pytest.raises(ConfigError, match=r"datasets\.0\.name"):
        load_config(EvalConfig, cfg_file)
    with pytest.raises(ConfigError, match="datasets"):
        load_config(EvalConfig, None, ["datasets=[]"])


def test_shipped_configs_load():
    root = Path(__file__).resolve().parents[2] / "configs"
    tw = load_config(EvalConfig, root / "eval_toolworld.yaml")
    assert tw.agent.backend.model == "embedded" and tw.agent.few_shot == 3
    assert tw.datasets[0].data == "toolworld:dev"
    hp = load_config(EvalConfig, root / "eval_hotpotqa.yaml")
    assert hp.agent.tools.enabled == ["search"] and hp.agent.tools.search.corpus is None  # the task's
    assert hp.datasets[0].data == "configs/tasks/hotpotqa.yaml:test"
    assert hp.agent.few_shot == 0  # the task has no prompt examples of its own
    assert hp.datasets[0].dataset_name == "hotpotqa"


class _ScriptedJudge:
    """Stands in for LLMJudge: every trajectory with more than one tool call is 'not concise'."""

    model = "scripted-judge"

    def __init__(self):
        self.closed = False

    def judge_correctness(self, trajectories):
        return [True for _ in trajectories]

    def judge_conciseness(self, trajectories, votes=10):
        return [len(t.tool_calls) <= 1 for t in trajectories]

    def close(self):
        self.closed = True


def test_rescore_with_a_judge_reports_conciseness(expert_run, tmp_path, monkeypatch):
    from etagent.scoring.judge import JudgeConfig

    run_dir = shutil.copytree(expert_run[0], tmp_path / "run")
    judge = _ScriptedJudge()
    monkeypatch.setattr(stage.LLMJudge, "from_config", classmethod(lambda cls, cfg: judge))
    cfg = _expert_cfg().model_copy(update={"judge": JudgeConfig(name="scripted-judge")})
    metrics = rescore(run_dir, cfg)
    trajs = read_records(run_dir / "datasets" / "toolworld-dev" / "trajectories.jsonl", Trajectory)
    concise = sum(len(t.tool_calls) <= 1 for t in trajs) / len(trajs)
    assert metrics["judge"] == "scripted-judge" and judge.closed
    assert metrics["datasets"]["toolworld-dev"]["conciseness"] == pytest.approx(concise) and 0 < concise < 1
    assert metrics["overall"]["conciseness"] == pytest.approx(concise)
    md = (run_dir / "report.md").read_text()
    assert f"| conciseness (judge) | {100 * concise:.1f} |" in md and "scripted-judge" in md
