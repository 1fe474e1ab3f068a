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
  of its own that attends to it and to each row's own positions separately (see the attention
  section below); the finished rows go into the store as children of the entry holding it;
- prefills rows in groups of similar uncached length (:func:`_prefill_groups`), so that one long
  tool result does not pad every row of a turn to its length, and never repeats the kv heads of
  grouped-query attention (transformers' sdpa path copies the whole cache 3x per layer);
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
runs in one process: batched 32.6 s (before the shared prefix and the prefill groups:
48.2 s), one trajectory at a time 77.7 s (79.0 s). What is left of the batched run
is the prefill of the tool results (~2,400 tokens, ~9 s, the same work one at a time) and
the 127 steps of its longest trajectory, of which 45 run with two rows at ~160 ms a step.

Log-probabilities are those of the *model's* distribution (``log_softmax`` of the raw logits),
before temperature, top-k/top-p and the repetition penalty. That is what a trainer recomputes
from the same model, so importance ratios and KL terms compare like with like (vLLM's default
``raw_logprobs`` mode does the same).

Batching details: a row's own positions are right-aligned in the cache, after left padding, with
an attention mask and explicit position ids, so a row produces the same tokens alone or in a
batch (up to float rounding). The ``n`` samples of a prompt share one prefill. Rows are sorted by
prompt length, so rows decoded together pad little, and the results are put back in prompt order.
"""

from __future__ import annotations

import inspect
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.masking_utils import sdpa_mask

from etagent.backends.base import Completion, Generator, Prompt, SamplingParams, trim_at_stop

if TYPE_CHECKING:
    from etagent.backends.config import BackendConfig


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` -> float32 on CPU (AVX2 CPUs have no fast bf16: 7x slower, CPU_NOTES 6.1),
    bfloat16 on GPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_prefix_cache_bytes(device: torch.device) -> int:
    """The prefix store's default budget: an eighth of the memory free on ``device`` (RAM for the
    CPU: ~2.6 GiB of a 24 GiB machine, ~60k tokens of the 135M model at 46 KB a token), at least
    256 MiB."""
    free = 0
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            with open("/proc/meminfo") as f:
                free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError):
            try:
                free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError, AttributeError):
                free = 8 << 30
    return max(256 << 20, free // 8)


class _GrowingLayer(DynamicLayer):
    """A KV-cache layer that appends in place into buffers with spare room.

    ``DynamicLayer`` concatenates the whole cache with the new token every step: at batch 16 that
    copy was 13% of a decode step. Here the buffers double when full (capped at ``limit``, the
    most tokens this generation can need) and the exposed keys/values are views of them.
    """

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._kbuf = key_states.new_empty((*key_states.shape[:2], 0, key_states.shape[3]))
        self._vbuf = value_states.new_empty((*value_states.shape[:2], 0, value_states.shape[3]))

    def attach(self, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int) -> None:
        """Use ``kbuf``/``vbuf`` [b, H, capacity, D] as the buffers, their first ``length``
        positions filled. They may be views of a larger batch's buffers: a prefill group writes
        its rows' keys straight into the batch."""
        self.dtype, self.device, self.is_initialized = kbuf.dtype, kbuf.device, True
        self._kbuf, self._vbuf, self.length = kbuf, vbuf, length
        self._views()

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, end = self.length, self.length + key_states.shape[-2]
        if end > self._kbuf.shape[-2]:
            cap = max(end, min(self.limit, 2 * end))
            self._kbuf = self._regrow(self._kbuf, cap)
            self._vbuf = self._regrow(self._vbuf, cap)
        self._kbuf[:, :, start:end] = key_states
        self._vbuf[:, :, start:end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def _regrow(self, buf: torch.Tensor, cap: int) -> torch.Tensor:
        new = buf.new_empty((*buf.shape[:2], cap, buf.shape[3]))
        new[:, :, : self.length] = buf[:, :, : self.length]
        return new

    def _views(self) -> None:
        self.keys = self._kbuf[:, :, : self.length]
        self.values = self._vbuf[:, :, : self.length]

    def get_seq_length(self) -> int:
        return self.length

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if self.is_initialized:
            self._kbuf = self._kbuf.index_select(0, beam_idx.to(self._kbuf.device))
            self._vbuf = self._vbuf.index_select(0, beam_idx.to(self._vbuf.device))
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.reorder_cache(indices)  # type: ignore[arg-type]

    def batch_repeat_interleave(self, repeats: int) -> None:
        idx = torch.arange(self._kbuf.shape[0], device=self._kbuf.device).repeat_interleave(repeats)
        self.reorder_cache(idx)  # type: ignore[arg-type]

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)
        if self.is_initialized:
            self._views()

    def trim_left(self, n: int) -> None:
        """Forget the first ``n`` positions (padding that no remaining row attends to)."""
        self._kbuf, self._vbuf = self._kbuf[:, :, n:], self._vbuf[:, :, n:]
        self.length -= n
        self._views()

    def prepend(self, keys: torch.Tensor, values: torch.Tensor, room: int) -> None:
        """Put ``keys``/``values`` [H, n, D], the same for every row, before each row's positions,
        with ``room`` free positions after them."""
        n, (b, h, _, d) = keys.shape[1], self._kbuf.shape
        kbuf = self._kbuf.new_empty((b, h, n + self.length + room, d))
        vbuf = self._vbuf.new_empty((b, h, n + self.length + room, d))
        kbuf[:, :, :n], vbuf[:, :, :n] = keys, values  # broadcast over the rows
        kbuf[:, :, n : n + self.length], vbuf[:, :, n : n + self.length] = self.keys, self.values
        self._kbuf, self._vbuf, self.length = kbuf, vbuf, n + self.length
        self.limit = max(self.limit, kbuf.shape[-2])
        self._views()

    def stack(self, other: _GrowingLayer, room: int) -> None:
        """Append the rows of ``other`` below ours, both right-aligned at the longer length, with
        ``room`` free positions after it."""
        t = max(self.length, other.length)
        k, v = self._kbuf, self._vbuf
        kbuf = k.new_zeros((k.shape[0] + other._kbuf.shape[0], k.shape[1], t + room, k.shape[3]))
        vbuf = v.new_zeros((v.shape[0] + other._vbuf.shape[0], v.shape[1], t + room, v.shape[3]))
        for rows, layer in ((slice(0, k.shape[0]), self), (slice(k.shape[0], None), other)):
            kbuf[rows, :, t - layer.length : t] = layer.keys
            vbuf[rows, :, t - layer.length : t] = layer.values
        self._kbuf, self._vbuf, self.length = kbuf, vbuf, t
        self.limit = max(self.limit, kbuf.shape[-2])
        self._views()


def _new_cache(model: Any, limit: int) -> Any:
    """A cache of :class:`_GrowingLayer` when every layer of the model is plain full attention;
    otherwise None, and the model builds its own (sliding-window, linear-attention, ... layers)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    try:
        default = DynamicCache(config=config)
    except Exception:  # an exotic config: let the model decide
        return None
    if not default.layers or any(type(layer) is not DynamicLayer for layer in default.layers):
        return None
    default.layers = [_GrowingLayer(limit) for _ in default.layers]
    return default


def _attached_cache(
    model: Any, kbufs: list[torch.Tensor], vbufs: list[torch.Tensor], length: int, limit: int
) -> Any:
    """A :class:`_GrowingLayer` cache over existing buffers (see :meth:`_GrowingLayer.attach`)."""
    cache = _new_cache(model, limit)
    for layer, k, v in zip(cache.layers, kbufs, vbufs, strict=True):
        layer.attach(k, v, length)
    return cache


# ------------------------------------------------------------------------------ attention
#
# The agent loop's prompts start with the same system prompt and few-shot examples (~750 tokens
# with 2 examples), then each trajectory's own history. With a copy of that common prefix in
# every row's cache, each decode step read it once per row (16 x 750 positions x 46 KB = 550 MB
# per step at batch 16, ~30% of the step), each prefill copied it into every row, and every row
# leaving the batch copied the whole cache again. Instead a batch keeps the prefix once (views of
# the prefix store's tensors: nothing is copied) and our attention function attends to it and to
# each row's own positions separately, merging the two softmaxes with their log-sum-exps. It is
# registered under its own name and switched on only for the duration of a ``generate()`` call
# on the CPU (see HFGenerator._own_attention), so a trainer sharing the model is unaffected.

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


AttentionInterface.register(_ATTENTION, _attention)
AttentionMaskInterface.register(_ATTENTION, sdpa_mask)


def _top_p_filter(x: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus filtering of logits [b, V]: keep the most likely tokens until they hold ``top_p``.

    A full sort of [16, 49152] takes ~100 ms on a CPU core; the nucleus is usually far smaller
    than the vocabulary, so we look for it in the top 64, then the top 1024, and sort only the
    rows it is not found in. Tokens tied with the last kept one are kept too.
    """
    probs = torch.softmax(x, dim=-1)  # [b, V]
    threshold = torch.empty((x.shape[0], 1), dtype=probs.dtype, device=x.device)  # [b, 1]
    rows = torch.arange(x.shape[0], device=x.device)
    for k in (64, 1024, x.shape[-1]):
        k = min(k, x.shape[-1])
        vals = torch.topk(probs[rows], k, dim=-1).values  # [r, k], descending
        cum = vals.cumsum(-1)
        found = (cum[:, -1] >= top_p) | (k == x.shape[-1])  # [r]
        # kept = tokens whose better-ranked tokens hold less than top_p (always >= 1)
        kept = ((cum - vals) < top_p).sum(-1, keepdim=True)  # [r, 1]
        threshold[rows[found]] = vals.gather(1, kept - 1)[found]
        rows = rows[~found]
        if rows.numel() == 0:
            break
    return x.masked_fill(probs < threshold, float("-inf"))


#: a prefix shared by all prompts of a batch is prefilled once, and held once, when at least this long
_MIN_SHARED_PREFIX = 16
#: fewest rows for which holding the shared prefix once pays: a decode step of the 135M model with
#: a 750-token shared prefix took 290 vs 365 ms at 16 rows, 174 vs 178 at 4, 149 vs 139 at 2 (two
#: attention kernels and a merge per layer instead of one kernel)
_MIN_SHARED_ROWS = 4


def _common_prefix(seqs: list[list[int]]) -> int:
    """Length of the longest prefix all sequences share."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        n = min(n, _lcp(first, s))
    return n


def _lcp(a: list[int] | torch.Tensor, b: list[int] | torch.Tensor) -> int:
    ta = a if isinstance(a, torch.Tensor) else torch.tensor(a, dtype=torch.long)
    tb = b if isinstance(b, torch.Tensor) else torch.tensor(b, dtype=torch.long)
    m = min(len(ta), len(tb))
    diff = (ta[:m] != tb[:m]).nonzero()
    return int(diff[0, 0]) if len(diff) else m


def _nbytes(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


@dataclass(eq=False)
class _Prefix:
    """Keys/values of one token sequence, kept in a :class:`PrefixStore`.

    A root holds all its positions. A child holds positions [start, L) and reads [0, start) from
    its parent, a root: the histories of rows that shared a system prompt in a batch keep one copy
    of it, not one each.
    """

    tokens: torch.Tensor  # [L] on the CPU
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [H, L - start, D]
    nbytes: int  # of kv
    parent: _Prefix | None = None
    start: int = 0
    children: int = 0  # entries in the store that read from this one
    key: int = -1  # its key in the store

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def root(self) -> _Prefix:
        return self if self.parent is None else self.parent

    def kv_range(self, layer: int, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys, values [H, b - a, D] of positions [a, b) in one layer: views, unless the range
        spans the parent and this entry."""
        k, v = self.kv[layer]
        if a >= self.start:
            return k[:, a - self.start : b - self.start], v[:, a - self.start : b - self.start]
        assert self.parent is not None
        if b <= self.start:
            return self.parent.kv_range(layer, a, b)
        pk, pv = self.parent.kv_range(layer, a, self.start)
        return torch.cat([pk, k[:, : b - self.start]], 1), torch.cat([pv, v[:, : b - self.start]], 1)


class PrefixStore:
    """Keys/values of recent sequences, for reuse by later prompts that extend them.

    The agent loop calls ``generate()`` once per turn with each trajectory's whole history; the
    history up to the last completion was computed in the previous call. Each finished row is
    kept here (prompt + completion), and a new prompt starts from the entry sharing its longest
    prefix, so a turn only runs the tool's observation. A row whose batch shared a prefix is kept
    as a child of the entry holding that prefix (see :class:`_Prefix`). Entries are evicted least
    recently used once ``max_bytes`` or ``max_entries`` is reached (lookups scan every entry),
    except those that children read from; an entry that is a prefix of a newer one is dropped at
    once, and a sequence an entry already covers is not added again.
    """

    def __init__(self, max_bytes: int, max_entries: int = 256) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.nbytes = 0
        self._entries: OrderedDict[int, _Prefix] = OrderedDict()
        self._next = 0
        self.hits = 0  # tokens served from the store, for tests and tuning

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: _Prefix) -> bool:
        return self._entries.get(entry.key) is entry

    def clear(self) -> None:
        self._entries.clear()
        self.nbytes = 0

    def longest(self, tokens: list[int]) -> tuple[int, _Prefix | None]:
        """(length of the longest prefix of ``tokens`` held, an entry holding it)."""
        query = torch.tensor(tokens, dtype=torch.long)
        best, best_entry = 0, None
        for entry in self._entries.values():
            n = _lcp(entry.tokens, query)
            if n > best:
                best, best_entry = n, entry
        return best, best_entry

    def holds(self, tokens: list[int]) -> bool:
        """Whether an entry covers all of ``tokens``."""
        return self.longest(tokens)[0] == len(tokens)

    def lookup(self, prompt: list[int]) -> tuple[int, _Prefix | None]:
        """(number of leading prompt tokens to take from the store, the entry). At least the last
        prompt token is always left to run, since its logits are needed."""
        if not self._entries or len(prompt) < 2:
            return 0, None
        best, entry = self.longest(prompt)
        best = min(best, len(prompt) - 1)
        if entry is None or best == 0:
            return 0, None
        self._touch(entry)
        self.hits += best
        return best, entry

    def add(
        self,
        tokens: list[int],
        kv: list[tuple[torch.Tensor, torch.Tensor]],
        parent: _Prefix | None = None,
        start: int = 0,
    ) -> _Prefix | None:
        """Keep the keys/values ``kv`` of ``tokens``: all of them, or positions [start, L) when
        ``parent`` (a root holding the first ``start`` tokens) is given. Returns the entry holding
        ``tokens`` afterwards, or None when they were not kept."""
        t = torch.tensor(tokens, dtype=torch.long)
        held, entry = self.longest(tokens)
        if entry is not None and held == len(t):
            self._touch(entry)
            return entry
        nbytes = _nbytes(kv)
        if len(t) < 2 or nbytes > self.max_bytes or (parent is not None and not self._adopt(parent)):
            return None
        for old in list(self._entries.values()):  # covered by the new entry
            if (
                old.children == 0
                and old is not parent
                and len(old) <= len(t)
                and _lcp(old.tokens, t) == len(old)
            ):
                self._drop(old)
        entry = _Prefix(t, kv, nbytes, parent, start)
        return entry if self._insert(entry) else None

    def _touch(self, entry: _Prefix) -> None:
        self._entries.move_to_end(entry.key)
        if entry.parent is not None and entry.parent in self:
            self._entries.move_to_end(entry.parent.key)

    def _adopt(self, root: _Prefix) -> bool:
        """Put ``root`` (back) in the store, if it is not there."""
        if root in self:
            return True
        root.children = 0
        return root.nbytes <= self.max_bytes and self._insert(root)

    def _insert(self, entry: _Prefix) -> bool:
        """Add ``entry``, evicting the least recently used entries no other entry reads from."""
        while self.nbytes + entry.nbytes > self.max_bytes or len(self._entries) >= self.max_entries:
            victim = next(
                (e for e in self._entries.values() if e.children == 0 and e is not entry.parent), None
            )
            if victim is None:
                return False
            self._drop(victim)
        entry.key, self._next = self._next, self._next + 1
        self._entries[entry.key] = entry
        self.nbytes += entry.nbytes
        if entry.parent is not None:
            entry.parent.children += 1
        return True

    def _drop(self, entry: _Prefix) -> None:
        del self._entries[entry.key]
        self.nbytes -= entry.nbytes
        if entry.parent is not None:
            entry.parent.children -= 1


def _prefill_groups(new: list[int]) -> list[list[int]]:
    """Split rows into groups prefilled by separate forward passes, given each row's number of
    new (uncached) tokens; returns row indices, longest rows first.

    A forward pads every row to its longest one: one agent turn with a 190-token tool result
    among thirteen 1-token prompts ran 14 x 190 tokens through the model. Each extra forward costs
    about as much as ``_GROUP_COST`` tokens (reading the weights once more); the grouping of the
    rows sorted by length that minimises the total is found by dynamic programming.
    """
    order = sorted(range(len(new)), key=lambda u: -new[u])
    # best[i]: least cost of rows order[:i]; a group order[j:i] costs _GROUP_COST + (i - j) tokens
    # per row of its longest (first) row
    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for i in range(1, len(order) + 1):
        for j in range(i):
            cost = best[j] + _GROUP_COST + (i - j) * new[order[j]]
            if cost < best[i]:
                best[i], cut[i] = cost, j
    groups, i = [], len(order)
    while i > 0:
        groups.append(order[cut[i] : i])
        i = cut[i]
    return groups[::-1]


#: the cost of one more prefill forward pass, in tokens of prefill (see _prefill_groups)
_GROUP_COST = 48


@dataclass
class _Row:
    """One completion being generated: the ``sample``-th sample of distinct prompt ``prompt``,
    answering the caller's prompt ``slot[0]`` as its ``slot[1]``-th completion."""

    prompt: int
    sample: int
    slot: tuple[int, int]
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[dict[int, float]] = field(default_factory=list)
    finish: str | None = None


@dataclass
class _Batch:
    """The rows being decoded together and their state; row b of every tensor is rows[b].

    Each row's sequence is ``shared`` (positions [0, P), the same for every row, held once; P = 0
    when None) followed by the row's own positions in ``cache``, right-aligned, with ``mask``
    marking which cache positions hold its tokens.
    """

    rows: list[_Row]
    logits: torch.Tensor  # [b, V] float32, next-token logits of each row
    cache: Any  # each row's own keys/values, [b, Hkv, T, D] per layer
    mask: torch.Tensor  # [b, T], 1 where the cache holds one of the row's own tokens
    next_pos: torch.Tensor  # [b], position id of each row's next token
    seen: torch.Tensor | None  # [b, V] bool, tokens seen so far (repetition penalty only)
    shared: _Shared | None = None
    room: int = 0  # most positions a row may still add to the cache

    def select(self, keep: list[int]) -> None:
        """Keep only rows ``keep`` (in that order), in every tensor and in the cache."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        self.rows = [self.rows[b] for b in keep]
        self.cache.reorder_cache(idx)
        self.logits, self.mask, self.next_pos = self.logits[idx], self.mask[idx], self.next_pos[idx]
        if self.seen is not None:
            self.seen = self.seen[idx]
        if self.shared is not None and len(self.rows) < _MIN_SHARED_ROWS:
            self.unshare(0, self.room)  # too few rows left for sharing to pay
        layers = self.cache.layers
        if self.rows and isinstance(layers[0], _GrowingLayer):
            # leading positions that were padding for every remaining row: stop attending to them
            start = int(self.mask.any(0).nonzero()[0, 0])
            if start > 0:
                self.mask = self.mask[:, start:]
                for layer in layers:
                    layer.trim_left(start)

    def unshare(self, keep: int, room: int) -> None:
        """Share only positions [0, keep): the rest of the shared prefix is copied into every
        row's own cache (so that rows sharing less can join)."""
        if self.shared is None or self.shared.length <= keep:
            return
        p = self.shared.length
        for layer, (k, v) in zip(self.cache.layers, self.shared.kv, strict=True):
            layer.prepend(k[:, keep:], v[:, keep:], room)
        self.mask = torch.cat([self.mask.new_ones((len(self.rows), p - keep)), self.mask], dim=1)
        self.shared = _Shared.of(self.shared.root, keep) if keep > 0 else None

    def stack(self, other: _Batch, room: int) -> None:
        """Add ``other``'s rows below ours (both caches made of :class:`_GrowingLayer`)."""
        a, b = self.shared, other.shared
        keep = min(a.length, b.length) if a is not None and b is not None and a.root is b.root else 0
        self.unshare(keep, room)
        other.unshare(keep, room)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.stack(theirs, room)
        t = max(self.mask.shape[1], other.mask.shape[1])
        pad = torch.nn.functional.pad
        self.mask = torch.cat(
            [pad(self.mask, (t - self.mask.shape[1], 0)), pad(other.mask, (t - other.mask.shape[1], 0))]
        )
        self.rows = self.rows + other.rows
        self.logits = torch.cat([self.logits, other.logits])
        self.next_pos = torch.cat([self.next_pos, other.next_pos])
        if self.seen is not None and other.seen is not None:
            self.seen = torch.cat([self.seen, other.seen])


class HFGenerator(Generator):
    """A transformers causal LM as a :class:`Generator`.

    Build it from a config (:meth:`from_config`) or hand it a model that is already loaded, e.g.
    the RL trainer's live policy: ``HFGenerator(model, tokenizer)``. A model in train mode is put
    in eval mode for the duration of a ``generate()`` call and restored afterwards.

    ``batch_size`` rows are decoded at once. ``prefix_cache_bytes`` bounds the keys/values kept
    for reuse by later prompts (0 disables it; None: :func:`default_prefix_cache_bytes`); the
    store empties itself when the weights change (any in-place write to a parameter, as an
    optimizer step makes), and a trainer short of memory can empty it with
    :meth:`clear_prefix_cache`. One generator is not meant to be used from two threads at once
    (the server runs all generation in one worker thread).
    """

    name = "hf"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        prefix_cache_bytes: int | None = None,
        name: str = "hf",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        eos: set[int] = set()
        gen_cfg = getattr(model, "generation_config", None)
        for value in (getattr(gen_cfg, "eos_token_id", None), tokenizer.eos_token_id):
            if isinstance(value, int):
                eos.add(value)
            elif value is not None:
                eos.update(int(v) for v in value)
        self.eos_ids = eos
        pad = tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else min(eos) if eos else 0
        base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
        self._logits_to_keep = "logits_to_keep" in inspect.signature(base.forward).parameters
        if prefix_cache_bytes is None:
            prefix_cache_bytes = default_prefix_cache_bytes(self.device)
        #: keys/values of earlier sequences (see PrefixStore); None when disabled
        self.prefix_store = PrefixStore(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self._weights_version: int | None = None
        probe = _new_cache(model, 1)
        self._growing_cache = probe is not None  # plain attention layers only
        self._attention_active = False  # _attention is in use (see _own_attention)
        if probe is not None:
            text = (
                model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            )
            heads = text.num_attention_heads
            #: (layers, kv heads, head dim) of the cache
            self._kv_layout = (
                len(probe.layers),
                getattr(text, "num_key_value_heads", None) or heads,
                getattr(text, "head_dim", None) or text.hidden_size // heads,
            )

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> HFGenerator:
        """Load ``cfg.model`` (``embedded``, ``tiny`` or a local directory) on ``cfg.hf.device``."""
        from transformers import AutoModelForCausalLM

        from etagent.backends.model_store import load_tokenizer, resolve_model

        torch.set_num_threads(cfg.hf.threads or available_cores())
        device = resolve_device(cfg.hf.device)
        dtype = resolve_dtype(cfg.hf.dtype, device)
        path = resolve_model(cfg.model)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
        tokenizer = load_tokenizer(cfg.tokenizer or cfg.model)
        return cls(
            model,
            tokenizer,
            batch_size=cfg.hf.batch_size,
            prefix_cache_bytes=cfg.hf.prefix_cache_bytes,
            name=f"hf:{cfg.model}",
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        prompt_ids = [self.prompt_ids(p) for p in prompts]
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {i} is empty: generation needs at least one prompt token")
        # Identical prompts (an ARPO branch and its parent right after a tool result) become
        # samples of one distinct prompt, so that they are prefilled once.
        first: dict[tuple[int, ...], int] = {}
        samples: dict[int, int] = {}
        rows = []
        for p, ids in enumerate(prompt_ids):
            d = first.setdefault(tuple(ids), p)
            for s in range(params.n):
                rows.append(_Row(d, samples.get(d, 0), (p, s)))
                samples[d] = samples.get(d, 0) + 1
        if params.max_new_tokens > 0 and rows:
            # Longest prompts first, so rows decoded together pad little; a prompt's samples stay
            # together and share one prefill.
            rows.sort(key=lambda r: (-len(prompt_ids[r.prompt]), r.prompt, r.sample))
            rng = None
            if params.seed is not None:
                rng = torch.Generator(device=self.device)
                rng.manual_seed(params.seed)
            version = self._weights_signature()
            if version != self._weights_version:  # a trainer updated the weights: old keys are stale
                self.clear_prefix_cache()
                self._weights_version = version
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.inference_mode(), self._own_attention():
                    self._decode(rows, prompt_ids, params, rng)
            finally:
                self.model.train(was_training)
        out: list[list[Completion]] = [[] for _ in prompts]
        for row in sorted(rows, key=lambda r: r.slot):
            out[row.slot[0]].append(self._finish(row, params))
        return out

    @contextmanager
    def _own_attention(self) -> Iterator[None]:
        """Run the model with :func:`_attention` meanwhile: on the CPU, for models using sdpa
        with our cache. Elsewhere the model's own attention runs and rows share no prefix."""
        config = self.model.config
        previous = getattr(config, "_attn_implementation", None)
        if not (
            self._growing_cache
            and previous == "sdpa"
            and self.device.type == "cpu"
            and _FLASH_CPU is not None
        ):
            yield
            return
        config._attn_implementation = _ATTENTION
        self._attention_active = True
        try:
            yield
        finally:
            config._attn_implementation = previous
            self._attention_active = False

    def _weights_signature(self) -> int:
        """Changes whenever a parameter is modified in place (optimizer steps, load_state_dict) or
        replaced: torch bumps a tensor's version counter on every in-place write."""
        return hash(tuple((id(p), p._version) for p in self.model.parameters()))

    def _finish(self, row: _Row, params: SamplingParams) -> Completion:
        text, ids, stop, kept = trim_at_stop(self.tokenizer, row.ids, params.stop)
        finish = "stop" if stop is not None else row.finish or "length"
        retokenized = len(ids) - kept  # tokens re-encoded at a stop that ends mid-token
        return Completion(
            text=text,
            token_ids=ids,
            finish_reason=finish,  # type: ignore[arg-type]
            stop=stop,
            logprobs=[*row.logprobs[:kept], *([None] * retokenized)],
            top_logprobs=[*row.top[:kept], *([{}] * retokenized)] if params.logprobs > 0 else None,
        )

    def _forward(self, shared: _Shared | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
        """Logits of the last position, as float32 [batch, vocab], and the updated cache. Every
        row attends to ``shared`` before its own cache positions."""
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        token = _PASS.set(_Pass(shared))
        try:
            out = self.model(use_cache=True, **kwargs)
        finally:
            _PASS.reset(token)
        return out.logits[:, -1, :].float(), out.past_key_values

    # ------------------------------------------------------------------ prefill (+ prefix cache)

    def _prefill(
        self,
        prompts: list[list[int]],
        extra: int,
        share: bool = False,
        prefer: _Shared | None = None,
    ) -> tuple[list[int], torch.Tensor, Any, torch.Tensor, _Shared | None]:
        """Run the prompts (one row each) through the model, reusing cached prefixes.

        A row's sequence is the shared prefix [0, P) that all rows start with (held once, see
        :class:`_Shared`; P = 0 without one), then its own positions, laid out in the cache as
        ``[pad | cached c_u | pad | new s_u]``: the cached parts (from the prefix store) end
        together at C, the new parts at T = C + max(s). Pads are masked out and position ids are
        explicit, so each row sees exactly its own tokens at their own positions. Rows are run in
        groups of similar new length (:func:`_prefill_groups`), each group's forward writing its
        keys/values straight into the batch's buffers. ``share``: whether to look for a shared
        prefix at all (it pays from _MIN_SHARED_ROWS rows on); ``prefer``: a running batch's
        shared prefix, kept when these rows start with it too (so they can join that batch).

        Returns (the prompts' indices in the order of the batch's rows, the logits of each row's
        last token [U, V], the cache, the mask [U, T], the shared prefix or None).
        """
        if not self._growing_cache:
            return self._prefill_plain(prompts)
        device = self.device
        store = self.prefix_store
        if store is not None and len(prompts) > 1:
            self._share_common_prefix(prompts)
        hits = [store.lookup(p) if store is not None else (0, None) for p in prompts]
        shared = self._choose_shared(prompts, hits, prefer) if share else None
        p = shared.length if shared is not None else 0
        cached = [max(0, c - p) for c, _ in hits]  # positions [p, p + cached) come from the store
        new = [len(x) - p - c for x, c in zip(prompts, cached, strict=True)]
        groups = _prefill_groups(new)
        order = [u for group in groups for u in group]
        c0 = max(cached)
        t = c0 + max(new)
        mask = torch.zeros((len(prompts), t), dtype=torch.long)  # [U, T]
        for r, u in enumerate(order):
            mask[r, c0 - cached[u] : c0] = 1
            mask[r, t - new[u] :] = 1
        mask = mask.to(device)
        n_layers, hkv, d = self._kv_layout
        dtype = next(self.model.parameters()).dtype
        kbufs = [
            torch.zeros((len(prompts), hkv, t + extra, d), dtype=dtype, device=device)
            for _ in range(n_layers)
        ]
        vbufs = [torch.zeros_like(k) for k in kbufs]  # [U, Hkv, T + extra, D] per layer
        for r, u in enumerate(order):
            c, entry = hits[u]
            if cached[u] > 0 and entry is not None:
                for i in range(n_layers):
                    k, v = entry.kv_range(i, p, c)  # [Hkv, cached, D]
                    kbufs[i][r, :, c0 - cached[u] : c0] = k
                    vbufs[i][r, :, c0 - cached[u] : c0] = v
        logits, r = [], 0
        for group in groups:
            width = new[group[0]]  # the group's longest row
            ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)  # [n, S]
            pos = torch.zeros((len(group), width), dtype=torch.long)  # [n, S]
            for j, u in enumerate(group):
                end = len(prompts[u])
                ids[j, width - new[u] :] = torch.tensor(prompts[u][end - new[u] :])
                pos[j, width - new[u] :] = torch.arange(end - new[u], end)
            rows = slice(r, r + len(group))
            cache = _attached_cache(
                self.model, [k[rows] for k in kbufs], [v[rows] for v in vbufs], t - width, t + extra
            )
            out, _ = self._forward(
                shared,
                input_ids=ids.to(device),
                attention_mask=mask[rows],  # [n, T]
                position_ids=pos.to(device),
                past_key_values=cache,
            )
            logits.append(out)
            r += len(group)
        cache = _attached_cache(self.model, kbufs, vbufs, t, t + extra)
        return order, torch.cat(logits), cache, mask, shared

    def _prefill_plain(
        self, prompts: list[list[int]]
    ) -> tuple[list[int], torch.Tensor, Any, torch.Tensor, None]:
        """One left-padded forward, for models whose cache we do not build (no prefix reuse)."""
        device = self.device
        width = max(len(x) for x in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)  # [U, S]
        pos = torch.zeros((len(prompts), width), dtype=torch.long)  # [U, S]
        mask = torch.zeros((len(prompts), width), dtype=torch.long)  # [U, S]
        for u, x in enumerate(prompts):
            ids[u, width - len(x) :] = torch.tensor(x)
            pos[u, width - len(x) :] = torch.arange(len(x))
            mask[u, width - len(x) :] = 1
        mask = mask.to(device)
        logits, cache = self._forward(
            None, input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device)
        )
        return list(range(len(prompts))), logits, cache, mask, None

    def _choose_shared(
        self, prompts: list[list[int]], hits: list[tuple[int, _Prefix | None]], prefer: _Shared | None
    ) -> _Shared | None:
        """The longest prefix of all prompts (but their last tokens) that a root entry of the store
        holds, when at least _MIN_SHARED_PREFIX long; ``prefer``'s root wins ties."""
        if not self._attention_active:
            return None
        roots = [prefer.root] if prefer is not None else []
        roots += [entry.root for _, entry in hits if entry is not None]
        common = min(_common_prefix(prompts), min(len(x) for x in prompts) - 1)
        best, best_root = 0, None
        for root in dict.fromkeys(roots):
            n = min(common, _lcp(root.tokens, prompts[0]))
            if n > best:
                best, best_root = n, root
        if best_root is None or best < _MIN_SHARED_PREFIX:
            return None
        return _Shared.of(best_root, best)

    def _share_common_prefix(self, prompts: list[list[int]]) -> None:
        """Prefill the prefix all prompts share (a system prompt, few-shot examples) once, into the
        prefix store, so that each row then only runs its own tokens."""
        assert self.prefix_store is not None
        shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
        if shared - self.prefix_store.longest(prompts[0][:shared])[0] < _MIN_SHARED_PREFIX:
            return
        head = prompts[0][:shared]
        _, _, cache, mask, sh = self._prefill([head], 0)
        self._remember(cache, sh, 0, mask[0], head)

    def _remember(
        self, cache: Any, shared: _Shared | None, b: int, mask_row: torch.Tensor, tokens: list[int]
    ) -> None:
        """Keep row b's keys/values (``shared``, then the cache positions its mask marks) for later
        calls; with a shared prefix, as a child of the entry holding it."""
        store = self.prefix_store
        if store is None or not self._growing_cache:
            return
        p = shared.length if shared is not None else 0
        valid = mask_row.nonzero().squeeze(1)
        tokens = tokens[: p + valid.numel()]
        if store.holds(tokens):
            return
        own = [(layer.keys[b][:, valid], layer.values[b][:, valid]) for layer in cache.layers]  # [Hkv, n, D]
        if shared is None:
            store.add(tokens, own)
        else:
            store.add(tokens, own, parent=shared.root, start=p)

    def clear_prefix_cache(self) -> None:
        """Forget cached prefixes (done automatically when the model's weights change)."""
        if self.prefix_store is not None:
            self.prefix_store.clear()

    # ------------------------------------------------------------------------------ decoding
    def _start(
        self,
        rows: list[_Row],
        prompt_ids: list[list[int]],
        params: SamplingParams,
        running: _Batch | None = None,
    ) -> _Batch:
        """Prefill the prompts of ``rows`` (once per distinct prompt) into a new batch, to join
        ``running`` when given."""
        device = self.device
        uniq = list(dict.fromkeys(r.prompt for r in rows))
        total = len(rows) + (len(running.rows) if running is not None else 0)
        order, logits, cache, mask, shared = self._prefill(
            [prompt_ids[p] for p in uniq],
            params.max_new_tokens,
            share=total >= _MIN_SHARED_ROWS,
            prefer=running.shared if running is not None else None,
        )
        uniq = [uniq[i] for i in order]  # the distinct prompts in the order of the prefill's rows
        rows = sorted(rows, key=lambda r: (uniq.index(r.prompt), r.sample))
        # Repeat each prompt's prefill for its samples: row b reads distinct prompt expand[b].
        expand = torch.tensor([uniq.index(r.prompt) for r in rows], device=device)  # [B]
        if len(uniq) != len(rows):
            cache.reorder_cache(expand)
        seen = None
        if params.repetition_penalty != 1.0:
            seen = torch.zeros_like(logits[expand], dtype=torch.bool)
            for b, r in enumerate(rows):
                seen[b, torch.tensor(prompt_ids[r.prompt], device=device)] = True
        next_pos = torch.tensor([len(prompt_ids[r.prompt]) for r in rows], device=device)
        return _Batch(
            rows, logits[expand], cache, mask[expand], next_pos, seen, shared, params.max_new_tokens
        )

    def _decode(
        self,
        rows: list[_Row],
        prompt_ids: list[list[int]],
        params: SamplingParams,
        rng: torch.Generator | None,
    ) -> None:
        """Generate every row, at most ``batch_size`` at a time, filling the rows in place.

        A row leaves the batch (and the cache) the step it finishes; once a quarter of the batch
        is free, waiting rows are prefilled and join it (continuous batching), so the batch stays
        full until the queue is empty.
        """
        pending = list(reversed(rows))  # pop() takes from the front of ``rows``

        def take(k: int) -> list[_Row]:
            return [pending.pop() for _ in range(min(k, len(pending)))]

        refill_at = max(1, self.batch_size // 4)  # free slots worth a prefill and a cache copy
        batch = self._start(take(self.batch_size), prompt_ids, params)
        stops = params.stop
        # A stop string of L bytes lies within the last L tokens (every token is >= 1 byte); one
        # more token keeps a leading-space-stripping decoder (SentencePiece) from eating its start.
        window = max((len(s.encode()) for s in stops), default=0) + 1
        while batch.rows:
            tok, tok_lp, top_lp, top_ids = self._pick(
                batch.logits, params, rng, batch.seen
            )  # [b], top [b, k]
            toks, lps = tok.tolist(), tok_lp.tolist()
            tops = list(zip(top_ids.tolist(), top_lp.tolist(), strict=True)) if top_ids is not None else None
            keep: list[int] = []
            for b, row in enumerate(batch.rows):
                t = toks[b]
                if t in self.eos_ids:
                    row.finish = "eos"
                    continue
                row.ids.append(t)
                row.logprobs.append(lps[b])
                if tops is not None:
                    row.top.append(dict(zip(*tops[b], strict=True)))
                if stops:
                    tail = self.tokenizer.decode(row.ids[-window:], skip_special_tokens=False)
                    if any(s in tail for s in stops):
                        row.finish = "stop"
                        continue
                if len(row.ids) >= params.max_new_tokens:
                    row.finish = "length"
                    continue
                keep.append(b)
            if len(keep) < len(batch.rows):
                # Finished rows leave the batch and the cache: later steps cost only live rows.
                for b in sorted(set(range(len(batch.rows))) - set(keep)):
                    row = batch.rows[b]
                    self._remember(
                        batch.cache, batch.shared, b, batch.mask[b], prompt_ids[row.prompt] + row.ids
                    )
                if keep:
                    batch.select(keep)
                    tok = tok[torch.tensor(keep, dtype=torch.long, device=tok.device)]
                else:
                    batch.rows = []
            if batch.rows:
                if batch.seen is not None:
                    batch.seen.scatter_(1, tok[:, None], True)
                batch.mask = torch.cat(
                    [batch.mask, batch.mask.new_ones((len(batch.rows), 1))], dim=1
                )  # [b, T+1]
                batch.logits, batch.cache = self._forward(
                    batch.shared,
                    input_ids=tok[:, None],  # [b, 1]
                    attention_mask=batch.mask,
                    position_ids=batch.next_pos[:, None],  # [b, 1]
                    past_key_values=batch.cache,
                )
                batch.next_pos = batch.next_pos + 1
            free = self.batch_size - len(batch.rows)
            if pending and (not batch.rows or (self._growing_cache and free >= refill_at)):
                joining = self._start(take(free), prompt_ids, params, batch if batch.rows else None)
                if batch.rows:
                    batch.stack(joining, params.max_new_tokens)
                else:
                    batch = joining

    @staticmethod
    def _pick(
        logits: torch.Tensor,
        params: SamplingParams,
        rng: torch.Generator | None,
        seen: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Choose the next token of every row from float32 logits [b, V].

        Returns (token [b], its log-prob under the raw model distribution [b], top-k log-probs
        [b, k] and their ids [b, k], or None when no alternatives were asked for).
        """
        logp = torch.log_softmax(logits, dim=-1)  # [b, V]
        x = logits
        if seen is not None:  # HF's rule: shrink the logit of every token already seen
            p = params.repetition_penalty
            x = torch.where(seen, torch.where(x < 0, x * p, x / p), x)
        if params.temperature <= 0:
            tok = x.argmax(dim=-1)
        else:
            x = x / params.temperature
            if params.top_k > 0 and params.top_k < x.shape[-1]:
                kth = torch.topk(x, params.top_k, dim=-1).values[:, -1:]  # [b, 1]
                x = x.masked_fill(x < kth, float("-inf"))
            if params.top_p < 1.0:
                x = _top_p_filter(x, params.top_p)
            # Inverse-CDF sampling: torch.multinomial draws one exponential per vocab entry, which
            # took 28 ms of a 200 ms batch-16 step; one uniform per row and a binary search do not.
            # The cumsum runs in float64 so that rare tokens keep their probability over 49k terms.
            cdf = torch.softmax(x, dim=-1).double().cumsum(-1)  # [b, V]
            u = torch.rand((x.shape[0], 1), generator=rng, device=x.device, dtype=torch.float64)
            tok = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(1)
            tok = tok.clamp(max=x.shape[-1] - 1)
        tok_lp = logp.gather(1, tok[:, None]).squeeze(1)
        if params.logprobs > 0:
            top_lp, top_ids = torch.topk(logp, params.logprobs, dim=-1)
            return tok, tok_lp, top_lp, top_ids
        return tok, tok_lp, None, None
