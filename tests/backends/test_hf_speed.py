"""The hf backend's fast paths: the lean decode step (same tokens and log-probs as the model's
forward) and the weights' dtype (``auto`` from the CPU's bf16 flags; bf16 forced close to fp32).
Tiny random model, 1 thread."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

from etagent.backends.base import SamplingParams
from etagent.backends.config import BackendConfig
from etagent.backends.hf import HFConfig, HFGenerator
from etagent.backends.hf.device import cpu_bf16_flags, resolve_dtype
from etagent.backends.hf.lean import LeanDecoder, _linear, _matvec, _rms_norm, _rope
from tests.backends.scripted import MarkovLM

TEXTS = [
    "The capital of France is",
    "Hello",
    "Once upon a time, in a land far far away, there lived",
    "def fibonacci(n):",
    "1, 2, 3, 4,",
]


@pytest.fixture(scope="module")
def prompts(tiny_gen) -> list[list[int]]:
    return [tiny_gen.tokenizer.encode(t, add_special_tokens=False) for t in TEXTS]


@pytest.fixture()
def steps(monkeypatch) -> list[tuple[int, bool]]:
    """(rows, with a shared prefix) of every lean decode step run meanwhile."""
    seen: list[tuple[int, bool]] = []
    original = LeanDecoder.step

    def counting(self: LeanDecoder, tok: torch.Tensor, *args: Any) -> torch.Tensor:
        seen.append((tok.shape[0], args[-1] is not None))
        return original(self, tok, *args)

    monkeypatch.setattr(LeanDecoder, "step", counting)
    return seen


def both_paths(gen: HFGenerator, prompts: list[Any], params: SamplingParams, steps: list) -> tuple:
    """(lean, transformers) results of the same call, each from an empty prefix store."""
    out = []
    for lean in (True, False):
        gen.lean_decode = lean
        gen.clear_prefix_cache()
        steps.clear()
        try:
            out.append(gen.generate(prompts, params))
        finally:
            gen.lean_decode = True
        assert bool(steps) == lean, "the lean step ran when it should not have, or not at all"
    return tuple(out)


def assert_same(a: list[list[Any]], b: list[list[Any]]) -> None:
    for ga, gb in zip(a, b, strict=True):
        for x, y in zip(ga, gb, strict=True):
            assert (x.text, x.token_ids, x.finish_reason) == (y.text, y.token_ids, y.finish_reason)
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
            if x.top_logprobs is not None:
                assert [list(t) for t in x.top_logprobs] == [list(t) for t in y.top_logprobs]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_ops_equal_transformers_ops_bit_for_bit(dtype):
    """The rewritten RMSNorm and rotary embedding give exactly transformers' values; the linear
    layer (W @ x^T from 2 rows on) the same up to float rounding."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb

    torch.manual_seed(0)
    norm = LlamaRMSNorm(64, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.normal_()
    for b in (1, 3):
        x = (3 * torch.randn(b, 64)).to(dtype)
        assert torch.equal(_rms_norm(x, norm.weight, 1e-5), norm(x))
        q, k = torch.randn(b, 6, 1, 16, dtype=dtype), torch.randn(b, 2, 1, 16, dtype=dtype)
        cos, sin = torch.randn(b, 1, 16, dtype=dtype), torch.randn(b, 1, 16, dtype=dtype)
        q_ref, k_ref = apply_rotary_pos_emb(q, k, cos, sin)
        cos4, sin4 = cos[:, None], sin[:, None]
        signed = torch.cat((-sin4[..., :8], sin4[..., 8:]), dim=-1)
        assert torch.equal(_rope(q, cos4, signed), q_ref)
        assert torch.equal(_rope(k, cos4, signed), k_ref)
    lin = torch.nn.Linear(64, 48, bias=True).to(dtype)
    for b in (1, 2, 16):
        x = torch.randn(b, 64, dtype=dtype)
        tol = 1e-5 if dtype is torch.float32 else 2e-2
        torch.testing.assert_close(_linear(lin, x), lin(x), atol=tol, rtol=tol)


@pytest.fixture()
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_one_row_products_run_in_row_blocks_on_all_threads(two_threads, monkeypatch):
    """A one-row product is split into one block of rows per thread (torch's matrix-vector product
    runs on one thread), into fewer blocks when the rows do not divide evenly, and not at all for
    a weight that is not contiguous; the result is F.linear's up to float rounding."""
    blocks: list[int] = []
    bmm = torch.bmm

    def counting(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        blocks.append(a.shape[0])
        return bmm(a, b)

    monkeypatch.setattr(torch, "bmm", counting)
    torch.manual_seed(0)
    x = torch.randn(1, 64)
    for out, expected in ((48, [2]), (7, [])):
        w = torch.randn(out, 64)
        blocks.clear()
        torch.testing.assert_close(_matvec(w, x), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
        assert blocks == expected
    torch.set_num_threads(1)
    blocks.clear()
    _matvec(torch.randn(48, 64), x)
    assert blocks == []
    torch.set_num_threads(2)
    blocks.clear()
    w = torch.randn(64, 48).t()  # [48, 64], not contiguous
    torch.testing.assert_close(_matvec(w, x), torch.nn.functional.linear(x, w), atol=1e-5, rtol=1e-5)
    assert blocks == []


def test_row_counts_past_eight_are_padded_to_a_multiple_of_eight(monkeypatch):
    """From 9 rows on the product runs on a multiple of 8 rows (zeros added), and the real rows
    come back as F.linear gives them up to float rounding; up to 8 rows nothing is added."""
    widths: list[int] = []
    original = torch.Tensor.__matmul__

    def recording(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        widths.append(b.shape[1])
        return original(a, b)

    monkeypatch.setattr(torch.Tensor, "__matmul__", recording)
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    for rows, width in ((2, 2), (8, 8), (9, 16), (15, 16), (16, 16), (17, 24)):
        x = torch.randn(rows, 64)
        widths.clear()
        y = _linear(lin, x)
        assert widths == [width]
        assert y.shape == (rows, 48) and y.is_contiguous()
        torch.testing.assert_close(y, lin(x), atol=1e-5, rtol=1e-5)


def test_lean_decode_on_two_threads_gives_the_forwards_tokens(tiny_gen, prompts, steps, two_threads):
    """With one row's products split over two threads, greedy tokens and their log-probs match the
    model's forward, at one row and at five."""
    params = SamplingParams(max_new_tokens=16, temperature=0.0, logprobs=3)
    for batch in (prompts[:1], prompts):
        lean, plain = both_paths(tiny_gen, batch, params, steps)
        assert_same(lean, plain)


def test_lean_decode_equals_the_models_forward(tiny_gen, prompts, steps):
    """Left-padded rows, rows leaving at stop strings, top-k log-probs, repetition penalty and
    seeded sampling: the lean step gives what the model's forward gives."""
    assert LeanDecoder.supports(tiny_gen.model) is None
    for params in (
        SamplingParams(max_new_tokens=16, temperature=0.0, logprobs=3),
        SamplingParams(max_new_tokens=16, temperature=0.0, stop=["e"]),
        SamplingParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.3),
        SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.9, top_k=50, n=2, seed=3),
    ):
        lean, plain = both_paths(tiny_gen, prompts, params, steps)
        assert_same(lean, plain)
    # batch 1, no padding: the mask is dropped as transformers drops it
    lean, plain = both_paths(tiny_gen, prompts[:1], SamplingParams(max_new_tokens=8, temperature=0.0), steps)
    assert_same(lean, plain)


def test_lean_decode_with_a_shared_prefix(tiny_gen, steps):
    """Rows that hold a shared system prompt once (attention over the shared and own positions)
    decode the same through the lean step, rows joining a running batch included."""
    tok = tiny_gen.tokenizer
    system = tok.encode("You are a careful agent. Use <search>query</search> to look things up. " * 2)
    prompts = [system + tok.encode(f" Question {i}: what is {i} + {i}?") for i in range(6)]
    gen = HFGenerator(tiny_gen.model, tok, batch_size=4)
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop=["e"])
    gen.lean_decode = True
    gen.generate(prompts, params)  # the system prompt goes into the store
    steps.clear()
    lean = gen.generate(prompts, params)
    assert any(shared for _, shared in steps), "no lean step ran with a shared prefix"
    gen.lean_decode = False
    plain = gen.generate(prompts, params)
    assert_same(lean, plain)
    assert_same(lean, both_paths(gen, prompts, params, steps)[1])  # from an empty store too


def test_lean_decoder_only_takes_stock_llama_models(tiny_gen, prompts, steps):
    """A wrapped model (here the scripted MarkovLM; LoRA layers likewise) or one with hooks
    decodes through its own forward: the lean step would skip what they add."""
    wrapped = MarkovLM(tiny_gen.model, {})
    assert "MarkovLM" in str(LeanDecoder.supports(wrapped))
    gen = HFGenerator(wrapped, tiny_gen.tokenizer)
    steps.clear()
    gen.generate(prompts[:2], SamplingParams(max_new_tokens=4, temperature=0.0))
    assert steps == []
    handle = tiny_gen.model.model.layers[0].mlp.register_forward_hook(lambda *a: None)
    try:
        assert "hooks" in str(LeanDecoder.supports(tiny_gen.model))
    finally:
        handle.remove()
    assert LeanDecoder.supports(tiny_gen.model) is None


def test_lean_decode_from_the_config(tiny_model_path):
    build = lambda **kw: HFGenerator.from_config(  # noqa: E731
        BackendConfig(model=str(tiny_model_path), hf=HFConfig(threads=1, device="cpu", **kw))
    )
    assert build().lean_decode is True
    assert build(lean_decode=False).lean_decode is False


#: /proc/cpuinfo of a CPU without native bf16 and of one with it (also used by tests/train)
AVX2_CPUINFO = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
SAPPHIRE_RAPIDS_CPUINFO = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_auto_dtype_follows_the_cpus_bf16_flags(caplog):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    avx2, sapphire = AVX2_CPUINFO, SAPPHIRE_RAPIDS_CPUINFO
    assert cpu_bf16_flags(avx2) == []
    assert cpu_bf16_flags(sapphire) == ["avx512_bf16", "amx_bf16"]
    with caplog.at_level(logging.INFO, logger="etagent.backends.hf.device"):
        assert resolve_dtype("auto", cpu, avx2) is torch.float32
        assert "float32" in caplog.text and "no native bf16" in caplog.text
        assert resolve_dtype("auto", cpu, sapphire) is torch.bfloat16
        assert "avx512_bf16, amx_bf16" in caplog.text
    assert resolve_dtype("auto", gpu) is torch.bfloat16
    assert resolve_dtype("bfloat16", cpu, avx2) is torch.bfloat16  # forced
    assert resolve_dtype("float32", cpu, sapphire) is torch.float32
    # this machine: bf16 exactly when /proc/cpuinfo has one of the flags
    expected = torch.bfloat16 if cpu_bf16_flags() else torch.float32
    assert resolve_dtype("auto", cpu) is expected


def test_forced_bfloat16_matches_float32(tiny_model_path, tiny_gen, prompts):
    """bf16 weights (forced; emulated and slow on AVX2) give the fp32 greedy tokens on these
    prompts, with log-probs within 0.02 nats (measured: <= 0.003 over 24 tokens)."""
    gen16 = HFGenerator.from_config(
        BackendConfig(model=str(tiny_model_path), hf=HFConfig(threads=1, device="cpu", dtype="bfloat16"))
    )
    assert next(gen16.model.parameters()).dtype is torch.bfloat16
    params = SamplingParams(max_new_tokens=16, temperature=0.0)
    fp32 = tiny_gen.generate(prompts, params)
    bf16 = gen16.generate(prompts, params)
    for a, b in zip(fp32, bf16, strict=True):
        assert a[0].token_ids == b[0].token_ids
        assert b[0].logprobs == pytest.approx(a[0].logprobs, abs=0.02)
