"""Engine-independent RL pieces: trajectories as training samples, reward groups."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etagent.records import Question, Segment, Trajectory
from etagent.rl.samples import batch_rewards, split_groups, to_policy_sample
from etagent.scoring.reward import RewardConfig, group_rewards

EOS = 2
ANSWER = "<think>ok</think><answer>The final answer is \\[ \\boxed{42} \\]</answer>"


def _traj(qid: str, finish: str = "answer", text: str = ANSWER) -> Trajectory:
    q = Question(id=qid, question="Q?", answer="42")
    return Trajectory(
        question_id=qid,
        question=q,
        prompt_text="p",
        prompt_ids=[1, 1],
        segments=[
            Segment(role="model", text="<search>x</search>", token_ids=[10, 11], logprobs=[-0.1, -0.2]),
            Segment(role="tool", text="<result>\nr\n</result>", token_ids=[20, 21, 22]),
            Segment(role="model", text=text, token_ids=[30], logprobs=None),
        ],
        finish_reason=finish,
        prediction="42" if "42" in text else "",
    )


def test_policy_sample_masks_tool_tokens_and_appends_eos_when_the_model_stopped():
    s = to_policy_sample(_traj("a"), EOS)
    assert s.prompt_ids == [1, 1]
    assert s.completion_ids == [10, 11, 20, 21, 22, 30, EOS]
    assert s.env_mask == [1, 1, 0, 0, 0, 1, 1]
    assert s.logprobs == [-0.1, -0.2, None, None, None, None, None]
    cut = to_policy_sample(_traj("a", finish="length"), EOS)
    assert cut.completion_ids == [10, 11, 20, 21, 22, 30] and cut.env_mask == [1, 1, 0, 0, 0, 1]


def test_groups_are_consecutive_and_never_mix_questions():
    assert split_groups([1, 2, 3, 4], 2) == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="groups of 3"):
        split_groups([1, 2, 3, 4], 3)
    cfg = RewardConfig()
    trajs = [_traj("a"), _traj("a", text="<answer>\\boxed{7}</answer>"), _traj("b"), _traj("b")]
    parts = batch_rewards(trajs, 2, cfg, step=1, total_steps=4)
    assert parts == group_rewards(trajs[:2], cfg, 1, 4) + group_rewards(trajs[2:], cfg, 1, 4)
    assert [p.correctness for p in parts] == [1.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="mixes questions"):
        batch_rewards([trajs[0], trajs[2], trajs[1], trajs[3]], 2, cfg)


SEGMENT = st.tuples(
    st.sampled_from(["model", "tool"]), st.lists(st.integers(3, 1000), max_size=6), st.booleans()
)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    st.lists(SEGMENT, max_size=6),
    st.sampled_from(["answer", "eos", "length", "tool_budget", "response_budget", "context"]),
)
def test_policy_samples_keep_ids_masks_and_logprobs_aligned(segments, finish):
    segs = [
        Segment(
            role=role,
            text="x" * len(ids),
            token_ids=ids,
            logprobs=[-0.5 - k for k in range(len(ids))] if role == "model" and has_lp else None,
        )
        for role, ids, has_lp in segments
    ]
    traj = Trajectory(
        question_id="q",
        question=Question(id="q", question="Q?", answer="42"),
        prompt_text="p",
        prompt_ids=[1],
        segments=segs,
        finish_reason=finish,
    )
    s = to_policy_sample(traj, EOS)
    ended = finish in ("answer", "eos") or not traj.response_ids
    assert s.completion_ids == traj.response_ids + ([EOS] if ended else [])
    assert len(s.env_mask) == len(s.completion_ids) == len(s.logprobs)
    assert s.env_mask == traj.response_mask + ([1] if ended else [])
    expected_lps = [lp for seg in segs for lp in (seg.logprobs or [None] * len(seg.token_ids))]
    assert s.logprobs == expected_lps + ([None] if ended else [])
    # tool tokens are out of the loss and carry no sampler log-probability; model tokens are in it
    roles = [seg.role for seg in segs for _ in seg.token_ids]
    for role, m, lp in zip(roles, s.env_mask, s.logprobs, strict=False):
        assert m == (role == "model") and (role == "model" or lp is None)
