"""Every operator on real tool-world trajectories: the expert writes flawed parents (redundant or
missing calls), the expert critic/helper edits them, the policy finishes the drafts with real tools."""

from __future__ import annotations

from etagent.flywheel import operators as ops
from etagent.flywheel import steps as st
from etagent.flywheel.roles import CriticConfig, LLMCritic
from etagent.flywheel.stage import FlywheelConfig
from etagent.protocol import tags
from etagent.scoring.correctness import exact_match
from etagent.tasks.toolworld.critic import analyse_steps
from tests.flywheel.conftest import question_of
from tests.flywheel.scripted import CannedGenerator

FRESH = FlywheelConfig().agent.budget
EDIT = FlywheelConfig().continuation_budget


def _parent(loop, q, entry_id="p#0"):
    (traj,) = loop.run([q])
    return ops.Parent(entry_id, traj, round=1)


def _finish(drafts, loop):
    return ops.continue_drafts(drafts, loop, FRESH, EDIT)


def _correct(traj) -> bool:
    return exact_match(traj.prediction, traj.question.answers) == 1.0


def test_redundancy_modification_removes_the_redundant_call(make_loop, train_questions, expert_critic):
    qs = [question_of(train_questions, t) for t in ("search1_python", "search2", "python1", "no_tool")]
    parents = [_parent(make_loop(redundant_rate=1.0), q) for q in qs]
    for p in parents:
        assert tags.count_tool_calls(p.text) == p.question.meta["min_tool_calls"] + 1
    outcomes = ops.modify_redundancy(parents, expert_critic)
    assert all(isinstance(o, ops.Draft) and o.operator == ops.REDUNDANCY for o in outcomes)
    for p, d in zip(parents, outcomes, strict=True):
        steps = st.split_steps(p.text)
        k = next(
            i for i, info in enumerate(analyse_steps(p.question, steps), 1) if info.call and not info.new
        )
        assert d.text.startswith("".join(steps[: k - 1]))  # steps before the redundant one kept verbatim
        assert steps[k - 1] not in d.text
    finished = _finish(outcomes, make_loop())
    for p, traj in zip(parents, finished, strict=True):
        assert _correct(traj) and tags.check_format(traj.response_text).ok
        assert tags.count_tool_calls(traj.response_text) == p.question.meta["min_tool_calls"]
    # a minimal trajectory has nothing to remove
    (miss,) = ops.modify_redundancy([_parent(make_loop(), qs[0])], expert_critic)
    assert isinstance(miss, ops.Miss) and "no redundant step" in miss.reason


def test_global_refinement_rewrites_only_the_thinking(make_loop, train_questions, expert_critic):
    q = question_of(train_questions, "search2_python")
    parent = _parent(make_loop(redundant_rate=1.0), q)
    (draft,) = ops.refine_globally([parent], expert_critic)
    assert isinstance(draft, ops.Draft)
    old_units, old_tail = st.action_units(parent.text)
    new_units, new_tail = st.action_units(draft.text)
    assert [u.action for u in new_units] == [
        u.action for u in old_units
    ]  # calls, results, answer: byte-identical
    assert new_tail == old_tail
    assert [u.think for u in new_units] != [u.think for u in old_units]
    assert all(u.think for u in new_units)
    loop = make_loop()
    (traj,) = _finish([draft], loop)  # already answered: returned as it is
    assert traj.response_text == draft.text and traj.finish_reason == "answer"
    # a critic whose rewrite is unusable for any action gives no candidate
    bad = LLMCritic(
        CannedGenerator(loop.tokenizer, lambda p: "<answer>nope</answer>"), CriticConfig(kind="llm")
    )
    (miss,) = ops.refine_globally([parent], bad)
    assert isinstance(miss, ops.Miss) and "action 1" in miss.reason


def test_self_correction_at_the_first_flawed_step(make_loop, train_questions, expert_critic):
    qs = [question_of(train_questions, t) for t in ("search1_python", "python1", "search2")]
    parents = [_parent(make_loop(missing_rate=1.0), q) for q in qs]
    assert not any(_correct(p.trajectory) for p in parents)
    flawed = ops.locate_flaws(parents, expert_critic)
    assert flawed == [len(st.split_steps(p.text)) for p in parents]  # the guessed answer step
    drafts = ops.self_correct(parents, flawed, expert_critic)
    for p, k, d in zip(parents, flawed, drafts, strict=True):
        steps = st.split_steps(p.text)
        assert d.text.startswith("".join(steps[: k - 1])) and d.text.endswith(
            f"</{p.question.meta['plan'][-1]['tool']}>"
        )
    finished = _finish(drafts, make_loop(missing_rate=0.0))
    for p, traj in zip(parents, finished, strict=True):
        assert _correct(traj) and tags.check_format(traj.response_text).ok
        assert tags.count_tool_calls(traj.response_text) == p.question.meta["min_tool_calls"]
    (miss,) = ops.self_correct(parents[:1], [None], expert_critic)
    assert isinstance(miss, ops.Miss) and "no flawed step" in miss.reason


def test_hints_are_inserted_as_sentences_at_the_right_place(make_loop, train_questions, expert_critic):
    q = question_of(train_questions, "search1_python")
    parent = _parent(make_loop(missing_rate=1.0), q)
    steps = st.split_steps(parent.text)
    hints = ops.seeded_hints(seed=0, pools={"qa": "general"})
    (k,) = ops.locate_flaws([parent], expert_critic)
    (step_draft,) = ops.step_hint([parent], [k], hints)
    (traj_draft,) = ops.trajectory_hint([parent], hints)
    for draft, op in ((step_draft, ops.STEP_HINT), (traj_draft, ops.TRAJECTORY_HINT)):
        hint = hints(parent, op)
        assert hint in st.HINT_POOLS["general"]
        # steps before the flawed one kept, the flawed step's thought re-opened, then the hint
        last_think = tags.parse_blocks(steps[-1])[0].content
        assert draft.text == "".join(steps[:-1]) + "<think>" + last_think + " " + hint
        assert "<answer>" not in draft.text
    assert hints(parent, ops.STEP_HINT) == ops.seeded_hints(0, {"qa": "general"})(parent, ops.STEP_HINT)
    # a hint after a result (flawed step 1 of 2): a new think right after the result
    (after_result,) = ops.step_hint([parent], [1], hints)
    assert after_result.text == steps[0] + "<think>" + hints(parent, ops.STEP_HINT)
    finished = _finish([step_draft, traj_draft, after_result], make_loop())
    for traj in finished:
        assert _correct(traj) and tags.check_format(traj.response_text).ok
        assert (
            hints(parent, ops.STEP_HINT) in traj.response_text
            or hints(parent, ops.TRAJECTORY_HINT) in traj.response_text
        )


def test_rerollout_is_a_fresh_sample(make_loop, train_questions):
    q = question_of(train_questions, "search1")
    parent = _parent(make_loop(), q)
    (draft,) = ops.rerollout([parent])
    assert draft.text is None and draft.operator == ops.REROLLOUT
    (traj,) = _finish([draft], make_loop())
    assert _correct(traj) and traj.question_id == q.id and traj.tool_calls
