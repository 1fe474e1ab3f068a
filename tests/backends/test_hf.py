"""HFGenerator: batching, stop strings, eos, log-probs, determinism (tiny random model, 1 thread)."""

from __future__ import annotations

import time
from typing import Any

import pytest
import torch

from etagent.backends.base import SamplingParams
from etagent.backends.config import BackendConfig
from etagent.backends.hf import HFConfig, HFGenerator
from etagent.backends.hf.sampling import _top_p_filter
from tests.backends.scripted import MarkovLM, chain


@pytest.fixture(scope="module")
def gen(tiny_gen) -> HFGenerator:
    return tiny_gen


@pytest.fixture(scope="module")
def prompts(gen) -> list[list[int]]:
    """Three prompts of different lengths, so a batch is left-padded."""
    texts = ["The capital of France is", "Hello", "Once upon a time, in a land far far away, there lived"]
    return [gen.tokenizer.encode(t, add_special_tokens=False) for t in texts]


def greedy(max_new_tokens: int = 12, **kw: Any) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **kw)


def assert_contract(tokenizer: Any, completion: Any) -> None:
    assert tokenizer.decode(completion.token_ids, skip_special_tokens=False) == completion.text
    assert completion.finish_reason in ("stop", "eos", "length")
    assert completion.logprobs is not None and len(completion.logprobs) == len(completion.token_ids)
    if completion.finish_reason == "stop":
        assert completion.stop and completion.text.endswith(completion.stop)


def test_batched_n_per_prompt_in_order(gen, prompts):
    gen.batch_size = 2  # 3 prompts x n=2 = 6 rows -> 3 chunks, with a prompt's samples split across them
    try:
        out = gen.generate(prompts, SamplingParams(max_new_tokens=6, temperature=1.0, n=2, seed=0))
    finally:
        gen.batch_size = 16
    assert [len(c) for c in out] == [2, 2, 2]
    for group in out:
        for c in group:
            assert_contract(gen.tokenizer, c)
            assert len(c.token_ids) <= 6
    # in order: greedy results per prompt equal those of each prompt alone
    batched = gen.generate(prompts, greedy(8))
    for p, group in zip(prompts, batched, strict=True):
        assert gen.generate([p], greedy(8))[0][0].token_ids == group[0].token_ids


def test_greedy_is_deterministic_and_batch_independent(gen, prompts):
    a = gen.generate(prompts, greedy(16))
    b = gen.generate(prompts, greedy(16))
    assert [c[0].token_ids for c in a] == [c[0].token_ids for c in b]
    # each prompt alone (no padding) == inside a left-padded batch == a batch of one per chunk
    alone = [gen.generate([p], greedy(16))[0][0].token_ids for p in prompts]
    assert alone == [c[0].token_ids for c in a]
    gen.batch_size = 1
    try:
        assert [c[0].token_ids for c in gen.generate(prompts, greedy(16))] == alone
    finally:
        gen.batch_size = 16


def test_logprobs_match_a_full_forward_of_a_padded_row(gen, prompts):
    """The cache, mask and position ids of a left-padded row give the same distribution as an
    unpadded teacher-forced forward pass."""
    short = prompts[1]  # the most padded row of the batch
    c = gen.generate(prompts, greedy(10))[1][0]
    seq = torch.tensor([short + c.token_ids])
    with torch.no_grad():
        logp = torch.log_softmax(gen.model(seq).logits[0].float(), -1)
    ref = logp[len(short) - 1 : -1].gather(1, torch.tensor(c.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(c.logprobs), ref, atol=1e-4)


def test_logprobs_and_top_k(gen, prompts):
    out = gen.generate(prompts[:2], greedy(8, logprobs=3))
    for group in out:
        c = group[0]
        assert c.top_logprobs is not None and len(c.top_logprobs) == len(c.token_ids)
        for tok, lp, top in zip(c.token_ids, c.logprobs, c.top_logprobs, strict=True):
            assert len(top) == 3
            assert lp is not None and lp <= 0
            best = max(top, key=top.get)
            assert best == tok and top[best] == pytest.approx(lp, abs=1e-6)  # greedy = argmax
    sampled = gen.generate(prompts[:1], SamplingParams(max_new_tokens=8, temperature=1.0, seed=1))[0][0]
    assert sampled.top_logprobs is None and len(sampled.logprobs) == len(sampled.token_ids)


def test_stop_strings_cut_and_keep_the_stop(gen):
    tok = gen.tokenizer
    ids = tok.encode(" a</search> more text", add_special_tokens=False)
    prompt = tok.encode("Question:", add_special_tokens=False)
    gen_model = gen.model
    gen.model = MarkovLM(gen_model, chain(prompt[-1], *ids))
    try:
        c = gen.generate([prompt], greedy(20, stop=["</search>", "</answer>"]))[0][0]
    finally:
        gen.model = gen_model
    assert c.text == " a</search>"
    assert c.finish_reason == "stop" and c.stop == "</search>"
    assert_contract(tok, c)
    assert all(lp is not None for lp in c.logprobs)  # the cut fell on a token boundary


def test_stop_string_ending_inside_a_token(gen):
    tok = gen.tokenizer
    ids = tok.encode("x </answer>. And then", add_special_tokens=False)
    pieces = [tok.decode([i]) for i in ids]
    assert ">." in pieces, pieces  # the stop "</answer>" ends inside the token ">."
    prompt = tok.encode("Answer:", add_special_tokens=False)
    gen_model = gen.model
    gen.model = MarkovLM(gen_model, chain(prompt[-1], *ids))
    try:
        c = gen.generate([prompt], greedy(20, stop=["</answer>"], logprobs=2))[0][0]
    finally:
        gen.model = gen_model
    assert c.text == "x </answer>"
    assert_contract(tok, c)
    # the straddling token was re-encoded: its log-prob is unknown, the ones before are kept
    assert c.logprobs[-1] is None and all(lp is not None for lp in c.logprobs[: pieces.index(">.")])
    assert len(c.top_logprobs) == len(c.token_ids)


def test_eos_is_not_in_text_or_ids(gen):
    tok = gen.tokenizer
    body = tok.encode(" done", add_special_tokens=False)
    prompt_a = tok.encode("Say it", add_special_tokens=False)
    prompt_b = tok.encode("Say nothing at all;", add_special_tokens=False)
    gen_model = gen.model
    gen.model = MarkovLM(
        gen_model, {**chain(prompt_a[-1], *body, tok.eos_token_id), prompt_b[-1]: tok.eos_token_id}
    )
    try:
        a, b = gen.generate([prompt_a, prompt_b], greedy(20, stop=["</x>"]))
    finally:
        gen.model = gen_model
    assert a[0].text == " done" and a[0].token_ids == body and a[0].finish_reason == "eos"
    assert b[0].text == "" and b[0].token_ids == [] and b[0].finish_reason == "eos"


def test_length_and_zero_tokens(gen, prompts):
    c = gen.generate(prompts[:1], greedy(5))[0][0]
    assert c.finish_reason == "length" and len(c.token_ids) == 5
    z = gen.generate(prompts[:1], greedy(0))[0][0]
    assert (z.text, z.token_ids, z.finish_reason) == ("", [], "length")
    assert gen.generate([], greedy(5)) == []
    with pytest.raises(ValueError, match="empty"):
        gen.generate([[]], greedy(5))


def test_messages_prompt_equals_rendered_ids(gen):
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    ids = gen.prompt_ids(msgs)
    assert ids[-4:] == gen.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    a = gen.generate([msgs], greedy(8))[0][0]
    b = gen.generate([ids], greedy(8))[0][0]
    assert a.token_ids == b.token_ids


def test_sampling_seed_and_filters(gen, prompts):
    p = SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7)
    a = gen.generate(prompts[:2], p)
    b = gen.generate(prompts[:2], p)
    assert [[c.token_ids for c in g] for g in a] == [[c.token_ids for c in g] for g in b]
    assert len({tuple(c.token_ids) for c in a[0]}) > 1  # n samples differ
    ref = [c[0].token_ids for c in gen.generate(prompts, greedy(8))]
    # top_k=1 and a tiny top_p both reduce sampling to greedy
    for kw in ({"top_k": 1}, {"top_p": 1e-6}):
        s = gen.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.8, seed=3, **kw))
        assert [c[0].token_ids for c in s] == ref
    rp = gen.generate(
        prompts,
        SamplingParams(
            max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=50, repetition_penalty=1.3, seed=3
        ),
    )
    for group in rp:
        assert_contract(gen.tokenizer, group[0])


def test_repetition_penalty_discourages_repeats(gen):
    tok = gen.tokenizer
    prompt = tok.encode("x", add_special_tokens=False)
    gen_model = gen.model

    class Repeater(torch.nn.Module):  # prefers the last token again, a little
        def __init__(self) -> None:
            super().__init__()
            self.base, self.config, self.generation_config = (
                gen_model,
                gen_model.config,
                gen_model.generation_config,
            )

        def forward(self, input_ids: torch.Tensor, **kw: Any) -> Any:
            out = self.base(input_ids=input_ids, **kw)
            out.logits[torch.arange(len(input_ids)), -1, input_ids[:, -1]] += 0.5
            return out

    gen.model = Repeater()
    try:
        plain = gen.generate([prompt], greedy(6))[0][0].token_ids
        penal = gen.generate([prompt], greedy(6, repetition_penalty=100.0))[0][0].token_ids
    finally:
        gen.model = gen_model
    assert plain == prompt * 6
    assert len(set(penal)) == 6 and prompt[0] not in penal


def test_top_p_filter_matches_a_full_sort():
    torch.manual_seed(0)
    x = torch.randn(4, 5000) * torch.tensor([[0.3], [2.0], [8.0], [30.0]])
    for top_p in (0.2, 0.9):
        sx, order = torch.sort(x, -1, descending=True)
        probs = torch.softmax(sx, -1)
        ref = x.scatter(1, order, sx.masked_fill((probs.cumsum(-1) - probs) >= top_p, float("-inf")))
        got = _top_p_filter(x, top_p)
        assert (got.isfinite() != ref.isfinite()).sum() <= 2  # float rounding at the boundary only


def test_live_model_in_train_mode_is_restored(gen, prompts):
    g = HFGenerator(gen.model, gen.tokenizer, batch_size=4)
    g.model.train()
    try:
        g.generate(prompts[:1], greedy(3))
        assert g.model.training
    finally:
        g.model.eval()


@pytest.mark.integration
def test_embedded_model_answers_fluently():
    t0 = time.time()
    g = HFGenerator.from_config(BackendConfig(model="embedded", hf=HFConfig(threads=1)))
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    c = g.generate([msgs], SamplingParams(max_new_tokens=24, temperature=0.0, stop=["\n\n"]))[0][0]
    assert "Paris" in c.text, c.text
    assert c.finish_reason in ("eos", "stop")
    assert_contract(g.tokenizer, c)
    assert time.time() - t0 < 30


def test_prefix_cache_reuses_earlier_turns_and_shared_prompts(gen):
    """Turn 2 of an agent loop re-sends each trajectory's history; its keys/values are reused,
    and the outputs are those of a generator without the cache."""
    tok = gen.tokenizer
    system = tok.encode(
        "You are a careful agent. Use <search>query</search> to look things up. " * 2,
        add_special_tokens=False,
    )
    questions = [tok.encode(q, add_special_tokens=False) for q in (" Who?", " What is the answer?", " Where")]
    turn1 = [system + q for q in questions]
    cold = HFGenerator(gen.model, tok, prefix_cache_bytes=0)
    warm = HFGenerator(gen.model, tok)
    assert cold.prefix_store is None and warm.prefix_store is not None

    out1 = warm.generate(turn1, greedy(10))
    assert [c[0].token_ids for c in out1] == [c[0].token_ids for c in cold.generate(turn1, greedy(10))]
    assert warm.prefix_store.hits >= 2 * len(system)  # the shared system prompt ran once, not 3 times

    observation = tok.encode("<information>it is 42</information>", add_special_tokens=False)
    turn2 = [p + c[0].token_ids + observation for p, c in zip(turn1, out1, strict=True)]
    before = warm.prefix_store.hits
    out2 = warm.generate(turn2, greedy(10, logprobs=2))
    ref2 = cold.generate(turn2, greedy(10, logprobs=2))
    assert [c[0].token_ids for c in out2] == [c[0].token_ids for c in ref2]
    for a, b in zip(out2, ref2, strict=True):
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-4)
    # every history up to its last generated token came from the store
    reused = warm.prefix_store.hits - before
    assert reused >= sum(len(p) + len(c[0].token_ids) - 1 for p, c in zip(turn1, out1, strict=True))


@pytest.mark.parametrize("update", ["in-place write", "fused AdamW step"])
def test_prefix_cache_is_dropped_when_weights_change(tiny_model_path, tokenizer, update):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_path)).eval()
    g = HFGenerator(model, tokenizer)
    prompt = tokenizer.encode("A prompt that will be cached", add_special_tokens=False)
    first = g.generate([prompt], greedy(6))[0][0]
    assert len(g.prefix_store) == 1
    if update == "in-place write":
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.5)
    else:  # a fused kernel does not bump the parameters' version counters
        versions = [p._version for p in model.parameters()]
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
        model(torch.tensor([prompt]), labels=torch.tensor([prompt])).loss.backward()
        optimizer.step()
        assert [p._version for p in model.parameters()] == versions
    second = g.generate([prompt], greedy(6))[0][0]
    fresh = HFGenerator(model, tokenizer, prefix_cache_bytes=0).generate([prompt], greedy(6))[0][0]
    assert second.token_ids == fresh.token_ids and second.logprobs == pytest.approx(fresh.logprobs, abs=1e-5)
    assert second.logprobs != pytest.approx(first.logprobs, abs=1e-5)
    assert g.prefix_store.hits == 0  # the stale entry was never used


def test_rows_join_a_running_batch_as_others_finish(gen, monkeypatch):
    """Continuous batching: with batch_size 4 and 10 prompts, waiting rows join the batch as soon
    as others stop, and every row still gets exactly what it gets alone."""
    from etagent.backends.hf import engine

    tok = gen.tokenizer
    prompts = [
        tok.encode(f"Item {i}: the quick brown fox number {i}", add_special_tokens=False) for i in range(10)
    ]
    params = greedy(12, stop=["e"])  # random text hits "e" after a varying number of tokens
    alone = [gen.generate([p], params)[0][0] for p in prompts]
    assert len({len(c.token_ids) for c in alone}) > 2, "rows should stop at different steps"
    joins = []
    original = engine._Batch.stack
    monkeypatch.setattr(
        engine._Batch,
        "stack",
        lambda self, other, room: (joins.append(len(other.rows)), original(self, other, room)),
    )
    for cache_bytes in (0, 1 << 30):  # plain left padding, and prefixes from the store
        joins.clear()
        small = HFGenerator(gen.model, tok, batch_size=4, prefix_cache_bytes=cache_bytes)
        got = small.generate(prompts, params)
        assert joins, "no row joined a running batch"
        for g, a in zip(got, alone, strict=True):
            assert (g[0].text, g[0].token_ids, g[0].finish_reason) == (a.text, a.token_ids, a.finish_reason)
            assert g[0].logprobs == pytest.approx(a.logprobs, abs=1e-4)


def test_prefix_store_eviction_and_coverage():
    from etagent.backends.hf import PrefixStore

    def kv(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, n, 2), torch.zeros(1, n, 2))]  # 16 bytes per token

    store = PrefixStore(max_bytes=16 * 10, max_entries=2)
    store.add([1, 2, 3], kv(3))
    store.add([1, 2, 3, 4, 5], kv(5))  # covers the first entry, which goes
    assert len(store) == 1 and store.nbytes == 16 * 5
    assert store.lookup([1, 2, 3, 4, 9])[0] == 4
    assert store.lookup([1, 2])[0] == 1  # the last prompt token always runs
    assert store.lookup([7, 8])[0] == 0
    store.add([7, 8, 9], kv(3))
    store.add([6, 6, 6, 6], kv(4))  # over max_entries: the least recently used ([1..5]) goes
    assert store.longest([1, 2, 3])[0] == 0 and store.longest([7, 8])[0] == 2
    store.add(list(range(20)), kv(20))  # larger than the whole budget: not kept
    assert store.longest([0, 1])[0] == 0 and store.nbytes <= store.max_bytes


def test_stats_count_the_prefills_and_every_decode_step(gen):
    """``stats`` sums what generate() did: one decode row per token that was followed by another
    step (a row's last token needs none unless it was eos, which ends it after its step), and a
    prefill for the first rows and for every group of rows joining the running batch."""
    from etagent.backends.hf import GenerateStats

    tok = gen.tokenizer
    prompts = [tok.encode(f"Item {i}: the quick brown fox", add_special_tokens=False) for i in range(6)]
    small = HFGenerator(gen.model, tok, batch_size=4)
    first = small.generate(prompts, greedy(10, stop=["e"]))
    stats = small.stats
    assert stats.prefills >= 2, "the two rows beyond the batch's 4 join in a second prefill"
    done = [c[0] for c in first]
    assert {c.finish_reason for c in done} <= {"stop", "length", "eos"}
    assert stats.decode_rows == sum(len(c.token_ids) - (c.finish_reason != "eos") for c in done)
    longest = max(len(c.token_ids) for c in done)
    assert longest - 1 <= stats.decode_steps <= stats.decode_rows
    assert stats.prefill_s > 0 and stats.decode_s > 0
    before = stats.decode_rows
    one = small.generate(prompts[:1], greedy(3))[0][0]  # summed over calls
    assert small.stats.decode_rows == before + len(one.token_ids) - (one.finish_reason != "eos")
    small.stats = GenerateStats()  # afresh
    small.generate(prompts[:1], greedy(3))
    assert small.stats.prefills == 1
    assert small.stats.decode_rows == len(one.token_ids) - (one.finish_reason != "eos")


def test_generation_inside_the_trainers_bf16_autocast(gen, monkeypatch):
    """RL with ``precision: bfloat16`` on a CPU: the trainer wraps the policy's forward in bf16
    autocast, so the rollout's prefills (shared prefix included) run in bf16 over fp32 weights and
    caches. They must work and pick fp32's first tokens, up to ties within bf16's rounding."""
    from etagent.backends.hf import attention

    tok = gen.tokenizer
    system = tok.encode(
        "You are a careful agent. Use the tools when they help. " * 4, add_special_tokens=False
    )
    prompts = [
        system + tok.encode(f" Question {i}: {i} plus {i}?", add_special_tokens=False) for i in range(6)
    ]
    params = greedy(6, logprobs=5)
    fp32 = HFGenerator(gen.model, tok).generate(prompts, params)

    shared_calls, projections = [], []
    attend = attention._attend_with_shared
    monkeypatch.setattr(
        attention, "_attend_with_shared", lambda *a, **k: shared_calls.append(1) or attend(*a, **k)
    )
    q_proj = gen.model.model.layers[0].self_attn.q_proj
    hook = q_proj.register_forward_hook(lambda _m, _inp, out: projections.append(out.dtype))
    forward = gen.model.forward

    def autocast_forward(*args, **kwargs):  # what accelerate does to the trainer's model
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(*args, **kwargs)

    monkeypatch.setattr(gen.model, "forward", autocast_forward)
    bf16 = HFGenerator(gen.model, tok).generate(prompts, params)
    hook.remove()
    assert shared_calls  # the prompts' common prefix was held once and attended to separately
    assert torch.bfloat16 in projections  # the prefills' matrix products ran in bf16
    for mixed, ref in zip(bf16, fp32, strict=True):
        assert_contract(tok, mixed[0])
        first = mixed[0].token_ids[0]
        best = max(ref[0].top_logprobs[0].values())
        assert first in ref[0].top_logprobs[0] and ref[0].top_logprobs[0][first] > best - 0.05
        assert mixed[0].logprobs[0] == pytest.approx(ref[0].top_logprobs[0][first], abs=0.05)
