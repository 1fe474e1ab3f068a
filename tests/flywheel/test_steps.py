"""The flywheel's deterministic text operations."""

from __future__ import annotations

import random

import pytest

from etagent.flywheel import steps as st
from etagent.protocol import tags

R1 = tags.render_result("(1) Kalo Vessane was born in Quessaheim.")
R2 = tags.render_result("17838995")
TRAJ = (
    "<think>I need the birth city.</think><search>Kalo Vessane birth</search>"
    + R1
    + "<think>Now compute.</think>"
    "<python>print(482135 * 37)</python>" + R2 + "<think>So it is 17838995.</think>"
    "<answer>The final answer is \\[ \\boxed{17838995} \\]</answer>"
)


def test_split_render_truncate_replace():
    steps = st.split_steps(TRAJ)
    assert len(steps) == 3 and "".join(steps) == TRAJ
    assert (
        steps[0].endswith("</result>") and steps[1].endswith("</result>") and steps[2].endswith("</answer>")
    )
    rendered = st.render_steps(steps)
    assert (
        rendered.startswith("#### Step 1: <think>I need") and "\n\n#### Step 3: <think>So it is" in rendered
    )
    assert st.truncate_after(steps, 2) == steps[0] + steps[1]
    assert st.replace_step(steps, 2, "<think>x</think>") == steps[0] + "<think>x</think>"
    with pytest.raises(ValueError, match="step 4 out of range"):
        st.truncate_after(steps, 4)


def test_hint_after_a_result_opens_a_new_think():
    steps = st.split_steps(TRAJ)
    text = st.step_hint_text(steps, 1, "Wait, let me check.")
    assert text == steps[0] + "<think>Wait, let me check."


def test_hint_after_an_answer_reopens_the_last_think():
    steps = st.split_steps(TRAJ)
    text = st.step_hint_text(steps, 3, "Wait, let me check.")
    assert text == steps[0] + steps[1] + "<think>So it is 17838995. Wait, let me check."
    assert "<answer>" not in text and st.trajectory_hint_text(TRAJ, "Wait, let me check.") == text


@pytest.mark.parametrize(
    ("tail", "expected_tail"),
    [
        ("<think>Half a thought", "<think>Half a thought H."),  # an open think is extended
        ("<think>Ok.</think><search>never run</search>", "<think>Ok. H."),  # a dangling call is dropped
        ("<answer>\\boxed{1}</answer>", "<think>H."),  # no think after the result: a new one
        ("", "<think>H."),
    ],
)
def test_hint_insertion_at_every_kind_of_end(tail, expected_tail):
    head = "<think>a</think><search>q</search>" + R1
    assert st.insert_hint(head + tail, "H.") == head + expected_tail
    # no result at all: the hint goes into the first think
    assert st.insert_hint("<think>a</think><answer>\\boxed{1}</answer>", "H.") == "<think>a H."


def test_hints_are_full_sentences_from_the_right_pool():
    rng = random.Random(0)
    for pool, word in (("search", "search"), ("python", "python")):
        sentences = st.HINT_POOLS[pool]
        assert len(sentences) == 6 and len(set(sentences)) == 6
        for s in sentences:
            assert len(s.split()) >= 8 and s[0].isupper() and s.endswith(".")
            assert word in s.lower()
        picked = {st.pick_hint(pool, rng) for _ in range(50)}
        assert picked <= set(sentences) and len(picked) > 1
    with pytest.raises(ValueError, match="unknown hint pool"):
        st.pick_hint("nope", rng)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("<think>ok</think><search>q</search>", "<think>ok</think><search>q</search>"),
        (
            "I should search.<search>q</search><result>\nfake\n</result>",
            "<think>I should search.</think><search>q</search>",
        ),
        ("#### Step 2: <think>calc<python>print(1)</python>", "<think>calc</think><python>print(1)</python>"),
        (
            "**Corrected Step:** <think>done</think><answer>\\boxed{3}</answer> trailing",
            "<think>done</think><answer>\\boxed{3}</answer>",
        ),
        (
            "```\n<think>x</think><search>q</search><think>more</think>\n```",
            "<think>x</think><search>q</search>",
        ),
        ("Here it is: <think>only a thought", "<think>only a thought</think>"),
        ("<think>t</think><search>unfinished", "<think>t</think>"),
    ],
)
def test_repair_step(raw, expected):
    assert st.repair_step(raw) == expected


@pytest.mark.parametrize("raw", ["", "   ", "<think></think><search>q</search>", "<result>\nx\n</result>"])
def test_repair_step_rejects_empty_thinking(raw):
    assert st.repair_step(raw) is None


def test_action_units_round_trip_and_reassembly():
    units, tail = st.action_units(TRAJ)
    assert [u.think for u in units] == ["I need the birth city.", "Now compute.", "So it is 17838995."]
    assert units[0].action == "<search>Kalo Vessane birth</search>" + R1
    assert units[2].action.startswith("<answer>")
    assert "".join(u.lead + u.action for u in units) + tail == TRAJ
    assert st.assemble_units(units, [None] * 3, tail) == TRAJ
    new = st.assemble_units(units, ["A", None, "C"], tail)
    assert new.startswith("<think>A</think><search>") and "<think>C</think><answer>" in new
    # an answer right after a result (no think before it): a unit without thinking
    bare = "<think>a</think><search>q</search>" + R1 + "<answer>\\boxed{1}</answer>"
    units, tail = st.action_units(bare)
    assert [u.think for u in units] == ["a", None] and tail == ""
