"""The export filter: judged correct AND well-formed, de-duplicated per question, chat format with
the tool prompt in the system role; statistics per operator and per task."""

from __future__ import annotations

import json

from etagent.flywheel.buffer import BufferRecord, FlywheelEntry, FlywheelEvent
from etagent.flywheel.export import export_sft, write_sft
from etagent.protocol import tags
from etagent.records import Question, Segment, Trajectory
from etagent.tools.base import tool_class
from etagent.train.sft_data import load_sft_examples

ANSWER = "<think>So it is {a}.</think><answer>The final answer is \\[ \\boxed{{{a}}} \\]</answer>"


def _traj(q: Question, pieces: list[tuple[str, str]]) -> Trajectory:
    return Trajectory(
        question_id=q.id,
        question=q,
        prompt_text="",
        prompt_ids=[],
        segments=[Segment(role=role, text=text, token_ids=[]) for role, text in pieces],  # type: ignore[arg-type]
    )


def _entry(q, k, operator, pieces, verdict=True, parent=None, round_=1) -> FlywheelEntry:
    traj = _traj(q, pieces)
    return FlywheelEntry(
        id=f"{q.id}#{k}",
        operator=operator,
        parent=parent,
        round=round_,
        verdict=verdict,
        correctness=float(verdict),
        metric="f1",
        prediction=tags.extract_answer(traj.response_text),
        tool_calls=tags.count_tool_calls(traj.response_text),
        format_ok=tags.check_format(traj.response_text).ok,
        trajectory=traj,
    )


def _records() -> list[BufferRecord]:
    q1 = Question(id="q1", question="Where was X born?", answer="Quenmara", task="qa", source="toolworld")
    q2 = Question(id="q2", question="What is 6*7?", answer="42", task="math", source="gsm")
    call = [
        ("model", "<think>Search it.</think><search>X birth</search>"),
        ("tool", tags.render_result("X was born in Quenmara.")),
    ]
    good = [*call, ("model", ANSWER.format(a="Quenmara"))]
    same_spaced = [*call, ("model", ANSWER.format(a="Quenmara").replace("So it", "So  it"))]
    other = [
        (
            "model",
            "<think>I recall it.</think>" + "<answer>The final answer is \\[ \\boxed{Quenmara} \\]</answer>",
        )
    ]
    malformed = [*call, ("model", "<think>So it is Quenmara. \\boxed{Quenmara}")]
    unmaskable = [
        ("model", "<think>a</think>"),
        ("tool", tags.render_result("not after a call")),
        ("model", ANSWER.format(a="Quenmara")),
    ]
    r1 = BufferRecord(
        question_id="q1",
        question=q1,
        entries=[
            _entry(q1, 0, "initial", good, round_=0),
            _entry(q1, 1, "rerollout", same_spaced, parent="q1#0"),
            _entry(
                q1,
                2,
                "redundancy",
                [*call, ("model", ANSWER.format(a="Paris"))],
                verdict=False,
                parent="q1#0",
            ),
            _entry(q1, 3, "refine", malformed, parent="q1#0"),
            _entry(q1, 4, "self_correction", other, parent="q1#2", round_=2),
            _entry(q1, 5, "step_hint", unmaskable, parent="q1#2", round_=2),
        ],
        events=[
            FlywheelEvent(
                round=2, operator="redundancy", parent="q1#1", status="no_candidate", reason="none"
            ),
            FlywheelEvent(round=3, operator="step_hint", parent="q1#4", status="buffer_full", verdict=True),
        ],
    )
    r2 = BufferRecord(
        question_id="q2",
        question=q2,
        entries=[_entry(q2, 0, "initial", [("model", ANSWER.format(a="42"))], round_=0)],
    )
    return [r1, r2]


def test_filter_dedup_and_schema():
    examples, _ = export_sft(_records())
    assert [e["id"] for e in examples] == [
        "q1#0",
        "q1#4",
        "q2#0",
    ]  # duplicate, wrong, malformed, unmaskable dropped
    tool_prompt = tags.render_system_prompt([tool_class(n).spec for n in ("search", "python")])
    first = examples[0]
    assert set(first) == {"id", "question_id", "messages", "meta"}
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][0]["content"] == tool_prompt  # the agent loop's tool prompt, system role
    assert first["messages"][1]["content"] == "Where was X born?"
    assert first["messages"][2]["content"].startswith(
        "<think>Search it.</think><search>X birth</search><result>\n"
    )
    assert tags.check_format(first["messages"][2]["content"]).ok
    assert {k: first["meta"][k] for k in ("operator", "round", "parent", "source", "task")} == {
        "operator": "initial",
        "round": 0,
        "parent": None,
        "source": "toolworld",
        "task": "qa",
    }
    assert examples[1]["meta"]["operator"] == "self_correction" and examples[1]["meta"]["parent"] == "q1#2"
    assert examples[2]["meta"]["task"] == "math"


def test_statistics_per_operator_and_task():
    _, stats = export_sft(_records())
    ops = stats["per_operator"]
    assert ops["initial"] == {**ops["initial"], "candidates": 2, "judged_correct": 2, "exported": 2}
    assert ops["rerollout"]["duplicates"] == 1 and ops["rerollout"]["exported"] == 0
    assert ops["redundancy"]["judged_correct"] == 0 and ops["redundancy"]["no_candidate"] == 1
    assert ops["refine"]["format_valid"] == 0 and ops["refine"]["correct_and_valid"] == 0
    assert ops["self_correction"]["exported"] == 1
    assert ops["step_hint"]["unmaskable"] == 1 and ops["step_hint"]["buffer_full"] == 1
    assert stats["per_task"]["qa"] == {
        "questions": 1,
        "candidates": 6,
        "judged_correct": 5,
        "exported": 2,
        "questions_with_examples": 1,
    }
    assert stats["per_task"]["math"]["exported"] == 1
    assert stats["examples"] == 3 and stats["questions"] == 2
    assert any("answer" in p for p in stats["format_problems_of_correct"])


def test_written_files_load_with_the_sft_reader(tmp_path):
    stats = write_sft(tmp_path, _records())
    examples = load_sft_examples(tmp_path / "sft.jsonl")
    assert [e.id for e in examples] == ["q1#0", "q1#4", "q2#0"]
    assert json.loads((tmp_path / "export_stats.json").read_text()) == stats
