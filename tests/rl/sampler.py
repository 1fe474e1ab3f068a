"""A sampling policy that calls a tool: the tiny random model, steered by position, decoded by the
real hf backend (batching, identical-prompt samples, top-k log-probs, stop strings).

``ToolSampler`` writes, for every question, the same trajectory shape

    <think>Look it up.</think><search>alpha</search>  <result>...</result>
    <think>W1 W2 W3</think><answer>The final answer is \\boxed{D}</answer>

where ``W1..W3`` (words) and ``D`` (a digit) are sampled freely: every other token gets +1000 on
its logit and is as good as certain, while at a free position each candidate gets +1000 and the
random model's own logits decide between them (nearly uniform). The steering looks only at the
position and the token fed to the model (the backend passes explicit position ids), so it works
token by token with the backend's cache, for prompts of the lengths it was built for.
"""

from __future__ import annotations

from typing import Any

import torch

from etagent.backends.hf import HFGenerator
from etagent.protocol import tags

FIRST = "<think>Look it up.</think><search>alpha</search>"
WORDS = [" red", " blue", " green", " gold", " black", " white", " grey", " pink", " brown", " cyan"]
DIGITS = ["4", "5", "6", "7"]
#: free positions of the second segment: three words, then the answer digit
FREE = 4


class SteeredLM(torch.nn.Module):
    """The base model with +1000 on the tokens ``table[(position, token)]`` at the next position."""

    def __init__(self, base: Any, table: dict[tuple[int, int], list[int]]) -> None:
        super().__init__()
        self.base = base
        self.table = table
        self.config = base.config
        self.generation_config = base.generation_config

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, logits_to_keep: int = 0, **kwargs: Any
    ) -> Any:
        out = self.base(
            input_ids=input_ids, position_ids=position_ids, logits_to_keep=logits_to_keep, **kwargs
        )
        for b, (pos, tok) in enumerate(
            zip(position_ids[:, -1].tolist(), input_ids[:, -1].tolist(), strict=True)
        ):
            allowed = self.table.get((pos, tok))
            if allowed:
                out.logits[b, -1, allowed] += 1000.0
        return out


def single_tokens(tokenizer: Any, texts: list[str]) -> list[int]:
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    assert all(len(i) == 1 for i in ids), f"each of {texts} must be one token"
    return [i[0] for i in ids]


def steering_table(
    tokenizer: Any, prompt_lengths: set[int], result_text: str
) -> dict[tuple[int, int], list[int]]:
    """The table for prompts of ``prompt_lengths`` tokens (all ending with the same token) and the
    tool result ``result_text`` (as the tool returns it) after the first segment."""
    enc = lambda s: tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    first = enc(FIRST)
    result = enc(tags.render_result(result_text))
    words, digits = single_tokens(tokenizer, WORDS), single_tokens(tokenizer, DIGITS)
    think_open = enc("<think>")
    middle = enc("</think><answer>The final answer is \\boxed{")
    end = enc("}</answer>")
    last_prompt = enc("<|im_start|>assistant\n")[-1]
    table: dict[tuple[int, int], list[int]] = {}

    def forced(pos: int, prev: int, ids: list[int]) -> tuple[int, int]:
        for t in ids:
            table[(pos, prev)] = [t]
            pos, prev = pos + 1, t
        return pos, prev

    for length in prompt_lengths:
        pos, prev = forced(length - 1, last_prompt, first)
        pos, prev = pos + len(result), result[-1]  # the tool writes these
        pos, prev = forced(pos, prev, think_open)
        previous = [prev]
        for choices in (words, words, words):
            for p in previous:
                table[(pos, p)] = choices
            pos, previous = pos + 1, choices
        for p in previous:
            table[(pos, p)] = middle[:1]
        pos, prev = forced(pos + 1, middle[0], middle[1:])
        table[(pos, prev)] = digits
        for d in digits:
            table[(pos + 1, d)] = end[:1]
        forced(pos + 2, end[0], end[1:])
    return table


def tool_sampler(base_model: Any, tokenizer: Any, prompt_lengths: set[int], result_text: str) -> HFGenerator:
    """An hf backend over the steered model (prefix cache on, as in RL)."""
    return HFGenerator(
        SteeredLM(base_model, steering_table(tokenizer, prompt_lengths, result_text)), tokenizer
    )
