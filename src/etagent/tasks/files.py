"""Tasks made of files: a question set on disk, or a task declared in YAML.

A plain question file (benchmark JSONL, or a Hugging Face ``datasets`` file or directory) is a
task with one split, ``all``, and the standard answer check of each question's ``task`` field.

A task of one's own is a YAML file; paths in it are relative to the file::

    name: capitals                      # label in logs and reports
    splits:                             # split -> question file (any format load_question_file reads)
      train: train.jsonl
      dev: dev.jsonl
    corpus: corpus.jsonl                # optional: what the search tool searches ({id, title, text})
    correctness: qa                     # qa (token F1 / exact match), math, or package.module:function
    examples: examples.jsonl            # optional: prompt examples, {"question", "trajectory"} per line

``correctness: package.module:function`` names ``function(prediction, golds) -> float in [0, 1]``.
Instead of files, ``class: package.module:MyTask`` names a :class:`~etagent.tasks.base.Task`
subclass; the YAML's ``options`` mapping is passed to its constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from etagent.config import ConfigModel, read_yaml
from etagent.data.loader import load_question_file
from etagent.io import DataError, iter_jsonl, validate_record
from etagent.records import Question
from etagent.registry import import_object, is_dotted_path
from etagent.tasks.base import PromptExample, Task, TaskError, uses_only

if TYPE_CHECKING:
    from etagent.tools.config import ToolsConfig

ALL = "all"
STANDARD_CHECKS = ("qa", "math")


class PromptExampleRecord(ConfigModel):
    """One line of a task's examples file."""

    question: str = Field(min_length=1)
    trajectory: str = Field(min_length=1, description="the whole response, tool results included")


class TaskSpec(ConfigModel):
    """A task declared in YAML (see the module docstring)."""

    name: str = Field(min_length=1)
    splits: dict[str, str] = Field(default_factory=dict, description="split name -> question file")
    corpus: str | None = None
    correctness: str = Field(
        "qa", description="qa, math, or package.module:function(prediction, golds) -> float"
    )
    examples: str | None = Field(None, description="JSONL of {question, trajectory} prompt examples")
    class_: str | None = Field(None, alias="class", description="package.module:TaskClass instead of files")
    options: dict[str, Any] = Field(default_factory=dict, description="constructor options of class")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("correctness")
    @classmethod
    def _known_check(cls, value: str) -> str:
        if value not in STANDARD_CHECKS and not is_dotted_path(value):
            raise ValueError(f"{value!r}: expected qa, math or a dotted path package.module:function")
        return value

    @model_validator(mode="after")
    def _files_or_class(self) -> TaskSpec:
        if self.class_ is None and not self.splits:
            raise ValueError("a task needs splits (split -> question file) or a class")
        if self.class_ is not None and not is_dotted_path(self.class_):
            raise ValueError(f"class {self.class_!r} is not a dotted path package.module:Class")
        return self


class FileTask(Task):
    """Questions from files, an optional corpus and examples, a standard or custom answer check."""

    def __init__(
        self,
        name: str,
        splits: dict[str, Path],
        corpus: Path | None = None,
        correctness: str = "qa",
        examples: Path | None = None,
        relabel: bool = True,
    ):
        self.name = name  # type: ignore[misc]  # instances name themselves
        self._splits = splits
        self._corpus = corpus
        self._correctness = correctness
        self._examples = examples
        self._relabel = relabel and correctness in STANDARD_CHECKS
        self._loaded: dict[str, list[Question]] = {}

    @classmethod
    def from_file(cls, path: Path) -> FileTask:
        """A question file as a task with the one split ``all`` (questions keep their own ``task``)."""
        return cls(name=path.stem, splits={ALL: path}, relabel=False)

    def splits(self) -> list[str]:
        return list(self._splits)

    def questions(self, split: str) -> list[Question]:
        self.require_split(split)
        if split not in self._loaded:
            questions = load_question_file(self._splits[split])
            if self._relabel:
                questions = [q.model_copy(update={"task": self._correctness}) for q in questions]
            self._loaded[split] = questions
        return self._loaded[split]

    def corpus(self) -> Path | None:
        return self._corpus

    @cached_property
    def _check(self) -> Callable[[str, list[str]], float] | None:
        if self._correctness in STANDARD_CHECKS:
            return None
        check = import_object(self._correctness)
        if not callable(check):
            raise TaskError(f"task {self.name!r}: correctness {self._correctness!r} is not a function")
        return check

    def check_answer(self, question: Question, prediction: str) -> float | None:
        if self._check is None:
            return None
        value = float(self._check(prediction, question.answers))
        if not 0.0 <= value <= 1.0:
            raise TaskError(
                f"task {self.name!r}: {self._correctness} returned {value} for question {question.id!r}; "
                "correctness must lie in [0, 1]"
            )
        return value

    def prompt_examples(self, k: int, tools: ToolsConfig, tokenizer: str) -> list[PromptExample]:
        if k <= 0:
            return []
        if self._examples is None:
            return super().prompt_examples(k, tools, tokenizer)
        usable = [
            (r.question, r.trajectory)
            for r in (
                validate_record(PromptExampleRecord, obj, f"{self._examples}:{line}")
                for line, obj in iter_jsonl(self._examples)
            )
            if uses_only(r.trajectory, tools.enabled)
        ]
        if len(usable) < k:
            raise TaskError(
                f"{self._examples}: {len(usable)} prompt examples call only the enabled tools "
                f"{tools.enabled}; few_shot asks for {k}"
            )
        return usable[:k]


def load_task_file(path: Path) -> Task:
    """The task a YAML file declares (paths in it are relative to the file)."""
    try:
        spec = TaskSpec.model_validate(read_yaml(path))
    except ValidationError as e:
        fields = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()
        )
        raise DataError(f"{path}: invalid task file: {fields}") from None
    if spec.class_ is not None:
        task_cls = import_object(spec.class_)
        if not (isinstance(task_cls, type) and issubclass(task_cls, Task)):
            raise DataError(f"{path}: class {spec.class_!r} is not a subclass of etagent.tasks.Task")
        return task_cls(**spec.options)
    here = path.parent

    def local(p: str | None) -> Path | None:
        return None if p is None else (here / p).expanduser()

    return FileTask(
        name=spec.name,
        splits={split: here / file for split, file in spec.splits.items()},
        corpus=local(spec.corpus),
        correctness=spec.correctness,
        examples=local(spec.examples),
    )
