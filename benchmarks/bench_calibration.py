"""The calibration experiment (issue 5): fine-tuned only vs GRPO with sigma 0 vs full ET-Agent, over seeds.

Per seed N, in ``--out/seed<N>``: the demo's supervised warm-up (cold start, flywheel, SFT; every
stage seeded with N, etagent.demo.seeded_demo_config) makes the fine-tuned model; the Pareto stage
samples ``--pool`` training questions with it and selects the RL questions; two RL policies are
trained from it on them with the same seed, one with the correctness-only reward (sigma_tool =
sigma_length = 0, the released scripts) and one with the full ET-Agent reward (0.2 / 0.5); the
three models are evaluated greedily on the tool world's test split. The method claims higher Effi
and fewer redundant calls at no loss of correctness; this prints what it measures:

(a) per model, the mean over seeds of correctness, Effi, redundant- and insufficient-call rates,
calls and model tokens, with 95% t-intervals across seeds (etagent.eval.seeds);
(b) ET-Agent - GRPO sigma 0 and ET-Agent - fine-tuned only per question, pooled over seeds, with
95% paired-bootstrap intervals.

Every stage resumes from ``--out``. Each finished seed's three results (eval metrics, scores and
the run's settings) are kept in ``--results`` (default ``--out/results``; etagent.eval.seeds.
keep_result), kilobytes a seed: the README's tables come from ``benchmarks/results/calibration``,
committed; ``--report`` trains nothing and prints the tables of the seeds kept there. ``--sft MODEL`` takes the fine-tuned models from elsewhere:
one model for every seed (only RL's randomness varies), or, with ``{seed}`` in the path, each
seed's own (e.g. the SFT-then-RL arms of benchmarks/bench_e3tir.py, the same seeded warm-up).

    .venv/bin/python benchmarks/bench_calibration.py --seeds 0 1 2 --out runs/calibration   # CPU: hours
    .venv/bin/python benchmarks/bench_calibration.py --sft 'runs/e3tir/seed{seed}/sft-rl/04-sft/model'
    .venv/bin/python benchmarks/bench_calibration.py --sft runs/demo-.../04-sft/model --seeds 0
    .venv/bin/python benchmarks/bench_calibration.py --report --results benchmarks/results/calibration
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/cpu.md 3.3)

import argparse
import time
from pathlib import Path
from typing import Any

from etagent.demo import DemoConfig, seeded_demo_config
from etagent.eval.seeds import (
    across_seeds,
    keep_result,
    kept_facts,
    paired_differences,
    read_metrics,
    read_scores,
)
from etagent.eval.stage import EvalDataset, run_eval
from etagent.pareto.stage import run_pareto
from etagent.pipeline import run_pipeline
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


MODELS = ("fine-tuned only", "GRPO sigma 0", "ET-Agent")
#: RL policy -> (sigma_tool, sigma_length)
REWARDS = {"GRPO sigma 0": (0.0, 0.0), "ET-Agent": (0.2, 0.5)}
PAIRS = (("ET-Agent", "GRPO sigma 0"), ("ET-Agent", "fine-tuned only"))


def slug(name: str) -> str:
    return name.replace(" ", "-")


def eval_dirs(seed: int, args: argparse.Namespace) -> dict[str, Path]:
    """Where each of :data:`MODELS` is evaluated: the fine-tuned model by the warm-up's pipeline,
    unless it comes from ``--sft``."""
    out = Path(args.out) / f"seed{seed}"
    dirs = {name: out / f"eval-{args.limit}" / slug(name) for name in MODELS}
    if not args.sft:
        dirs[MODELS[0]] = out / "warmup" / "07-eval" / "sft"
    return dirs


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every kept result of one comparison must share."""
    return {
        "sft": args.sft or "own warm-up",
        "pool": args.pool,
        "steps": args.steps,
        "lr": args.lr,
        "limit": args.limit,
    }


def keep_seed(seed: int, args: argparse.Namespace, results: Path) -> bool:
    """Keep a seed's three results once they are all evaluated; False until then."""
    dirs = eval_dirs(seed, args)
    if not all((d / "metrics.json").is_file() for d in dirs.values()):
        return False
    for name, eval_dir in dirs.items():
        dest = results / f"seed{seed}" / slug(name)
        if kept_facts(dest) is None:
            keep_result(eval_dir, dest, {"seed": seed, "model": name, **settings(args)})
    return True


def fine_tuned(seed: int, args: argparse.Namespace, demo: DemoConfig, out: Path) -> str:
    """The seed's fine-tuned model: the demo's supervised warm-up seeded with ``seed`` (evaluated
    on the test split by the same pipeline), or ``--sft``."""
    if args.sft:
        model = args.sft.format(seed=seed)
        if not (Path(model) / "config.json").is_file():
            raise SystemExit(f"--sft: {model} is not a model directory (no config.json)")
        return model
    run_pipeline(demo, out / "warmup")
    return str(out / "warmup" / "04-sft" / demo.sft.output)


def run_seed(seed: int, args: argparse.Namespace) -> None:
    """Every stage of one seed (each resumes), up to the eval of each of :data:`MODELS`."""
    out = Path(args.out) / f"seed{seed}"
    eval_split = {"datasets": [{"data": "toolworld:test", "limit": args.limit}]}
    # curriculum_stages 0: the pipeline stops after the warm-up and evaluates its model
    demo = seeded_demo_config(
        seed, args.threads, {"curriculum_stages": 0, "eval_base": False, "eval": eval_split}
    )
    sft = fine_tuned(seed, args, demo, out)

    questions = args.questions
    if questions is None:
        pareto = demo.pareto.model_copy(deep=True)
        pareto.rollout.agent = pareto.rollout.agent.with_model(sft)
        pareto.rollout.limit = args.pool
        pareto.selection.budget = args.pool // 2
        summary = run_pareto(pareto, out / "pareto")
        questions = str(out / "pareto" / summary["stages"][0])
        print(f"seed {seed} pareto: {summary['selected']} of {args.pool} questions selected -> {questions}")

    models = {MODELS[0]: sft}
    for name, (sigma_tool, sigma_length) in REWARDS.items():
        rl = demo.rl.model_copy(deep=True)
        rl.agent = rl.agent.with_model(sft)
        # the stage file holds tool-world questions
        rl.data, rl.task, rl.max_steps, rl.learning_rate = questions, "toolworld", args.steps, args.lr
        rl.reward.sigma_tool, rl.reward.sigma_length = sigma_tool, sigma_length
        run_dir = out / slug(name)
        if not (run_dir / "model" / "config.json").exists():
            run_rl(rl, run_dir)
        models[name] = str(run_dir / "model")

    for name, model in models.items():
        eval_dir = eval_dirs(seed, args)[name]
        if not (eval_dir / "metrics.json").is_file():
            ev = demo.eval.model_copy(deep=True)
            ev.datasets = [EvalDataset(data="toolworld:test", limit=args.limit)]
            ev.agent = ev.agent.with_model(model)
            run_eval(ev, eval_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--sft",
        help="the fine-tuned model every seed starts from, {seed} for each seed's own (default: a warm-up per seed)",
    )
    ap.add_argument(
        "--questions", help="RL questions (a Pareto stage file); default: a Pareto stage per seed"
    )
    ap.add_argument("--pool", type=int, default=32, help="training questions the Pareto stage samples")
    ap.add_argument("--out", default="runs/calibration", help="output directory (resumable)")
    ap.add_argument(
        "--results", help="where finished seeds' results are kept and read (default: --out/results)"
    )
    ap.add_argument(
        "--report",
        action="store_true",
        help="train nothing: keep the results of seeds finished in --out, print the tables of the kept seeds",
    )
    ap.add_argument("--steps", type=int, default=12, help="RL steps per policy")
    ap.add_argument("--lr", type=float, default=1e-5, help="RL learning rate")
    ap.add_argument("--limit", type=int, default=128, help="test-split questions evaluated (128: all)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per stage (0: all cores); 1 to run seeds in parallel",
    )
    args = ap.parse_args()
    t0 = time.perf_counter()
    results_dir = Path(args.results) if args.results else Path(args.out) / "results"
    for seed in args.seeds:
        if not args.report:
            print(
                f"[{time.perf_counter() - t0:6.0f} s] seed {seed} -> {Path(args.out) / f'seed{seed}'}",
                flush=True,
            )
            run_seed(seed, args)
        keep_seed(seed, args, results_dir)
    runs: dict[int, dict[str, Path]] = {}
    for seed in args.seeds:
        dests = {name: results_dir / f"seed{seed}" / slug(name) for name in MODELS}
        facts = [kept_facts(d) for d in dests.values()]
        if any(f is None for f in facts):
            print(f"seed {seed}: no result kept in {results_dir}; left out")
            continue
        for dest, f in zip(dests.values(), facts, strict=True):
            made = {key: f.get(key) for key in settings(args)}
            if made != settings(args):
                raise SystemExit(f"{dest}: made with {made}, not {settings(args)}: pass the same options")
        runs[seed] = dests
    if not runs:
        raise SystemExit(f"no seed has its three results in {results_dir}")
    args.seeds = list(runs)
    if not args.sft or "{seed}" in args.sft:
        start = "from each seed's own cold start + flywheel + SFT"
    else:
        start = f"from {args.sft}"
    print(
        f"\ntool world test split, {args.limit} questions, greedy; RL: {args.steps} steps at lr {args.lr} "
        f"{start}; seeds {args.seeds}"
    )
    print("(a) per model, mean [95% t-interval] over seeds")
    width = 28
    print(f"{'':26}" + "".join(f"{n:>{width}}" for n in MODELS))
    for label, key in ROWS:
        cells = []
        for name in MODELS:
            values = [v for v in (read_metrics(runs[s][name]).get(key) for s in args.seeds) if v is not None]
            cells.append(f"{across_seeds(values).format(3) if values else '-':>{width}}")
        print(f"{label:26}" + "".join(cells))
    for first, second in PAIRS:
        print(
            f"\n(b) {first} - {second}, per question, mean and 95% paired-bootstrap interval pooled over seeds:"
        )
        rows = paired_differences(
            [read_scores(runs[s][first]) for s in args.seeds],
            [read_scores(runs[s][second]) for s in args.seeds],
        )
        for label, estimate in rows.items():
            print(f"  {label:26}{estimate.format(signed=True):>28}")
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
