"""Scripted models for the search tests: a summariser and an agent that searches once, then answers.

The two ``*Backend`` classes are etagent backends usable from config by dotted path
(``kind: tests.tools.search.scripted:ScriptedSummariser``), so the CLI tests run them too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pydantic import Field

from etagent.backends.base import Completion, Generator, SamplingParams, trim_at_stop
from etagent.config import ConfigModel

ASSISTANT = "<|im_start|>assistant\n"


class SummaryModel(Generator):
    """A scripted summarising model: answers every prompt with ``reply(prompt_text)``; records the
    prompts, the batch sizes, and whether two generate calls ever overlapped."""

    name = "scripted-summariser"

    def __init__(self, reply: Callable[[str], str] | str, delay_s: float = 0.0):
        self.reply = reply if callable(reply) else (lambda _prompt, text=reply: text)
        self.delay_s = delay_s
        self.prompts: list[str] = []
        self.batches: list[int] = []
        self.overlapped = False
        self.closed = False
        self._busy = threading.Lock()

    def generate(self, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        if not self._busy.acquire(blocking=False):
            self.overlapped = True
            self._busy.acquire()
        try:
            time.sleep(self.delay_s)
            self.batches.append(len(prompts))
            out = []
            for messages in prompts:
                text = messages[-1]["content"]
                self.prompts.append(text)
                answer = self.reply(text)
                out.append([Completion(answer, list(range(len(answer.split()))), "eos")])
            return out
        finally:
            self._busy.release()

    def close(self) -> None:
        self.closed = True


class SummariserSettings(ConfigModel):
    text: str = Field(description="what the summariser writes")


class ScriptedSummariser(SummaryModel):
    """:class:`SummaryModel` as a backend built from config (``settings.text``)."""

    config_class = SummariserSettings

    def __init__(self, text: str) -> None:
        super().__init__(text)

    @classmethod
    def from_config(cls, cfg: Any) -> ScriptedSummariser:
        return cls(cfg.section().text)


class AgentSettings(ConfigModel):
    query: str = Field(description="what the agent searches for")
    answer: str = Field(description="the boxed answer it gives after the search")


class SearchThenAnswer(Generator):
    """An agent that thinks, searches ``query`` once, and after the result answers ``answer``."""

    name = "search-then-answer"
    config_class = AgentSettings

    def __init__(self, tokenizer: Any, query: str, answer: str) -> None:
        self.tokenizer = tokenizer
        self.first = f"<think>I should look this up.</think>\n<search>{query}</search>"
        self.second = f"\n<think>The result helps.</think>\n<answer>The final answer is \\[ \\boxed{{{answer}}} \\]</answer>"

    @classmethod
    def from_config(cls, cfg: Any) -> SearchThenAnswer:
        from etagent.backends.model_store import load_tokenizer

        settings = cfg.section()
        return cls(load_tokenizer(cfg.tokenizer_name), settings.query, settings.answer)

    def generate(self, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            text = self.tokenizer.decode(self.prompt_ids(prompt), skip_special_tokens=False)
            done = text.rsplit(ASSISTANT, 1)[-1]
            script = self.second if "</result>" in done else self.first
            ids = self.tokenizer.encode(script, add_special_tokens=False)[: params.max_new_tokens]
            out_text, out_ids, stop, _ = trim_at_stop(self.tokenizer, ids, params.stop)
            out.append([Completion(out_text, out_ids, "stop" if stop else "eos", stop=stop)] * params.n)
        return out
