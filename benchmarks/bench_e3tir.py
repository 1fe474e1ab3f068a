"""Issue 12: zero-RL vs SFT-then-RL vs E3-TIR from the same base model, on the tool world.

For each seed and each arm, one demo-sized pipeline run (etagent.demo.DemoConfig) in
``--out/seed<N>/<arm>``: the arms differ only in the warm-up (``warmup: none | sft | e3``); then
one curriculum stage of Pareto sampling + RL with the same RL config, and greedy evaluation of
the final model on the tool world's test split. Every stage's seed comes from N (SFT, RL, the
E3 warm-up, the flywheel, the cold start's and E3's scripted expert, Pareto sampling and
selection). The base model is evaluated once, in ``--out/base-eval``. Runs resume stage by stage.

Each finished arm's result (its final eval's metrics and scores, its cost, which model was
evaluated) is kept in ``--results`` (default ``--out/results``; etagent.eval.seeds.keep_result):
kilobytes an arm, so the README's tables come from ``benchmarks/results/e3tir``, committed, while
the models stay on the machine that trained them. The tables read only kept results.

Printed: (a) per arm the mean over seeds with a 95% t-interval (etagent.eval.seeds) of
correctness (F1), Effi, the redundant- and insufficient-call rates, the expert trajectories used,
compute (etagent.eval.roi: generated + 3 x trained tokens) and the ROI relative to SFT-then-RL
(per seed, then the mean); (b) per-question differences E3-TIR - SFT-then-RL and E3-TIR - zero-RL
with 95% paired-bootstrap intervals, pooled over seeds (question ids resampled; each id's
difference is its mean over the seeds).

    .venv/bin/python benchmarks/bench_e3tir.py --out runs/e3tir               # 3 seeds x 3 arms, CPU: hours
    .venv/bin/python benchmarks/bench_e3tir.py --report --results benchmarks/results/e3tir   # the README's tables
    .venv/bin/python benchmarks/bench_e3tir.py --quick --model tiny --seeds 0 1 --out /tmp/e3bench-quick

``--quick`` shrinks every stage (8 questions, 1 step per training stage) to check the script end
to end; its numbers mean nothing.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (docs/cpu.md 3.3)

import argparse
import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from etagent.config import deep_update, dump_config
from etagent.demo import DemoConfig, seeded_demo_config
from etagent.eval.roi import TrainingCost, cost_of_run, gain, relative_roi
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

#: arm -> (pipeline warmup, directory name)
ARMS = {"zero-RL": ("none", "zero-rl"), "SFT-then-RL": ("sft", "sft-rl"), "E3-TIR": ("e3", "e3-tir")}
REFERENCE = "SFT-then-RL"
PAIRS = (("E3-TIR", "SFT-then-RL"), ("E3-TIR", "zero-RL"))

# aggregated metrics of an eval's metrics.json
METRICS = (
    ("correctness (F1)", "correctness"),
    ("Effi", "effi"),
    ("redundant-call rate", "redundant_call_rate"),
    ("insufficient-call rate", "insufficient_call_rate"),
)

_QUICK_BUDGET = {"max_tool_calls": 2, "max_new_tokens_per_call": 16, "max_response_tokens": 48}


def quick_sizes() -> dict[str, Any]:
    """Every stage at the size of the tiny-model pipeline tests: minutes for all runs on 2 cores."""
    agent = {"budget": _QUICK_BUDGET}
    return {
        "cold_start_data": {"limit": 6},
        "cold_start_sft": {"max_steps": 1, "grad_accum": 1, "max_length": 512},
        "flywheel": {"limit": 2, "rounds": 1, "agent": agent, "continuation_budget": _QUICK_BUDGET},
        "sft": {"max_steps": 1, "grad_accum": 1, "max_length": 512},
        "pareto": {
            "rollout": {"limit": 3, "n": 2, "agent": agent},
            # the tiny model answers nothing right: keep questions without mixed outcomes
            "selection": {"budget": 2, "mixed_outcome_filter": "off"},
        },
        "rl": {
            "num_generations": 2,
            "use_arpo": False,
            "arpo": {"n": 2, "initial_rollouts": 2, "reserve_rollouts": 0},
            "questions_per_step": 1,
            "micro_batch_size": 2,
            "max_steps": 1,
            "agent": agent,
        },
        "e3_warmup": {
            "warmup": {"max_expert_share": 1.0, "min_self": 1},
            "use_arpo": False,
            "num_generations": 2,
            "arpo": {"n": 2, "initial_rollouts": 1, "reserve_rollouts": 0},
            "questions_per_step": 2,
            "micro_batch_size": 2,
            "max_steps": 1,
            # the expert's trajectories (continued from or trained on) must fit the budget
            "agent": {
                "budget": {"max_tool_calls": 3, "max_new_tokens_per_call": 200, "max_response_tokens": 800}
            },
        },
        "eval": {"agent": agent},
    }


def arm_config(warmup: str, seed: int, args: argparse.Namespace) -> DemoConfig:
    """The demo pipeline for one arm and seed: same stages and sizes as every other arm but the warm-up."""
    overrides: dict[str, Any] = {
        "base_model": args.model,
        "warmup": warmup,
        "curriculum_stages": 1,
        "eval_base": False,
        "eval_warmup": False,  # only the final model is compared
        "eval": {"datasets": [{"data": "toolworld:test", "limit": args.limit}]},
    }
    if args.quick:
        deep_update(overrides, quick_sizes())
    return seeded_demo_config(seed, args.threads, overrides)


def final_eval(run: Path, warmup: str) -> tuple[Path | None, str]:
    """The final model's eval directory and label: after RL, else after the warm-up (RL skipped:
    the Pareto stage selected no question), else (None, "base"): zero-RL without an RL stage is
    the base model."""
    for label in ("rl", warmup):
        if (run / "07-eval" / label / "metrics.json").is_file():
            return run / "07-eval" / label, label
    return None, "base"


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    """What every kept result of one comparison must share."""
    return {"base_model": args.model, "limit": args.limit, "quick": args.quick}


def keep_arm(out: Path, results: Path, seed: int, arm: str, args: argparse.Namespace) -> None:
    """Keep a finished arm's result once; nothing while its pipeline has not finished."""
    warmup, name = ARMS[arm]
    run, dest = out / f"seed{seed}" / name, results / f"seed{seed}" / name
    if kept_facts(dest) is not None or not pipeline_finished(run):
        return
    eval_dir, label = final_eval(run, warmup)
    facts = {"seed": seed, "arm": arm, "final_model": label, "cost": asdict(cost_of_run(run)), **sizes(args)}
    keep_result(eval_dir, dest, facts)


def kept(dest: Path, args: argparse.Namespace) -> dict[str, Any]:
    """A kept result's facts, which must have been made at this run's sizes."""
    try:
        facts = kept_facts(dest, sizes(args))
    except ValueError as e:
        raise SystemExit(f"{e}: pass the same --model, --limit, --quick") from None
    if facts is None:
        raise SystemExit(f"no result kept in {dest}")
    return facts


def pooled_differences(scores_a: list[dict[str, dict]], scores_b: list[dict[str, dict]]) -> None:
    """a - b per question: each question's difference averaged over the seeds, then bootstrapped."""
    try:
        rows = paired_differences(scores_a, scores_b)
    except ValueError as e:
        print(f"  {e}")
        return
    n = next(iter(rows.values())).n
    print(f"  {n} questions x {len(scores_a)} seeds")
    for label, estimate in rows.items():
        print(f"  {label:26}{estimate.format(signed=True):>28}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--limit", type=int, help="test-split questions evaluated (default 128: all; --quick: 8)")
    ap.add_argument("--out", default="runs/e3tir", help="output directory (resumable)")
    ap.add_argument(
        "--results", help="where finished arms' results are kept and read (default: --out/results)"
    )
    ap.add_argument("--model", default="embedded", help="the base model of every arm")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks the script end to end")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per stage (0: all cores); 1 to run seeds in parallel",
    )
    ap.add_argument(
        "--report",
        action="store_true",
        help="train nothing: keep the results of arms finished in --out, print the tables of the seeds "
        "whose arms all have kept results",
    )
    args = ap.parse_args()
    if args.limit is None:
        args.limit = 8 if args.quick else 128
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' deprecation notices
    out = Path(args.out)
    if not args.report:  # --report only reads (kept results, and finished runs in --out if any)
        out.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results) if args.results else out / "results"
    t0 = time.perf_counter()

    for seed in args.seeds:
        for arm in args.arms:
            warmup, name = ARMS[arm]
            run = out / f"seed{seed}" / name
            if not args.report:
                cfg = arm_config(warmup, seed, args)
                run.mkdir(parents=True, exist_ok=True)
                (run / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
                print(f"[{time.perf_counter() - t0:6.0f} s] seed {seed} {arm}: pipeline -> {run}", flush=True)
                run_pipeline(cfg, run)
            keep_arm(out, results_dir, seed, arm, args)
    if args.report:
        unfinished = [
            s
            for s in args.seeds
            if not all(kept_facts(results_dir / f"seed{s}" / ARMS[a][1]) for a in args.arms)
        ]
        for seed in unfinished:
            print(f"seed {seed}: not every arm has a result in {results_dir}; left out")
        args.seeds = [s for s in args.seeds if s not in unfinished]
        if not args.seeds:
            raise SystemExit(f"--report: no seed has a result of every arm in {results_dir}")

    # after the arms, and once for all processes sharing --out (each runs its own seeds)
    base_eval, base_kept = out / "base-eval", results_dir / "base"
    with file_lock(out / "base-eval.lock") if out.is_dir() else contextlib.nullcontext():
        if kept_facts(base_kept) is None:
            if not (base_eval / "metrics.json").is_file():
                if args.report:
                    raise SystemExit(
                        f"--report: the base model's result is neither in {base_kept} nor {base_eval}"
                    )
                cfg = arm_config("none", args.seeds[0], args)
                print(
                    f"[{time.perf_counter() - t0:6.0f} s] base model {args.model}: eval -> {base_eval}",
                    flush=True,
                )
                run_eval(
                    cfg.eval.model_copy(update={"agent": cfg.eval.agent.with_model(args.model)}), base_eval
                )
            keep_result(base_eval, base_kept, {"arm": "base", **sizes(args)})
    kept(base_kept, args)
    base_score = read_metrics(base_kept)["correctness"]
    results: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        for arm in args.arms:
            dest = results_dir / f"seed{seed}" / ARMS[arm][1]
            facts = kept(dest, args)
            if facts["final_model"] != "rl":
                print(
                    f"seed {seed} {arm}: no RL stage ran (the Pareto stage selected no question): "
                    f"{facts['final_model']} model"
                )
            source = base_kept if facts["final_model"] == "base" else dest
            results[arm][seed] = {
                "metrics": read_metrics(source),
                "scores": read_scores(source),
                "cost": TrainingCost(**facts["cost"]),
            }
    print(
        f"\ntool world test split, {args.limit} questions, greedy; base model {args.model} "
        f"(correctness {base_score:.3f}); seeds {args.seeds}; {'QUICK sizes' if args.quick else 'demo sizes'}"
    )
    print("(a) per arm, mean [95% t-interval] over seeds")
    width = 30
    print(f"{'':26}" + "".join(f"{arm:>{width}}" for arm in args.arms))
    # (label, value of one seed's result, decimals)
    rows: list[tuple[str, Callable[[dict[str, Any]], float | None], int]] = [
        (label, lambda r, k=key: r["metrics"].get(k), 3) for label, key in METRICS
    ]
    rows += [
        ("expert trajectories", lambda r: float(r["cost"].expert_trajectories), 1),
        ("expert tokens", lambda r: float(r["cost"].expert_tokens), 0),
        ("compute (tokens)", lambda r: float(r["cost"].compute), 0),
        ("ROI vs SFT-then-RL", lambda r: r.get("roi"), 2),
    ]
    if REFERENCE in results:
        for arm in args.arms:
            for seed, r in results[arm].items():
                ref = results[REFERENCE][seed]
                try:
                    r["roi"] = relative_roi(
                        gain(r["metrics"]["correctness"], base_score),
                        r["cost"],
                        gain(ref["metrics"]["correctness"], base_score),
                        ref["cost"],
                    )
                except ValueError as e:
                    r["roi"] = None
                    r["roi_error"] = str(e)
    for label, get, digits in rows:
        cells = []
        for arm in args.arms:
            values = [v for v in (get(r) for r in results[arm].values()) if v is not None]
            cells.append(f"{across_seeds(values).format(digits) if values else '-':>{width}}")
        print(f"{label:26}" + "".join(cells))
    errors = {r["roi_error"] for arm in args.arms for r in results[arm].values() if "roi_error" in r}
    for error in sorted(errors):
        print(f"  ROI left out: {error}")
    if REFERENCE in results:
        print(
            "  ROI: (gain / (compute / ref compute + expert tokens / ref expert tokens)) / (ref gain / 2), "
            "gain = correctness - base's, ref = SFT-then-RL of the same seed (etagent.eval.roi)"
        )

    for a, b in PAIRS:
        if a in results and b in results:
            print(f"\n(b) {a} - {b}, per question, mean and 95% paired-bootstrap interval pooled over seeds:")
            pooled_differences(
                [results[a][s]["scores"] for s in args.seeds], [results[b][s]["scores"] for s in args.seeds]
            )
    print(f"\n{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
