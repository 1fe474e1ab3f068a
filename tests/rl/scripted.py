"""A scripted policy for RL tests: each trajectory of a batch follows one of a few fixed scripts."""

from __future__ import annotations

from etagent.backends.base import Completion, Generator, SamplingParams, trim_at_stop
from tests.loop.test_agent_loop import ASSISTANT


def model_written(response: str) -> str:
    """The model's own text so far: the response minus inserted tool results."""
    out, pos = [], 0
    while (i := response.find("<result>", pos)) >= 0:
        out.append(response[pos:i])
        pos = response.index("</result>", i) + len("</result>")
    return "".join(out) + response[pos:]


class CyclingScripts(Generator):
    """Row k of the first turn starts script ``k % len(scripts)``; later turns continue the script
    whose text the trajectory has written so far (scripts differ from their first segment on)."""

    name = "cycling"

    def __init__(self, tokenizer, scripts: list[str]):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self._next = 0

    def generate(self, prompts, params: SamplingParams):
        out = []
        for p in prompts:
            text = self.tokenizer.decode(self.prompt_ids(p), skip_special_tokens=False)
            written = model_written(text.rsplit(ASSISTANT, 1)[1])
            if written:
                (script,) = [s for s in self.scripts if s.startswith(written)]
            else:
                script = self.scripts[self._next % len(self.scripts)]
                self._next += 1
            ids = self.tokenizer.encode(script[len(written) :], add_special_tokens=False)
            cut = ids[: params.max_new_tokens]
            out_text, out_ids, stop, _ = trim_at_stop(self.tokenizer, cut, params.stop)
            reason = "stop" if stop is not None else "length" if len(cut) < len(ids) else "eos"
            out.append([Completion(out_text, out_ids, reason, stop=stop, logprobs=[-0.5] * len(out_ids))])
        return out
