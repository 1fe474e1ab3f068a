"""One agent config and one builder: tools and backends from config (registered or dotted path),
the task's corpus and prompt examples, and what the built agent owns."""

from __future__ import annotations

import pytest

from etagent.agent import AgentConfig, build_agent, task_tools
from etagent.config import ConfigError, load_config
from etagent.tasks import resolve_task
from etagent.tools.config import ToolsConfig, build_tools
from tests.plugins import Calculator

CALCULATOR = "tests.plugins:Calculator"
SCRIPT = "tests.plugins:ScriptBackend"
ANSWER = (
    "<think>Compute.</think><calculator>6*7</calculator><result>\n42\n</result>"
    "<think>Done.</think><answer>The final answer is \\[ \\boxed{42} \\]</answer>"
)


def _first_dev_trajectory(cfg: AgentConfig):
    """The agent's trajectory for the tool world's first dev question, and the (closed) agent."""
    task = resolve_task("toolworld")
    loop = build_agent(cfg, task)
    try:
        (traj,) = loop.run(task.questions("dev")[:1])
    finally:
        loop.close()
    return traj, loop


def test_a_new_tool_is_one_class_named_in_config(tokenizer):
    cfg = ToolsConfig.model_validate({"enabled": ["search", CALCULATOR], "calculator": {"digits": 2}})
    assert cfg.tags == ("search", "calculator")
    assert cfg.calculator.digits == 2  # validated by the tool's own config class
    tools = build_tools(cfg.model_copy(update={"enabled": [CALCULATOR]}))
    assert isinstance(tools["calculator"], Calculator)
    assert tools["calculator"].call("6*7").text == "42.00"


def test_tool_config_errors_name_the_section_and_field():
    with pytest.raises(ConfigError, match=r"calculator\.digits"):
        load_config(AgentConfig, overrides=[f"tools.enabled=[{CALCULATOR}]", "tools.calculator.digits=-1"])
    with pytest.raises(ConfigError, match="unknown tool 'calculater'"):
        load_config(AgentConfig, overrides=["tools.enabled=[calculater]"])
    with pytest.raises(ConfigError, match="'serch' is neither an enabled tool nor a registered one"):
        load_config(AgentConfig, overrides=["tools.serch.top_k=3"])


def test_a_new_backend_is_one_class_named_in_config(tmp_path):
    cfg = load_config(
        AgentConfig,
        overrides=[
            f"backend.kind={SCRIPT}",
            f"backend.settings.text={ANSWER}",
            f"tools.enabled=[{CALCULATOR}]",
        ],
    )
    traj, loop = _first_dev_trajectory(cfg)
    assert traj.tool_calls[0].tool == "calculator" and traj.tool_calls[0].result == "42"
    assert traj.prediction == "42"
    assert loop.tools["calculator"].closed  # the loop closes the tools it built
    with pytest.raises(ConfigError, match="settings: only for a backend given by dotted path"):
        load_config(AgentConfig, overrides=["backend.settings.text=x"])
    with pytest.raises(ConfigError, match="unknown backend kind 'vlm'"):
        load_config(AgentConfig, overrides=["backend.kind=vlm"])


def test_search_uses_the_task_corpus_unless_the_config_names_one(tmp_path):
    toolworld = resolve_task("toolworld")
    filled = task_tools(ToolsConfig(), toolworld)
    assert filled.search.corpus == str(toolworld.corpus())
    own = ToolsConfig.model_validate({"search": {"corpus": str(tmp_path / "mine.jsonl")}})
    assert task_tools(own, toolworld).search.corpus == str(tmp_path / "mine.jsonl")


def test_the_oracle_is_the_tasks(tokenizer):
    cfg = load_config(AgentConfig, overrides=["backend.kind=expert", "tools.enabled=[search]"])
    traj, _ = _first_dev_trajectory(cfg)
    assert traj.prediction and traj.finish_reason == "answer"


def test_prompt_examples_come_from_the_task_and_use_only_enabled_tools():
    task = resolve_task("toolworld")
    for enabled, absent in ((["search"], "<python>"), (["python"], "<search>")):
        cfg = AgentConfig.model_validate(
            {"tools": {"enabled": enabled}, "few_shot": 2, "backend": {"kind": "expert"}}
        )
        loop = build_agent(cfg, task)
        try:
            assert len(loop.few_shot) == 2
            assert all(absent not in trajectory for _, trajectory in loop.few_shot)
        finally:
            loop.close()
