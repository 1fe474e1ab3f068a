"""The arithmetic of the training stages' steps (SFT, RL): bf16 autocast or float32.

Light on purpose (torch is imported when the choice is made): the stages' config classes import
the field's type and help text.
"""

from __future__ import annotations

import logging
from typing import Literal

log = logging.getLogger(__name__)

#: the ``precision`` field of the training stages
TrainingPrecision = Literal["auto", "float32", "bfloat16"]

TRAINING_PRECISION_HELP = (
    "the training steps' arithmetic. bfloat16: bf16 autocast over fp32 master weights (RL on a GPU "
    "loads the policy in bf16); float32: no autocast. auto: bfloat16 on a GPU with bf16 and on a CPU "
    "with native bf16 (avx512_bf16 or amx_bf16 in /proc/cpuinfo), float32 on other CPUs, where torch "
    "emulates bf16 and steps were 7-16x slower (docs/cpu.md 6.1, 10)"
)


def training_uses_bf16(
    precision: TrainingPrecision, cuda: bool, cpuinfo: str | None = None, stage: str = "training"
) -> bool:
    """Whether a training stage runs its steps in bf16 (:data:`TRAINING_PRECISION_HELP`). ``auto``
    follows the device as the hf backend's ``dtype: auto`` does for inference
    (:func:`etagent.backends.hf.device.cpu_bf16_flags`; ``cpuinfo``: that file's text, for
    tests). Logs the choice and why, and warns when bf16 is asked for on a CPU that emulates it."""
    import torch

    from etagent.backends.hf.device import cpu_bf16_flags

    if precision == "float32":
        log.info("%s precision float32: set in the config", stage)
        return False
    if cuda:
        if precision == "bfloat16" or torch.cuda.is_bf16_supported():
            log.info("%s precision bfloat16: %s, on the GPU", stage, precision)
            return True
        log.info("%s precision float32: auto, the GPU has no bf16", stage)
        return False
    flags = cpu_bf16_flags(cpuinfo)
    if precision == "bfloat16":
        if not flags:
            log.warning(
                "%s precision bfloat16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16): "
                "torch emulates it, expect steps several times slower than float32",
                stage,
            )
        return True
    if flags:
        log.info("%s precision bfloat16: auto, the CPU has native bf16 (%s)", stage, ", ".join(flags))
        return True
    log.info("%s precision float32: auto, the CPU has no native bf16 (no avx512_bf16 or amx_bf16)", stage)
    return False
