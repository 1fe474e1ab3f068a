"""The KV cache of HFGenerator's forward passes: layers that append in place.

transformers' ``DynamicLayer`` concatenates the whole cache with the new token every step, which
was 13% of a batch-16 decode step. :class:`_GrowingLayer` appends into buffers with spare room
instead, and the engine's batch scheduler reshapes it in place: a prefill group attaches views of
the batch's buffers and writes its keys straight into them, finished rows leave with
``reorder_cache``, padding no row attends to is trimmed on the left, a shared prefix is copied
back in front of every row (``prepend``) and a joining batch's rows are appended (``stack``).

:func:`_new_cache` builds such a cache only for models whose layers are all plain full attention;
other models (sliding-window, linear-attention, ... layers) build their own, and the engine then
falls back to plain left-padded batches without prefix reuse.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


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
