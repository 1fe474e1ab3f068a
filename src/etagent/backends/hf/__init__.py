"""The transformers backend: batched generation with a small KV-cache decode loop of our own.

Why not ``model.generate``: the agent loop calls ``generate()`` once per turn for every active
trajectory, and those rows stop at different moments (one closes ``</search>`` after 8 tokens,
another writes 300 tokens of reasoning). ``model.generate`` keeps finished rows in the batch,
feeding them pad tokens until the *last* row stops, and its ``stop_strings`` criterion re-checks
every row each step. Our loop:

- drops a row from the batch and from the KV cache the step it hits eos, a stop string or its
  length limit, so a step costs only the rows still running, and stops when none are;
- refills the batch from the rows still waiting once a quarter of it is free (continuous
  batching within one call), so ``n`` samples x many prompts keep ``batch_size`` rows busy;
- keeps the keys/values of every finished sequence in a :class:`PrefixStore` and starts later
  prompts that extend one from there: turn k+1 of a trajectory only runs the tool's observation,
  and a system prompt shared by a batch runs once, not once per row (prefill runs at ~300
  tokens/s on the 2-core CPU, so re-running 16 histories of 300 tokens would cost ~16 s a turn);
- holds a prefix that all rows of a batch share (the agent loop's system prompt and few-shot
  examples: ~750 tokens, 46 KB a token) once instead of once per row, with an attention function
  of its own that attends to it and to each row's own positions separately (see
  :mod:`.attention`); the finished rows go into the store as children of the entry holding it;
- prefills rows in groups of similar uncached length (``engine._prefill_groups``), so that one
  long tool result does not pad every row of a turn to its length, and never repeats the kv heads
  of grouped-query attention (transformers' sdpa path copies the whole cache 3x per layer);
- appends to preallocated cache buffers instead of concatenating the whole cache every step,
  samples by inverse CDF instead of ``torch.multinomial`` (one exponential per vocab entry) and
  finds the top-p nucleus with ``topk`` before falling back to a full sort: each of those was
  10-50% of a batch-16 step on the CPU;
- computes the log-probability of the sampled token and the top-k alternatives per step, so no
  ``[batch, steps, vocab]`` score tensor is kept (the vocab is 49152).

Measured with the embedded 135M model, 1 thread, fp32, on a shared 2-core CPU: 64 forced tokens,
batch 1: 13.1 tok/s here vs 14.2 for ``generate``; batch 16: 87.4 vs 85.1 tok/s. Sixteen chat
prompts sampled up to 128 tokens with stop strings: 16.5 s here vs 26.8 s for
``generate(stop_strings=...)``, and 4.8x faster than the same prompts one at a time (79.9 s).
``benchmarks/bench_rollout.py`` (16 tool-world trajectories, 2 few-shot examples, greedy, 757
model tokens, 2 threads, empty prefix store at the start of each run), median of 2 alternating
runs in one process on a quiet machine (2026-12-05): batched 17.8 s, one trajectory at a time
45.1 s (an older measurement, before the shared prefix and the prefill groups: batched 48.2 s).
What is left of the batched run is its prefill (7.9 s: the tool results and questions, the same
work one at a time, where it took 10.2 s) and its 126 decode steps (9.2 s, 5.9 rows a step on
average): the longest trajectory's 105 tokens come one after another, and the agent loop's turns
add the rest; ``GenerateStats`` (``HFGenerator.stats``) counts both.

The decode step itself (:mod:`.lean`, for stock Llama models on the CPU) runs the layers' ops
directly instead of through transformers' modules: profiled at batch 1 (64 tokens), the
previous path spent ~40% of a step outside the matrix products (module calls, hooks, a mask
rebuilt every step, 7-op RMSNorm and rotary embedding per use). With it, ``bench_decode.py``
measured 1.2x the previous path at batch 1 (65 vs 79 ms a step, load 2-5). What was left was
the matrix products, ~43 ms through ``F.linear``: torch runs a one-row product as MKL's fp32
matrix-vector product on one thread (~12 GB/s of weights whatever the thread count, half the
machine's 2-thread copy rate). The lean step splits each weight's rows into one block per
thread and runs the blocks as one batched product, which torch spreads over the threads: a
batch-1 step then took 39-43 ms against 57-62 ms for the previous path, 50-53% of the bandwidth
bound on a quiet machine. From 9 rows on it pads the rows to a multiple of 8, since MKL's GEMM
took up to 2x longer at other row counts (15 rows: 133 ms of matrix products a step, 16 rows:
70 ms), so a batch that rows had left stepped slower than a full one. torch.compile was not used: the step's
time is in those MKL calls, which Inductor on the CPU calls as well, and the growing cache would
need a static rewrite and minutes of compilation on 2 cores.

The modules, one job each:

- :mod:`.engine`: :class:`HFGenerator`, its batch scheduler and decode loop, prefill groups;
- :mod:`.lean`: :class:`~.lean.LeanDecoder`, the decode step of a stock Llama model written out
  (the same ops as its forward without transformers' module machinery; ``hf.lean_decode``);
- :mod:`.cache`: the KV-cache layer that appends in place into buffers with spare room;
- :mod:`.attention`: the attention function that holds a batch's shared prefix once, and its
  registration with transformers (done when the engine is imported);
- :mod:`.prefix_store`: :class:`PrefixStore`, the keys/values of earlier sequences;
- :mod:`.sampling`: choosing the next token (top-k, top-p, repetition penalty) and log-probs;
- :mod:`.device`: ``auto`` device and dtype (bf16 only on GPUs and CPUs with native bf16);
- :mod:`.config`: :class:`HFConfig`, the ``backend.hf`` settings.
"""

from __future__ import annotations

import importlib
from typing import Any

from etagent.backends.hf.config import HFConfig

#: imported on first use: the engine pulls in torch and transformers (seconds), which checking a
#: config that names this backend (``HFConfig``) must not cost
_LAZY = {
    "GenerateStats": "etagent.backends.hf.engine",
    "HFGenerator": "etagent.backends.hf.engine",
    "PrefixStore": "etagent.backends.hf.prefix_store",
    "default_prefix_cache_bytes": "etagent.backends.hf.prefix_store",
    "resolve_device": "etagent.backends.hf.device",
    "resolve_dtype": "etagent.backends.hf.device",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GenerateStats",
    "HFConfig",
    "HFGenerator",
    "PrefixStore",
    "default_prefix_cache_bytes",
    "resolve_device",
    "resolve_dtype",
]
