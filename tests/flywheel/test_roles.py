"""Critic and helper roles: the expert (from the tool world's plans) and the LLM forms (prompts over
any Generator, tolerant parsers, no crash on bad output)."""

from __future__ import annotations

import pytest

from etagent.flywheel import steps as st
from etagent.flywheel.roles import (
    CriticConfig,
    LLMCritic,
    LLMHelper,
    RedundancyEdit,
    RoleConfig,
    StepRewriteRequest,
    StepsRequest,
    ThinkRequest,
    analyse_steps,
    parse_redundancy,
    parse_step_number,
    parse_think,
)
from etagent.protocol import tags
from etagent.records import Question
from tests.flywheel.conftest import question_of
from tests.flywheel.scripted import CannedGenerator


def _run(loop, q):
    (traj,) = loop.run([q])
    return traj.response_text


def test_expert_analysis_marks_each_call_useful_or_not(make_loop, train_questions):
    q = question_of(train_questions, "search1_python")
    minimal = st.split_steps(_run(make_loop(), q))
    assert [bool(i.new) for i in analyse_steps(q, minimal)] == [True, True, False]  # two calls, answer
    redundant = st.split_steps(_run(make_loop(redundant_rate=1.0), q))
    infos = analyse_steps(q, redundant)
    assert sum(i.call is not None for i in infos) == q.meta["min_tool_calls"] + 1
    assert sum(bool(i.new) for i in infos) == q.meta["min_tool_calls"]


def test_expert_critic_locates_redundant_and_flawed_steps(make_loop, train_questions, expert_critic):
    q = question_of(train_questions, "search1_python")
    minimal = st.split_steps(_run(make_loop(), q))
    redundant = st.split_steps(_run(make_loop(redundant_rate=1.0), q))
    missing = st.split_steps(_run(make_loop(missing_rate=1.0), q))
    edits = expert_critic.locate_redundant_steps([StepsRequest(q, minimal), StepsRequest(q, redundant)])
    assert edits[0] is None
    edit = edits[1]
    assert isinstance(edit, RedundancyEdit) and analyse_steps(q, redundant)[edit.k - 1].new == []
    # the corrected step is the plan's next step after what steps 1..k-1 found, not the repeated call
    found = {i for info in analyse_steps(q, redundant[: edit.k - 1]) for i in info.new}
    missing_plan = [s for i, s in enumerate(q.meta["plan"]) if i not in found]
    redundant_call = analyse_steps(q, redundant)[edit.k - 1].call
    assert redundant_call is not None and redundant_call[1] not in edit.corrected_step
    if missing_plan:
        assert (missing_plan[0].get("code") or missing_plan[0].get("query")) in edit.corrected_step
    else:
        assert edit.corrected_step.endswith("</answer>") and q.answers[0] in edit.corrected_step
    flawed = expert_critic.locate_flawed_steps([StepsRequest(q, missing), StepsRequest(q, minimal[:2])])
    assert flawed == [2, None]  # the guessed answer; two useful calls and no end: nothing to point at
    (rewrite,) = expert_critic.rewrite_steps([StepRewriteRequest(q, missing, 2)])
    assert rewrite is not None and rewrite.endswith("</python>") and q.meta["plan"][1]["code"] in rewrite


def test_expert_roles_without_a_plan_give_nothing(expert_critic):
    q = Question(id="x", question="What is 2+2?", answer="4", task="math")
    steps = ["<think>a</think><answer>\\boxed{4}</answer>"]
    assert expert_critic.locate_redundant_steps([StepsRequest(q, steps)]) == [None]
    assert expert_critic.locate_flawed_steps([StepsRequest(q, steps)]) == [None]
    assert expert_critic.rewrite_steps([StepRewriteRequest(q, steps, 1)]) == [None]
    assert expert_critic.rewrite_thinks([ThinkRequest(q, "", "a", steps[0])]) == [None]
    assert expert_critic.judge_correct([(q, "4"), (q, "\\frac{8}{2}"), (q, "5")]) == [True, True, False]


@pytest.mark.parametrize(
    ("reply", "n", "allow_no", "expected"),
    [
        ("Step: 3\nAnalysis: ...", 5, False, 3),
        ("**Step:** 2", 5, False, 2),
        ("The flawed step is Step 4.", 5, False, 4),
        (" 2\n", 5, False, 2),  # after a "Step:" prefill
        ("Step: no", 5, True, "no"),
        ("Step: none", 5, False, None),
        ("Step: 9", 5, False, None),  # out of range
        ("I cannot tell.", 5, False, None),
    ],
)
def test_parse_step_number(reply, n, allow_no, expected):
    assert parse_step_number(reply, n, allow_no=allow_no) == expected


def test_parse_redundancy_and_think():
    reply = (
        "Step: 2\nAnalysis: it repeats the search.\nCorrected Step: <think>I know it already.</think>"
        "<answer>The final answer is \\[ \\boxed{5} \\]</answer>"
    )
    assert parse_redundancy(reply, 3) == RedundancyEdit(
        2, "<think>I know it already.</think><answer>The final answer is \\[ \\boxed{5} \\]</answer>"
    )
    assert parse_redundancy("Step: no", 3) == "no"
    assert parse_redundancy("Step: 2\nAnalysis: x", 3) is None  # no corrected step
    assert parse_think(" Shorter thought.</think> junk") == "Shorter thought."
    assert parse_think("<think>Kept case Exactly.") == "Kept case Exactly."  # never lower-cased
    assert parse_think("x <search>q</search>") is None and parse_think("  ") is None


def test_llm_critic_prompts_batching_and_bad_output(tokenizer, train_questions):
    q = question_of(train_questions, "search1")
    steps = [
        "<think>a</think><search>q</search>" + tags.render_result("r"),
        "<think>b</think><answer>\\boxed{x}</answer>",
    ]
    replies = [
        "Step: 1\nAnalysis: unneeded.\nCorrected Step: <think>No need to search.</think><answer>\\boxed{x}</answer>",
        "gibberish",
    ]
    gen = CannedGenerator(tokenizer, replies)
    critic = LLMCritic(gen, CriticConfig(kind="llm"))
    edits = critic.locate_redundant_steps([StepsRequest(q, steps), StepsRequest(q, steps)])
    assert edits == [RedundancyEdit(1, "<think>No need to search.</think><answer>\\boxed{x}</answer>"), None]
    assert len(gen.params) == 1  # one batched call for both
    assert "#### Step 1: <think>a</think>" in gen.prompts[0] and q.question in gen.prompts[0]

    gen = CannedGenerator(tokenizer, [" 2", "??"])
    critic = LLMCritic(gen, CriticConfig(kind="llm"))
    assert critic.locate_flawed_steps([StepsRequest(q, steps), StepsRequest(q, steps)]) == [2, None]
    assert gen.prompts[0].endswith("Step:") and gen.params[0].stop == ["Analysis:"]

    gen = CannedGenerator(tokenizer, ["A tidier thought.</think>", "<search>x</search>"])
    critic = LLMCritic(gen, CriticConfig(kind="llm"))
    requests = [ThinkRequest(q, "", "a", "<search>q</search>")] * 2
    assert critic.rewrite_thinks(requests) == ["A tidier thought.", None]

    down = LLMCritic(CannedGenerator(tokenizer, [], fail=True), CriticConfig(kind="llm"))
    assert down.locate_redundant_steps([StepsRequest(q, steps)]) == [None]  # logged, no crash


def test_llm_helper_analyses_then_rewrites(tokenizer, train_questions):
    q = question_of(train_questions, "search1")
    steps = ["<think>I guess.</think><answer>\\boxed{x}</answer>"]
    gen = CannedGenerator(
        tokenizer,
        lambda p: (
            "It guessed; it should search."
            if "Analysis: Let me analyze this step." in p
            else "Corrected step: I should look it up.<search>the fact</search>"
        ),
    )
    helper = LLMHelper(gen, RoleConfig(kind="llm"))
    assert helper.rewrite_steps([StepRewriteRequest(q, steps, 1)]) == [
        "<think>I should look it up.</think><search>the fact</search>"
    ]
    assert len(gen.params) == 2 and "It guessed; it should search." in gen.prompts[1]
    bad = LLMHelper(CannedGenerator(tokenizer, ["", "x"]), RoleConfig(kind="llm"))
    assert bad.rewrite_steps([StepRewriteRequest(q, steps, 1)]) == [None]


def test_llm_critic_judges_maths_with_the_llm_judge(tokenizer):
    q = Question(id="m", question="What is 1/2 + 1/4?", answer="3/4", task="math")
    gen = CannedGenerator(tokenizer, lambda p: "Correct" if "three quarters" in p else "Incorrect")
    critic = LLMCritic(gen, CriticConfig(kind="llm", judge_cache=False))
    assert critic.judge_correct([(q, "\\frac{3}{4}"), (q, "three quarters"), (q, "1")]) == [True, True, False]
    assert len(gen.prompts) == 2  # the rule-based check decided the first without asking
