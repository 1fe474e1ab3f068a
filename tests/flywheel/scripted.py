"""A generator that answers every prompt with a canned reply, recording what it was asked."""

from __future__ import annotations

from collections.abc import Callable

from etagent.backends.base import Completion, Generator, SamplingParams


class CannedGenerator(Generator):
    """Replies ``reply(prompt_text)`` (or the next string of a list) to each prompt; raises when
    ``fail`` is set, like a server that is down."""

    name = "canned"

    def __init__(self, tokenizer, reply: Callable[[str], str] | list[str], fail: bool = False):
        self.tokenizer = tokenizer
        self.reply = reply
        self.fail = fail
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

    def generate(self, prompts, params: SamplingParams):
        if self.fail:
            raise ConnectionError("server down")
        self.params.append(params)
        out = []
        for p in prompts:
            text = self.tokenizer.decode(self.prompt_ids(p), skip_special_tokens=False)
            self.prompts.append(text)
            reply = self.reply(text) if callable(self.reply) else self.reply.pop(0)
            out.append([Completion(reply, self.tokenizer.encode(reply, add_special_tokens=False), "eos")])
        return out
