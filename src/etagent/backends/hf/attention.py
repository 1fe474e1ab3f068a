"""The attention function of HFGenerator's forward passes on the CPU, which holds a prefix
shared by all rows of a batch once.

The agent loop's prompts start with the same system prompt and few-shot examples (~750 tokens
with 2 examples), then each trajectory's own history. With a copy of that common prefix in
every row's cache, each decode step read it once per row (16 x 750 positions x 46 KB = 550 MB
per step at batch 16, ~30% of the step), each prefill copied it into every row, and every row
leaving the batch copied the whole cache again. Instead a batch keeps the prefix once (views of
the prefix store's tensors: nothing is copied) and our attention function attends to it and to
each row's own positions separately, merging the two softmaxes with their log-sum-exps. It is
registered under its own name and switched on only for the duration of a ``generate()`` call
on the CPU (see HFGenerator._own_attention), so a trainer sharing the model is unaffected.

Each forward pass says which shared prefix it runs with through :data:`_PASS` (a context
variable set by ``HFGenerator._forward``), since transformers calls the attention function with
the model's own arguments only. :func:`register_attention` adds the function to transformers'
registries; the engine calls it when it is imported.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

from etagent.backends.hf.prefix_store import _Prefix

_ATTENTION = "etagent_sdpa"


@dataclass
class _Shared:
    """Positions [0, length) that every row of a batch starts with, held once for all rows."""

    root: _Prefix  # the store entry they are read from
    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [Hkv, P, D] (views)

    @classmethod
    def of(cls, root: _Prefix, length: int) -> _Shared:
        return cls(root, length, [root.kv_range(i, 0, length) for i in range(len(root.kv))])


@dataclass
class _Pass:
    """What :func:`_attention` needs to know about the forward pass running now."""

    shared: _Shared | None
    _mask: torch.Tensor | None = None  # the last boolean mask converted, and its additive form
    _additive: torch.Tensor | None = None

    def additive(self, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``mask`` (bool, True: attend) as 0 / -inf, converted once for all layers."""
        if self._mask is not mask:
            self._mask = mask
            self._additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
                ~mask, float("-inf")
            )
        assert self._additive is not None
        return self._additive


_PASS: ContextVar[_Pass | None] = ContextVar("etagent_forward_pass", default=None)

#: torch's CPU flash-attention kernel, which also returns the log-sum-exp of each query's scores
#: (what merging two partial softmaxes needs); the public ``scaled_dot_product_attention`` calls it
_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function of HFGenerator's forward passes on the CPU (transformers'
    interface).

    query [b, H, s, D]; key, value [b, Hkv, T, D]: each row's own cached positions plus the s new
    ones; attention_mask [b, 1, s, T] bool (True: attend), or None for a plain causal mask.
    With a shared prefix (:class:`_Pass`) every query also attends to its P positions, which
    come before all of the row's own. Grouped-query heads are never repeated (transformers' sdpa
    path copies the keys and values H/Hkv times with ``repeat_kv`` whenever there is a mask and
    more than one query: 20% of a prefill). Returns [b, s, H, D].
    """
    for name in ("softcap", "s_aux", "sliding_window", "position_bias"):
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"HFGenerator's attention does not support {name}")
    s, t = query.shape[2], key.shape[2]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:  # an additive float mask
        mask = mask > torch.finfo(mask.dtype).min / 2
    if mask is None and s > 1:  # causal, the queries being the last s positions
        mask = torch.ones((s, t), dtype=torch.bool, device=query.device).tril(t - s)[None, None]
    run = _PASS.get()
    if run is None or run.shared is None:
        out = _sdpa(query, key, value, mask, scale)
    else:
        ks, vs = run.shared.kv[module.layer_idx]
        additive = None if mask is None else run.additive(mask, query.dtype)
        out = _attend_with_shared(query, key, value, additive, ks, vs, scale)
    return out.transpose(1, 2).contiguous(), None


def _sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """torch's fused attention without repeating the kv heads: q [b, H, s, D], k, v [b, Hkv, T,
    D], mask [b, 1, s, T] or None -> [b, H, s, D]."""
    b, h, s, d = q.shape
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if s == 1:  # the H/Hkv query heads of a kv head become queries of one head: [b, Hkv, H/Hkv, D]
        out = sdpa(q.reshape(b, k.shape[1], h // k.shape[1], d), k, v, attn_mask=mask, scale=scale)
        return out.reshape(b, h, 1, d)
    return sdpa(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def _attend_with_shared(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    additive: torch.Tensor | None,
    ks: torch.Tensor,
    vs: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of q [b, H, s, D] over the shared keys/values ks, vs [Hkv, P, D] (all of them:
    they come before every query) and each row's own k, v [b, Hkv, T, D] under ``additive``
    [b, 1, s, T] (0 / -inf; None: no mask). Two calls of torch's CPU flash kernel, one per row
    over its own positions and one for the queries of all rows over the shared positions, merged
    by their log-sum-exps; few, large ops (with ``OMP_WAIT_POLICY=PASSIVE`` each op that wakes
    the threads costs ~0.1 ms, and a version with plain matmuls and softmaxes was 2x slower than
    the dense attention it replaces). Returns [b, H, s, D]."""
    assert _FLASH_CPU is not None
    b, h, s, d = q.shape
    hkv = ks.shape[0]
    g = h // hkv  # query heads per kv head; head kv * g + r reads kv head kv (as repeat_kv)
    # each row's own positions; a padding query of a prefill sees none of them: output 0, lse 0
    own, own_lse = _FLASH_CPU(q, k, v, attn_mask=additive, scale=scale)  # [b, H, s, D], [b, H, s]
    # the shared positions, read once for the queries of all rows: [1, Hkv, b*g*s, D]
    qs = q.reshape(b, hkv, g * s, d).transpose(0, 1).reshape(1, hkv, b * g * s, d)
    sh, sh_lse = _FLASH_CPU(qs, ks[None], vs[None], scale=scale)  # [1, Hkv, b*g*s, D], [1, Hkv, b*g*s]
    sh = sh.view(hkv, b, g * s, d).transpose(0, 1).reshape(b, h, s, d)
    sh_lse = sh_lse.view(hkv, b, g * s).transpose(0, 1).reshape(b, h, s, 1)
    # softmax over both parts = each part's softmax, weighted by its share of the total mass
    return torch.lerp(own, sh, torch.sigmoid(sh_lse - own_lse[..., None]))


_registered = False


def register_attention() -> None:
    """Register :func:`_attention` (with transformers' sdpa mask) as attention implementation
    ``_ATTENTION``. Idempotent: the registries are global, so this runs once per process."""
    global _registered
    if _registered:
        return
    AttentionInterface.register(_ATTENTION, _attention)
    AttentionMaskInterface.register(_ATTENTION, sdpa_mask)
    _registered = True
