"""A task of one's own as a Python class: multiplication questions made in code, a numeric answer
check, and prompt examples that call the Python tool.

Named by its dotted path (this folder on PYTHONPATH)::

    PYTHONPATH=examples/custom_task etagent eval --data arithmetic:ArithmeticTask:dev --set agent.tools.enabled=[python]
"""

from __future__ import annotations

import random
import re

from etagent.records import Question
from etagent.tasks import PromptExample, Task, TaskError, uses_only
from etagent.tools.config import ToolsConfig

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_SPLITS = {"train": (0, 200), "dev": (1, 40)}  # split -> (seed, size)
_EXAMPLES = [
    (
        "What is 123 times 45?",
        "<think>I multiply with Python.</think><python>print(123 * 45)</python><result>\n5535\n</result>"
        "<think>The product is 5535.</think><answer>The final answer is \\[ \\boxed{5535} \\]</answer>",
    ),
    (
        "What is 7 times 8?",
        "<think>7 times 8 is 56.</think><answer>The final answer is \\[ \\boxed{56} \\]</answer>",
    ),
]


class ArithmeticTask(Task):
    name = "arithmetic"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def splits(self) -> list[str]:
        return list(_SPLITS)

    def questions(self, split: str) -> list[Question]:
        self.require_split(split)
        split_seed, size = _SPLITS[split]
        rng = random.Random(self.seed * 1000 + split_seed)
        out = []
        for i in range(size):
            a, b = rng.randint(11, 999), rng.randint(11, 99)
            out.append(
                Question(
                    id=f"arithmetic-{split}-{i}",
                    question=f"What is {a} times {b}?",
                    answer=str(a * b),
                    task="math",
                    source="arithmetic",
                )
            )
        return out

    def check_answer(self, question: Question, prediction: str) -> float | None:
        """Right if the first number in the answer is right, whatever surrounds it ("5535",
        "5,535 apples", "the product is 5535.0"); the standard maths check wants the number alone."""
        found = _NUMBER.search(prediction.replace(",", ""))
        return float(found is not None and float(found.group()) == float(question.answers[0]))

    def prompt_examples(self, k: int, tools: ToolsConfig, tokenizer: str) -> list[PromptExample]:
        usable = [ex for ex in _EXAMPLES if uses_only(ex[1], tools.enabled)]
        if k > len(usable):
            raise TaskError(
                f"arithmetic has {len(usable)} prompt examples for tools {tools.enabled}, not {k}"
            )
        return usable[:k]
