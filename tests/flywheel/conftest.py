"""Fixtures for the flywheel tests: the tool world's expert as policy and critic, real tools
(defined with the tool world's tests)."""

from __future__ import annotations

from tests.tasks.toolworld.conftest import (  # noqa: F401  (fixtures, found by name)
    expert_critic,
    make_loop,
    question_of,
    train_questions,
    world_tools,
)
