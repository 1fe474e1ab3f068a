"""ARPO branching bookkeeping with a scripted generator whose per-segment entropy a test chooses."""

from __future__ import annotations

import logging
import math
import random

import pytest

from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.loop.arpo import ArpoConfig, ArpoRollout, segment_entropy
from etagent.records import Question
from tests.loop.test_agent_loop import ASSISTANT, EchoTool, ScriptedGenerator

# every segment is longer than the 20 tokens whose entropy is measured
SCRIPT = (
    "<think>First I need to look this up in the encyclopedia before anything else.</think>"
    "<search>alpha</search>"
    "<think>Now I compute the value from what the passage says about it.</think>"
    "<python>print(1)</python>"
    "<think>That settles it, so I can answer right away.</think>"
    "<answer>The final answer is \\[ \\boxed{42} \\]</answer>"
)
# top-k alternatives per token for each entropy level: H per position = ln(number of entries)
LEVELS = {"low": 1, "mid": 2, "high": 10}


class EntropyScripted(ScriptedGenerator):
    """The scripted model, with log-probs whose entropy depends on the segment being written:
    ``levels[question][k]`` is the level of the segment after the k-th tool result."""

    def __init__(self, tokenizer, scripts, levels, top_k: bool = True):
        super().__init__(tokenizer, scripts)
        self.levels = levels
        self.top_k = top_k

    def generate(self, prompts, params):
        out = super().generate(prompts, params)
        for p, comps in zip(prompts, out, strict=True):
            text = self.tokenizer.decode(self.prompt_ids(p), skip_special_tokens=False)
            head, response = text.rsplit(ASSISTANT, 1)
            question = head.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
            level = self.levels[question][response.count("<result>")]
            k = LEVELS[level]
            for c in comps:
                c.logprobs = [math.log(1 / k)] * len(c.token_ids)
                if self.top_k:
                    c.top_logprobs = [
                        {t: math.log(1 / k), **{10**6 + j: math.log(1 / k) for j in range(k - 1)}}
                        for t in c.token_ids
                    ]
        return out


def _q(i: int) -> Question:
    return Question(id=f"q{i}", question=f"Q{i}?", answer="42")


def _arpo(tokenizer, levels, cfg: ArpoConfig, top_k: bool = True):
    scripts = {q: SCRIPT for q in levels}
    gen = EntropyScripted(tokenizer, scripts, levels, top_k=top_k)
    tools = {"search": EchoTool("search"), "python": EchoTool("python")}
    loop = AgentLoop(gen, tools, budget=BudgetConfig())
    return ArpoRollout(loop, cfg), gen


def test_segment_entropy_top_k_sampled_and_none():
    v = 49152
    ids = list(range(30))
    tops = [{i: math.log(0.1), **{1000 + j: math.log(0.1) for j in range(9)}} for i in ids]
    h, method = segment_entropy(ids, [math.log(0.1)] * 30, tops, v, max_tokens=20)
    assert method == "top_k" and h == pytest.approx(20 * math.log(10) / math.log(v))
    # the sampled token is added when it is outside the top-k
    h1, _ = segment_entropy([5], [math.log(0.5)], [{7: math.log(0.5)}], v)
    assert h1 == pytest.approx(math.log(2) / math.log(v))
    h, method = segment_entropy(ids[:4], [-1.0, -2.0, None, -3.0], None, v)
    assert method == "sampled" and h == pytest.approx(6.0 / math.log(v))
    assert segment_entropy(ids[:4], None, None, v) == (0.0, "none")


def test_exact_branch_counts_lineage_and_shared_prefix(tokenizer):
    # tau = 0 and a huge weight make the decision deterministic: branch iff dH > 0.
    # Segment 0 sets H_init (dH = 0: no branch); segment 1 is more uncertain: branch after it.
    cfg = ArpoConfig(n=5, initial_rollouts=2, beam_size=2, branch_probability=0.0, entropy_weight=100.0)
    arpo, _ = _arpo(tokenizer, {"Q1?": ["low", "high", "low"]}, cfg)
    res = arpo.run([_q(1)], seed=3)
    trajs = res.trajectories
    assert len(trajs) == 5 and [t.sample_index for t in trajs] == [0, 1, 2, 3, 4]
    meta = [t.meta["arpo"] for t in trajs]
    assert [m["branch_id"] for m in meta] == [0, 1, 2, 3, 4]
    assert [m["parent_id"] for m in meta] == [None, None, 0, 1, None]
    assert [m["initial"] for m in meta] == [True, True, False, False, False]
    # rounds: 1 seg0 (2 decisions, none taken), 2 seg1 (2 taken), 3 answers; then the fifth and
    # last rollout starts fresh (rounds 4-6, no decision: n is reached)
    assert [m["round_created"] for m in meta] == [0, 0, 2, 2, 3]
    s = res.stats
    assert (s["branches"], s["fresh_rollouts"], s["decisions"], s["rounds"]) == (2, 1, 4, 6)
    assert s["branching_rate"] == pytest.approx(2 / 4)
    assert s["entropy_method"] == "top_k" == res.entropy_method
    assert [[d["branched"] for d in m["decisions"]] for m in meta] == [
        [False, True],
        [False, True],
        [],
        [],
        [],
    ]
    assert meta[0]["decisions"][1]["child_id"] == 2 and meta[1]["decisions"][1]["child_id"] == 3
    low = 0.0
    high = 20 * math.log(10) / math.log(len(tokenizer))
    assert meta[0]["h_init"] == pytest.approx(low)
    assert meta[0]["decisions"][1]["delta_h"] == pytest.approx(high - low)
    for child in trajs[2:4]:
        m = child.meta["arpo"]
        parent = trajs[m["parent_id"]]
        bp = m["branch_point"]
        # the branch point is right after the parent's second tool result
        second_result_end = sum(len(seg.token_ids) for seg in parent.segments[:4])  # model, tool, model, tool
        assert bp == second_result_end and parent.segments[3].role == "tool"
        assert child.response_ids[:bp] == parent.response_ids[:bp]
        assert child.response_mask[:bp] == parent.response_mask[:bp]
        assert child.response_mask[bp - 1] == 0 and child.response_mask[bp] == 1
        assert [c.tool for c in child.tool_calls] == ["search", "python"]  # inherited, not re-run
        assert child.prediction == "42" and child.finish_reason == "answer"
    # generated tokens count shared prefixes once: 3 full rollouts + 2 answer-only suffixes
    full = trajs[0].num_model_tokens
    suffix = len(trajs[2].segments[-1].token_ids)
    assert s["generated_tokens"] == 3 * full + 2 * suffix


def test_decisions_follow_the_seeded_draws(tokenizer):
    # every decision uses the next uniform draw of random.Random(seed), in the order taken
    cfg = ArpoConfig(n=8, initial_rollouts=3, branch_probability=0.5)
    levels = {"Q1?": ["mid", "mid", "mid"], "Q2?": ["mid", "mid", "mid"]}
    arpo, _ = _arpo(tokenizer, levels, cfg)
    res = arpo.run([_q(1), _q(2)], seed=11)
    assert len(res.trajectories) == 16
    records = [
        (d["round"], t.question_id, t.meta["arpo"]["branch_id"], d)
        for t in res.trajectories
        for d in t.meta["arpo"]["decisions"]
    ]
    records.sort(key=lambda r: r[:3])  # the order decisions are taken in
    assert len(records) >= 6  # at least each initial rollout's first tool result
    rng = random.Random(11)
    for *_, d in records:
        assert d["u"] == rng.random()
        assert d["delta_h"] == pytest.approx(0.0, abs=1e-9)  # equal entropy everywhere
        assert d["branched"] == (d["u"] <= 0.5)
    taken = sum(d["branched"] for *_, d in records)
    assert (
        taken
        == res.stats["branches"]
        == sum(t.meta["arpo"]["parent_id"] is not None for t in res.trajectories)
    )
    assert res.stats["decisions"] == len(records)
    again = arpo.run([_q(1), _q(2)], seed=11)
    assert [t.meta["arpo"] for t in again.trajectories] == [t.meta["arpo"] for t in res.trajectories]
    other = arpo.run([_q(1), _q(2)], seed=12)
    assert [d["u"] for t in other.trajectories for d in t.meta["arpo"]["decisions"]] != [
        d["u"] for t in res.trajectories for d in t.meta["arpo"]["decisions"]
    ]


def test_h_init_is_reset_between_calls(tokenizer):
    # call 1 starts very uncertain; call 2 starts certain and then becomes moderately uncertain.
    # With a stale H_init (call 1's "high") call 2's dH would be negative: no branch. Fresh: branch.
    cfg = ArpoConfig(n=4, initial_rollouts=2, branch_probability=0.0, entropy_weight=100.0)
    levels = {"Q1?": ["high", "high", "high"]}
    arpo, gen = _arpo(tokenizer, levels, cfg)
    first = arpo.run([_q(1)], seed=0)
    assert first.stats["branches"] == 0  # dH = 0 throughout
    h_high = first.trajectories[0].meta["arpo"]["h_init"]
    gen.levels["Q1?"] = ["low", "mid", "mid"]
    second = arpo.run([_q(1)], seed=0)
    h_low = second.trajectories[0].meta["arpo"]["h_init"]
    assert h_low == pytest.approx(0.0) and h_high > 0.1
    assert second.stats["branches"] == 2
    d1, d2 = second.trajectories[0].meta["arpo"]["decisions"]
    assert d1["delta_h"] == pytest.approx(0.0) and not d1["branched"]
    assert d2["delta_h"] == pytest.approx(20 * math.log(2) / math.log(len(tokenizer))) and d2["branched"]


def test_sampled_entropy_estimate_is_flagged(tokenizer, caplog):
    cfg = ArpoConfig(n=3, initial_rollouts=2)
    arpo, _ = _arpo(tokenizer, {"Q1?": ["low", "high", "mid"]}, cfg, top_k=False)
    with caplog.at_level(logging.WARNING, logger="etagent.arpo"):
        res = arpo.run([_q(1)], seed=0)
    assert res.entropy_method == "sampled" and len(res.trajectories) == 3
    assert all(t.meta["arpo"]["entropy_method"] == "sampled" for t in res.trajectories)
    assert any("sampled-token" in r.getMessage() for r in caplog.records)
    decision = res.trajectories[0].meta["arpo"]["decisions"][1]
    # -log p per position, summed: 'high' segment tokens have p = 0.1
    assert decision["entropy"] > 0


def test_initial_rollouts_cannot_exceed_n():
    with pytest.raises(ValueError, match="initial_rollouts"):
        ArpoConfig(n=4, initial_rollouts=8)


def test_unclaimed_refill_starts_fresh_rollouts_for_slots_branches_cannot_claim(tokenizer):
    # n=5, 2 initial: after round 1 two branches are live and could claim 2 of the 3 open slots,
    # so one fresh rollout starts at once (instead of waiting for every branch to finish)
    cfg = ArpoConfig(
        n=5, initial_rollouts=2, branch_probability=0.0, entropy_weight=100.0, refill="unclaimed"
    )
    arpo, _ = _arpo(tokenizer, {"Q1?": ["low", "high", "low"]}, cfg)
    res = arpo.run([_q(1)], seed=0)
    meta = [t.meta["arpo"] for t in res.trajectories]
    assert [m["parent_id"] for m in meta] == [None, None, None, 0, 1]
    assert [m["round_created"] for m in meta] == [0, 0, 1, 2, 2]
    stats = res.stats
    assert (stats["fresh_rollouts"], stats["branches"], stats["rounds"]) == (1, 2, 4)  # idle: 6 rounds


def _branch_after_second_result(tokenizer, n: int, reserves: int):
    """Two initial rollouts, each branching once right after its second tool result."""
    cfg = ArpoConfig(
        n=n, initial_rollouts=2, reserve_rollouts=reserves, branch_probability=0.0, entropy_weight=100.0
    )
    arpo, _ = _arpo(tokenizer, {"Q1?": ["low", "high", "low"]}, cfg)
    res = arpo.run([_q(1)], seed=3)
    return res, [t.meta["arpo"] for t in res.trajectories]


def test_a_reserve_fills_the_last_slot_without_extra_rounds(tokenizer):
    # as in test_exact_branch_counts...: two branches at the second tool result, one slot left.
    # Without a reserve, the fifth rollout starts fresh after round 3 (6 rounds); the reserve
    # started at round 0 has finished by then and is taken at once.
    res, meta = _branch_after_second_result(tokenizer, n=5, reserves=1)
    assert [m["parent_id"] for m in meta] == [None, None, 0, 1, None]
    assert [m["reserve"] for m in meta] == [False, False, False, False, True]
    assert [m["round_created"] for m in meta] == [0, 0, 2, 2, 3]
    assert meta[4]["decisions"] == []  # a reserve decides nothing before it is taken
    s = res.stats
    assert (s["rounds"], s["fresh_rollouts"], s["reserves_used"], s["reserves_dropped"]) == (3, 1, 1, 0)
    reserve = res.trajectories[4]
    assert reserve.prediction == "42" and reserve.num_model_tokens == res.trajectories[0].num_model_tokens


def test_unneeded_reserves_are_dropped_and_their_tokens_counted(tokenizer):
    # branches fill both open slots at round 2: the two reserves are dropped mid-rollout
    res, meta = _branch_after_second_result(tokenizer, n=4, reserves=2)
    assert [m["parent_id"] for m in meta] == [None, None, 0, 1]
    assert not any(m["reserve"] for m in meta)
    s = res.stats
    assert (s["rounds"], s["reserves_used"], s["reserves_dropped"], s["fresh_rollouts"]) == (3, 0, 2, 0)
    assert s["round_rows"] == [4, 4, 4]  # 2 initial + 2 reserves, then 2 initial + 2 children
    trajs = res.trajectories
    two_segments = sum(len(seg.token_ids) for seg in trajs[0].segments[:3] if seg.role == "model")
    answer = len(trajs[2].segments[-1].token_ids)
    assert s["generated_tokens"] == 2 * trajs[0].num_model_tokens + 2 * answer + 2 * two_segments


def test_reserves_cannot_exceed_the_open_slots():
    with pytest.raises(ValueError, match="reserve_rollouts"):
        ArpoConfig(n=8, initial_rollouts=6, reserve_rollouts=3)
