"""The comparisons over seeds (benchmarks/bench_e3tir.py, bench_calibration.py) print their tables
from kept results alone: the README's tables come from results committed in benchmarks/results,
made on machines whose run directories are gone. Here the results are made up; no model trains."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

from etagent.eval.seeds import keep_result, kept_facts
from etagent.io import atomic_write_json, atomic_write_jsonl
from etagent.scoring.metrics import METRICS_FILE, SCORES_FILE
from tests.eval.test_seeds import _score

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, argv: list[str], monkeypatch, module: Any = None) -> None:
    monkeypatch.setattr(sys, "argv", [name, *argv])
    (module or load_script(name)).main()


def make_eval(eval_dir: Path, correct: list[float], calls: int = 1) -> Path:
    """An eval directory of the tool world's test questions q0, q1, ... answered as ``correct``."""
    rows = [_score(f"q{i}", c, calls, 1, 100) for i, c in enumerate(correct)]
    atomic_write_jsonl(eval_dir / SCORES_FILE, rows)
    mean = sum(correct) / len(correct)
    metrics = {"correctness": mean, "effi": mean / calls, "redundant_call_rate": float(calls > 1)}
    atomic_write_json(eval_dir / METRICS_FILE, {"datasets": {"toolworld-test": metrics}})
    return eval_dir


def test_e3tir_report_reads_kept_results_and_keeps_finished_runs(tmp_path, monkeypatch, capsys):
    results, out = tmp_path / "results", tmp_path / "runs"
    sizes = {"base_model": "embedded", "limit": 4, "quick": False}
    keep_result(make_eval(tmp_path / "base", [0, 0, 0, 0]), results / "base", {"arm": "base", **sizes})
    cost = {"expert_trajectories": 10, "expert_tokens": 1000, "generated_tokens": 500, "trained_tokens": 100}
    for seed, sft_correct in ((0, [1, 1, 0, 0]), (1, [1, 0, 0, 0])):
        sft = make_eval(tmp_path / f"sft{seed}", sft_correct)
        keep_result(sft, results / f"seed{seed}" / "sft-rl", {"final_model": "rl", "cost": cost, **sizes})
        # zero-RL ran no RL stage: its result is the base model's
        keep_result(None, results / f"seed{seed}" / "zero-rl", {"final_model": "base", "cost": {}, **sizes})
    keep_result(make_eval(tmp_path / "e3", [1, 1, 1, 0]), results / "seed0" / "e3-tir", {
        "final_model": "rl", "cost": {**cost, "expert_tokens": 500}, **sizes})  # fmt: skip
    # seed 1's E3-TIR run finished in --out but was never kept: the report keeps it first
    run = out / "seed1" / "e3-tir"
    make_eval(run / "07-eval" / "rl", [0, 0, 0, 1])
    atomic_write_json(run / "pipeline.json", {"report": "report.html"})
    # seed 2 has only one arm: left out
    keep_result(tmp_path / "sft0", results / "seed2" / "sft-rl", {"final_model": "rl", "cost": cost, **sizes})

    argv = [
        "--report",
        "--out",
        str(out),
        "--results",
        str(results),
        "--limit",
        "4",
        "--seeds",
        "0",
        "1",
        "2",
    ]
    run_script("bench_e3tir", argv, monkeypatch)
    printed = capsys.readouterr().out
    assert kept_facts(results / "seed1" / "e3-tir")["final_model"] == "rl"
    assert "seed 2: not every arm has a result" in printed and "seeds [0, 1]" in printed
    assert "seed 0 zero-RL: no RL stage ran" in printed
    table = {line[:26].strip(): line[26:] for line in printed.splitlines()}
    # per arm over seeds 0 and 1: zero-RL 0 and 0, SFT-then-RL 0.5 and 0.25, E3-TIR 0.75 and 0.25
    zero, sft, e3 = (table["correctness (F1)"][30 * k : 30 * (k + 1)].split()[0] for k in range(3))
    assert (zero, sft, e3) == ("0.000", "0.375", "0.500")
    assert table["expert tokens"].split()[0] == "0"  # zero-RL used none
    assert "E3-TIR - SFT-then-RL" in printed and "4 questions x 2 seeds" in printed

    # results made at other sizes are not mixed in
    with pytest.raises(SystemExit, match="limit"):
        run_script("bench_e3tir", [*argv[:5], "--limit", "8", "--seeds", "0"], monkeypatch)

    # --report only reads: an --out that does not exist stays so
    no_runs = tmp_path / "no-runs"
    run_script("bench_e3tir", ["--report", "--out", str(no_runs), *argv[3:]], monkeypatch)
    assert "seeds [0, 1]" in capsys.readouterr().out and not no_runs.exists()


def test_calibration_report_reads_the_three_models_of_each_kept_seed(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results"
    settings = {"sft": "own warm-up", "stages": 2, "pool": 32, "steps": 12, "lr": 1e-5, "limit": 4}
    for seed in (0, 1, 2):
        for k, name in enumerate(("fine-tuned-only", "GRPO-sigma-0", "ET-Agent")):
            calls = 2 if name == "GRPO-sigma-0" else 1  # sigma 0 makes a redundant call
            keep_result(make_eval(tmp_path / f"{seed}{k}", [1, seed % 2, 0, 0], calls),
                        results / f"seed{seed}" / name, {"seed": seed, "model": name, **settings})  # fmt: skip
    argv = ["--report", "--out", str(tmp_path / "runs"), "--results", str(results), "--limit", "4"]
    run_script("bench_calibration", argv, monkeypatch)
    printed = capsys.readouterr().out
    assert "seeds [0, 1, 2]" in printed
    row = next(line for line in printed.splitlines() if line.startswith("redundant-call rate"))
    assert [row[26 + 28 * k : 26 + 28 * (k + 1)].split()[0] for k in range(3)] == ["0.000", "1.000", "0.000"]
    sections = printed.split("(b) ")
    assert sections[1].startswith("ET-Agent - GRPO sigma 0")
    assert "redundant-call rate" in sections[1] and "-1.000" in sections[1]
    for option in ("--steps", "--stages"):  # results of another design are not mixed in
        with pytest.raises(SystemExit, match=option[2:]):
            run_script("bench_calibration", [*argv, option, "3"], monkeypatch)


def test_calibration_policies_in_separate_processes_keep_the_seed_once_both_finished(
    tmp_path, monkeypatch, capsys
):
    """``--policies`` trains only the named policies (one per process, side by side); the process
    that finishes first keeps nothing and exits cleanly, the last one keeps all three results."""
    bench = load_script("bench_calibration")
    out, results, pipelines = tmp_path / "runs", tmp_path / "results", []

    def fake_warmup(seed, args, demo, seed_out):
        make_eval(seed_out / "warmup" / "07-eval" / "sft", [1, 0, 0, 0])
        return "fine-tuned-model"

    def fake_pipeline(cfg, run):
        assert cfg.base_model == "fine-tuned-model"
        pipelines.append((run.name, cfg.rl.reward.sigma_tool))
        make_eval(run / "07-eval" / "rl", [1, 1, 0, 0])
        atomic_write_json(run / "pipeline.json", {"report": "report.html"})

    monkeypatch.setattr(bench, "fine_tuned", fake_warmup)
    monkeypatch.setattr(bench, "run_pipeline", fake_pipeline)
    argv = ["--seeds", "0", "--out", str(out), "--results", str(results), "--limit", "4", "--threads", "1"]
    run_script("bench_calibration", [*argv, "--policies", "ET-Agent"], monkeypatch, bench)
    assert pipelines == [("ET-Agent", 0.2)]
    assert "the other policies' processes keep" in capsys.readouterr().out
    assert not (results / "seed0").exists()

    run_script("bench_calibration", [*argv, "--policies", "GRPO sigma 0"], monkeypatch, bench)
    assert pipelines[1:] == [("GRPO-sigma-0", 0.0)]
    assert "seeds [0]" in capsys.readouterr().out
    assert sorted(p.name for p in (results / "seed0").iterdir()) == [
        "ET-Agent",
        "GRPO-sigma-0",
        "fine-tuned-only",
    ]
