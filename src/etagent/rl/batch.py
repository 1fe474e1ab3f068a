"""Micro-batches cut to their own longest completion.

TRL pads every completion of a step to the longest one of the whole step, then splits the step
into micro-batches for gradient accumulation. One trajectory that runs to the 1,024-token budget
makes every micro-batch 1,024 tokens wide, however short its own rows are: the E3 warm-up's first
step (16 rows, 2 at the budget, a mean of 168 model tokens) spent ~680 s of its 837 s in the update
on the 2-core CPU. The forward and backward pass cost grows with the width, and the columns after a
micro-batch's last completion token change nothing (the model is causal and they are out of every
mask), so each micro-batch is cut after it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import torch


def trim_completion_padding(inputs: dict[str, Any]) -> dict[str, Any]:
    """``inputs`` (one micro-batch: ``completion_mask`` (B, T) and the tensors aligned with it)
    with every completion-aligned tensor cut to the micro-batch's last completion token. Prompt
    tensors (keys ``prompt*``, left-padded) and anything not (B, T, ...) are left as they are."""
    mask = inputs["completion_mask"]  # (B, T)
    rows, width = mask.shape
    used = mask.any(dim=0).nonzero()
    keep = int(used.max()) + 1 if used.numel() else 1
    if keep == width:
        return inputs
    out = dict(inputs)
    for key, value in inputs.items():
        if key.startswith("prompt") or not isinstance(value, torch.Tensor):
            continue
        if value.dim() >= 2 and value.shape[0] == rows and value.shape[1] == width:
            out[key] = value[:, :keep]
    return out


@cache
def trimmed_trainer_class() -> type:
    """TRL's GRPOTrainer whose micro-batches are cut by :func:`trim_completion_padding`."""
    from trl import GRPOTrainer

    class TrimmedGRPOTrainer(GRPOTrainer):
        def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
            return trim_completion_padding(super()._prepare_inputs(generation_batch))

    return TrimmedGRPOTrainer
