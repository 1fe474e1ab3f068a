"""What a critic and a helper answer (the flywheel's roles, docs/method.md 3.1).

A task may supply a model-free critic and helper (:meth:`etagent.tasks.Task.critic`, the tool
world's plan-based one); the flywheel's LLM roles (:mod:`etagent.flywheel.roles`) answer the same
requests with a language model. Every method takes a batch of requests and returns one result
per request (None = no usable output).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from etagent.records import Question


@dataclass(frozen=True)
class StepsRequest:
    """A trajectory, split into steps, about which a role is asked."""

    question: Question
    steps: list[str]


@dataclass(frozen=True)
class StepRewriteRequest:
    """Rewrite step ``k`` (1-based) of ``steps``."""

    question: Question
    steps: list[str]
    k: int


@dataclass(frozen=True)
class ThinkRequest:
    """Rewrite the thinking before ``action``; ``prefix`` is the (already rewritten) trajectory so
    far and ``think`` the original thinking."""

    question: Question
    prefix: str
    think: str
    action: str


@dataclass(frozen=True)
class RedundancyEdit:
    """Step ``k`` is redundant; ``corrected_step`` replaces it (steps after it are dropped)."""

    k: int
    corrected_step: str


class Critic(Protocol):
    name: str

    def locate_redundant_steps(self, requests: Sequence[StepsRequest]) -> list[RedundancyEdit | None]:
        """Per trajectory: the first redundant step and its simplified replacement, or None."""
        ...

    def locate_flawed_steps(self, requests: Sequence[StepsRequest]) -> list[int | None]:
        """Per trajectory: the earliest flawed step (1-based), or None."""
        ...

    def rewrite_thinks(self, requests: Sequence[ThinkRequest]) -> list[str | None]:
        """Per request: the new thinking text (without think tags), or None."""
        ...

    def judge_correct(self, items: Sequence[tuple[Question, str]]) -> list[bool]:
        """Per (question, prediction): is the prediction correct (maths questions)."""
        ...


class Helper(Protocol):
    name: str

    def rewrite_steps(self, requests: Sequence[StepRewriteRequest]) -> list[str | None]:
        """Per request: a corrected version of step k (a well-formed step), or None."""
        ...
