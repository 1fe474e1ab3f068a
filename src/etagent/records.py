"""Typed records shared by every stage: defined once, read and written as JSONL."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


def not_blank(value: str) -> str:
    """A field validator: text fields such as ids must not be empty or whitespace."""
    if not value.strip():
        raise ValueError("must not be empty")
    return value


class Question(BaseModel):
    """One question in the benchmark schema (docs/run-directory.md 9.1).

    ``meta`` carries optional extras; the tool world stores each question's minimal plan there
    (``min_search``, ``min_python``, ``min_tool_calls``).
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    question: str
    answer: str | list[str]
    task: str = "qa"
    source: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)

    _not_blank = field_validator("id", "question")(not_blank)

    @property
    def answers(self) -> list[str]:
        return [self.answer] if isinstance(self.answer, str) else list(self.answer)


ToolStatus = Literal["ok", "error", "timeout", "limit", "budget_exceeded", "unknown_tool"]


class ToolCall(BaseModel):
    """One executed (or refused) tool call inside a trajectory."""

    tool: str
    input: str
    result: str
    status: ToolStatus = "ok"
    latency_s: float = 0.0
    segment_index: int = -1  # index in Trajectory.segments of the inserted result
    #: how the tool made the result, when it says (the search tool: pages read, the summariser's
    #: call and latency; docs/run-directory.md 9.2); empty otherwise
    meta: dict[str, Any] = Field(default_factory=dict)


SegmentRole = Literal["model", "tool"]


class Segment(BaseModel):
    """A run of tokens written by one party. Model tokens are trained on; tool tokens are masked."""

    role: SegmentRole
    text: str
    token_ids: list[int]
    #: log-probability of each sampled token (model segments, when the backend gives them)
    logprobs: list[float | None] | None = None
    #: per token, the top-k alternatives as {token_id: logprob}, when the backend gives them
    top_logprobs: list[dict[int, float]] | None = None


#: "context": the prompt and response filled the model's context window (the server's limit)
FinishReason = Literal["answer", "eos", "length", "tool_budget", "response_budget", "context", "error"]


class Trajectory(BaseModel):
    """A full multi-turn rollout for one question.

    ``prompt_ids`` is the chat-templated [system, user] prompt with the generation prompt; the
    response is the concatenation of ``segments``. The invariant every path keeps (tested with the
    real tokenizer): ``decode(response_ids) == response_text`` and ``len(response_mask) ==
    len(response_ids)``.
    """

    question_id: str
    sample_index: int = 0
    question: Question
    prompt_text: str
    prompt_ids: list[int]
    segments: list[Segment] = Field(default_factory=list)
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: FinishReason = "eos"
    prediction: str = ""
    model: str = ""
    timings: dict[str, float] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

    @property
    def response_text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def response_ids(self) -> list[int]:
        return [t for s in self.segments for t in s.token_ids]

    @property
    def response_mask(self) -> list[int]:
        """1 for model-written tokens, 0 for tool-output tokens."""
        return [1 if s.role == "model" else 0 for s in self.segments for _ in s.token_ids]

    @property
    def num_model_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.segments if s.role == "model")

    @property
    def num_tool_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.segments if s.role == "tool")
