"""ToolWorldTask: splits, seeds, corpus, oracle, critic, and prompt examples that call only the
enabled tools."""

from __future__ import annotations

import json

import pytest

from etagent.protocol import tags
from etagent.tasks import TaskError, uses_only
from etagent.tasks.toolworld import (
    ExpertConfig,
    ExpertPolicy,
    ToolWorldTask,
    default_corpus_path,
    generate_world,
    load_split,
)
from etagent.tasks.toolworld.critic import ExpertCritic
from etagent.tools.config import ToolsConfig


def test_splits_questions_and_seed():
    task = ToolWorldTask()
    assert task.name == "toolworld" and task.splits() == ["train", "dev", "test"] and task.seed == 0
    assert task.questions("dev") == load_split("dev") == generate_world(0).questions("dev")
    with pytest.raises(TaskError, match="no split 'validation'"):
        task.questions("validation")
    seeded = ToolWorldTask(seed=3)
    assert seeded.describe() == "toolworld@3" and task.describe() == "toolworld"
    assert seeded.questions("test") == generate_world(3).questions("test")
    assert {q.question for q in seeded.questions("dev")}.isdisjoint(q.question for q in task.questions("dev"))
    assert task.check_answer(task.questions("dev")[0], "x") is None  # the standard QA check


def _docs(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_corpus_is_the_worlds_own():
    task = ToolWorldTask()
    assert task.corpus() == default_corpus_path()
    assert _docs(task.corpus()) == [d.to_dict() for d in generate_world(0).corpus]
    seeded = ToolWorldTask(seed=3)
    assert seeded.corpus() != task.corpus()
    assert _docs(seeded.corpus()) == [d.to_dict() for d in generate_world(3).corpus]


def test_oracle_and_critic():
    task = ToolWorldTask(seed=2)
    policy = task.oracle("embedded")
    assert isinstance(policy, ExpertPolicy) and policy.world_seeds == [0, 2]
    assert (policy.redundant_rate, policy.missing_rate, policy.seed) == (0.0, 0.0, 0)
    policy = task.oracle("embedded", ExpertConfig(redundant_rate=0.5, seed=4))
    assert policy.redundant_rate == 0.5 and policy.world_seeds == [0, 2, 4]
    with pytest.raises(TaskError, match=r"expert\.missing_rate"):
        task.oracle("embedded", {"missing_rate": -1})
    assert isinstance(task.critic(), ExpertCritic)


@pytest.mark.parametrize(
    ("enabled", "absent"),
    [(["search"], tags.PYTHON), (["python"], tags.SEARCH)],
)
def test_prompt_examples_call_only_enabled_tools(enabled, absent):
    task = ToolWorldTask()
    examples = task.prompt_examples(4, ToolsConfig(enabled=enabled), "embedded")
    assert len(examples) == 4
    train = {q.question: q for q in task.questions("train")}
    for question, text in examples:
        q = train[question]
        assert f"<{absent}>" not in text and uses_only(text, enabled)
        assert tags.check_format(text).ok and tags.extract_answer(text) == q.answer
        assert tags.count_tool_calls(text) == q.meta["min_tool_calls"]
    # tool-using questions come first, so the examples show the enabled tool being used
    assert any(f"<{enabled[0]}>" in text for _, text in examples)


def _results(text: str) -> list[str]:
    return [part.split("</result>")[0] for part in text.split("<result>")[1:]]


def test_prompt_examples_with_every_tool_and_none(tmp_path):
    task = ToolWorldTask()
    assert task.prompt_examples(0, ToolsConfig(), "embedded") == []
    # the config searches another corpus: the examples still search the tool world's own
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "x", "title": "Coral", "text": "Reefs are coral."}) + "\n")
    examples = task.prompt_examples(6, ToolsConfig().with_section("search", corpus=str(other)), "embedded")
    train = {q.question: q for q in task.questions("train")}
    assert len({train[question].meta["qtype"] for question, _ in examples}) == 6  # one of each type
    for question, text in examples:
        q = train[question]
        assert (
            tags.extract_answer(text) == q.answer and tags.count_tool_calls(text) == q.meta["min_tool_calls"]
        )
        if q.meta["min_tool_calls"]:  # grounded: the answer is in what the tools returned
            assert any(q.answer in r for r in _results(text)), text
    no_tools = task.prompt_examples(2, ToolsConfig(enabled=[]), "embedded")
    assert len(no_tools) == 2 and all(tags.count_tool_calls(text) == 0 for _, text in no_tools)


def test_too_many_prompt_examples_is_an_error():
    task = ToolWorldTask()
    n_python = sum(1 for q in task.questions("train") if {s["tool"] for s in q.meta["plan"]} <= {"python"})
    with pytest.raises(TaskError, match=rf"{n_python} train questions can be solved with the enabled tools"):
        task.prompt_examples(n_python + 1, ToolsConfig(enabled=["python"]), "embedded")
