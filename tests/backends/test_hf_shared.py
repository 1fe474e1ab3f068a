"""HFGenerator's shared-prefix attention, prefill groups and the prefix store's child entries
(tiny random model, 1 thread): every path must give the tokens a row gets alone, without the store."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from etagent.backends.base import SamplingParams
from etagent.backends.config import BackendConfig
from etagent.backends.hf import HFConfig, HFGenerator, PrefixStore, default_prefix_cache_bytes
from etagent.backends.hf.attention import _attend_with_shared
from etagent.backends.hf.engine import _Batch, _prefill_groups
from tests.backends.scripted import MarkovLM, chain


def greedy(max_new_tokens: int = 10, **kw: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **kw)


@pytest.fixture(scope="module")
def tok(tiny_gen) -> Any:
    return tiny_gen.tokenizer


@pytest.fixture(scope="module")
def system(tok) -> list[int]:
    """A system prompt long enough to be shared (>= _MIN_SHARED_PREFIX tokens)."""
    ids = tok.encode(
        "You are a careful agent. Use <search>query</search> to look things up. " * 2,
        add_special_tokens=False,
    )
    assert len(ids) >= 32
    return ids


def alone(gen: HFGenerator, prompts: list[list[int]], params: SamplingParams) -> list[Any]:
    """Each prompt by itself, without a prefix store."""
    cold = HFGenerator(gen.model, gen.tokenizer, prefix_cache_bytes=0)
    return [cold.generate([p], params)[0][0] for p in prompts]


def same(got: list[Any], ref: list[Any]) -> None:
    for g, r in zip(got, ref, strict=True):
        assert (g.text, g.token_ids, g.finish_reason) == (r.text, r.token_ids, r.finish_reason)
        assert g.logprobs == pytest.approx(r.logprobs, abs=1e-4)


def test_attention_with_a_shared_prefix_equals_dense_attention():
    """Own positions (masked, causal) + shared positions merged by log-sum-exp == one softmax over
    the concatenated keys, with grouped-query heads (6 query heads over 2 kv heads)."""
    torch.manual_seed(0)
    b, h, hkv, d, p, t = 3, 6, 2, 16, 11, 7
    for s in (1, 4):
        q = torch.randn(b, h, s, d)
        k, v = torch.randn(b, hkv, t, d), torch.randn(b, hkv, t, d)
        ks, vs = torch.randn(hkv, p, d), torch.randn(hkv, p, d)
        mask = torch.ones(b, 1, s, t, dtype=torch.bool).tril(t - s)
        mask[1, :, :, :3] = False  # left padding of row 1
        additive = torch.zeros(mask.shape).masked_fill_(~mask, float("-inf"))
        got = _attend_with_shared(q, k, v, additive, ks, vs, d**-0.5)  # [b, H, s, D]
        keys = torch.cat([ks.expand(b, -1, -1, -1), k], 2).repeat_interleave(h // hkv, 1)
        values = torch.cat([vs.expand(b, -1, -1, -1), v], 2).repeat_interleave(h // hkv, 1)
        full_mask = torch.cat([torch.ones(b, 1, s, p, dtype=torch.bool), mask], -1)
        ref = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=full_mask)
        assert got.shape == (b, h, s, d)
        assert torch.allclose(got, ref, atol=1e-5)
    # a prefill's padding query sees no own position: finite output, so no NaN reaches the cache
    additive = torch.full((1, 1, 1, t), float("-inf"))
    out = _attend_with_shared(torch.randn(1, h, 1, d), k[:1], v[:1], additive, ks, vs, d**-0.5)
    assert out.isfinite().all()


def test_prefill_groups_split_rows_of_very_different_lengths():
    groups = _prefill_groups([1, 190, *[1] * 12])  # one long tool result among short prompts
    assert groups == [[1], [0, *range(2, 14)]]
    assert _prefill_groups([20, 18, 22, 19]) == [[2, 0, 3, 1]]  # similar lengths: one forward
    groups = _prefill_groups([300, 5, 150, 148, 3, 301])
    assert sorted(u for g in groups for u in g) == list(range(6))
    assert [u for g in groups for u in g] == [5, 0, 2, 3, 1, 4]  # longest first, contiguous


def kv(first: int, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One layer, 1 head, 2 dims, 16 bytes per token; the values are the positions."""
    pos = torch.arange(first, first + n, dtype=torch.float32)[None, :, None].expand(1, n, 2).contiguous()
    return [(pos, pos.clone())]


def test_prefix_store_child_entries_share_their_root():
    store = PrefixStore(max_bytes=16 * 20, max_entries=8)
    root = store.add(list(range(10)), kv(0, 10))
    child = store.add([*range(10), 50, 51, 52, 53, 54], kv(10, 5), parent=root, start=10)
    assert root is not None and child is not None and root.children == 1
    assert len(store) == 2 and store.nbytes == 16 * 15  # the first 10 positions are held once
    keys, _ = child.kv_range(0, 8, 12)  # spans the root and the child
    assert keys[0, :, 0].tolist() == [8, 9, 10, 11]
    assert child.kv_range(0, 2, 5)[0].data_ptr() == root.kv[0][0][:, 2:5].data_ptr()  # a view
    assert store.lookup([*range(10), 50, 51, 99]) == (12, child)
    # a sequence already covered is not added again
    assert store.add([*range(10), 50], kv(0, 11)) is child and len(store) == 2
    # eviction skips a root that a child still reads from
    store.add([7, 7, 7, 7, 7, 7], kv(0, 6))  # 21 tokens > 20: the LRU entry without children goes
    assert root in store and child not in store and root.children == 0
    store.add([8] * 10, kv(0, 10))  # now the root can go too
    assert root not in store and store.nbytes <= store.max_bytes


def test_a_batch_holds_its_shared_prompt_once_and_rows_are_kept_as_children(tiny_gen, tok, system):
    questions = [" Who?", " What is the answer to it all?", " Where", " Why not"]
    prompts = [system + tok.encode(q, add_special_tokens=False) for q in questions]
    gen = HFGenerator(tiny_gen.model, tok)
    shared_lengths = []
    forward = gen._forward

    def spy(shared: Any, **kw: Any) -> Any:
        shared_lengths.append(0 if shared is None else shared.length)
        return forward(shared, **kw)

    gen._forward = spy  # type: ignore[method-assign]
    out = gen.generate(prompts, greedy(8, logprobs=2))
    same([c[0] for c in out], alone(gen, prompts, greedy(8, logprobs=2)))
    assert max(shared_lengths) >= len(system) - 1  # rows attended to one copy of the system prompt
    entries = list(gen.prefix_store._entries.values())
    children = [e for e in entries if e.parent is not None]
    assert len(children) == len(prompts) and len({id(e.parent) for e in children}) == 1
    assert gen.model.config._attn_implementation == "sdpa"  # switched back after the call


def test_turn_with_tool_results_of_very_different_lengths(tiny_gen, tok, system):
    """Turn 2 of an agent loop: one row has a long uncached observation, the others one token;
    they are prefilled in separate forwards and still match each row alone."""
    questions = [" Who?", " What is the answer?", " Where", " When", " How"]
    turn1 = [system + tok.encode(q, add_special_tokens=False) for q in questions]
    gen = HFGenerator(tiny_gen.model, tok)
    out1 = gen.generate(turn1, greedy(6))
    long_obs = tok.encode("<information>" + "it is 42, " * 20 + "</information>", add_special_tokens=False)
    short_obs = tok.encode(".", add_special_tokens=False)
    turn2 = [
        p + c[0].token_ids + (long_obs if i == 2 else short_obs)
        for i, (p, c) in enumerate(zip(turn1, out1, strict=True))
    ]
    widths = []
    forward = gen._forward

    def spy(shared: Any, **kw: Any) -> Any:
        widths.append(tuple(kw["input_ids"].shape))
        return forward(shared, **kw)

    gen._forward = spy  # type: ignore[method-assign]
    out2 = gen.generate(turn2, greedy(8))
    same([c[0] for c in out2], alone(gen, turn2, greedy(8)))
    prefill = [w for w in widths if w[1] > 1]
    assert len(prefill) == 2 and sorted(w[0] for w in prefill) == [1, 4]  # the long row alone


def test_rows_joining_a_batch_with_the_same_or_another_shared_prompt(tiny_gen, tok, system, monkeypatch):
    """Continuous batching with shared prefixes: a joining row that starts with the running
    batch's prompt keeps sharing it; one with another system prompt makes the batch copy it into
    its rows (unshare) first. Either way every row gets what it gets alone."""
    other = tok.encode(
        "Answer briefly and never search for anything at all, please. " * 2, add_special_tokens=False
    )
    prompts = [
        system + tok.encode(f" Item {i}: the quick brown fox", add_special_tokens=False) for i in range(10)
    ]
    prompts += [other + tok.encode(f" Thing {i}", add_special_tokens=False) for i in range(4)]
    # row i writes 1 + i % 5 scripted tokens, then eos: rows leave the batch at different steps
    table: dict[int, int] = {}
    for i, p in enumerate(prompts):
        p.append(5000 + 10 * i)
        table.update(chain(*range(5000 + 10 * i, 5000 + 10 * i + 2 + i % 5), tok.eos_token_id))
    model = MarkovLM(tiny_gen.model, table)
    unshared = []  # (shared length before, shared length kept) at each join or shrink
    original = _Batch.unshare

    def unshare(self: _Batch, keep: int, room: int) -> None:
        unshared.append((self.shared.length if self.shared is not None else 0, keep))
        original(self, keep, room)

    monkeypatch.setattr(_Batch, "unshare", unshare)
    gen = HFGenerator(model, tok, batch_size=8)
    got = gen.generate(prompts, greedy(12))
    assert [len(c[0].token_ids) for c in got] == [1 + i % 5 for i in range(len(prompts))]
    same([c[0] for c in got], alone(gen, prompts, greedy(12)))
    assert any(p > 0 and keep == p for p, keep in unshared), "no row joined sharing the batch's prompt"
    assert any(p > 0 and keep == 0 for p, keep in unshared), "no batch gave up its shared prompt for a row"


def test_samples_of_a_prompt_share_its_prefill(tiny_gen, tok, system):
    prompts = [system + tok.encode(q, add_special_tokens=False) for q in (" Who?", " Where is it")]
    gen = HFGenerator(tiny_gen.model, tok)
    out = gen.generate(prompts, greedy(8, n=3))
    ref = alone(gen, prompts, greedy(8))
    for group, r in zip(out, ref, strict=True):
        same(group, [r] * 3)


def test_identical_prompts_are_prefilled_once(tiny_gen, tok, system, monkeypatch):
    """An ARPO branch and its parent ask for the same prompt: one prefill row, answers in order."""
    a = system + tok.encode(" Who wrote it? <result>a long tool result</result>", add_special_tokens=False)
    b = system + tok.encode(" Where is it", add_special_tokens=False)
    gen = HFGenerator(tiny_gen.model, tok, prefix_cache_bytes=0)  # no store: every prefill is seen
    prefilled: list[int] = []
    real = gen._prefill

    def counting(prompts: list[list[int]], *args: Any, **kw: Any) -> Any:
        prefilled.append(len(prompts))
        return real(prompts, *args, **kw)

    monkeypatch.setattr(gen, "_prefill", counting)
    out = gen.generate([a, b, a, a], greedy(8, n=2))
    assert sum(prefilled) == 2, f"prefilled rows per call: {prefilled}"
    ref = alone(gen, [a, b], greedy(8))
    for group, r in zip(out, [ref[0], ref[1], ref[0], ref[0]], strict=True):
        same(group, [r, r])
    sampled = gen.generate([a, a, b], SamplingParams(max_new_tokens=8, temperature=1.0, seed=3))
    assert [len(c) for c in sampled] == [1, 1, 1]


def test_prefix_cache_bytes_from_the_config(tiny_model_path):
    def build(**kw: Any) -> HFGenerator:
        return HFGenerator.from_config(
            BackendConfig(model=str(tiny_model_path), hf=HFConfig(threads=1, device="cpu", **kw))
        )

    assert build(prefix_cache_bytes=12345).prefix_store.max_bytes == 12345
    assert build(prefix_cache_bytes=0).prefix_store is None
    default = build().prefix_store.max_bytes  # an eighth of the free RAM, which moves a little
    assert default >= 256 << 20
    assert abs(default - default_prefix_cache_bytes(torch.device("cpu"))) < 1 << 30
