"""The flywheel stage: rounds, selection, buffer cap, provenance, resume, cold start, export, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etagent.config import load_config
from etagent.flywheel import operators as ops
from etagent.flywheel.buffer import BufferRecord, FlywheelEntry, select_parent
from etagent.flywheel.stage import Flywheel, FlywheelConfig, run_flywheel
from etagent.io import read_records
from etagent.loop.agent_loop import AgentLoop
from etagent.protocol import tags
from etagent.records import Question, Trajectory
from etagent.tasks.toolworld import ExpertPolicy
from etagent.tasks.toolworld.critic import ExpertCritic
from etagent.tasks.toolworld.task import expert_settings
from etagent.train.sft_data import load_sft_examples

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _cfg(**over) -> FlywheelConfig:
    base = {
        "limit": 8,
        "concurrency": 3,
        "agent": {"backend": {"kind": "expert", "expert": {"redundant_rate": 0.4, "missing_rate": 0.3}}},
        "hint_pools": {"qa": "general"},
    }
    base.update(over)
    return FlywheelConfig.model_validate(base)


def _flywheel(cfg: FlywheelConfig, tokenizer, tools) -> Flywheel:
    """The flywheel of ``cfg`` with the session's tokenizer and tools (nothing reloaded)."""
    agent = cfg.policy_agent()
    rates = expert_settings(agent.backend.section("expert"))
    policy = ExpertPolicy(tokenizer, redundant_rate=rates.redundant_rate, missing_rate=rates.missing_rate)
    loop = AgentLoop(policy, tools, budget=agent.budget, sampling=agent.sampling, max_active=agent.max_active)
    critic = ExpertCritic()
    return Flywheel(cfg, loop, critic, critic)


def _check_provenance(record: BufferRecord, cfg: FlywheelConfig) -> None:
    by_id = {e.id: e for e in record.entries}
    assert len(by_id) == len(record.entries) <= cfg.buffer_size
    initial = [e for e in record.entries if e.round == 0]
    assert len(initial) == 1 and initial[0].operator == ops.INITIAL and initial[0].parent is None
    for e in record.entries:
        assert e.trajectory.question_id == record.question_id
        assert e.format_ok == tags.check_format(e.text).ok and e.tool_calls == tags.count_tool_calls(e.text)
        if e.round == 0:
            continue
        parent = by_id[e.parent]
        assert parent.expanded and parent.round < e.round <= cfg.rounds
        assert e.operator in (ops.CORRECT_SET if parent.verdict else ops.INCORRECT_SET)
    # one parent per round; round 1 expands the initial rollout
    for r in range(1, cfg.rounds + 1):
        assert len({e.parent for e in record.entries if e.round == r}) <= 1
    assert {e.parent for e in record.entries if e.round == 1} <= {initial[0].id}


def test_flywheel_end_to_end_provenance_and_export(tmp_path, tokenizer, world_tools):
    cfg = _cfg()
    summary = run_flywheel(cfg, tmp_path, flywheel=_flywheel(cfg, tokenizer, world_tools))
    records = read_records(tmp_path / "buffers.jsonl", BufferRecord)
    assert [r.question_id for r in records] == [f"toolworld-train-{i:04d}" for i in range(8)]
    for r in records:
        _check_provenance(r, cfg)
        assert r.rounds_run >= 1
    operators_used = {e.operator for r in records for e in r.entries}
    assert {ops.REROLLOUT, ops.REFINE} <= operators_used and operators_used & set(ops.INCORRECT_SET)

    examples = load_sft_examples(tmp_path / "sft.jsonl")
    exported_ops = {e.meta["operator"] for e in examples}
    assert exported_ops - {ops.INITIAL, ops.REROLLOUT}, "operator-refined trajectories are exported"
    entries = {e.id: e for r in records for e in r.entries}
    for ex in examples:
        entry = entries[ex.id]
        assert entry.verdict and tags.check_format(ex.trajectory).ok and ex.trajectory == entry.text
        assert ex.messages[0].role == "system" and "<search>" in ex.messages[0].content
    per_question = {}
    for ex in examples:
        per_question.setdefault(ex.question_id, []).append(" ".join(ex.trajectory.split()))
    assert all(len(v) == len(set(v)) for v in per_question.values())  # deduplicated per question

    stats = json.loads((tmp_path / "export_stats.json").read_text())
    assert stats["examples"] == len(examples) == summary["sft_examples"]
    for op, counts in stats["per_operator"].items():
        assert counts["exported"] == sum(e.meta["operator"] == op for e in examples)
        assert counts["candidates"] == sum(e.operator == op for e in entries.values())
    assert json.loads((tmp_path / "flywheel.summary.json").read_text())["questions"] == 8


def test_buffer_cap_and_rounds(tmp_path, tokenizer, world_tools):
    cfg = _cfg(buffer_size=3, limit=4)
    run_flywheel(cfg, tmp_path, flywheel=_flywheel(cfg, tokenizer, world_tools))
    records = read_records(tmp_path / "buffers.jsonl", BufferRecord)
    assert all(len(r.entries) <= 3 for r in records)
    full = [ev for r in records for ev in r.events if ev.status == "buffer_full"]
    assert full and all(ev.verdict is not None for ev in full)

    cfg = _cfg(rounds=0, limit=4)
    run_flywheel(cfg, tmp_path / "zero", flywheel=_flywheel(cfg, tokenizer, world_tools))
    records = read_records(tmp_path / "zero" / "buffers.jsonl", BufferRecord)
    assert all(len(r.entries) == 1 and r.rounds_run == 0 for r in records)


def _entry(k: int, correctness: float, calls: int, expanded: bool = False) -> FlywheelEntry:
    q = Question(id="q", question="Q?", answer="a")
    traj = Trajectory(question_id="q", question=q, prompt_text="", prompt_ids=[])
    return FlywheelEntry(
        id=f"q#{k}",
        operator="x",
        round=1,
        verdict=correctness >= 0.8,
        correctness=correctness,
        metric="f1",
        prediction="",
        tool_calls=calls,
        format_ok=True,
        expanded=expanded,
        trajectory=traj,
    )


def test_selection_rule():
    q = Question(id="q", question="Q?", answer="a")
    record = BufferRecord(question_id="q", question=q)
    record.entries = [
        _entry(0, 1.0, 1, expanded=True),
        _entry(1, 0.5, 0),
        _entry(2, 1.0, 3),
        _entry(3, 1.0, 2),
    ]
    assert select_parent(record).id == "q#3"  # correct first, then fewer calls; expanded skipped
    record.entries[3].expanded = True
    assert select_parent(record).id == "q#2"
    record.entries[2].expanded = True
    assert select_parent(record).id == "q#1"  # incorrect ones come last
    record.entries[1].expanded = True
    assert select_parent(record) is None
    record.entries += [_entry(4, 0.6, 2), _entry(5, 0.6, 2)]
    assert select_parent(record).id == "q#4"  # ties: the earlier entry


class Interrupt(Exception):
    pass


def test_interrupted_run_resumes_without_duplicates(tmp_path, tokenizer, world_tools):
    cfg = _cfg(limit=7, rounds=2)
    flywheel = _flywheel(cfg, tokenizer, world_tools)
    real_evolve, batches = flywheel.evolve, []

    def dying_evolve(questions):
        if len(batches) == 2:
            raise Interrupt
        batches.append([q.id for q in questions])
        return real_evolve(questions)

    flywheel.evolve = dying_evolve  # type: ignore[method-assign]
    with pytest.raises(Interrupt):
        run_flywheel(cfg, tmp_path, flywheel=flywheel)
    out = tmp_path / "buffers.jsonl"
    done = [r.question_id for r in read_records(out, BufferRecord)]
    assert done == batches[0] + batches[1] and len(done) == 6
    with out.open("a") as f:  # killed in the middle of a line
        f.write('{"question_id": "toolworld-train-0006", "ques')

    flywheel = _flywheel(cfg, tokenizer, world_tools)
    real_evolve, seen = flywheel.evolve, []

    def recording_evolve(questions):
        seen.extend(q.id for q in questions)
        return real_evolve(questions)

    flywheel.evolve = recording_evolve  # type: ignore[method-assign]
    run_flywheel(cfg, tmp_path, flywheel=flywheel)
    assert seen == ["toolworld-train-0006"]  # only the unfinished question ran again
    ids = [r.question_id for r in read_records(out, BufferRecord)]
    assert sorted(ids) == [f"toolworld-train-{i:04d}" for i in range(7)] and len(set(ids)) == 7
    # a third run has nothing to do but still re-exports
    (tmp_path / "sft.jsonl").unlink()
    run_flywheel(cfg, tmp_path, flywheel=_flywheel(cfg, tokenizer, world_tools))
    assert (tmp_path / "sft.jsonl").exists()


def test_cold_start_from_configuration_alone(tmp_path):
    cfg = load_config(
        FlywheelConfig, CONFIGS / "flywheel_cold_start.yaml", ["limit=6", "cold_start.samples=3"]
    )
    summary = run_flywheel(cfg, tmp_path)  # builds the expert policy, tools and critic from the config
    assert summary["cold_start"] and summary["policy"] == "expert"
    records = read_records(tmp_path / "buffers.jsonl", BufferRecord)
    assert len(records) == 6
    for r in records:
        assert [e.operator for e in r.entries] == [ops.EXPERT] * 3 and r.rounds_run == 0
    examples = load_sft_examples(tmp_path / "sft.jsonl")
    assert examples and all(e.meta["operator"] == ops.EXPERT for e in examples)
    kept = {e.id for e in examples}
    assert all(e.verdict for r in records for e in r.entries if e.id in kept)


def test_configs_validate_and_name_the_roles():
    toolworld = load_config(FlywheelConfig, CONFIGS / "flywheel_toolworld.yaml")
    assert toolworld.agent.backend.kind == "hf" and toolworld.critic.kind == toolworld.helper.kind == "expert"
    vllm = load_config(FlywheelConfig, CONFIGS / "flywheel_vllm.yaml")
    assert vllm.critic.kind == "llm" and vllm.critic.backend.kind == "openai" and vllm.helper.backend is None
    assert vllm.continuation_budget.max_calls_per_tool == 10
    with pytest.raises(Exception, match="unknown hint pool"):
        FlywheelConfig.model_validate({"hint_pools": {"qa": "nope"}})


def test_hf_policy_runs_end_to_end(tmp_path):
    """The real generation path (transformers) with the tiny random model: a random policy writes
    no correct answer, but every operator's continuation runs and the files are written."""
    cfg = FlywheelConfig.model_validate(
        {
            "limit": 2,
            "rounds": 1,
            "agent": {
                "backend": {"kind": "hf", "model": "tiny", "hf": {"threads": 1}},
                "budget": {"max_new_tokens_per_call": 8, "max_response_tokens": 24},
            },
            "continuation_budget": {"max_new_tokens_per_call": 8, "max_response_tokens": 32},
        }
    )
    summary = run_flywheel(cfg, tmp_path)
    records = read_records(tmp_path / "buffers.jsonl", BufferRecord)
    assert len(records) == 2 and summary["trajectories"] >= 2
    # the initial rollouts are wrong, so the incorrect set ran (the trajectory hint always applies)
    assert all(ops.TRAJECTORY_HINT in {e.operator for e in r.entries} for r in records)
    assert (tmp_path / "sft.jsonl").exists() and (tmp_path / "export_stats.json").exists()
