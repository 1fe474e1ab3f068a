"""The calibration experiment (issue 5): fine-tuned only vs GRPO with sigma 0 vs full ET-Agent.

Starting from one fine-tuned model (e.g. a demo run's ``04-sft/model``), trains two RL policies on
the same Pareto-selected questions, one with the correctness-only reward (sigma_tool =
sigma_length = 0, the released scripts) and one with the full ET-Agent reward (0.2 / 0.5), then
evaluates the three models on the tool world's test split and prints them side by side:
correctness, Effi, redundant-call and insufficient-call rates, and model tokens. The method
claims higher Effi and fewer redundant calls at no loss of correctness; this prints what it
measures. Every stage resumes from ``--out``.

    .venv/bin/python benchmarks/bench_calibration.py --sft runs/demo-.../04-sft/model

Without ``--questions`` it first runs the Pareto stage with the fine-tuned model on ``--pool``
training questions (the demo's sampling settings, a larger budget) and trains on its first stage.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/cpu.md 3.3)

import argparse
import json
import random
from pathlib import Path

from etagent.demo import DemoConfig
from etagent.eval.stage import EvalDataset, run_eval
from etagent.pareto.stage import run_pareto
from etagent.rl.trl_engine import run_rl

ROWS = (
    ("correctness (F1)", "correctness"),
    ("Effi", "effi"),
    ("redundant-call rate", "redundant_call_rate"),
    ("insufficient-call rate", "insufficient_call_rate"),
    ("at minimal calls", "at_min_tool_calls"),
    ("tool calls / trajectory", "mean_tool_calls"),
    ("model tokens", "reasoning_length"),
)


# per-question values behind the paired comparison (one greedy trajectory per question)
PAIRED = (
    ("correctness (F1)", lambda r: r["correctness"]),
    ("Effi", lambda r: r["effi"] or 0.0),
    ("redundant-call rate", lambda r: float(r["redundant_calls"] > 0)),
    ("insufficient-call rate", lambda r: float(r["missing_calls"] > 0)),
    ("model tokens", lambda r: float(r["model_tokens"])),
)


def paired_differences(a: Path, b: Path, resamples: int = 2000) -> None:
    """Mean per-question difference a - b of each metric with a 95% paired-bootstrap interval:
    on 64 questions a rate moves by 1/64 per question, so the table alone hides the noise."""
    runs = [{r["question_id"]: r for r in map(json.loads, path.open())} for path in (a, b)]
    ids = sorted(set(runs[0]) & set(runs[1]))
    rng = random.Random(0)
    for label, value in PAIRED:
        diffs = [value(runs[0][i]) - value(runs[1][i]) for i in ids]
        means = sorted(sum(rng.choice(diffs) for _ in diffs) / len(diffs) for _ in range(resamples))
        lo, hi = means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]
        print(f"{label:26}{sum(diffs) / len(diffs):+10.3f}   [{lo:+.3f}, {hi:+.3f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="the fine-tuned model directory all runs start from")
    ap.add_argument("--questions", help="RL questions (a Pareto stage file); default: run the Pareto stage")
    ap.add_argument("--pool", type=int, default=32, help="training questions the Pareto stage samples")
    ap.add_argument("--out", default="runs/calibration", help="output directory (resumable)")
    ap.add_argument("--steps", type=int, default=12, help="RL steps per policy")
    ap.add_argument("--lr", type=float, default=1e-5, help="RL learning rate")
    ap.add_argument("--limit", type=int, default=128, help="test-split questions evaluated (128: all)")
    args = ap.parse_args()
    out = Path(args.out)
    demo = DemoConfig()

    questions = args.questions
    if questions is None:
        pareto = demo.pareto.model_copy(deep=True)
        pareto.rollout.agent = pareto.rollout.agent.with_model(args.sft)
        pareto.rollout.limit = args.pool
        pareto.selection.budget = args.pool // 2
        summary = run_pareto(pareto, out / "pareto")
        questions = str(out / "pareto" / summary["stages"][0])
        print(f"pareto: {summary['selected']} of {args.pool} questions selected -> {questions}")

    models = {"fine-tuned only": args.sft}
    for name, sigma_tool, sigma_length in (("GRPO sigma 0", 0.0, 0.0), ("ET-Agent", 0.2, 0.5)):
        rl = demo.rl.model_copy(deep=True)
        rl.agent = rl.agent.with_model(args.sft)
        # the stage file holds tool-world questions
        rl.data, rl.task, rl.max_steps, rl.learning_rate = questions, "toolworld", args.steps, args.lr
        rl.reward.sigma_tool, rl.reward.sigma_length = sigma_tool, sigma_length
        run_dir = out / name.replace(" ", "-")
        if not (run_dir / "model" / "config.json").exists():
            run_rl(rl, run_dir)
        models[name] = str(run_dir / "model")

    metrics = {}
    for name, model in models.items():
        ev = demo.eval.model_copy(deep=True)
        ev.datasets = [EvalDataset(data="toolworld:test", limit=args.limit)]
        ev.agent = ev.agent.with_model(model)
        eval_dir = out / f"eval-{args.limit}" / name.replace(" ", "-")
        done = eval_dir / "metrics.json"
        metrics[name] = json.loads(done.read_text()) if done.exists() else run_eval(ev, eval_dir)

    width = max(len(n) for n in models) + 2
    print(
        f"tool world test split, {args.limit} questions, greedy; RL: {args.steps} steps at lr {args.lr} "
        f"from {args.sft} on {questions}"
    )
    print(f"{'':26}" + "".join(f"{n:>{width}}" for n in models))
    for label, key in ROWS:
        cells = []
        for name in models:
            value = metrics[name]["datasets"]["toolworld-test"].get(key)
            cells.append(f"{'-' if value is None else f'{value:.3f}':>{width}}")
        print(f"{label:26}" + "".join(cells))
    for first, second in (("ET-Agent", "GRPO sigma 0"), ("ET-Agent", "fine-tuned only")):
        print(f"\n{first} - {second}, per question, mean and 95% paired-bootstrap interval:")
        paired_differences(
            *(out / f"eval-{args.limit}" / n.replace(" ", "-") / "scores.jsonl" for n in (first, second))
        )


if __name__ == "__main__":
    main()
