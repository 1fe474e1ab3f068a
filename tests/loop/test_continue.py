"""Continuing partial trajectories (flywheel edits, branching): every way a partial can end, with
the token/mask/text alignment checked against the real tokenizer."""

from __future__ import annotations

from etagent.loop.agent_loop import BudgetConfig
from etagent.protocol import tags
from tests.loop.test_agent_loop import _check_invariants, _loop, _question

SCRIPT = (
    "<think>Look it up.</think><search>capital of Peru</search>"
    "<think>Now compute. Wait, let me use Python.</think><python>print(6*7)</python>"
    "<think>Done.</think><answer>The final answer is \\[ \\boxed{42} \\]</answer>"
)


def _full_run(tokenizer):
    loop, tools = _loop(tokenizer, {"Q?": SCRIPT})
    (full,) = loop.run([_question("q", "Q?")])
    return loop, tools, full


def test_partial_from_text_rebuilds_segments_and_calls(tokenizer):
    loop, _, full = _full_run(tokenizer)
    rebuilt = loop.partial_trajectory(full.question, full.response_text, known_calls=full.tool_calls)
    assert rebuilt.response_text == full.response_text
    assert [s.role for s in rebuilt.segments] == [s.role for s in full.segments]
    assert [(c.tool, c.input, c.result, c.status, c.segment_index) for c in rebuilt.tool_calls] == [
        (c.tool, c.input, c.result, c.status, c.segment_index) for c in full.tool_calls
    ]
    assert rebuilt.response_mask == [
        1 if s.role == "model" else 0 for s in full.segments for _ in s.token_ids
    ]
    _check_invariants(tokenizer, rebuilt)
    # a <result> that follows no tool call is model text, not a tool segment
    odd = loop.partial_trajectory(full.question, "<think>x</think><result>\nmade up\n</result>")
    assert [s.role for s in odd.segments] == ["model"] and not odd.tool_calls


def test_continue_mid_think_after_a_result_and_from_scratch(tokenizer):
    loop, tools, full = _full_run(tokenizer)
    first_result_end = full.response_text.index("</result>") + len("</result>")
    mid_think = full.response_text[:first_result_end] + "<think>Now compute. Wait,"
    after_result = full.response_text[:first_result_end]
    partials = [
        loop.partial_trajectory(full.question, mid_think, known_calls=full.tool_calls),
        loop.partial_trajectory(full.question, after_result, known_calls=full.tool_calls),
        loop.new_trajectory(full.question, 0),  # empty: a fresh rollout
    ]
    before = [p.model_copy(deep=True) for p in partials]
    tools["search"].seen.clear()
    tools["python"].seen.clear()
    out = loop.continue_run(partials)
    assert partials == before  # inputs untouched
    assert len(out) == 3
    for traj in out:
        assert traj.response_text == full.response_text
        assert traj.finish_reason == "answer" and traj.prediction == "42"
        assert tags.check_format(traj.response_text).ok
        _check_invariants(tokenizer, traj)
    # mid-think: the model's text continues in a new segment; only the python call was run again
    assert [s.role for s in out[0].segments] == ["model", "tool", "model", "model", "tool", "model"]
    assert tools["python"].seen == ["print(6*7)"] * 3 and tools["search"].seen == ["capital of Peru"]


def test_a_pending_call_in_the_prefix_is_executed_first(tokenizer):
    loop, tools, full = _full_run(tokenizer)
    tools["search"].seen.clear()
    upto_call = full.response_text[: full.response_text.index("</search>") + len("</search>")]
    # an edited step may carry text after its call: it is dropped, the call's result follows
    partial = loop.partial_trajectory(full.question, upto_call + "<think>stray</think>")
    (traj,) = loop.continue_run([partial])
    assert tools["search"].seen == ["capital of Peru"]
    assert traj.response_text == full.response_text
    assert [c.tool for c in traj.tool_calls] == ["search", "python"]
    assert traj.tool_calls[0].status == "ok" and traj.finish_reason == "answer"
    _check_invariants(tokenizer, traj)


def test_answered_partial_is_returned_and_prefix_calls_count_against_the_budget(tokenizer):
    loop, tools, full = _full_run(tokenizer)
    calls_before = loop.generator.calls
    (same,) = loop.continue_run([loop.partial_trajectory(full.question, full.response_text)])
    assert same.response_text == full.response_text and same.finish_reason == "answer"
    assert loop.generator.calls == calls_before  # nothing generated
    _check_invariants(tokenizer, same)

    # two searches already made; the budget allows two in total, so the python call is refused
    script = (
        "<think>a</think><search>s1</search><think>b</think><search>s2</search>"
        "<think>c</think><python>print(1)</python><think>d</think><answer>\\boxed{42}</answer>"
    )
    loop, tools = _loop(tokenizer, {"Q?": script})
    (done,) = loop.run([_question("q", "Q?")])
    text = done.response_text
    cut = text.index("</result>", text.index("</result>") + 1) + len("</result>")  # after both searches
    partial = loop.partial_trajectory(done.question, text[:cut], known_calls=done.tool_calls)
    tools["python"].seen.clear()
    (traj,) = loop.continue_run([partial], budget=BudgetConfig(max_calls_per_tool=10, max_tool_calls=2))
    assert [c.status for c in traj.tool_calls] == ["ok", "ok", "budget_exceeded"]
    assert tools["python"].seen == []
    assert traj.finish_reason == "answer" and traj.prediction == "42"
    _check_invariants(tokenizer, traj)
    # the loop's own budget is unchanged by a per-call budget
    assert loop.budget == BudgetConfig()


def test_many_partials_are_batched_in_input_order(tokenizer):
    scripts = {
        f"Question {i}?": f"<think>{i}</think><search>s{i}</search><think>k</think><answer>\\boxed{{{i}}}</answer>"
        for i in range(5)
    }
    loop, _ = _loop(tokenizer, scripts)
    loop.max_active = 2
    questions = [_question(f"q{i}", f"Question {i}?") for i in range(5)]
    partials = [
        loop.partial_trajectory(q, f"<think>{i}</think><search>s{i}</search>")
        for i, q in enumerate(questions)
    ]
    out = loop.continue_run(partials)
    assert [t.question_id for t in out] == [q.id for q in questions]
    assert [t.prediction for t in out] == [str(i) for i in range(5)]
    for t in out:
        _check_invariants(tokenizer, t)
