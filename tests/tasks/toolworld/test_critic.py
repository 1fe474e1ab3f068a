"""The tool world's expert critic and helper: which calls are useful, redundant or flawed, and the
corrected steps it writes from each question's minimal plan."""

from __future__ import annotations

from etagent.flywheel import steps as st
from etagent.records import Question
from etagent.tasks.roles import RedundancyEdit, StepRewriteRequest, StepsRequest, ThinkRequest
from etagent.tasks.toolworld.critic import analyse_steps
from tests.tasks.toolworld.conftest import question_of


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
