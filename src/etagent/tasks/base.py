"""What a task is: the domain a run trains and evaluates on.

A task bundles questions per split, an optional retrieval corpus, an optional answer check that
replaces the standard rule (:func:`etagent.scoring.correctness.answer_correctness`), an optional
oracle (an expert policy that writes trajectories) and critic (the flywheel's critic and helper
roles), and prompt examples that use only the tools the agent has.

The generic layers (protocol, tools, backends, rollout, scoring) never import a task; stages get
one from :func:`etagent.tasks.resolve_data` and ask it for what they need. A new task is one
class (see ``examples/custom_task``) or a YAML file (:class:`etagent.tasks.files.TaskSpec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from etagent.io import DataError
from etagent.protocol import tags
from etagent.records import Question

if TYPE_CHECKING:
    from etagent.backends.base import Generator
    from etagent.tools.config import ToolsConfig

#: one prompt example: (question text, the whole trajectory text with real tool results)
PromptExample = tuple[str, str]


class TaskError(DataError):
    """A task cannot give what was asked (no such split, no oracle, too few examples)."""


class Task(ABC):
    """One domain's questions and knowledge. Subclasses set ``name`` and implement :meth:`questions`."""

    name: ClassVar[str] = "task"

    @abstractmethod
    def splits(self) -> list[str]:
        """The split names :meth:`questions` accepts."""

    @abstractmethod
    def questions(self, split: str) -> list[Question]:
        """All questions of ``split`` (raise :class:`TaskError` for an unknown split)."""

    def require_split(self, split: str) -> None:
        """Raise :class:`TaskError` unless ``split`` is one of :meth:`splits`."""
        if split not in self.splits():
            raise TaskError(f"task {self.name!r} has no split {split!r}; it has {self.splits()}")

    def corpus(self) -> Path | None:
        """The JSONL corpus the search tool uses when its config names none."""
        return None

    def check_answer(self, question: Question, prediction: str) -> float | None:
        """Correctness of ``prediction`` in [0, 1], or None for the standard rule of ``question.task``
        (token F1 / exact match for QA, equivalence for maths). Override for a task of its own kind."""
        return None

    def oracle(self, tokenizer: str, settings: Any = None) -> Generator:
        """A Generator that plays the task's expert (``backend.kind: expert``); ``settings`` is the
        ``backend.expert`` section as given, which the task validates (a clear error names the field)."""
        raise TaskError(f"task {self.name!r} has no oracle (expert policy); use a model backend")

    def critic(self) -> Any:
        """The flywheel's critic and helper without a model (``critic.kind: expert``), or None."""
        return None

    def prompt_examples(self, k: int, tools: ToolsConfig, tokenizer: str) -> list[PromptExample]:
        """``k`` example trajectories for the prompt, each calling only tools in ``tools.enabled``.

        ``tools`` is the agent's tool config (which tools, their settings); a task may run its
        oracle with such tools. The default has no examples: asking for some is an error, never a
        silent prompt without them.
        """
        if k <= 0:
            return []
        raise TaskError(
            f"task {self.name!r} has no prompt examples; set few_shot: 0 or give the task examples"
        )

    def describe(self) -> str:
        return self.name


def uses_only(trajectory: str, tool_names: Sequence[str]) -> bool:
    """Whether every tagged call in ``trajectory`` is to one of ``tool_names``."""
    return tags.unknown_tool_call(trajectory, tuple(tool_names)) is None
