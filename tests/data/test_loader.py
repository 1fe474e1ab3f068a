"""load_question_file: benchmark JSONL (strict), Hugging Face files and directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from etagent.data.loader import load_question_file
from etagent.io import DataError


def write_lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def rec(i: int, **kw) -> dict:
    return {"id": f"s-{i}", "question": f"Question {i}?", "answer": str(i), "task": "qa", "source": "s", **kw}


def test_shared_benchmarks(shared_data):
    hotpot = load_question_file(shared_data / "benchmarks" / "hotpotqa" / "test.jsonl")
    assert len(hotpot) == 200
    assert hotpot[0].id == "hotpotqa-0" and hotpot[0].task == "qa" and isinstance(hotpot[0].answer, list)
    math = load_question_file(str(shared_data / "benchmarks" / "math500" / "test.jsonl"), limit=7)
    assert len(math) == 7 and all(q.task == "math" and isinstance(q.answer, str) for q in math)


def test_jsonl_schema_and_limit(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [rec(0), rec(1, answer=["a", "b"]), "", rec(2, meta={"k": 1})])
    qs = load_question_file(path)
    assert [q.id for q in qs] == ["s-0", "s-1", "s-2"]
    assert qs[1].answers == ["a", "b"] and qs[2].meta == {"k": 1}
    assert len(load_question_file(path, limit=2)) == 2
    assert load_question_file(path, limit=0) == []


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"id": "x", "question": ', r"q\.jsonl:2: malformed JSON"),
        (json.dumps({"id": "x", "answer": "a"}), r"q\.jsonl:2: field 'question'"),
        (json.dumps(rec(5, answer=5)), r"q\.jsonl:2: field 'answer"),
        (json.dumps(rec(5, question="   ")), r"q\.jsonl:2: field 'question'"),
        (json.dumps(rec(5, extra=1)), r"q\.jsonl:2: field 'extra'"),
        ("[1, 2]", r"q\.jsonl:2: expected a JSON object"),
    ],
)
def test_jsonl_errors_name_file_line_field(tmp_path, line, expected):
    path = write_lines(tmp_path / "q.jsonl", [rec(0), line])
    with pytest.raises(DataError, match=expected):
        load_question_file(path)


def test_duplicate_ids_name_both_lines(tmp_path):
    path = write_lines(tmp_path / "q.jsonl", [rec(0), rec(1), rec(0)])
    with pytest.raises(DataError, match=r"q\.jsonl:3: duplicate id 's-0' \(first on line 1\)"):
        load_question_file(path)


def test_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_question_file(tmp_path / "nope.jsonl")


def test_hf_parquet_with_mapping(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"q": ["What is one?", "What is two?"], "gold": [1, 2.0], "key": ["a", "b"], "kind": ["math", "math"]}
    )
    ds.to_parquet(str(tmp_path / "set.parquet"))
    qs = load_question_file(
        tmp_path / "set.parquet", question_field="q", answer_field="gold", id_field="key", task_field="kind"
    )
    assert [(q.id, q.question, q.answer, q.task, q.source) for q in qs] == [
        ("a", "What is one?", "1", "math", "set"),
        ("b", "What is two?", "2", "math", "set"),
    ]
    with pytest.raises(DataError, match=r"set\.parquet: no column 'question'"):
        load_question_file(tmp_path / "set.parquet")
    with pytest.raises(DataError, match=r"no column 'answer'.*set\.parquet|set\.parquet.*no column 'answer'"):
        load_question_file(tmp_path / "set.parquet", question_field="q")
    with pytest.raises(TypeError, match="unknown load_question_file option"):
        load_question_file(tmp_path / "set.parquet", question_column="q")


def test_hf_save_to_disk_json_and_jsonl(tmp_path):
    import datasets

    rows = {"question": ["Q1?", "Q2?", "Q3?"], "answer": [["x", "y"], ["z"], ["w"]]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "saved"))
    qs = load_question_file(tmp_path / "saved", source="mine", limit=2)
    assert [(q.id, q.answer, q.source, q.task) for q in qs] == [
        ("mine-0", ["x", "y"], "mine", "qa"),
        ("mine-1", ["z"], "mine", "qa"),
    ]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert len(load_question_file(tmp_path / "dd", split="test")) == 3
    with pytest.raises(DataError, match="pass split"):
        load_question_file(tmp_path / "dd")

    (tmp_path / "arr.json").write_text(json.dumps([{"text": "Q?", "label": "A"}]))
    qs = load_question_file(tmp_path / "arr.json", question_field="text", answer_field="label")
    assert (qs[0].id, qs[0].question, qs[0].answer) == ("arr-0", "Q?", "A")
    # a .jsonl file goes through datasets when a mapping is given
    write_lines(tmp_path / "m.jsonl", [{"text": "Q?", "label": "A", "source": "src"}])
    qs = load_question_file(tmp_path / "m.jsonl", question_field="text", answer_field="label")
    assert (qs[0].id, qs[0].source) == ("src-0", "src")


def test_hf_arpo_layout(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {
            "data_source": ["DR_mix", "DR_mix"],
            "prompt": [
                [{"role": "system", "content": "sys"}, {"role": "user", "content": "Who wrote X?"}],
                [{"role": "user", "content": "What is 2+2?"}],
            ],
            "ability": ["qa", "math"],
            "reward_model": [
                {"ground_truth": "Ann", "style": "rule"},
                {"ground_truth": "4", "style": "rule"},
            ],
            "extra_info": [{"index": 7, "question": "Who wrote X?"}, {"index": 8, "question": ""}],
        }
    )
    ds.to_parquet(str(tmp_path / "train.parquet"))
    qs = load_question_file(tmp_path / "train.parquet")
    assert [(q.id, q.question, q.answer, q.task, q.source) for q in qs] == [
        ("DR_mix-7", "Who wrote X?", "Ann", "qa", "DR_mix"),
        ("DR_mix-8", "What is 2+2?", "4", "math", "DR_mix"),
    ]
