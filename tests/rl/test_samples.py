"""Engine-independent RL pieces: trajectories as training samples, reward groups."""

from __future__ import annotations

import pytest

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
