"""Tasks: the registry, and the one way a stage turns its ``data`` setting into questions.

A ``data`` setting names a task and a split:

==============================  ==============================================================
``toolworld:dev``               a registered task and its split (``toolworld:dev@3``: seed 3)
``my_task.yaml:train``          a task declared in YAML (:mod:`etagent.tasks.files`)
``my_pkg.tasks:Capitals:train`` a :class:`Task` subclass named by its dotted path
``path/to/questions.jsonl``     a question file (or ``datasets`` file/dir): split ``all``
==============================  ==============================================================

A stage may also name its task separately (``task:``) when ``data`` is a question file, e.g. a
Pareto curriculum stage file of tool-world questions: ``data: stages/stage_1.jsonl``,
``task: toolworld``. The task then gives the corpus, the answer check, the oracle, the critic and
the prompt examples; the file gives the questions. Register a short name with
``TASKS.register("capitals", "my_pkg.tasks:Capitals")``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

from etagent.io import DataError
from etagent.records import Question
from etagent.registry import Registry, RegistryError, is_dotted_path
from etagent.tasks.base import PromptExample, Task, TaskError, uses_only

TASKS: Registry[type[Task]] = Registry("task", {"toolworld": "etagent.tasks.toolworld:ToolWorldTask"})

_TASK_FILE_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class DataRef:
    """A ``data`` setting, resolved: the task, and which of its splits (or a file of its questions)."""

    spec: str
    task: Task
    #: the setting that names the task alone (``toolworld``, ``toolworld@3``, a YAML path, ...)
    task_spec: str
    split: str | None = None
    file: Path | None = None

    def questions(self, limit: int | None = None) -> list[Question]:
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        if self.file is not None:
            from etagent.data.loader import load_question_file

            return load_question_file(self.file, limit)
        assert self.split is not None
        questions = self.task.questions(self.split)
        return questions if limit is None else questions[:limit]


_lock = threading.Lock()


@functools.lru_cache(maxsize=64)
def _registered(name: str, seed: int | None) -> Task:
    task_cls = TASKS.get(name)
    return task_cls() if seed is None else task_cls(seed=seed)


@functools.lru_cache(maxsize=64)
def _task_file(path: Path, version: tuple[int, int]) -> Task:
    from etagent.tasks.files import load_task_file

    return load_task_file(path)


@functools.lru_cache(maxsize=64)
def _question_file(path: Path, version: tuple[int, int]) -> Task:
    from etagent.tasks.files import FileTask

    return FileTask.from_file(path)


def _version(path: Path) -> tuple[int, int]:
    """Changes when the file is rewritten (a re-written question file is loaded again)."""
    st = path.stat()
    return st.st_mtime_ns, st.st_size


def _split_seed(spec: str, rest: str) -> tuple[str, int | None]:
    split, at, seed_text = rest.partition("@")
    if not at:
        return split, None
    try:
        return split, int(seed_text)
    except ValueError:
        raise DataError(f"{spec}: the seed after '@' must be an integer, got {seed_text!r}") from None


def _checked(spec: str, task: Task, task_spec: str, split: str) -> DataRef:
    if split not in task.splits():
        raise DataError(f"{spec}: task {task.name!r} has no split {split!r}; it has {task.splits()}")
    return DataRef(spec, task, task_spec, split=split)


def _class_task(spec: str, name: str, seed: int | None) -> Task:
    try:
        return _registered(name, seed)
    except RegistryError as e:
        raise DataError(f"{spec}: {e}") from None
    except TypeError as e:  # a task class that takes no seed, or needs arguments
        raise DataError(f"{spec}: cannot construct task {name!r}: {e}") from None


def resolve_task(spec: str | Path) -> Task:
    """The task a ``task`` setting names: ``toolworld``, ``toolworld@3``, a task YAML file,
    ``package.module:TaskClass``, or a question file (a task with one split, ``all``)."""
    text = str(spec)
    base = text.partition("@")[0]
    with _lock:
        if base in TASKS or is_dotted_path(base):
            name, seed = _split_seed(text, text)
            return _class_task(text, name, seed)
        path = Path(text).expanduser()
        if not path.exists():
            raise DataError(
                f"{text}: not a task: expected a registered task ({', '.join(TASKS.names())}), a task "
                "YAML file, package.module:TaskClass, or a question file"
            )
        if path.suffix in _TASK_FILE_SUFFIXES:
            return _task_file(path.resolve(), _version(path))
        return _question_file(path.resolve(), _version(path))


def resolve_data(spec: str | Path, task: str | None = None) -> DataRef:
    """The task and questions a ``data`` setting names (see the module docstring); ``task``, when
    given, names the task of a question file."""
    text = str(spec)
    head, colon, rest = text.rpartition(":")
    if task is not None:
        path = Path(text).expanduser()
        if not path.exists() or path.suffix in _TASK_FILE_SUFFIXES:
            raise DataError(f"{text}: with task {task!r} set, data must be a question file")
        return DataRef(text, resolve_task(task), task, file=path)
    if colon and (head in TASKS or is_dotted_path(head)):
        split, seed = _split_seed(text, rest)
        with _lock:
            found = _class_task(text, head, seed)
        return _checked(text, found, head if seed is None else f"{head}@{seed}", split)
    file_part, split = (head, rest) if colon and head.endswith(_TASK_FILE_SUFFIXES) else (text, None)
    path = Path(file_part).expanduser()
    if path.suffix in _TASK_FILE_SUFFIXES:
        if not path.is_file():
            raise DataError(f"{path}: task file does not exist")
        found = resolve_task(file_part)
        if split is None:
            if len(found.splits()) != 1:
                raise DataError(
                    f"{text}: name a split of task {found.name!r}: {file_part}:<split>, one of {found.splits()}"
                )
            split = found.splits()[0]
        return _checked(text, found, file_part, split)
    if not path.exists():
        raise DataError(
            f"{text}: no such file or directory, and not a task (expected a registered task "
            f"<name>:<split> with name one of {TASKS.names()}, a task YAML file, "
            "package.module:TaskClass:<split>, or a question file)"
        )
    from etagent.tasks.files import ALL

    return _checked(text, resolve_task(text), text, ALL)


def load_questions(spec: str | Path, limit: int | None = None, task: str | None = None) -> list[Question]:
    """The questions a ``data`` setting names (the first ``limit`` of them)."""
    return resolve_data(spec, task).questions(limit)


__all__ = [
    "TASKS",
    "DataRef",
    "PromptExample",
    "Task",
    "TaskError",
    "load_questions",
    "resolve_data",
    "resolve_task",
    "uses_only",
]
