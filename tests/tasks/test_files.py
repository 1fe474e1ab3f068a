"""Tasks declared in YAML and question files as tasks: splits, corpus, answer checks, examples,
and errors that name the file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etagent.io import DataError
from etagent.tasks import TaskError, load_questions, resolve_data, resolve_task
from etagent.tools.config import ToolsConfig


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _task_dir(tmp_path: Path, correctness: str = "qa") -> Path:
    _write_jsonl(tmp_path / "train.jsonl", [{"id": "t1", "question": "Q1?", "answer": "a b"}])
    _write_jsonl(tmp_path / "dev.jsonl", [{"id": "d1", "question": "Q2?", "answer": "7", "task": "qa"}])
    _write_jsonl(tmp_path / "corpus.jsonl", [{"id": "c1", "title": "T", "text": "x"}])
    _write_jsonl(
        tmp_path / "examples.jsonl",
        [
            {"question": "S?", "trajectory": "<search>s</search><result>\nr\n</result><answer>x</answer>"},
            {"question": "P?", "trajectory": "<python>1</python><result>\n1\n</result><answer>1</answer>"},
        ],
    )
    (tmp_path / "task.yaml").write_text(
        "name: mine\nsplits: {train: train.jsonl, dev: dev.jsonl}\ncorpus: corpus.jsonl\n"
        f"correctness: {correctness}\nexamples: examples.jsonl\n",
        encoding="utf-8",
    )
    return tmp_path / "task.yaml"


def test_yaml_task_splits_corpus_and_relabelled_questions(tmp_path):
    spec = _task_dir(tmp_path, correctness="math")
    ref = resolve_data(f"{spec}:dev")
    assert ref.task.name == "mine" and ref.task.splits() == ["train", "dev"] and ref.split == "dev"
    assert ref.task.corpus() == tmp_path / "corpus.jsonl"
    (q,) = ref.questions()
    assert q.id == "d1" and q.task == "math"  # the task's answer check applies to every question
    with pytest.raises(DataError, match="name a split of task 'mine'"):
        resolve_data(str(spec))
    with pytest.raises(DataError, match="has no split 'test'"):
        resolve_data(f"{spec}:test")


def test_prompt_examples_keep_only_those_calling_enabled_tools(tmp_path):
    task = resolve_task(_task_dir(tmp_path))
    search_only = ToolsConfig.model_validate({"enabled": ["search"]})
    (example,) = task.prompt_examples(1, search_only, "embedded")
    assert example[0] == "S?" and "<python>" not in example[1]
    with pytest.raises(TaskError, match="1 prompt examples call only the enabled tools"):
        task.prompt_examples(2, search_only, "embedded")
    assert task.prompt_examples(0, search_only, "embedded") == []


def test_a_question_file_is_a_task_without_examples(tmp_path):
    path = _write_jsonl(tmp_path / "q.jsonl", [{"id": "x", "question": "Q?", "answer": "1", "task": "math"}])
    ref = resolve_data(str(path))
    assert ref.split == "all" and ref.task.corpus() is None
    assert ref.questions()[0].task == "math"  # a plain file keeps each question's own task
    with pytest.raises(TaskError, match="has no prompt examples"):
        ref.task.prompt_examples(1, ToolsConfig(), "embedded")


def test_a_question_file_of_a_named_task(tmp_path):
    path = _write_jsonl(tmp_path / "stage_1.jsonl", [{"id": "x", "question": "Q?", "answer": "1"}])
    ref = resolve_data(str(path), task="toolworld")
    assert ref.task.name == "toolworld" and ref.task_spec == "toolworld"
    assert [q.id for q in ref.questions()] == ["x"]


def test_custom_answer_check_by_dotted_path(tmp_path):
    task = resolve_task(_task_dir(tmp_path, correctness="tests.tasks.test_files:first_letter"))
    q = task.questions("train")[0]
    assert q.task == "qa"  # a custom check leaves the questions' task as written
    assert task.check_answer(q, "apple") == 1.0 and task.check_answer(q, "pear") == 0.0


def first_letter(prediction: str, golds: list[str]) -> float:
    return float(any(prediction[:1] == g[:1] for g in golds))


def test_bad_task_files_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsplits: {train: t.jsonl}\ncorrectness: fuzzy\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.yaml: invalid task file: correctness"):
        load_questions(f"{bad}:train")
    with pytest.raises(DataError, match="not a task"):
        resolve_task(tmp_path / "missing.yaml")
    with pytest.raises(DataError, match="no such file or directory, and not a task"):
        load_questions("nosuchtask:train")


def test_shipped_benchmark_tasks_name_the_shared_questions_and_corpus(shared_data, monkeypatch):
    root = Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)  # configs name paths from the repository root
    hotpot = resolve_data("configs/tasks/hotpotqa.yaml:test")
    assert hotpot.task.corpus().resolve() == (shared_data / "corpus" / "wiki_multihop.jsonl").resolve()
    assert len(hotpot.questions()) == 200 and all(q.task == "qa" for q in hotpot.questions())
    maths = resolve_data("configs/tasks/math500.yaml:test")
    assert maths.task.corpus() is None and maths.questions(limit=3)[0].task == "math"
