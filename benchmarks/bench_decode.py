"""Decode tokens/s of the ``hf`` backend against the memory-bandwidth bound, at batch 1 and 16.

Decoding one step reads every weight once (the tied embedding as the output projection; the
input embedding lookup reads only one row per sequence), so a step cannot be faster than
``weight bytes / memory rate``. The memory rate is a measured large-tensor copy (best of
several), counted as bytes read + bytes written per second (the STREAM "copy" convention).
Bounds in tokens/s:

- batch 1: ``copy rate / weight bytes``;
- batch B: ``B x`` that, since one step's weight read serves all B rows. This ignores the reads
  of the KV cache (grows with context: ~46 KB a token of context per sequence for the 135M
  model, small here with ~100-token contexts) and compute: at batch 16 the matrix products,
  not the memory, are the limit on a CPU, so a measured matmul rate gives a second, compute
  bound (2 FLOPs per parameter per token) printed alongside.

Measured decode: ``HFGenerator.generate`` on B distinct tool-world questions as chat prompts,
greedy, no stop strings and EOS disabled, so every row writes exactly ``--new-tokens`` tokens.
Prefill is removed by timing the same call with 1 new token (the first token comes from the
prefill) and taking the difference: decode tokens/s = B x new_tokens / (t(new_tokens + 1) -
t(1)). The prefix store is off so each call does the same prefill. Best of ``--repeat``.

Each batch size is measured twice in the same run, alternating: with the engine's lean decode
step (``hf.lean_decode``, the default) and with every step through the model's forward (the
previous path); the ratio is printed. A third figure is the step's matrix products alone
over the model's weights at batch 1, no other op, twice: through ``F.linear`` (one thread's
matrix-vector product on the CPU) and through the lean step's ``_linear`` (blocks of rows on all
threads): that is as fast as a batch-1 step can get with those kernels, whatever the Python
around it. Goal: batch 1 at >= 50% of the bandwidth bound.

    .venv/bin/python benchmarks/bench_decode.py [--new-tokens 64] [--batches 1 16] [--threads 0]
        [--dtype auto|float32|bfloat16] [--no-compare]
"""

from __future__ import annotations

import argparse
import os
import time

GOAL = 0.50  # batch-1 decode tokens/s as a share of the memory-bandwidth bound

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn, repeat: int, device) -> float:
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def memory_rates(device, mib: int, repeat: int) -> tuple[float, float]:
    """(copy rate in bytes read + written per s, read rate of a sum in bytes per s), best of repeat."""
    import torch

    n = (mib << 20) // 4
    src = torch.rand(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch: page faults are not part of the rate
    copy_s = best_time(lambda: dst.copy_(src), repeat, device)
    read_s = best_time(lambda: src.sum(), repeat, device)
    nbytes = src.numel() * src.element_size()
    return 2 * nbytes / copy_s, nbytes / read_s


def matmul_flops(device, dtype, repeat: int) -> float:
    """FLOP/s of a 1024^3 matrix product in the model's dtype (an upper estimate for decode GEMMs)."""
    import torch

    a = torch.rand(1024, 1024, dtype=dtype, device=device)
    b = torch.rand(1024, 1024, dtype=dtype, device=device)
    a @ b
    return 2 * 1024**3 / best_time(lambda: a @ b, repeat, device)


def matmul_step_time(model, repeat: int, linear) -> float:
    """Seconds of one batch-1 step's matrix products alone: ``linear(module, x)`` for every
    ``nn.Linear`` of the model (the output projection included) on a [1, in] input, back to back,
    best of ``repeat``."""
    import torch

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    p = next(model.parameters())
    inputs = {m.in_features: torch.rand(1, m.in_features, dtype=p.dtype, device=p.device) for m in linears}

    def step() -> None:
        with torch.inference_mode():
            for m in linears:
                linear(m, inputs[m.in_features])

    return best_time(step, repeat, p.device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = all cores")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--copy-mib", type=int, default=256, help="size of the copied tensor")
    ap.add_argument("--repeat", type=int, default=2, help="timed generate calls of each kind; best kept")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument(
        "--no-compare", action="store_true", help="skip the previous decode path (every step through forward)"
    )
    args = ap.parse_args()

    import torch

    from etagent.backends.base import SamplingParams
    from etagent.backends.config import BackendConfig, build_generator
    from etagent.backends.hf import HFConfig
    from etagent.backends.hf.device import cpu_bf16_flags
    from etagent.backends.hf.lean import LeanDecoder
    from etagent.tasks.toolworld import load_split

    generator = build_generator(
        BackendConfig(
            kind="hf",
            model=args.model,
            hf=HFConfig(
                batch_size=max(args.batches),
                threads=args.threads,
                device=args.device,
                prefix_cache_bytes=0,
                dtype=args.dtype,
            ),
        )
    )
    model = generator.model
    device = generator.device
    dtype = next(model.parameters()).dtype
    generator.eos_ids = set()  # forced length: no row may stop before --new-tokens

    params = list(model.parameters())  # tied weights appear once
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    n_params = sum(p.numel() for p in params)
    copy_rate, read_rate = memory_rates(device, args.copy_mib, repeat=5)
    flops = matmul_flops(device, dtype, repeat=5)
    step_bound = copy_rate / weight_bytes  # tokens/s at batch 1 = decode steps/s
    flop_bound = flops / (2 * n_params)  # tokens/s when compute limits, any batch

    flags = cpu_bf16_flags()
    why = f"CPU bf16 flags: {', '.join(flags) or 'none'}; torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    print(
        f"model: {args.model} ({n_params / 1e6:.1f}M parameters, {dtype} ({args.dtype}; {why}), {device}) | "
        f"torch threads: {torch.get_num_threads()} | weight bytes: {weight_bytes / 1e6:.1f} MB"
    )
    lean_reason = LeanDecoder.supports(model)
    print(f"lean decode step: {'applies' if lean_reason is None else 'does not apply: ' + lean_reason}")
    print(
        f"memory copy rate ({args.copy_mib} MiB tensor, best of 5, read + written bytes): "
        f"{copy_rate / 1e9:.2f} GB/s | read-only rate (sum): {read_rate / 1e9:.2f} GB/s"
    )
    print(f"matmul rate (1024^3, {dtype}): {flops / 1e9:.1f} GFLOP/s -> compute bound {flop_bound:.1f} tok/s")
    print(
        f"bandwidth bound: {step_bound:.1f} decode steps/s = {step_bound:.1f} tok/s at batch 1, "
        f"B x that at batch B (KV-cache reads and compute ignored)"
    )

    import torch.nn.functional as F

    from etagent.backends.hf.lean import _linear

    kernels = [("F.linear", lambda m, x: F.linear(x, m.weight, m.bias))]
    if device.type == "cpu":  # where the lean step runs
        kernels.append(("the lean step's (row blocks on all threads)", _linear))
    for label, linear in kernels:
        mm_s = matmul_step_time(model, 5, linear)
        print(
            f"batch-1 matrix products alone, {label}: {1e3 * mm_s:.1f} ms/step = "
            f"{weight_bytes / mm_s / 1e9:.1f} GB/s of weights -> {1 / mm_s:.1f} tok/s = "
            f"{1 / mm_s / step_bound:.0%} of the bandwidth bound (the most a batch-1 step can reach with them)"
        )

    questions = load_split("dev")
    paths = [("lean", True)] if args.no_compare else [("previous", False), ("lean", True)]
    for batch in args.batches:
        prompts = [[{"role": "user", "content": q.question}] for q in questions[:batch]]
        prompt_tokens = sum(len(generator.prompt_ids(p)) for p in prompts)

        def run(new_tokens: int, prompts=prompts) -> list:
            out = generator.generate(prompts, SamplingParams(max_new_tokens=new_tokens, temperature=0.0))
            lengths = {len(c[0].token_ids) for c in out}
            assert lengths == {new_tokens}, f"expected {new_tokens} tokens per row, got {lengths}"
            return out

        # best of --repeat for each path, the paths alternating so that load hits both alike
        best = {name: (float("inf"), float("inf")) for name, _ in paths}
        for _, lean in paths:
            generator.lean_decode = lean
            run(2)  # warm-up at this batch size
        for _ in range(args.repeat):
            for name, lean in paths:
                generator.lean_decode = lean
                t_prefill = best_time(lambda: run(1), 1, device)
                t_full = best_time(lambda n=args.new_tokens + 1: run(n), 1, device)
                best[name] = (min(best[name][0], t_prefill), min(best[name][1], t_full))
        generator.lean_decode = True
        bound = batch * step_bound
        rates = {}
        for name, _ in paths:
            t_prefill, t_full = best[name]
            rates[name] = decode_rate = batch * args.new_tokens / (t_full - t_prefill)
            print(
                f"batch {batch:>2} {name:>8}: prompt tokens {prompt_tokens}, prefill {t_prefill:.2f} s, "
                f"{args.new_tokens} decode steps {t_full - t_prefill:.2f} s -> {decode_rate:.1f} tok/s "
                f"({decode_rate / batch:.1f} per sequence, {1e3 * (t_full - t_prefill) / args.new_tokens:.0f} ms/step) | "
                f"bandwidth bound {bound:.1f} tok/s: {decode_rate / bound:.0%} of it | "
                f"compute bound {flop_bound:.1f} tok/s: {decode_rate / flop_bound:.0%} of it"
            )
        if "previous" in rates:
            print(
                f"batch {batch:>2}: lean / previous decode tokens/s: {rates['lean'] / rates['previous']:.2f}x"
            )
        if batch == 1:
            share = rates["lean"] / bound
            print(
                f"goal: batch-1 decode >= {GOAL:.0%} of the bandwidth bound: {share:.0%} -> "
                f"{'met' if share >= GOAL else 'NOT met'}"
            )


if __name__ == "__main__":
    main()
