"""User-defined reward terms (``RewardConfig.extra_terms``) added to the ET-Agent reward."""

from __future__ import annotations

import doctest
import math
from dataclasses import replace

import pytest

from etagent.config import ConfigError, load_config
from etagent.scoring import correctness, reward_terms
from etagent.scoring.reward import RewardConfig, RewardTermConfig, group_rewards
from etagent.scoring.reward_terms import REWARD_TERMS
from tests.scoring.helpers import make_traj

HERE = "tests.scoring.test_reward_terms"


def fewer_calls(trajectories, bonus: float = 1.0) -> list[float]:
    """A user's term: ``bonus`` for a trajectory that answers without any tool call."""
    return [bonus if not t.tool_calls else 0.0 for t in trajectories]


def one_value(trajectories) -> list[float]:
    return [0.5]


def not_finite(trajectories) -> list[float]:
    return [math.nan for _ in trajectories]


def words(trajectories) -> list[str]:
    return ["x" for _ in trajectories]


def _group():
    return [
        make_traj("42", 1, think_tokens=100),
        make_traj("42", 0, think_tokens=100),
        make_traj("41", 2, think_tokens=100),
        make_traj("42", 0, think_tokens=100, well_formed=False),
    ]


def test_a_term_given_by_dotted_path_adds_exactly_weight_times_value():
    group = _group()
    base = group_rewards(group, RewardConfig())
    term = {"name": f"{HERE}:fewer_calls", "weight": 0.25, "options": {"bonus": 2.0}}
    cfg = RewardConfig(extra_terms=[term])
    parts = group_rewards(group, cfg)
    values = fewer_calls(group, bonus=2.0)
    assert values == [0.0, 2.0, 0.0, 2.0]
    for p, b, v in zip(parts, base, values, strict=True):
        assert p.score == b.score + 0.25 * v
        assert p.extra == {f"{HERE}:fewer_calls": 0.25 * v}
        # everything the ET-Agent reward is made of is unchanged
        assert replace(p, score=b.score, extra={}) == b
    assert parts[1].to_dict()[f"extra/{HERE}:fewer_calls"] == 0.5


def test_the_default_config_has_no_extra_terms():
    parts = group_rewards(_group(), RewardConfig())
    assert all(p.extra == {} for p in parts)
    assert set(parts[0].to_dict()) == {
        "score", "correctness", "f_tool", "f_len", "f_format", "tool_calls", "length", "length_z",
    }  # fmt: skip


def test_built_in_terms_by_name_add_up_in_order():
    group = _group()
    base = group_rewards(group, RewardConfig())
    cfg = RewardConfig(
        extra_terms=[
            {"name": "format", "weight": 0.5},
            {"name": "tool_calls", "weight": -0.1},
            {"name": "answered", "weight": 1.0},
        ]
    )
    parts = group_rewards(group, cfg)
    assert [p.extra["format"] for p in parts] == [0.5, 0.5, 0.5, 0.0]
    assert [p.extra["tool_calls"] for p in parts] == [-0.1 * c for c in (1, 0, 2, 0)]
    assert [p.extra["answered"] for p in parts] == [1.0] * 4
    for p, b in zip(parts, base, strict=True):
        assert p.score == b.score + p.extra["format"] + p.extra["tool_calls"] + p.extra["answered"]
    assert {"format", "tool_calls", "answered", "model_tokens"} <= set(REWARD_TERMS.names())


def test_an_unknown_term_name_fails_config_validation():
    with pytest.raises(ConfigError, match="unknown reward term 'no_such_term'"):
        load_config(RewardConfig, None, ['extra_terms=[{"name": "no_such_term"}]'])
    with pytest.raises(ValueError, match="unknown reward term"):
        RewardTermConfig(name="not a path")
    with pytest.raises(ValueError, match="repeated: format"):
        RewardConfig(extra_terms=[{"name": "format"}, {"name": "format", "weight": 2}])
    with pytest.raises(ValueError, match="weight"):
        RewardTermConfig(name="format", weight=math.inf)
    # from YAML, like any other setting
    cfg = load_config(RewardConfig, None, ['extra_terms=[{"name": "answered", "weight": 0.1}]'])
    assert cfg.extra_terms == [RewardTermConfig(name="answered", weight=0.1)]


def test_a_term_that_breaks_its_contract_is_named_in_the_error():
    group = _group()
    with pytest.raises(
        ValueError, match=rf"reward term '{HERE}:one_value' returned 1 values for a group of 4"
    ):
        group_rewards(group, RewardConfig(extra_terms=[{"name": f"{HERE}:one_value"}]))
    with pytest.raises(ValueError, match=rf"reward term '{HERE}:not_finite' returned nan"):
        group_rewards(group, RewardConfig(extra_terms=[{"name": f"{HERE}:not_finite"}]))
    with pytest.raises(ValueError, match=rf"reward term '{HERE}:words' returned 'x'"):
        group_rewards(group, RewardConfig(extra_terms=[{"name": f"{HERE}:words"}]))
    # a dotted path that does not import fails when the term is used, naming the path
    with pytest.raises(KeyError, match="no_such_function"):
        group_rewards(group, RewardConfig(extra_terms=[{"name": f"{HERE}:no_such_function"}]))


@pytest.mark.parametrize("module", [reward_terms, correctness], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
