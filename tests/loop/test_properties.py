"""Token/mask alignment of the agent loop, partial trajectories and ARPO branches, on arbitrary
scripts, token splits and budgets: ids, text and masks always agree, tool-result tokens are
always masked, and the training sample built from a trajectory keeps them aligned."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.loop.arpo import ArpoConfig
from etagent.protocol import tags
from etagent.records import Question
from etagent.rl.samples import ENDED_BY_MODEL, to_policy_sample
from tests.loop.test_agent_loop import EchoTool, ScriptedGenerator, _check_invariants
from tests.loop.test_arpo import LEVELS, _arpo

QUICK = settings(max_examples=60, deadline=None, derandomize=True, database=None)
EOS = 0

#: characters SmolLM2's byte-level vocabulary can write: it lacks the bytes of six control
#: characters and the UTF-8 lead bytes of planes 4-11 (unassigned), so text holding them does not
#: survive encoding (no model could write it)
UNWRITABLE = "\x04\x06\x13\x14\x16\x1d"
#: model text without "<" or "|" (a script never writes a result or a special token itself)
PLAIN = st.text(
    alphabet=st.characters(
        max_codepoint=0x3FFFF, exclude_characters="<|" + UNWRITABLE, exclude_categories=("Cs",)
    ),
    max_size=10,
)
CALL = st.tuples(st.sampled_from(tags.DEFAULT_TOOL_TAGS), PLAIN).map(lambda c: tags.render_call(*c))
FRAGMENT = st.one_of(
    PLAIN,
    PLAIN.map(tags.render_think),
    CALL,
    st.tuples(PLAIN.map(tags.render_think), CALL).map("".join),
    st.sampled_from(
        ["<calculator>2+2</calculator>", "<think>", "</think>", "1 < 2", "</search>", "<python>"]
    ),
    PLAIN.map(tags.render_answer),
)
#: fragments, then an ending: none, an answer, or an unknown tool's call (seen at end of sequence)
SCRIPT = st.tuples(
    st.lists(FRAGMENT, max_size=8).map("".join),
    st.sampled_from(["", "<think>ok</think><answer>\\boxed{42}</answer>", "<calculator>2+2</calculator>"]),
).map("".join)
BUDGET = st.builds(
    BudgetConfig,
    max_calls_per_tool=st.integers(0, 3),
    max_tool_calls=st.integers(0, 4),
    max_new_tokens_per_call=st.integers(1, 12),
    max_response_tokens=st.integers(4, 400),
    on_budget=st.sampled_from(["final_turn", "stop"]),
)


def _check_sample(traj) -> None:
    """The trainer's view of a trajectory: ids, loss mask and log-probs of one length, tool tokens
    out of the loss, EOS appended exactly when the model stopped on its own."""
    sample = to_policy_sample(traj, EOS)
    ended = traj.finish_reason in ENDED_BY_MODEL or not traj.response_ids
    assert sample.completion_ids == traj.response_ids + ([EOS] if ended else [])
    assert len(sample.env_mask) == len(sample.completion_ids) == len(sample.logprobs)
    roles = [s.role for s in traj.segments for _ in s.token_ids] + (["model"] if ended else [])
    assert sample.env_mask == [1 if r == "model" else 0 for r in roles]
    assert all(lp is None for lp, m in zip(sample.logprobs, sample.env_mask, strict=True) if m == 0)


@QUICK
@given(st.lists(SCRIPT, min_size=1, max_size=3), BUDGET)
def test_the_loop_keeps_ids_text_and_masks_aligned(tokenizer, scripts, budget):
    questions = [Question(id=f"q{i}", question=f"Question {i}?", answer="42") for i in range(len(scripts))]
    gen = ScriptedGenerator(tokenizer, {q.question: s for q, s in zip(questions, scripts, strict=True)})
    tools = {"search": EchoTool("search"), "python": EchoTool("python")}
    loop = AgentLoop(gen, tools, budget=budget, max_active=2)
    try:
        trajs = loop.run(questions, n=2)
    finally:
        loop.close()
    assert [(t.question_id, t.sample_index) for t in trajs] == [
        (q.id, k) for q in questions for k in range(2)
    ]
    for t in trajs:
        _check_invariants(tokenizer, t)
        _check_sample(t)
        assert len(t.tool_calls) == sum(s.role == "tool" for s in t.segments)
        executed = [c for c in t.tool_calls if c.status not in ("budget_exceeded", "unknown_tool")]
        assert len(executed) <= min(budget.max_tool_calls, 2 * budget.max_calls_per_tool)


RESULT = PLAIN.map(tags.render_result)
PARTIAL = st.lists(st.one_of(FRAGMENT, RESULT, st.just("\n")), max_size=10).map("".join)


@QUICK
@given(PARTIAL)
def test_a_partial_trajectory_masks_exactly_the_results_of_calls(tokenizer, text):
    loop = AgentLoop(
        ScriptedGenerator(tokenizer, {}), {"search": EchoTool("search"), "python": EchoTool("python")}
    )
    try:
        traj = loop.partial_trajectory(Question(id="q", question="Q?", answer="42"), text)
    finally:
        loop.close()
    assert traj.response_text == text
    assert len(traj.response_ids) == len(traj.response_mask)
    for seg in traj.segments:
        assert seg.token_ids == tokenizer.encode(seg.text, add_special_tokens=False)
    tool_segments = [k for k, s in enumerate(traj.segments) if s.role == "tool"]
    assert [c.segment_index for c in traj.tool_calls] == tool_segments
    for call in traj.tool_calls:
        seg = traj.segments[call.segment_index]
        assert seg.text.startswith("<result>") and seg.text.endswith("</result>") and call.result in seg.text
        assert call.tool in tags.DEFAULT_TOOL_TAGS and call.status == "ok"
        before = traj.segments[call.segment_index - 1].text
        assert before.rstrip().endswith(tags.close_tag(call.tool))
    # every result that directly follows a complete call (whitespace between) is masked, and
    # nothing else is
    blocks = [
        b
        for b in tags.parse_blocks(text, tags.STRUCTURE_TAGS + tags.DEFAULT_TOOL_TAGS)
        if b.content.strip() or b.kind != "text"
    ]
    answered = [
        text[b.start : b.end]
        for a, b in zip([None, *blocks], blocks, strict=False)
        if b.kind == tags.RESULT
        and b.closed
        and a is not None
        and a.kind in tags.DEFAULT_TOOL_TAGS
        and a.closed
    ]
    assert [traj.segments[k].text for k in tool_segments] == answered


@settings(QUICK, max_examples=40)
@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(1, n).flatmap(lambda i: st.tuples(st.just(i), st.integers(0, n - i))),
            st.integers(1, 3),
            st.floats(0, 1),
            st.floats(0, 50),
            st.sampled_from(["idle", "unclaimed"]),
        )
    ),
    st.lists(st.lists(st.sampled_from(list(LEVELS)), min_size=3, max_size=3), min_size=1, max_size=2),
    st.integers(0, 2**16),
)
def test_arpo_branches_keep_their_parents_prefix_and_masks(tokenizer, shape, levels, seed):
    n, (initial, reserves), beam, tau, weight, refill = shape
    cfg = ArpoConfig(
        n=n,
        initial_rollouts=initial,
        reserve_rollouts=reserves,
        beam_size=beam,
        branch_probability=tau,
        entropy_weight=weight,
        refill=refill,
    )
    arpo, _ = _arpo(tokenizer, {f"Q{i}?": lv for i, lv in enumerate(levels, 1)}, cfg)
    res = arpo.run(
        [Question(id=f"q{i}", question=f"Q{i}?", answer="42") for i in range(1, len(levels) + 1)], seed
    )
    assert len(res.trajectories) == n * len(levels)
    children = 0
    for g in range(len(levels)):
        group = res.trajectories[g * n : (g + 1) * n]
        assert [t.sample_index for t in group] == list(range(n))
        assert [t.meta["arpo"]["branch_id"] for t in group] == list(range(n))
        for t in group:
            _check_invariants(tokenizer, t)
            _check_sample(t)
            assert t.finish_reason == "answer" and t.prediction == "42"
            m = t.meta["arpo"]
            if m["parent_id"] is None:
                assert m["branch_point"] is None
                continue
            children += 1
            parent, bp = group[m["parent_id"]], m["branch_point"]
            assert m["parent_id"] < m["branch_id"] and 0 < bp < len(t.response_ids)
            assert t.response_ids[:bp] == parent.response_ids[:bp]
            assert t.response_mask[:bp] == parent.response_mask[:bp]
            assert (t.response_mask[bp - 1], t.response_mask[bp]) == (0, 1)  # right after a tool result
            ends = [
                sum(len(s.token_ids) for s in parent.segments[: k + 1]) for k in range(len(parent.segments))
            ]
            inherited = sum(1 for k, s in enumerate(parent.segments) if s.role == "tool" and ends[k] <= bp)
            assert inherited >= 1 and t.tool_calls[:inherited] == parent.tool_calls[:inherited]
    assert children == res.stats["branches"]
