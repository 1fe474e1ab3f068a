import math
import random

import pytest

from etagent.config import ConfigError, load_config
from etagent.protocol import tags
from etagent.scoring.reward import RewardConfig, et_rewards, group_rewards, sigma_factor
from tests.scoring.helpers import make_traj

N_GROUPS = 400


def _random_group(rng: random.Random, *, binary: bool | None = None):
    n = rng.randint(1, 16)
    binary = rng.random() < 0.5 if binary is None else binary
    correctness = [
        float(rng.random() < 0.5) if binary else rng.choice([0.0, 0.25, 0.5, 1.0]) for _ in range(n)
    ]
    calls = [rng.randint(0, 12) for _ in range(n)]
    # few distinct lengths, so that equal lengths (and sd = 0 groups) occur
    lengths = [rng.choice([50, 100, 300, 4096]) for _ in range(n)]
    format_ok = [rng.random() < 0.8 for _ in range(n)]
    return correctness, calls, lengths, format_ok


def test_worked_example_of_method_6_4():
    # sigma 0.2 / 0.5, group of 3, lengths 300/100/500
    parts = et_rewards([1, 1, 0], [1, 0, 2], [300, 100, 500], [True] * 3, sigma_tool=0.2, sigma_length=0.5)
    assert parts[0].score == pytest.approx(1.0)
    assert round(parts[1].score, 2) == 1.43
    assert parts[2].score == 0.0
    assert parts[1].f_tool == pytest.approx(2 / (1 + math.exp(-0.2)))
    assert parts[1].length_z == pytest.approx(-math.sqrt(1.5))
    assert [p.tool_calls for p in parts] == [1, 0, 2] and [p.length for p in parts] == [300, 100, 500]


def test_at_sigma_zero_the_reward_is_correctness_plus_format():
    rng = random.Random(0)
    for _ in range(N_GROUPS):
        r, c, lengths, ok = _random_group(rng)
        for p, ri, oki in zip(et_rewards(r, c, lengths, ok, 0.0, 0.0), r, ok, strict=True):
            assert p.score == ri + (0.0 if oki else -1.0)
            assert p.f_tool == 1.0 and p.f_len == 1.0


def test_factors_are_one_at_the_group_mean():
    rng = random.Random(1)
    checked_tool = checked_len = 0
    for _ in range(N_GROUPS):
        r, c, lengths, ok = _random_group(rng)
        parts = et_rewards(r, c, lengths, ok, rng.uniform(0.01, 1), rng.uniform(0.01, 1))
        mean_calls, mean_len = sum(c) / len(c), sum(lengths) / len(lengths)
        for p in parts:
            if p.tool_calls == mean_calls:
                assert p.f_tool == pytest.approx(1.0)
                checked_tool += 1
            assert (p.f_tool > 1) == (p.tool_calls < mean_calls) or p.tool_calls == mean_calls
            if p.length == mean_len:
                assert p.f_len == pytest.approx(1.0)
                checked_len += 1
            assert (p.f_len > 1) == (p.length < mean_len) or p.length == mean_len
    assert checked_tool > 50 and checked_len > 50  # the properties were exercised, not skipped


def test_at_equal_correctness_and_length_more_tool_calls_earn_less():
    rng = random.Random(2)
    pairs = 0
    for _ in range(N_GROUPS):
        r, c, lengths, ok = _random_group(rng, binary=False)
        ok = [True] * len(ok)
        parts = et_rewards(r, c, lengths, ok, rng.uniform(0.05, 1), rng.uniform(0, 1))
        for a in parts:
            for b in parts:
                if (
                    a.correctness == b.correctness > 0
                    and a.length == b.length
                    and a.tool_calls < b.tool_calls
                ):
                    assert a.score > b.score
                    pairs += 1
    assert pairs > 100


def test_range_is_minus_one_to_four():
    rng = random.Random(3)
    seen_low = seen_high = False
    for _ in range(N_GROUPS * 2):
        r, c, lengths, ok = _random_group(rng)
        for p in et_rewards(r, c, lengths, ok, rng.uniform(0, 1), rng.uniform(0, 1)):
            assert -1.0 <= p.score < 4.0
            assert 0 < p.f_tool < 2 and 0 < p.f_len < 2
            seen_low |= p.score == -1.0
            seen_high |= p.score > 2.0
    assert seen_low and seen_high
    # extreme sigmas do not overflow
    parts = et_rewards([1, 1], [0, 10_000], [1, 10**9], [True, True], 50.0, 50.0)
    assert parts[0].score == pytest.approx(4.0) and parts[1].score == pytest.approx(0.0)


def test_constant_lengths_give_zero_z_scores():
    parts = et_rewards([1, 0, 1], [0, 1, 2], [100, 100, 100], [True, False, True])
    assert [p.length_z for p in parts] == [0.0, 0.0, 0.0]
    assert all(p.f_len == 1.0 for p in parts)
    assert parts[1].score == -1.0  # wrong, badly formatted
    assert et_rewards([], [], [], []) == []
    with pytest.raises(ValueError, match="one value per trajectory"):
        et_rewards([1], [0, 1], [1], [True])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        et_rewards([1.5], [0], [1], [True])


def test_sigma_factor_decays_linearly_from_one_to_zero():
    assert sigma_factor(1, 5) == 1.0
    assert sigma_factor(3, 5) == 0.5
    assert sigma_factor(5, 5) == 0.0
    assert sigma_factor(7, 5) == 0.0  # past the end it stays 0
    assert sigma_factor(1, 1) == 0.0  # the reference: 0 if T = 1
    with pytest.raises(ValueError, match="1-based"):
        sigma_factor(0, 5)
    with pytest.raises(ValueError, match="total_steps"):
        sigma_factor(1, 0)


def test_group_rewards_measure_the_trajectories():
    group = [
        make_traj("42", 1, think_tokens=100),  # 2 model segments -> 200 model tokens
        make_traj("42", 0, think_tokens=100),  # 100
        make_traj("41", 2, think_tokens=100),  # 300
        make_traj("42", 0, think_tokens=100, well_formed=False),  # 100, format penalty
    ]
    parts = group_rewards(group, RewardConfig())
    assert [p.tool_calls for p in parts] == [1, 0, 2, 0]
    assert [p.length for p in parts] == [200, 100, 300, 100]
    assert [p.correctness for p in parts] == [1.0, 1.0, 0.0, 1.0]
    assert [p.f_format for p in parts] == [0.0, 0.0, 0.0, -1.0]
    expected = et_rewards(
        [1, 1, 0, 1], [1, 0, 2, 0], [200, 100, 300, 100], [True, True, True, False], 0.2, 0.5
    )
    assert [p.score for p in parts] == [e.score for e in expected]
    # the direct correct answer beats the one that searched
    assert parts[1].score > parts[0].score > parts[2].score
    # tool tokens (3 per result) enter the length only when asked
    with_tools = group_rewards(group, RewardConfig(length_includes_tool_tokens=True))
    assert [p.length for p in with_tools] == [203, 100, 306, 100]


def test_group_rewards_decay_and_sigma_zero():
    group = [make_traj("42", k, think_tokens=10 * (k + 1)) for k in range(3)]  # 10, 40, 90 model tokens
    plain = [p.score for p in group_rewards(group, RewardConfig(sigma_tool=0, sigma_length=0))]
    assert plain == [1.0, 1.0, 1.0]
    cfg = RewardConfig()
    assert [p.score for p in group_rewards(group, cfg, step=10, total_steps=10)] == plain  # fully decayed
    first = group_rewards(group, cfg, step=1, total_steps=10)
    assert [p.score for p in first] == [p.score for p in group_rewards(group, cfg)]  # factor 1
    half = group_rewards(group, cfg, step=2, total_steps=3)
    direct = et_rewards([1, 1, 1], [0, 1, 2], [10, 40, 90], [True] * 3, 0.1, 0.25)
    assert [p.score for p in half] == pytest.approx([p.score for p in direct])
    # decay off: steps are ignored
    off = group_rewards(group, RewardConfig(decay=False), step=10, total_steps=10)
    assert [p.score for p in off] == [p.score for p in first]
    with pytest.raises(ValueError, match="both step and total_steps"):
        group_rewards(group, cfg, step=3)


def test_group_rewards_correctness_by_task_and_metric():
    qa = [
        make_traj("New York City", gold=["new york"]),
        make_traj("the Big Apple, NY", gold=["Big Apple NY"]),
    ]
    f1 = [p.correctness for p in group_rewards(qa, RewardConfig(sigma_tool=0, sigma_length=0))]
    assert f1 == [pytest.approx(0.8), 1.0]  # real token F1
    em = [p.correctness for p in group_rewards(qa, RewardConfig(qa_metric="exact_match"))]
    assert em == [0.0, 1.0]  # the reference reward's normalised exact match
    maths = [
        make_traj("0.5", gold="\\frac{1}{2}", task="math"),
        make_traj("2", gold="\\frac{1}{2}", task="math"),
    ]
    assert [p.correctness for p in group_rewards(maths)] == [1.0, 0.0]
    with pytest.raises(ValueError, match="one question"):
        group_rewards([make_traj("1", qid="a"), make_traj("1", qid="b")])


def test_reward_config_loads_from_yaml(tmp_path):
    path = tmp_path / "reward.yaml"
    path.write_text("sigma_tool: 0.0\nsigma_length: 0.0\nqa_metric: exact_match\n")
    cfg = load_config(RewardConfig, path, ["decay=false"])
    assert (cfg.sigma_tool, cfg.sigma_length, cfg.qa_metric, cfg.decay) == (0.0, 0.0, "exact_match", False)
    with pytest.raises(ConfigError, match="qa_metric"):
        load_config(RewardConfig, None, ["qa_metric=accuracy"])
    with pytest.raises(ConfigError, match="sigma_tool"):
        load_config(RewardConfig, None, ["sigma_tool=-1"])


def test_format_penalty_follows_the_reference_check_not_the_strict_one():
    # docs/method.md Decision 2: the reward is 6.4's, whose validate_format is looser than the
    # strict export check (tags.check_reward_format vs tags.check_format)
    preamble = make_traj("42", 1)
    preamble.segments[0].text = "Let me see. " + preamble.segments[0].text
    unclosed_box = make_traj("42", 1)
    unclosed_box.segments[-1].text = unclosed_box.segments[-1].text.replace("\\boxed{42}", "\\boxed{42")
    plain = make_traj("42", 1)
    texts = [t.response_text for t in (preamble, unclosed_box, plain)]
    assert [tags.check_format(x).ok for x in texts] == [False, True, True]
    assert [tags.check_reward_format(x).ok for x in texts] == [True, False, True]
    parts = group_rewards([preamble, unclosed_box, plain], RewardConfig(sigma_tool=0, sigma_length=0))
    assert [p.f_format for p in parts] == [0.0, -1.0, 0.0]
    assert [p.score for p in parts] == [1.0, 0.0, 1.0]
