"""Registered-task data settings: ``toolworld:<split>`` and ``toolworld:<split>@<seed>``."""

from __future__ import annotations

import pytest

from etagent.io import DataError
from etagent.tasks import load_questions, resolve_data
from etagent.tasks.toolworld import ToolWorldTask


def test_toolworld_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("ETAGENT_CACHE", str(tmp_path))
    dev = load_questions("toolworld:dev")
    assert len(dev) == 64 and all(q.source == "toolworld" and "plan" in q.meta for q in dev)
    assert [q.id for q in load_questions("toolworld:train", limit=5)] == [
        f"toolworld-train-{i:04d}" for i in range(5)
    ]
    other = load_questions("toolworld:dev@1")
    assert {q.question for q in other}.isdisjoint({q.question for q in dev})
    with pytest.raises(DataError, match="has no split 'validation'"):
        load_questions("toolworld:validation")
    with pytest.raises(DataError, match="seed"):
        load_questions("toolworld:dev@x")


def test_toolworld_spec_builds_the_seeded_task():
    ref = resolve_data("toolworld:test@3")
    assert isinstance(ref.task, ToolWorldTask) and ref.task.seed == 3 and ref.split == "test"
    assert ref.task_spec == "toolworld@3"
    plain = resolve_data("toolworld:dev")
    assert isinstance(plain.task, ToolWorldTask) and plain.task.seed == 0 and plain.task_spec == "toolworld"
    assert resolve_data("toolworld:train").task is plain.task  # one task object per setting
