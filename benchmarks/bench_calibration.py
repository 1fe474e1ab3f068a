"""The calibration experiment (issue 5): fine-tuned only vs GRPO with sigma 0 vs full ET-Agent, over seeds.

Per seed N, in ``--out/seed<N>``: the demo's supervised warm-up (cold start, flywheel, SFT; every
stage seeded with N, etagent.demo.seeded_demo_config) makes the fine-tuned model. Two RL policies
start from it with the same seed, one with the correctness-only reward (sigma_tool = sigma_length
= 0, the released scripts) and one with the full ET-Agent reward (0.2 / 0.5), each through the
pipeline's curriculum: ``--stages`` rounds of a Pareto stage (``--pool`` training questions
sampled by the current policy, earlier stages' questions excluded, half selected) and ``--steps``
RL steps on the selected questions; their first Pareto stage is the same (sampled once when one
process trains both). The three models are evaluated greedily on the tool world's test split. The
method claims higher Effi and fewer redundant calls at no loss of correctness; this prints what it
measures:

(a) per model, the mean over seeds of correctness, Effi, redundant- and insufficient-call rates,
calls and model tokens, with 95% t-intervals across seeds (etagent.eval.seeds);
(b) ET-Agent - GRPO sigma 0 and ET-Agent - fine-tuned only per question, pooled over seeds, with
95% paired-bootstrap intervals.

Every stage resumes from ``--out``. Each finished seed's three results (eval metrics, scores and
the run's settings) are kept in ``--results`` (default ``--out/results``; etagent.eval.seeds.
keep_result), kilobytes a seed: the README's tables come from ``benchmarks/results/calibration``,
committed; ``--report`` trains nothing and prints the tables of the seeds kept there.
``--sft MODEL`` takes the fine-tuned models from elsewhere: one model for every seed (only RL's
randomness varies), or, with ``{seed}`` in the path, each seed's own (e.g. the SFT-then-RL arms of
benchmarks/bench_e3tir.py, the same seeded warm-up).

    .venv/bin/python benchmarks/bench_calibration.py --seeds 0 1 2 --out runs/calibration   # CPU: hours
    .venv/bin/python benchmarks/bench_calibration.py --sft 'runs/e3tir/seed{seed}/sft-rl/04-sft/model'
    .venv/bin/python benchmarks/bench_calibration.py --sft runs/demo-.../04-sft/model --seeds 0
    .venv/bin/python benchmarks/bench_calibration.py --report --results benchmarks/results/calibration

``--policies`` trains only the named RL policies, so that one seed's two policies can run side by
side in two processes sharing ``--out`` (``--threads 1`` each); the warm-up runs once, under a lock,
and whichever process finishes last keeps the seed's results:

    .venv/bin/python benchmarks/bench_calibration.py --seeds 2 --threads 1 --policies "GRPO sigma 0" &
    .venv/bin/python benchmarks/bench_calibration.py --seeds 2 --threads 1 --policies ET-Agent
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/cpu.md 3.3)

import argparse
import shutil
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
from etagent.eval.stage import run_eval
from etagent.io import file_lock
from etagent.pipeline import pipeline_finished, run_pipeline

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
    """Where each of :data:`MODELS` is evaluated: the fine-tuned model by the warm-up's pipeline
    (or, with ``--sft``, on its own), each RL policy by its pipeline; a policy whose Pareto stages
    selected nothing is the fine-tuned model."""
    out = Path(args.out) / f"seed{seed}"
    dirs = {
        MODELS[0]: out / "warmup" / "07-eval" / "sft" if not args.sft else out / f"eval-{args.limit}" / "sft"
    }
    for name in REWARDS:
        run = out / slug(name)
        rl = run / "07-eval" / "rl"
        dirs[name] = dirs[MODELS[0]] if pipeline_finished(run) and not rl.is_dir() else rl
    return dirs


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """What every kept result of one comparison must share."""
    return {
        "sft": args.sft or "own warm-up",
        "stages": args.stages,
        "pool": args.pool,
        "steps": args.steps,
        "lr": args.lr,
        "limit": args.limit,
    }


def keep_seed(seed: int, args: argparse.Namespace, results: Path) -> None:
    """Keep a seed's three results once they are all evaluated; nothing until then."""
    dirs = eval_dirs(seed, args)
    if not all((d / "metrics.json").is_file() for d in dirs.values()):
        return
    for name, eval_dir in dirs.items():
        dest = results / f"seed{seed}" / slug(name)
        if kept_facts(dest) is None:
            keep_result(eval_dir, dest, {"seed": seed, "model": name, **settings(args)})


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


def policy_config(seed: int, sft: str, reward: tuple[float, float], args: argparse.Namespace) -> DemoConfig:
    """One RL policy's pipeline: from the fine-tuned model, ``--stages`` rounds of Pareto sampling
    (``--pool`` questions, half selected) and RL (``--steps`` each), then the final model's eval."""
    sigma_tool, sigma_length = reward
    overrides = {
        "base_model": sft,
        "warmup": "none",
        "curriculum_stages": args.stages,
        "eval_base": False,
        "eval": {"datasets": [{"data": "toolworld:test", "limit": args.limit}]},
        "pareto": {"rollout": {"limit": args.pool}, "selection": {"budget": args.pool // 2}},
        "rl": {
            "max_steps": args.steps,
            "learning_rate": args.lr,
            "reward": {"sigma_tool": sigma_tool, "sigma_length": sigma_length},
            # the same gradients bit for bit on the CPU (docs/cpu.md 11) at about half the peak
            # memory: two seeds' RL steps side by side once exceeded 24 GB without it
            "gradient_checkpointing": True,
        },
    }
    return seeded_demo_config(seed, args.threads, overrides)


def run_seed(seed: int, args: argparse.Namespace) -> None:
    """Every stage of one seed (each resumes), up to the eval of each of :data:`MODELS`."""
    out = Path(args.out) / f"seed{seed}"
    eval_split = {"datasets": [{"data": "toolworld:test", "limit": args.limit}]}
    # curriculum_stages 0: the pipeline stops after the warm-up and evaluates its model
    demo = seeded_demo_config(
        seed, args.threads, {"curriculum_stages": 0, "eval_base": False, "eval": eval_split}
    )
    with file_lock(Path(args.out) / f"seed{seed}.warmup.lock"):  # once for all processes (--policies)
        sft = fine_tuned(seed, args, demo, out)
        sft_eval = eval_dirs(seed, args)[MODELS[0]]
        if not (sft_eval / "metrics.json").is_file():  # --sft: not evaluated by the warm-up's pipeline
            ev = demo.eval.model_copy(update={"agent": demo.eval.agent.with_model(sft)})
            run_eval(ev, sft_eval)

    first_pareto: Path | None = None
    for name in args.policies:
        run, reward = out / slug(name), REWARDS[name]
        # Both policies start from the same model with the same seed, so their first Pareto stage
        # is the same: in one process the second resumes from a copy of the first's.
        if first_pareto is not None and not (run / first_pareto.name).exists():
            shutil.copytree(first_pareto, run / first_pareto.name)
        run_pipeline(policy_config(seed, sft, reward, args), run)
        first_pareto = run / "05-pareto-1"
        if not (run / "07-eval" / "rl").is_dir():
            print(f"seed {seed} {name}: no Pareto stage selected a question; no RL ran")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--sft",
        help="the fine-tuned model every seed starts from, {seed} for each seed's own (default: a warm-up per seed)",
    )
    ap.add_argument(
        "--stages", type=int, default=2, help="curriculum stages (Pareto sampling + RL) per policy"
    )
    ap.add_argument(
        "--policies",
        nargs="+",
        choices=list(REWARDS),
        default=list(REWARDS),
        help="the RL policies to train (default both; one each in two processes to run them side by side)",
    )
    ap.add_argument("--pool", type=int, default=32, help="training questions each Pareto stage samples")
    ap.add_argument("--out", default="runs/calibration", help="output directory (resumable)")
    ap.add_argument(
        "--results", help="where finished seeds' results are kept and read (default: --out/results)"
    )
    ap.add_argument(
        "--report",
        action="store_true",
        help="train nothing: keep the results of seeds finished in --out, print the tables of the kept seeds",
    )
    ap.add_argument("--steps", type=int, default=12, help="RL steps per policy and stage")
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
        try:
            facts = [kept_facts(d, settings(args)) for d in dests.values()]
        except ValueError as e:
            raise SystemExit(f"{e}: pass the same options") from None
        if any(f is None for f in facts):
            print(f"seed {seed}: no result kept in {results_dir}; left out")
            continue
        runs[seed] = dests
    if not runs and not args.report and set(args.policies) != set(REWARDS):
        print(f"the other policies' processes keep each seed's results once they finish: {MODELS[1:]}")
        return
    if not runs:
        raise SystemExit(f"no seed has its three results in {results_dir}")
    args.seeds = list(runs)
    if not args.sft or "{seed}" in args.sft:
        start = "from each seed's own cold start + flywheel + SFT"
    else:
        start = f"from {args.sft}"
    print(
        f"\ntool world test split, {args.limit} questions, greedy; RL: {args.stages} stage(s) of {args.steps} steps at lr {args.lr} "
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
