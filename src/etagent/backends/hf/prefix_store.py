"""Keys/values of earlier sequences, kept for later prompts that extend them.

The agent loop calls ``generate()`` once per turn with each trajectory's whole history, most of
which the previous call already ran: :class:`PrefixStore` keeps every finished row's keys/values
(prompt + completion) so that the next turn only runs the tool's observation, and a system prompt
shared by a batch is run once. Prefill runs at ~300 tokens/s on the 2-core CPU, so re-running 16
histories of 300 tokens would cost ~16 s a turn. Its default budget is
:func:`default_prefix_cache_bytes`; the token-matching helpers (:func:`_lcp`,
:func:`_common_prefix`) serve the engine too.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch


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
