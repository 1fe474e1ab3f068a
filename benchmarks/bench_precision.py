"""Training steps in float32 versus bf16 autocast (the SFT and RL stages' ``precision``) on this CPU.

``precision: auto`` picks bf16 autocast on CPUs with native bf16 (``avx512_bf16`` or ``amx_bf16``
in /proc/cpuinfo) and float32 elsewhere. This measures both on the machine it runs on, so that the
choice rests on numbers from each kind of CPU:

- **SFT**: the stage's own trainer (packed bins, the default) on expert tool-world trajectories,
  one per precision on the same model and data; forward + backward of the same micro-batches
  (``training_step``; the optimizer step is left out), the precisions alternating batch by batch
  after one untimed warm-up each. Prints real tokens/s, the ratio to float32 and the largest
  relative difference of the two losses on the same batch.
- **RL**: ``run_rl`` for ``--rl-steps`` steps per precision (GRPO without ARPO, the embedded
  model's own rollouts, the same seed). The policy update's time is the step's time minus its
  rollout's (``train_log.jsonl``), printed with the ratio; the rollout's time too (its decode
  steps run on the fp32 weights in both, its prefills through the model's forward, which the
  trainer wraps in autocast).

Each part checks that it measured what it says: the bf16 runs' linear layers returned bf16
(autocast on), the float32 runs' float32.

On the 2-core AMD EPYC (AVX2, no native bf16; 2026-12-05), emulated bf16 was 16x slower for SFT
and 15x for the RL update: auto rightly picks float32 there. Not yet run on a CPU with native bf16.

    .venv/bin/python benchmarks/bench_precision.py [--model embedded] [--questions 60] [--batches 3]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PRECISIONS = ("float32", "bfloat16")


def linear_output_dtypes(model) -> set:
    """The dtypes the model's linear layers return from now on (bf16 when autocast is on)."""
    import torch

    seen: set = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _m, _inp, out: seen.add(out.dtype))
    return seen


def expect_dtype(seen: set, precision: str) -> None:
    import torch

    want = {torch.bfloat16 if precision == "bfloat16" else torch.float32}
    if seen != want:
        raise SystemExit(f"{precision}: the linear layers returned {seen}, not {want}: not what was asked")


def bench_sft(args, data: Path, tmp: Path) -> None:
    from bench_sft import real_tokens, step_trainer

    trainers, seen = {}, {}
    for precision in PRECISIONS:
        trainer, stats = step_trainer(args, data, tmp / f"sft-{precision}", precision=precision)
        # what train() does first: the accelerator wraps the forward in autocast for bf16
        trainer.model = trainer.accelerator.prepare_model(trainer.model)
        trainers[precision] = trainer
        seen[precision] = linear_output_dtypes(trainer.model)
    batches = []
    for batch in trainers["float32"].get_train_dataloader():  # the same micro-batches for both
        batches.append(batch)
        if len(batches) == args.batches + 1:
            break
    print(
        f"SFT: {stats['used']} expert trajectories, {stats['tokens']} tokens; {len(batches) - 1} timed "
        f"micro-batches of <= {args.max_length} tokens, forward + backward"
    )
    totals = {p: [0, 0.0] for p in PRECISIONS}
    worst = 0.0
    for i, batch in enumerate(batches):
        losses, times = {}, {}
        for precision in PRECISIONS:
            trainer = trainers[precision]
            t0 = time.perf_counter()
            losses[precision] = float(trainer.training_step(trainer.model, batch))
            times[precision] = elapsed = time.perf_counter() - t0
            trainer.model.zero_grad(set_to_none=True)
            if i > 0:  # the first batch warms up
                totals[precision][0] += real_tokens(batch)
                totals[precision][1] += elapsed
        worst = max(worst, abs(losses["bfloat16"] - losses["float32"]) / abs(losses["float32"]))
        print(
            f"  batch {i}/{len(batches) - 1}{' (warm-up)' if i == 0 else ''}: {real_tokens(batch)} tokens, "
            + ", ".join(f"{p} {times[p]:.1f} s" for p in PRECISIONS),
            flush=True,
        )
    for precision in PRECISIONS:
        expect_dtype(seen[precision], precision)
    rates = {p: totals[p][0] / totals[p][1] for p in PRECISIONS}
    for precision in PRECISIONS:
        print(
            f"  {precision:<9} {totals[precision][1]:6.1f} s  {rates[precision]:7.1f} tokens/s  "
            f"{rates[precision] / rates['float32']:.2f}x"
        )
    print(f"  loss, bf16 vs float32 on the same batch: largest relative difference {worst:.2e}")


def bench_rl(args, tmp: Path) -> None:
    from etagent.rl import RLConfig, run_rl

    update_s, rollout_s = {}, {}
    for precision in PRECISIONS:
        cfg = RLConfig.model_validate(
            {
                "data": "toolworld:train",
                "agent": {
                    "backend": {"model": args.model},
                    "tools": {"enabled": ["search", "python"]},
                    "budget": {"max_new_tokens_per_call": 96, "max_response_tokens": args.rl_tokens},
                },
                "use_arpo": False,
                "num_generations": 4,
                "questions_per_step": 2,
                "micro_batch_size": 4,
                "max_steps": args.rl_steps,
                "save_steps": args.rl_steps,
                "threads": args.threads,
                "precision": precision,
                "logging": {"report_to": "none"},
            }
        )
        run_dir = tmp / f"rl-{precision}"
        run_rl(cfg, run_dir)
        log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
        rollout_s[precision] = sum(r["rollout_seconds"] for r in log)
        update_s[precision] = sum(r["step_seconds"] - r["rollout_seconds"] for r in log)
    print(f"RL: {args.rl_steps} GRPO step(s) of 2 questions x 4 trajectories (<= {args.rl_tokens} tokens)")
    for precision in PRECISIONS:
        print(
            f"  {precision:<9} policy update {update_s[precision]:6.1f} s "
            f"({update_s['float32'] / update_s[precision]:.2f}x float32's speed), rollout {rollout_s[precision]:.1f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M) or tiny (random, fast)")
    ap.add_argument("--questions", type=int, default=60, help="expert trajectories for the SFT part")
    ap.add_argument("--batches", type=int, default=3, help="timed SFT micro-batches per precision")
    ap.add_argument("--max-length", type=int, default=1024)
    ap.add_argument("--rl-steps", type=int, default=1, help="RL steps per precision (0: skip the RL part)")
    ap.add_argument("--rl-tokens", type=int, default=256, help="RL: max response tokens per trajectory")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    import torch

    from bench_sft import expert_sft_file
    from etagent.backends.hf.device import cpu_bf16_flags

    flags = cpu_bf16_flags()
    print(
        f"CPU native bf16: {', '.join(flags) if flags else 'none (bf16 is emulated)'}; torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; precision auto picks {'bfloat16' if flags else 'float32'}"
    )
    with tempfile.TemporaryDirectory(prefix="bench_precision.") as tmp:
        data = expert_sft_file(args.questions, Path(tmp))
        bench_sft(args, data, Path(tmp))
        if args.rl_steps:
            bench_rl(args, Path(tmp))


if __name__ == "__main__":
    main()
