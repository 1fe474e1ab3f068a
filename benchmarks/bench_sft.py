"""SFT throughput: packed (padding-free) batches versus TRL's default padded batches.

Data: realistic tool-world trajectories written by the expert policy (``toolworld:train``, real
search and Python results), converted with ``trajectories_to_sft_examples`` and tokenized by the
SFT stage (tool results masked). Both modes build the stage's own SFTTrainer on the same model
and data; the only difference is the batching:

- ``padded``: TRL's defaults, ``packing=False, padding_free=False``, 8 sequences a micro-batch,
  each padded to the longest one in it;
- ``packed``: the stage's default, best-fit-decreasing bins of ``max_length`` tokens, one bin a
  micro-batch, fed padding-free (a flattened row with per-sequence position ids);
- ``padding_free`` (``--modes``): 8 sequences flattened into one row without packing.

Timing: forward + backward of one micro-batch through ``SFTTrainer.training_step`` (the
optimizer step, the same per optimizer step in every mode, is left out). The modes alternate in
rounds, each round giving every mode about the same number of real tokens (a padded batch, then
packed bins until they hold as many tokens), after one untimed warm-up micro-batch per mode, so
that other load on a shared machine hits the modes alike. Tokens/s counts real (non-pad) tokens
only. Prints each mode's tokens/s and its ratio to ``padded`` (goal: packed >= 1.5x).

    .venv/bin/python benchmarks/bench_sft.py [--model embedded|tiny] [--questions 240] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODES = {
    "padded": {"packing": False, "padding_free": False, "batch_size": 8},
    "packed": {"packing": True, "batch_size": 1},
    "padding_free": {"packing": False, "padding_free": True, "batch_size": 8},
}


def expert_sft_file(questions: int, out: Path) -> Path:
    """sft.jsonl from expert-policy rollouts of the first ``questions`` tool-world train questions."""
    from etagent.backends.config import BackendConfig
    from etagent.io import atomic_write_jsonl, read_records
    from etagent.loop.agent_loop import SamplingConfig
    from etagent.records import Trajectory
    from etagent.rollout.stage import RolloutConfig, run_rollout
    from etagent.train.sft_data import trajectories_to_sft_examples

    cfg = RolloutConfig(
        data="toolworld:train",
        limit=questions,
        agent={"backend": BackendConfig(kind="expert"), "sampling": SamplingConfig(temperature=0.0)},
    )
    run_rollout(cfg, out / "rollout")
    trajectories = read_records(out / "rollout" / cfg.output, Trajectory)
    path = out / "sft.jsonl"
    atomic_write_jsonl(path, trajectories_to_sft_examples(trajectories))
    return path


def real_tokens(batch: dict) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["position_ids"].shape[1])  # padding-free rows hold no padding


def step_trainer(args: argparse.Namespace, data: Path, out: Path, **fields):
    """The SFT stage's trainer over ``data`` (``args``: model, max_length, threads; ``fields``: other
    SFTConfig fields), ready for ``training_step`` calls outside ``train()``; returns it and the
    data statistics."""
    from etagent.train.sft import SFTConfig, build_trainer

    cfg = SFTConfig(
        model=args.model, data=str(data), max_length=args.max_length, threads=args.threads, **fields
    )
    trainer, stats = build_trainer(cfg, out)
    trainer.current_gradient_accumulation_steps = 1  # set by train(), read by training_step
    return trainer, stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M) or tiny (random, fast)")
    ap.add_argument("--questions", type=int, default=240, help="expert trajectories to train on")
    ap.add_argument(
        "--rounds", type=int, default=3, help="timed rounds (each: one padded batch's worth of tokens)"
    )
    ap.add_argument("--max-length", type=int, default=1024, help="bin size for packing; truncation length")
    ap.add_argument("--modes", default="padded,packed", help=f"comma-separated, from {list(MODES)}")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    modes = args.modes.split(",")
    if "padded" not in modes:
        modes.insert(0, "padded")

    import torch

    with tempfile.TemporaryDirectory(prefix="bench_sft.") as tmp:
        data = expert_sft_file(args.questions, Path(tmp))
        trainers, batches = {}, {}
        for mode in modes:
            trainers[mode], stats = step_trainer(args, data, Path(tmp) / mode, **MODES[mode])
            batches[mode] = iter(trainers[mode].get_train_dataloader())
        print(
            f"data: {stats['used']} expert trajectories, {stats['tokens']} tokens "
            f"({stats['tokens'] / stats['used']:.0f} a trajectory), {stats['trained_tokens']} trained; "
            f"model {args.model}, {torch.get_num_threads()} threads"
        )

        def step(mode: str) -> tuple[int, int, float]:
            trainer = trainers[mode]
            batch = next(batches[mode])
            t0 = time.perf_counter()
            trainer.training_step(trainer.model, batch)
            elapsed = time.perf_counter() - t0
            trainer.model.zero_grad(set_to_none=True)
            return real_tokens(batch), batch["input_ids"].numel(), elapsed

        for mode in modes:  # warm-up
            step(mode)
        totals = {m: [0, 0, 0.0, 0] for m in modes}  # real tokens, slots, seconds, micro-batches
        for r in range(args.rounds):
            target = None
            for mode in modes:
                done = 0
                while target is None or done < target:
                    tokens, slots, elapsed = step(mode)
                    t = totals[mode]
                    t[0], t[1], t[2], t[3] = t[0] + tokens, t[1] + slots, t[2] + elapsed, t[3] + 1
                    done += tokens
                    if target is None:  # the padded batch sets this round's token volume
                        target = tokens
                        break
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{m} {totals[m][0] / totals[m][2]:.0f} tok/s" for m in modes)
            )

    base = totals["padded"][0] / totals["padded"][2]
    print(
        f"\n{'mode':<14}{'micro-batches':>14}{'real tokens':>13}{'padding':>9}{'seconds':>9}{'tokens/s':>10}{'ratio':>7}"
    )
    for mode in modes:
        tokens, slots, seconds, n = totals[mode]
        print(
            f"{mode:<14}{n:>14}{tokens:>13}{1 - tokens / slots:>9.1%}{seconds:>9.1f}"
            f"{tokens / seconds:>10.1f}{tokens / seconds / base:>6.2f}x"
        )


if __name__ == "__main__":
    main()
