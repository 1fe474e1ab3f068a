"""The fine-tuning set: reading and validating ``sft.jsonl``, tokenization and loss masks.

One example per line (the contract with the flywheel export, :mod:`etagent.flywheel.export`)::

    {"id": "...", "question_id": "...",
     "messages": [{"role": "system", "content": <tool prompt>},
                  {"role": "user", "content": <question>},
                  {"role": "assistant", "content": <whole trajectory, inserted <result>s included>}],
     "meta": {...}}

Tokenization mirrors inference exactly (:class:`etagent.loop.agent_loop.AgentLoop`): the prompt is
the chat template over every message but the last, with the generation prompt, encoded on its
own; the assistant text follows as the pieces the agent loop would have produced (model text and
each inserted tool result encoded separately, so no token straddles a result boundary), then the
end-of-turn token. Loss mask (1 = trained): prompt tokens 0; model-written text 1; tool results
0 when ``mask_tool_results`` (the default; the reference trained on them, docs/method.md 4),
else 1; the end-of-turn token 1, so the model learns to stop after ``</answer>``.

A result is a tool output when it directly follows a complete tool call (only whitespace between),
the rule the agent loop uses to rebuild partial trajectories; a ``<result>`` the model wrote
anywhere else is model text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etagent.io import DataError, iter_jsonl, validate_record
from etagent.protocol import tags
from etagent.records import Trajectory, not_blank

log = logging.getLogger("etagent.train")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str


class SFTExample(BaseModel):
    """One line of ``sft.jsonl``: a prompt (system/user turns) and the assistant trajectory to learn."""

    model_config = ConfigDict(extra="forbid")

    id: str
    question_id: str
    messages: list[ChatMessage] = Field(min_length=2)
    meta: dict[str, Any] = Field(default_factory=dict)

    _not_blank = field_validator("id", "question_id")(not_blank)

    @model_validator(mode="after")
    def _one_final_assistant_turn(self) -> SFTExample:
        roles = [m.role for m in self.messages]
        if roles[-1] != "assistant":
            raise ValueError(
                f"messages: the last message must be the assistant trajectory, got roles {roles}"
            )
        if "user" not in roles[:-1]:
            raise ValueError(
                f"messages: needs a user turn before the assistant trajectory, got roles {roles}"
            )
        if not self.messages[-1].content.strip():
            raise ValueError("messages: the assistant trajectory is empty")
        return self

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages[:-1]]

    @property
    def trajectory(self) -> str:
        return self.messages[-1].content


def load_sft_examples(path: str | Path) -> list[SFTExample]:
    """Every example of a JSONL file; :class:`DataError` naming file:line:field on bad input."""
    examples: list[SFTExample] = []
    first_line: dict[str, int] = {}
    for lineno, obj in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if "segments" in obj and "prompt_ids" in obj:
            raise DataError(
                f"{where}: this is a rollout trajectory, not an SFT example; convert trajectories with "
                "etagent.train.sft_data.trajectories_to_sft_examples (or export them with the flywheel)"
            )
        example = validate_record(SFTExample, obj, where)
        if example.id in first_line:
            raise DataError(
                f"{where}: field 'id': duplicate id {example.id!r} (first on line {first_line[example.id]})"
            )
        first_line[example.id] = lineno
        examples.append(example)
    if not examples:
        raise DataError(f"{path}: no examples (the file is empty)")
    return examples


# ---------------------------------------------------------------------------------------------
# Spans and masks


def tool_result_spans(
    text: str, tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS
) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of the inserted tool results in a trajectory.

    Each span is one whole ``<result>\\n...\\n</result>`` (:func:`tags.render_result`) that directly
    follows a complete tool call.
    """
    spans: list[tuple[int, int]] = []
    call_open = False  # a complete tool call with no result yet
    for block in tags.parse_blocks(text, tags.STRUCTURE_TAGS + tuple(tool_tags)):
        if block.kind in tool_tags and block.closed:
            call_open = True
        elif block.kind == tags.RESULT and block.closed and call_open:
            spans.append((block.start, block.end))
            call_open = False
        elif not (block.kind == "text" and not block.content.strip()):
            call_open = False
    return spans


def split_trajectory(
    text: str, tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS
) -> list[tuple[Literal["model", "tool"], str]]:
    """The trajectory as (role, text) pieces in order, the way the agent loop builds it."""
    pieces: list[tuple[Literal["model", "tool"], str]] = []
    pos = 0
    for start, end in tool_result_spans(text, tool_tags):
        if start > pos:
            pieces.append(("model", text[pos:start]))
        pieces.append(("tool", text[start:end]))
        pos = end
    if pos < len(text):
        pieces.append(("model", text[pos:]))
    return pieces


@dataclass
class TokenizedExample:
    """Token ids and their loss mask (1 = trained). ``roles`` says who wrote each token:
    "prompt", "model", "tool" or "end" (the end-of-turn token)."""

    input_ids: list[int]
    loss_mask: list[int]
    roles: list[str]
    truncated: bool = False

    @property
    def num_prompt_tokens(self) -> int:
        return self.roles.count("prompt")

    @property
    def num_trained_tokens(self) -> int:
        return sum(self.loss_mask)


def end_of_turn_id(tokenizer: Any) -> int:
    """The token that ends an assistant turn (``<|im_end|>`` for ChatML models): the EOS token."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token: cannot mark the end of the assistant turn")
    return int(eos)


def tokenize_example(
    example: SFTExample,
    tokenizer: Any,
    mask_tool_results: bool = True,
    max_length: int | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
) -> TokenizedExample:
    """Prompt + trajectory pieces + end-of-turn token, with the loss mask (see the module doc).

    ``max_length`` keeps the start of a longer example (the end-of-turn token is then lost).
    """
    prompt_text = tokenizer.apply_chat_template(
        example.prompt_messages, tokenize=False, add_generation_prompt=True
    )
    ids: list[int] = tokenizer.encode(prompt_text, add_special_tokens=False)
    roles = ["prompt"] * len(ids)
    for role, piece in split_trajectory(example.trajectory, tool_tags):
        piece_ids = tokenizer.encode(piece, add_special_tokens=False)
        ids += piece_ids
        roles += [role] * len(piece_ids)
    ids.append(end_of_turn_id(tokenizer))
    roles.append("end")
    trained = {"model", "end"} if mask_tool_results else {"model", "tool", "end"}
    mask = [int(r in trained) for r in roles]
    truncated = max_length is not None and len(ids) > max_length
    if truncated:
        ids, mask, roles = ids[:max_length], mask[:max_length], roles[:max_length]
    return TokenizedExample(ids, mask, roles, truncated)


# ---------------------------------------------------------------------------------------------
# From rollouts


def _tool_prompt(tool_tags: tuple[str, ...]) -> str:
    """The system prompt the agent loop renders for these tools (without building the tools)."""
    from etagent.tools.base import tool_class

    return tags.render_system_prompt([tool_class(name).spec for name in tool_tags])


def trajectories_to_sft_examples(
    trajectories: Iterable[Trajectory],
    system_prompt: str | None = None,
    tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS,
) -> list[dict[str, Any]]:
    """SFT examples (dicts in the ``sft.jsonl`` format) for rollout trajectories, in order.

    No filtering: choosing which trajectories to train on (correct, well-formed, deduplicated) is
    the caller's policy. The system prompt defaults to the agent loop's tool prompt for
    ``tool_tags``; few-shot turns of the rollout prompt are not carried over. A trajectory whose
    tool-output segments are not exactly the result spans found in its text (e.g. a tool output
    that itself contains ``</result>``) would be masked wrongly, so it is skipped with a warning.
    """
    system = system_prompt if system_prompt is not None else _tool_prompt(tuple(tool_tags))
    examples: list[dict[str, Any]] = []
    skipped: list[str] = []
    for traj in trajectories:
        text = traj.response_text
        pos, tool_spans = 0, []
        for seg in traj.segments:
            if seg.role == "tool":
                tool_spans.append((pos, pos + len(seg.text)))
            pos += len(seg.text)
        if set(tool_spans) - set(tool_result_spans(text, tool_tags)):
            skipped.append(f"{traj.question_id}#{traj.sample_index}")
            continue
        examples.append(
            {
                "id": f"{traj.question_id}#{traj.sample_index}",
                "question_id": traj.question_id,
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": traj.question.question},
                    {"role": "assistant", "content": text},
                ],
                "meta": {
                    "source": traj.question.source,
                    "task": traj.question.task,
                    "sample_index": traj.sample_index,
                    "model": traj.model,
                    "finish_reason": traj.finish_reason,
                    "prediction": traj.prediction,
                    "tool_calls": len(traj.tool_calls),
                },
            }
        )
    if skipped:
        log.warning(
            "skipped %d trajectories whose tool outputs are not recognisable result spans: %s",
            len(skipped),
            skipped[:5],
        )
    return examples
