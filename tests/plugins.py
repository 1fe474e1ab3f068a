"""A user's own tool and backend, each one class in one file, used from config by dotted path."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from etagent.backends.base import Completion, Generator, SamplingParams, trim_at_stop
from etagent.config import ConfigModel
from etagent.protocol.tags import ToolSpec
from etagent.tools.base import Tool, ToolResult


class CalculatorConfig(ConfigModel):
    digits: int = Field(0, ge=0, description="decimal places of the result")


class Calculator(Tool):
    name = "calculator"
    spec = ToolSpec("calculator", "evaluates an arithmetic expression", "2*(3+4)")
    config_class = CalculatorConfig

    def __init__(self, digits: int = 0) -> None:
        self.digits = digits
        self.closed = False

    @classmethod
    def from_config(cls, cfg: CalculatorConfig) -> Calculator:
        return cls(cfg.digits)

    def call(self, content: str) -> ToolResult:
        if not content.strip() or set(content) - set("0123456789+-*/(). "):
            return ToolResult("Invalid expression.", "error")
        return ToolResult(f"{eval(content):.{self.digits}f}")  # digits and operators only

    def close(self) -> None:
        self.closed = True


class ScriptConfig(ConfigModel):
    text: str = Field(description="what every completion says")


class ScriptBackend(Generator):
    """Writes ``settings.text`` for every prompt (cut at stop strings)."""

    name = "script"
    config_class = ScriptConfig

    def __init__(self, tokenizer: Any, text: str) -> None:
        self.tokenizer = tokenizer
        self.text = text

    @classmethod
    def from_config(cls, cfg: Any) -> ScriptBackend:
        from etagent.backends.model_store import load_tokenizer

        return cls(load_tokenizer(cfg.tokenizer_name), cfg.section().text)

    def generate(self, prompts: list, params: SamplingParams) -> list[list[Completion]]:
        out = []
        for prompt in prompts:
            prompt_text = self.tokenizer.decode(self.prompt_ids(prompt), skip_special_tokens=False)
            done = prompt_text.rsplit("<|im_start|>assistant\n", 1)[-1]  # the trajectory so far
            text = self.text[len(done) :] if self.text.startswith(done) else self.text
            ids = self.tokenizer.encode(text, add_special_tokens=False)[: params.max_new_tokens]
            out_text, out_ids, stop, _ = trim_at_stop(self.tokenizer, ids, params.stop)
            out.append([Completion(out_text, out_ids, "stop" if stop else "eos", stop=stop)] * params.n)
        return out
