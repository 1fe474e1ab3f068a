r"""Reward terms a config adds to the ET-Agent reward (``reward.extra_terms``), TRL ``reward_funcs`` style.

A term is a pure function over one question's group of trajectories::

    def my_term(trajectories: Sequence[Trajectory], **options) -> list[float]: ...

returning one finite number per trajectory, in order. ``reward.extra_terms`` names it (a name
registered here, or a dotted path ``package.module:function``) with a weight and its options::

    reward:
      extra_terms:
        - {name: answered, weight: 0.1}
        - {name: my_pkg.rewards:cites_a_source, weight: 0.5, options: {min_sources: 2}}

and the trajectory's score gains ``weight * value`` for every term (:func:`etagent.scoring.reward.group_rewards`).
A package can add a short name with ``REWARD_TERMS.register("cites", "my_pkg.rewards:cites_a_source")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from etagent.protocol import tags
from etagent.records import Question, Segment, Trajectory
from etagent.registry import Registry

#: ``fn(trajectories, **options) -> one float per trajectory``
RewardTerm = Callable[..., list[float]]

REWARD_TERMS: Registry[RewardTerm] = Registry(
    "reward term",
    {
        "format": "etagent.scoring.reward_terms:strict_format",
        "tool_calls": "etagent.scoring.reward_terms:tool_calls",
        "answered": "etagent.scoring.reward_terms:answered",
        "model_tokens": "etagent.scoring.reward_terms:model_tokens",
    },
)


def _tool_tags(tool_tags: Sequence[str] | None) -> tuple[str, ...]:
    return tags.DEFAULT_TOOL_TAGS if tool_tags is None else tuple(tool_tags)


def strict_format(trajectories: Sequence[Trajectory], tool_tags: Sequence[str] | None = None) -> list[float]:
    r"""1 when the trajectory passes the strict format check (``tags.check_format``), else 0.

    >>> good = example_trajectory("<think>2 + 2 = 4</think><answer>\\boxed{4}</answer>")
    >>> strict_format([good, example_trajectory("4")])
    [1.0, 0.0]
    """
    return [float(tags.check_format(t.response_text, _tool_tags(tool_tags)).ok) for t in trajectories]


def tool_calls(trajectories: Sequence[Trajectory], tool_tags: Sequence[str] | None = None) -> list[float]:
    r"""The number of complete tool calls (``<tag>...</tag>`` pairs) in the trajectory.

    >>> two = example_trajectory("<think>t</think><search>a</search><result>\nr\n</result>"
    ...                          "<python>1</python><result>\n1\n</result><answer>\\boxed{4}</answer>")
    >>> tool_calls([two, example_trajectory("<answer>\\boxed{4}</answer>")])
    [2.0, 0.0]
    """
    return [float(tags.count_tool_calls(t.response_text, _tool_tags(tool_tags))) for t in trajectories]


def answered(trajectories: Sequence[Trajectory]) -> list[float]:
    r"""1 when the trajectory gives a final answer (not blank), else 0.

    >>> answered([example_trajectory("<answer>\\boxed{4}</answer>"), example_trajectory("<think>hm")])
    [1.0, 0.0]
    """
    return [float(bool((t.prediction or tags.extract_answer(t.response_text)).strip())) for t in trajectories]


def model_tokens(trajectories: Sequence[Trajectory], per: float = 1000.0) -> list[float]:
    r"""Model-written tokens (tool output excluded) divided by ``per``: with a negative weight, a
    plain length penalty.

    >>> model_tokens([example_trajectory("<answer>\\boxed{4}</answer>", tokens=250)], per=100)
    [2.5]
    """
    if per <= 0:
        raise ValueError(f"per must be > 0, got {per}")
    return [t.num_model_tokens / per for t in trajectories]


def example_trajectory(text: str, *, answer: str | list[str] = "4", tokens: int = 0) -> Trajectory:
    """A trajectory whose whole response is one model segment ``text`` of ``tokens`` tokens, with
    the prediction the agent loop would record: for trying a term out (the examples above, tests)."""
    question = Question(id="example", question="What is 2 + 2?", answer=answer)
    return Trajectory(
        question_id=question.id,
        question=question,
        prompt_text="",
        prompt_ids=[],
        segments=[Segment(role="model", text=text, token_ids=[0] * tokens)],
        prediction=tags.extract_answer(text),
    )
