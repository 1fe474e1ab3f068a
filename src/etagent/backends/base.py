"""One interface for every generation backend (hf, openai, the tool world's expert policy).

A backend takes prompts as token ids (the agent loop always has them: a trajectory is a growing id
sequence) or as chat messages, and returns, per prompt, ``n`` completions with their text, token
ids, per-token log-probabilities (top-k where the backend gives them) and a finish reason.

Contract every backend keeps, so the agent loop needs no special cases:
- the completion text *includes* the stop string that ended it (vLLM's
  ``include_stop_str_in_output``); nothing after the stop string is returned;
- ``tokenizer.decode(token_ids) == text`` (token ids are trimmed/re-encoded at a stop string that
  ends mid-token);
- ``finish_reason`` is "stop" (a stop string), "eos" (the end-of-sequence token, not included in
  text or ids), "length" (the call's token limit) or "context" (the model's context window is
  full: the sequence cannot grow further).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from etagent.config import ConfigModel

Message = dict[str, str]
#: A prompt is either token ids or a chat conversation (rendered with the backend's chat template,
#: with the generation prompt added).
Prompt = list[int] | list[Message]

FinishReason = Literal["stop", "eos", "length", "context"]


@dataclass
class SamplingParams:
    max_new_tokens: int = 512
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    n: int = 1
    #: number of top alternatives to return per token (0 = only the sampled token's logprob)
    logprobs: int = 0
    seed: int | None = None


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    #: the stop string that ended generation, when finish_reason == "stop"
    stop: str | None = None
    #: log-probability of each token in token_ids; None entries where unknown (re-encoded tokens)
    logprobs: list[float | None] | None = None
    #: per token, {token_id: logprob} of the top alternatives, when requested and available
    top_logprobs: list[dict[int, float]] | None = None


class Generator(ABC):
    """A text generator. Subclasses set ``tokenizer`` (a Hugging Face tokenizer) and ``name``.

    A backend is found by name in :data:`etagent.backends.config.BACKENDS` and built with
    ``from_config(backend_config)``; its own settings are ``config_class``, the config section named
    after the backend (``backend.hf``, ``backend.openai``; ``backend.settings`` for a dotted path).
    """

    name: str = "generator"
    tokenizer: Any
    config_class: ClassVar[type[ConfigModel] | None] = None

    @classmethod
    def from_config(cls, cfg: Any) -> Generator:
        """The generator a :class:`~etagent.backends.config.BackendConfig` describes."""
        raise NotImplementedError(f"{cls.__name__} cannot be built from a config")

    @abstractmethod
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """Return ``params.n`` completions for every prompt, in prompt order."""

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt (chat messages rendered with the generation prompt)."""
        if prompt and isinstance(prompt[0], dict):
            return render_chat_ids(self.tokenizer, prompt)  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (servers, pools)."""


def render_chat_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Chat-template the messages with the generation prompt, as token ids."""
    text = render_chat_text(tokenizer, messages)
    return tokenizer.encode(text, add_special_tokens=False)


def render_chat_text(tokenizer: Any, messages: list[Message]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def trim_at_stop(
    tokenizer: Any, token_ids: list[int], stops: list[str]
) -> tuple[str, list[int], str | None, int]:
    """Cut generated ids at the first stop string, keeping the stop string.

    Returns (text, ids, matched stop or None, number of original ids kept unchanged). When the
    stop string ends inside a token, the tokens that straddle the cut are re-encoded so that
    ``decode(ids) == text`` still holds; ids past ``kept`` have no sampled log-probability.
    """
    text = tokenizer.decode(token_ids, skip_special_tokens=False)
    first: tuple[int, str] | None = None
    for s in stops:
        i = text.find(s)
        if i >= 0 and (first is None or i < first[0]):
            first = (i, s)
    if first is None:
        return text, list(token_ids), None, len(token_ids)
    cut = first[0] + len(first[1])
    target = text[:cut]
    # longest prefix of the ids whose decoding is a prefix of the target text
    kept = 0
    lo, hi = 0, len(token_ids)
    while lo < hi:  # decoded length grows with the prefix, so binary search on "is a prefix"
        mid = (lo + hi + 1) // 2
        if target.startswith(tokenizer.decode(token_ids[:mid], skip_special_tokens=False)):
            lo = mid
        else:
            hi = mid - 1
    kept = lo
    head = tokenizer.decode(token_ids[:kept], skip_special_tokens=False)
    tail_ids = tokenizer.encode(target[len(head) :], add_special_tokens=False) if len(head) < cut else []
    return target, list(token_ids[:kept]) + tail_ids, first[1], kept
