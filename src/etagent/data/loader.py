"""Load questions from files: benchmark JSONL and Hugging Face ``datasets`` sources.

``load_question_file(path)`` accepts (tasks, such as the tool world, are named by a stage's
``data`` setting and resolved by :func:`etagent.tasks.resolve_data`, which calls this for files):

(a) a JSON-lines file in the benchmark schema (``docs/run-directory.md`` 9.1)::

        {"id": "hotpotqa-0", "question": "...", "answer": "..." | ["alias", ...], "task": "qa", "source": "hotpotqa"}

    validated line by line with :class:`etagent.records.Question` (an optional ``meta`` object is
    allowed); errors name the file, line and field, duplicate ids name both lines;

(b) a Hugging Face ``datasets`` source, loaded offline: a ``.parquet``, ``.arrow``, ``.csv`` or
    ``.json`` file, a directory written by ``save_to_disk``, or a directory of data files; also a
    ``.jsonl`` file whenever a field-mapping option is given. Column mapping (keyword options):

    =================  ============  ==========================================================
    option             default       meaning
    =================  ============  ==========================================================
    question_field     "question"    column holding the question text
    answer_field       "answer"      column holding the answer (string, number or list of strings)
    id_field           None          column holding the id; None: "id" if present, else
                                     ``<source>-<row index>``
    task_field         None          column holding the task; None: "task" if present, else ``task``
    source_field       None          column holding the source; None: "source" if present, else ``source``
    task               "qa"          task when there is no task column
    source             file stem     source when there is no source column
    split              None          split of a DatasetDict / data directory (needed when there are several)
    =================  ============  ==========================================================

    A field may be a dotted path into a struct column (``reward_model.ground_truth``). A missing
    column raises :class:`DataError` naming the column and the file. ARPO/verl-style files (columns
    ``prompt`` and ``reward_model`` and no question column) are mapped automatically: the
    question is ``extra_info.question`` (else the last user turn of ``prompt``), the answer
    ``reward_model.ground_truth``, the source ``data_source``, the task ``ability``, and the id
    ``<source>-<extra_info.index>``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from etagent.io import DataError, iter_jsonl, validate_record
from etagent.records import Question

_HF_OPTIONS = {
    "question_field",
    "answer_field",
    "id_field",
    "task_field",
    "source_field",
    "task",
    "source",
    "split",
}
_HF_SUFFIXES = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def load_question_file(path: str | Path, limit: int | None = None, **hf_options: Any) -> list[Question]:
    """Questions from a benchmark JSONL file or a Hugging Face source.

    ``limit`` keeps the first ``limit`` questions. ``hf_options`` is the column mapping of (b).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    unknown = set(hf_options) - _HF_OPTIONS
    if unknown:
        raise TypeError(
            f"unknown load_question_file option(s) {sorted(unknown)}; known: {sorted(_HF_OPTIONS)}"
        )
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(
            f"{path}: no such file or directory (expected a JSONL file or a Hugging Face "
            "dataset file or directory)"
        )
    if path.is_file() and path.suffix == ".jsonl" and not hf_options:
        return read_benchmark_jsonl(path, limit)
    return load_hf_questions(path, limit=limit, **hf_options)


# --------------------------------------------------------------------------------------------
# (a) benchmark-schema JSONL


def read_benchmark_jsonl(path: str | Path, limit: int | None = None) -> list[Question]:
    """Strictly validated benchmark-schema JSONL; errors name file, line and field."""
    questions: list[Question] = []
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        if limit is not None and len(questions) >= limit:
            break
        q = validate_record(Question, obj, f"{path}:{lineno}")
        if q.id in first_line:
            raise DataError(f"{path}:{lineno}: duplicate id {q.id!r} (first on line {first_line[q.id]})")
        first_line[q.id] = lineno
        questions.append(q)
    return questions


# --------------------------------------------------------------------------------------------
# (b) Hugging Face datasets


def _open_hf(path: Path, split: str | None) -> Any:
    """A ``datasets.Dataset`` from a file or directory, without network access."""
    import datasets

    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(str(path))
    elif path.suffix == ".arrow":
        loaded = datasets.Dataset.from_file(str(path))
    else:
        builder = _HF_SUFFIXES.get(path.suffix)
        if builder is None:
            raise DataError(
                f"{path}: unsupported file type {path.suffix!r}; expected one of "
                f"{sorted(_HF_SUFFIXES)} or a dataset directory"
            )
        loaded = datasets.load_dataset(builder, data_files=str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None:
            if len(loaded) != 1:
                raise DataError(f"{path}: the dataset has splits {sorted(loaded)}; pass split=...")
            split = next(iter(loaded))
        if split not in loaded:
            raise DataError(f"{path}: no split {split!r}; the dataset has {sorted(loaded)}")
        return loaded[split]
    return loaded


def _get(row: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    """(found, value) for a dotted path into nested dict columns."""
    node: Any = row
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _has_column(columns: Iterable[str], dotted: str) -> bool:
    return dotted.split(".", 1)[0] in set(columns)


def _as_text(value: Any) -> Any:
    """Answers and ids as strings: integral numbers without a decimal point, lists element-wise."""
    if hasattr(value, "tolist"):  # numpy arrays and scalars from parquet list columns
        value = value.tolist()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else str(value)
    if isinstance(value, (list, tuple)):
        return [_as_text(v) for v in value]
    return value


def _last_user_turn(prompt: Any) -> str | None:
    if hasattr(prompt, "tolist"):
        prompt = prompt.tolist()
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for message in reversed(prompt):
            if isinstance(message, Mapping) and message.get("role") == "user":
                return str(message.get("content", ""))
    return None


def load_hf_questions(
    path: str | Path,
    limit: int | None = None,
    *,
    question_field: str = "question",
    answer_field: str = "answer",
    id_field: str | None = None,
    task_field: str | None = None,
    source_field: str | None = None,
    task: str = "qa",
    source: str | None = None,
    split: str | None = None,
) -> list[Question]:
    """Questions from a Hugging Face dataset file or directory (see the module docstring for the mapping)."""
    path = Path(path)
    try:
        ds = _open_hf(path, split)
    except DataError:
        raise
    except (
        Exception
    ) as e:  # datasets raises many types (FileNotFoundError, ValueError, DatasetGenerationError)
        raise DataError(
            f"{path}: could not load as a Hugging Face dataset: {type(e).__name__}: {e}"
        ) from None
    columns = list(ds.column_names)
    arpo = (
        not _has_column(columns, question_field)
        and question_field == "question"
        and "prompt" in columns
        and "reward_model" in columns
    )
    if arpo:
        if answer_field == "answer" and not _has_column(columns, "answer"):
            answer_field = "reward_model.ground_truth"
        source_field = source_field or ("data_source" if "data_source" in columns else None)
        task_field = task_field or ("ability" if "ability" in columns else None)
    for name in (None if arpo else question_field, answer_field, id_field, task_field, source_field):
        if name is not None and not _has_column(columns, name):
            raise DataError(
                f"{path}: no column {name!r} (columns: {', '.join(columns)}); map another column with "
                "question_field=/answer_field=/id_field=/task_field=/source_field="
            )
    id_field = id_field or ("id" if "id" in columns else None)
    task_field = task_field or ("task" if "task" in columns else None)
    source_field = source_field or ("source" if "source" in columns else None)
    default_source = source or path.stem

    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    questions: list[Question] = []
    first_row: dict[str, int] = {}
    for i, row in enumerate(ds):
        where = f"{path}: row {i}"

        def field(name: str, *, where: str = where, row: Mapping[str, Any] = row) -> Any:
            found, value = _get(row, name)
            if not found:
                raise DataError(f"{where}: field {name!r} is missing")
            return value

        src = str(field(source_field)) if source_field else default_source
        if arpo:
            found, text = _get(row, "extra_info.question")
            question = text if found and text else _last_user_turn(row.get("prompt"))
            found, index = _get(row, "extra_info.index")
            qid = f"{src}-{_as_text(index)}" if found and index is not None else f"{src}-{i}"
            raw_task = str(field(task_field)) if task_field else task
            qtask = raw_task if raw_task in ("math", "qa") else task
        else:
            question = field(question_field)
            qid = _as_text(field(id_field)) if id_field else f"{src}-{i}"
            qtask = str(field(task_field)) if task_field else task
        record = {
            "id": qid,
            "question": question,
            "answer": _as_text(field(answer_field)),
            "task": qtask,
            "source": src,
        }
        q = validate_record(Question, record, where)
        if q.id in first_row:
            raise DataError(f"{where}: duplicate id {q.id!r} (first in row {first_row[q.id]})")
        first_row[q.id] = i
        questions.append(q)
    return questions
