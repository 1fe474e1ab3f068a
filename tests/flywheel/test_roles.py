"""Critic and helper roles: the LLM forms (prompts over any Generator, tolerant parsers, no crash on
bad output) and how build_roles picks a task's critic. The tool world's expert critic is tested in
tests/tasks/toolworld/test_critic.py."""

from __future__ import annotations

import pytest

from etagent.flywheel.roles import (
    CriticConfig,
    LLMCritic,
    LLMHelper,
    RedundancyEdit,
    RoleConfig,
    StepRewriteRequest,
    StepsRequest,
    ThinkRequest,
    build_roles,
    parse_redundancy,
    parse_step_number,
    parse_think,
)
from etagent.protocol import tags
from etagent.records import Question
from etagent.tasks.toolworld.critic import ExpertCritic
from tests.flywheel.conftest import question_of
from tests.flywheel.scripted import CannedGenerator


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


def test_build_roles_uses_the_tasks_critic_for_expert_roles(tokenizer):
    policy = CannedGenerator(tokenizer, [])
    expert = ExpertCritic()
    critic, helper, owned = build_roles(CriticConfig(), RoleConfig(), policy, expert)
    assert critic is expert and helper is expert and owned == []
    critic, helper, owned = build_roles(CriticConfig(kind="llm"), RoleConfig(), policy, expert)
    assert isinstance(critic, LLMCritic) and critic.generator is policy and helper is expert and owned == []
    # a task without a critic: an expert role is an error that names the role
    with pytest.raises(ValueError, match=r"critic\.kind is 'expert' but the task has no expert critic"):
        build_roles(CriticConfig(), RoleConfig(kind="llm"), policy, None)
    with pytest.raises(ValueError, match=r"helper\.kind is 'expert'"):
        build_roles(CriticConfig(kind="llm"), RoleConfig(), policy, None)
    critic, helper, _ = build_roles(CriticConfig(kind="llm"), RoleConfig(kind="llm"), policy, None)
    assert isinstance(critic, LLMCritic) and isinstance(helper, LLMHelper)

    class OnlyHelps:
        name = "helps"

        def rewrite_steps(self, requests):
            return [None] * len(requests)

    helps = OnlyHelps()
    assert build_roles(CriticConfig(kind="llm"), RoleConfig(), policy, helps)[1] is helps
    with pytest.raises(ValueError, match="cannot play the critic"):
        build_roles(CriticConfig(), RoleConfig(), policy, helps)
