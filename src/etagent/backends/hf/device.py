"""Which device and dtype a model is loaded on, from the ``auto`` defaults of the config."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: /proc/cpuinfo flags of x86 CPUs that compute in bf16 natively (AVX512-BF16, AMX)
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_bf16_flags(cpuinfo: str | None = None) -> list[str]:
    """The native-bf16 flags (:data:`_BF16_FLAGS`) this CPU has, from ``/proc/cpuinfo`` (or the
    text given); empty when there are none or the file cannot be read (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in _BF16_FLAGS if f in flags]


def resolve_dtype(dtype: str, device: torch.device, cpuinfo: str | None = None) -> torch.dtype:
    """``auto`` -> bfloat16 on a GPU and on a CPU with native bf16 (:func:`cpu_bf16_flags`),
    float32 on other CPUs: without them (AVX2) torch emulates bf16 matmuls and decoding was 7x
    slower (docs/cpu.md 6.1). Logs the choice and why."""
    if dtype != "auto":
        chosen = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
        log.info("hf dtype %s: set in the config (device %s)", dtype, device)
        return chosen
    if device.type != "cpu":
        log.info("hf dtype bfloat16: auto on %s", device)
        return torch.bfloat16
    flags = cpu_bf16_flags(cpuinfo)
    if flags:
        log.info("hf dtype bfloat16: auto, the CPU has native bf16 (%s)", ", ".join(flags))
        return torch.bfloat16
    log.info(
        "hf dtype float32: auto, the CPU has no native bf16 (none of %s in /proc/cpuinfo; torch "
        "CPU capability %s)",
        ", ".join(_BF16_FLAGS),
        torch.backends.cpu.get_cpu_capability(),
    )
    return torch.float32
