"""A lean decode step for Llama models: one new token per row through the layers, written out.

A decode step of the 135M model at batch 1 runs ~210 matrix-vector products (7 per layer x 30
layers, and the output projection) and, through transformers' modules, ~1,900 other torch ops
and ~400 ``nn.Module`` calls with their hooks, keyword-argument plumbing, deprecation wrappers
and a mask built from the 2-D attention mask every step. Profiled (cProfile, 64 tokens, 2
threads): the matmuls were ~60% of the step, the rest Python and small ops. :class:`LeanDecoder`
runs the same computation on the model's own weights, with everything that does not depend on
the layer computed once per step (rotary cos/sin, the attention mask or its additive form for
the shared-prefix attention) and RMSNorm and the rotary embedding in fewer ops that give the
same values bit for bit. The matrix products run on all threads at one row (blocks of the
weight's rows, :func:`_matvec`; on one thread it is the transformers path exactly) and as
``W @ x^T``, on a multiple of 8 rows from 9 rows on, from 2 rows on (:func:`_linear`), equal up
to float rounding (greedy tokens equal on the tests' and bench prompts, log-probs within ~2e-5).
Measured by ``benchmarks/bench_decode.py`` on 2 cores: 1.45x the previous path at batch 1 (50-53%
of the memory-bandwidth bound), 1.2x at 16; a step of 15 rows 1.9x faster than unpadded.

It applies only where it is exactly the model's computation: a ``LlamaForCausalLM`` of stock
transformers modules (plain ``nn.Linear`` projections: no LoRA or quantised layers, no hooks),
SiLU MLP, the engine's own cache layers and attention function (see ``HFGenerator._lean``).
Anything else decodes through the model's ``forward``. Prefill always does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import SiLUActivation

from etagent.backends.hf.attention import _attend_with_shared, _sdpa, _Shared


@dataclass(frozen=True)
class _Layer:
    """The weights of one decoder layer (references to the model's parameters, not copies)."""

    ln1: torch.Tensor  # [E], input RMSNorm
    q: nn.Linear  # E -> H*D
    k: nn.Linear  # E -> Hkv*D
    v: nn.Linear  # E -> Hkv*D
    o: nn.Linear  # H*D -> E
    ln2: torch.Tensor  # [E], post-attention RMSNorm
    gate: nn.Linear  # E -> I
    up: nn.Linear  # E -> I
    down: nn.Linear  # I -> E


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm. In float32 torch's ``rms_norm`` runs the same ops
    (``x * rsqrt(mean(x^2) + eps)``, times the weight) in one call instead of eight; in a lower
    precision it multiplies by the weight before rounding, so there we spell out transformers'
    ops (statistics in float32, back to the input dtype, then the weight).
    tests/backends/test_hf_speed.py checks both are equal to transformers' bit for bit."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb for one tensor, x [b, h, 1, D], cos [b, 1, 1, D], in
    4 ops instead of 7: ``rotate_half(x) * sin = cat(-x2, x1) * sin = roll(x, D/2) * sin_signed``
    with ``sin_signed = cat(-sin1, sin2)`` (computed once per step), equal bit for bit since
    ``(-a) * b == a * (-b)`` exactly."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


#: from this many rows on, :func:`_linear` pads the rows to a multiple of it
_ROW_BLOCK = 8


def _linear(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``m(x)`` for x [b, in] -> [b, out]. One row through :func:`_matvec`; from 2 rows on as
    ``(W @ x^T)^T``: the same products, but MKL's GEMM with the weight [out, in] as the left
    operand was 1.3-1.5x faster at 2-16 rows than ``F.linear``'s ``x @ W^T`` on the 2-core AMD CPU
    (all of the 135M model's matrices, fp32; equal up to float rounding, as rows decoded alone or
    in a batch already are). Past 8 rows the rows are padded with zeros to a multiple of 8: there
    the GEMM took up to 2x longer for a row count that is not (a step's matrix products at 15 rows:
    133 ms, at 16: 70 ms; 12: 92 ms; 28: 118 ms, 32: 95 ms), so a batch that rows have left
    stepped slower than the full one."""
    b = x.shape[0]
    if b == 1:
        y = _matvec(m.weight, x)
    else:
        pad = -b % _ROW_BLOCK if b > _ROW_BLOCK else 0
        xt = x.t() if not pad else torch.cat((x, x.new_zeros(pad, x.shape[1]))).t()  # [in, b + pad]
        # [out, b] -> [b, out], made contiguous: torch's CPU flash-attention kernel (attention.py's
        # _FLASH_CPU, called directly) reads its inputs as if their last dimension were contiguous
        y = (m.weight @ xt)[:, :b].t().contiguous()
    return y if m.bias is None else y + m.bias


def _matvec(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``x @ w^T`` for one row x [1, in], w [out, in] -> [1, out], on all of torch's threads.
    ``F.linear`` of one row is a matrix-vector product, which torch's CPU build runs on one thread
    (MKL's sgemv took the same time with 1 and 2 threads, reading weights at ~12 GB/s where two
    threads copy memory at ~27 GB/s). Split into as many equal blocks of rows as there are
    threads, as one batched product, the blocks run in parallel: the 135M model's matrix products
    of a batch-1 step took 1.4x less time on the 2-core AMD CPU (``benchmarks/bench_decode.py``
    prints both). Equal to ``F.linear`` up to float rounding (another kernel sums the products)."""
    out = w.shape[0]
    parts = min(torch.get_num_threads(), out)
    while out % parts:
        parts -= 1
    if parts == 1 or not w.is_contiguous():
        return F.linear(x, w)
    # [parts, out/parts, in] @ [parts, in, 1] -> [parts, out/parts, 1], i.e. [1, out] in order
    return torch.bmm(w.view(parts, out // parts, -1), x.t().expand(parts, -1, 1)).view(1, out)


class LeanDecoder:
    """One decode step of a stock ``LlamaForCausalLM``, without its module machinery."""

    def __init__(self, model: Any) -> None:
        inner = model.model
        cfg = model.config
        self.model = model
        self.embed: torch.Tensor = inner.embed_tokens.weight  # [V, E]
        self.rotary = inner.rotary_emb  # its forward: cos/sin of any rope type the model uses
        self.norm: torch.Tensor = inner.norm.weight  # [E]
        self.eps: float = inner.norm.variance_epsilon
        self.lm_head: nn.Linear = model.lm_head  # E -> V (tied to embed for SmolLM2)
        self.heads: int = cfg.num_attention_heads
        self.kv_heads: int = cfg.num_key_value_heads or cfg.num_attention_heads
        attn0 = inner.layers[0].self_attn
        self.head_dim: int = attn0.head_dim
        self.scale: float = attn0.scaling
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.self_attn.o_proj,
                layer.post_attention_layernorm.weight,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
                layer.mlp.down_proj,
            )
            for layer in inner.layers
        ]
        norms = [inner.norm] + [
            n for layer in inner.layers for n in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        if any(n.variance_epsilon != self.eps for n in norms):
            raise ValueError("LeanDecoder needs one RMSNorm epsilon for all norms")

    @staticmethod
    def supports(model: Any) -> str | None:
        """None when :class:`LeanDecoder` computes exactly what ``model`` does, else the reason
        it does not."""
        from transformers.models.llama import modeling_llama as ml

        if type(model) is not ml.LlamaForCausalLM:
            return f"{type(model).__name__} is not a plain LlamaForCausalLM"
        cfg = model.config
        if getattr(cfg, "hidden_act", None) != "silu":
            return f"hidden_act {getattr(cfg, 'hidden_act', None)!r}"
        if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
            return "pretraining_tp > 1"
        stock = {
            "LlamaModel": ml.LlamaModel,
            "LlamaDecoderLayer": ml.LlamaDecoderLayer,
            "LlamaAttention": ml.LlamaAttention,
            "LlamaMLP": ml.LlamaMLP,
            "LlamaRMSNorm": ml.LlamaRMSNorm,
            "LlamaRotaryEmbedding": ml.LlamaRotaryEmbedding,
        }
        allowed = (
            *stock.values(),
            ml.LlamaForCausalLM,
            nn.Linear,
            nn.Embedding,
            nn.ModuleList,
            nn.SiLU,
            SiLUActivation,
        )
        for name, module in model.named_modules():
            if type(module) not in allowed:
                return f"{name or 'model'} is a {type(module).__name__}"
            if module._forward_hooks or module._forward_pre_hooks:
                return f"{name or 'model'} has forward hooks"
        return None

    @torch.inference_mode()
    def step(
        self,
        tok: torch.Tensor,
        pos: torch.Tensor,
        mask: torch.Tensor,
        cache: Any,
        shared: _Shared | None,
    ) -> torch.Tensor:
        """Run tokens ``tok`` [b] at positions ``pos`` [b] and append their keys/values to
        ``cache`` (one _GrowingLayer per layer, [b, Hkv, T, D] before the step). ``mask`` [b,
        T+1] (long, 1 where a row attends, the new token included); ``shared``: the positions
        every row attends to first. Returns next-token logits [b, V], float32."""
        b = tok.shape[0]
        h, hkv, d = self.heads, self.kv_heads, self.head_dim
        x = F.embedding(tok, self.embed)  # [b, E]
        cos, sin = self.rotary(x, pos[:, None])  # [b, 1, D] each
        cos, sin = cos[:, None], sin[:, None]  # [b, 1, 1, D]: broadcast over heads
        half = d // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)  # signed for _rope
        # like transformers' sdpa mask: None when no row has padding (s = 1 sees all its positions)
        attend = mask.bool()
        bool_mask = None if bool(attend.all()) else attend[:, None, None, :]  # [b, 1, 1, T+1]
        additive = None
        if shared is not None and bool_mask is not None:  # 0 / -inf, as _Pass.additive
            additive = torch.zeros(bool_mask.shape, dtype=x.dtype, device=x.device)
            additive.masked_fill_(~bool_mask, float("-inf"))
        for i, w in enumerate(self.layers):
            r = _rms_norm(x, w.ln1, self.eps)  # [b, E]
            q = _rope(_linear(w.q, r).view(b, h, 1, d), cos, sin)  # [b, H, 1, D]
            k = _rope(_linear(w.k, r).view(b, hkv, 1, d), cos, sin)  # [b, Hkv, 1, D]
            v = _linear(w.v, r).view(b, hkv, 1, d)  # [b, Hkv, 1, D]
            k, v = cache.layers[i].update(k, v)  # [b, Hkv, T+1, D]
            if shared is None:
                a = _sdpa(q, k, v, bool_mask, self.scale)  # [b, H, 1, D]
            else:
                ks, vs = shared.kv[i]  # [Hkv, P, D]
                a = _attend_with_shared(q, k, v, additive, ks, vs, self.scale)  # [b, H, 1, D]
            x = x + _linear(w.o, a.reshape(b, h * d))  # [b, E]
            r = _rms_norm(x, w.ln2, self.eps)
            x = x + _linear(w.down, F.silu(_linear(w.gate, r)) * _linear(w.up, r))  # [b, E]
        x = _rms_norm(x, self.norm, self.eps)
        return _linear(self.lm_head, x).float()  # [b, V]
