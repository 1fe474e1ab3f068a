"""HFGenerator: the batch scheduler and decode loop of the transformers backend.

``generate()`` turns the prompts into rows (:class:`_Row`, one per completion) and decodes them
``batch_size`` at a time (:class:`_Batch`): a row leaves the batch and the cache the step it
finishes, and waiting rows are prefilled and join once a quarter of the batch is free. Prefill
starts each row from the longest prefix the :class:`~.prefix_store.PrefixStore` holds, holds a
prefix all rows share once (:mod:`.attention`), and runs the rows in groups of similar uncached
length (:func:`_prefill_groups`).

Batching details: a row's own positions are right-aligned in the cache, after left padding, with
an attention mask and explicit position ids, so a row produces the same tokens alone or in a
batch (up to float rounding). The ``n`` samples of a prompt share one prefill. Rows are sorted by
prompt length, so rows decoded together pad little, and the results are put back in prompt order.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from etagent import runtime
from etagent.backends.base import Completion, Generator, Prompt, SamplingParams, trim_at_stop
from etagent.backends.hf.attention import _ATTENTION, _FLASH_CPU, _PASS, _Pass, _Shared, register_attention
from etagent.backends.hf.cache import _attached_cache, _GrowingLayer, _new_cache
from etagent.backends.hf.config import HFConfig
from etagent.backends.hf.device import resolve_device, resolve_dtype
from etagent.backends.hf.lean import LeanDecoder
from etagent.backends.hf.prefix_store import (
    PrefixStore,
    _common_prefix,
    _lcp,
    _Prefix,
    default_prefix_cache_bytes,
)
from etagent.backends.hf.sampling import pick

if TYPE_CHECKING:
    from etagent.backends.config import BackendConfig

log = logging.getLogger(__name__)

register_attention()

#: a prefix shared by all prompts of a batch is prefilled once, and held once, when at least this long
_MIN_SHARED_PREFIX = 16
#: fewest rows for which holding the shared prefix once pays: a decode step of the 135M model with
#: a 750-token shared prefix took 290 vs 365 ms at 16 rows, 174 vs 178 at 4, 149 vs 139 at 2 (two
#: attention kernels and a merge per layer instead of one kernel)
_MIN_SHARED_ROWS = 4


def _is_tied(model: Any, name: str) -> bool:
    """Whether parameter ``name`` shares its tensor with another parameter of ``model``."""
    params = dict(model.named_parameters(remove_duplicate=False))
    tensor = params.get(name)
    return tensor is not None and any(p is tensor for n, p in params.items() if n != name)


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
class GenerateStats:
    """Where ``generate()`` calls spent their time, summed over calls (start afresh by assigning
    a new one to ``HFGenerator.stats``). On a GPU, kernels run asynchronously: a phase's time
    may show up in the next one's."""

    prefill_s: float = 0.0  #: forward passes over prompts: a batch's first rows and rows joining it
    prefills: int = 0  #: prefills run (each of one or more forward passes)
    decode_s: float = 0.0  #: decode steps: one token for every row of the batch
    decode_steps: int = 0
    decode_rows: int = 0  #: rows over all decode steps (tokens decoded)


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
    config_class = HFConfig

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        batch_size: int = 16,
        prefix_cache_bytes: int | None = None,
        lean_decode: bool = True,
        name: str = "hf",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        #: decode steps through :class:`~.lean.LeanDecoder` where it applies (see :meth:`_lean`);
        #: False: every step through the model's forward (the previous path, for comparison)
        self.lean_decode = lean_decode
        self._lean_off_logged: str | None = None  # why the lean step did not apply, logged once
        self.stats = GenerateStats()
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

        torch.set_num_threads(cfg.hf.threads or runtime.available_cores())
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
            lean_decode=cfg.hf.lean_decode,
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

    def _lean(self) -> LeanDecoder | None:
        """The lean decode step for this ``generate()`` call, or None: it needs our cache layers
        and attention function active (the CPU path) and a stock Llama model (see
        :meth:`LeanDecoder.supports`); built per call, so a trainer's replaced modules are seen."""
        if not self.lean_decode:
            return None
        reason = LeanDecoder.supports(self.model)
        if reason is None and not (self._attention_active and self._growing_cache):
            reason = "not on the CPU path (our cache layers and attention function)"
        if reason is not None:
            if reason != self._lean_off_logged:
                log.info(
                    "hf: decode steps through the model's forward, the lean step does not apply: %s", reason
                )
                self._lean_off_logged = reason
            return None
        return LeanDecoder(self.model)

    def _weights_signature(self) -> int:
        """Changes whenever the weights change: a parameter replaced, written in place (torch bumps
        its version counter), or updated by a fused optimizer kernel, which leaves the counter
        alone (``AdamW(fused=True)``, transformers' default optimizer): so a strided sample of
        each parameter's values (at most 64 of them; ~8-16 ms per call on the 135M model) is part of it too."""
        params = list(self.model.parameters())
        with torch.no_grad():
            sums = torch.stack([p.reshape(-1)[:: max(1, p.numel() // 64)].float().sum() for p in params])
        return hash((tuple((id(p), p._version) for p in params), sums.cpu().numpy().tobytes()))

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

    def reload_weights(self, folder: str | Path) -> int:
        """Copy the weights saved in ``folder`` (``*.safetensors``, as ``save_pretrained`` writes
        them, any dtype) into the model in place; returns the number of tensors loaded. Every
        parameter must be there except those tied to another (``lm_head`` = embeddings)."""
        from safetensors.torch import load_file

        files = sorted(Path(folder).glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{folder}: no *.safetensors files to load weights from")
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(load_file(str(file)))
        result = self.model.load_state_dict(state, strict=False)
        tied = {name for name in result.missing_keys if _is_tied(self.model, name)}
        missing = sorted(set(result.missing_keys) - tied)
        if missing or result.unexpected_keys:
            raise ValueError(
                f"{folder}: weights do not match the served model (missing {missing[:5]}, "
                f"unexpected {sorted(result.unexpected_keys)[:5]})"
            )
        self.clear_prefix_cache()
        return len(state)

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
        started = time.perf_counter()
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
        self.stats.prefill_s += time.perf_counter() - started
        self.stats.prefills += 1
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
        lean = self._lean()
        while batch.rows:
            tok, tok_lp, top_lp, top_ids = pick(batch.logits, params, rng, batch.seen)  # [b], top [b, k]
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
                t0 = time.perf_counter()
                if lean is not None:
                    batch.logits = lean.step(tok, batch.next_pos, batch.mask, batch.cache, batch.shared)
                else:
                    batch.logits, batch.cache = self._forward(
                        batch.shared,
                        input_ids=tok[:, None],  # [b, 1]
                        attention_mask=batch.mask,
                        position_ids=batch.next_pos[:, None],  # [b, 1]
                        past_key_values=batch.cache,
                    )
                self.stats.decode_s += time.perf_counter() - t0
                self.stats.decode_steps += 1
                self.stats.decode_rows += len(batch.rows)
                batch.next_pos = batch.next_pos + 1
            free = self.batch_size - len(batch.rows)
            if pending and (not batch.rows or (self._growing_cache and free >= refill_at)):
                joining = self._start(take(free), prompt_ids, params, batch if batch.rows else None)
                if batch.rows:
                    batch.stack(joining, params.max_new_tokens)
                else:
                    batch = joining
