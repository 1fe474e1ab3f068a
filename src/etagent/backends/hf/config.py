"""Settings of the hf backend (``backend.hf`` in a config)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from etagent.config import ConfigModel


class HFConfig(ConfigModel):
    """transformers generation (CPU or GPU)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="weights' dtype. auto: bfloat16 on a GPU and on a CPU with native bf16 "
        "(avx512_bf16 or amx_bf16), float32 on other CPUs (AVX2 has no fast bf16)",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    batch_size: int = Field(16, ge=1, description="most sequences in one generate() call")
    threads: int = Field(
        0, ge=0, description="torch CPU threads; 0 = all cores. Use 1 when sharing cores with a trainer"
    )
    prefix_cache_bytes: int | None = Field(
        None,
        ge=0,
        description="keys/values kept for reuse by later prompts (agent turns, shared system prompts); "
        "None = 1/8 of the device's free memory, 0 = off",
    )
    lean_decode: bool = Field(
        True,
        description="decode steps of a stock Llama model on the CPU run the layers' ops directly "
        "instead of through transformers' modules (same ops and results, less overhead); "
        "false = always the model's forward",
    )
