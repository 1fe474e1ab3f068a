"""The tool world's scripted expert: a Generator that writes (nearly) minimal correct trajectories.

It is the task's oracle (``backend.kind: expert``, :meth:`ToolWorldTask.oracle
<etagent.tasks.toolworld.task.ToolWorldTask.oracle>`): it stands in for a model to make cold-start
SFT data, write prompt examples and test the agent loop end to end. For each prompt it

1. decodes the prompt and takes the question from the LAST user turn (few-shot prompts have
   earlier example turns) and the partial trajectory after the LAST assistant generation prompt;
2. looks the question up among the tool world's questions (their ``meta["plan"]`` is the minimal
   solution; see :mod:`etagent.tasks.toolworld`);
3. counts the tool calls already completed (a call followed by its ``<result>``) and writes the
   next segment: ``<think>...</think><search>q</search>`` (ending at the tool's closing tag, a stop
   string) or the final ``<think>...</think><answer>...</answer>``.

The answer comes from the plan, never from the tool results, so the expert is exactly as good as
the world's retrievability (tested separately with BM25).

Controlled imperfection. A trajectory follows one *variant* of the plan
(:mod:`etagent.tasks.toolworld.variants`): the minimal one; with probability ``redundant_rate``
one extra call; with probability ``missing_rate`` the last needed call skipped and the answer
guessed (wrong but for rare luck). The expert is called once per segment and sees only the
prefix, so the variant is never stored: at each turn it samples the next segment from the
variants still *consistent* with the tool calls in the prefix, weighted by their prior. By the
chain rule a whole trajectory then follows the prior, and it can never switch variant half-way (a
redundant call, once made, is in the prefix; a skipped call is never made up later). The
randomness is a hash of (seed, question id, prefix calls, sample index), where the sample index
counts the ``n`` completions and repeated copies of one prompt in a batch, so results are
deterministic yet samples differ.

Sampling parameters other than ``n``, ``stop``, ``max_new_tokens`` and ``seed`` are ignored: the
expert's behaviour is set by its own config (:class:`ExpertConfig`), not by a temperature.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from etagent.backends.base import Completion, FinishReason, Generator, Prompt, SamplingParams
from etagent.config import ConfigModel
from etagent.protocol.tags import (
    ANSWER,
    DEFAULT_TOOL_TAGS,
    RESULT,
    THINK,
    close_tag,
    open_tag,
    parse_blocks,
)
from etagent.records import Question
from etagent.tasks.toolworld.variants import (
    ExpertSegment,
    Variant,
    plan_of,
    redundancy_options,
    variant_segments,
)
from etagent.tasks.toolworld.world import generate_world


class ExpertConfig(ConfigModel):
    """The tool world's scripted expert policy (a Generator that writes minimal correct trajectories)."""

    redundant_rate: float = Field(0.0, ge=0, le=1, description="probability of one extra, redundant call")
    missing_rate: float = Field(0.0, ge=0, le=1, description="probability of skipping a needed call")
    seed: int = 0


# --------------------------------------------------------------------------------------------
# Prompt parsing

_CHATML = ("<|im_start|>user\n", "<|im_end|>", "<|im_start|>assistant\n")
_SYSTEM_PROBE = "ETAGENT-EXPERT-SYSTEM-PROBE"
_USER_PROBE = "ETAGENT-EXPERT-USER-PROBE"


def _chat_markers(tokenizer: Any) -> tuple[str, str, str]:
    """(user-turn header, end-of-turn marker, generation prompt) of the tokenizer's chat template,
    found by rendering a probe conversation; ChatML when the template cannot be probed."""
    try:
        messages = [{"role": "system", "content": _SYSTEM_PROBE}, {"role": "user", "content": _USER_PROBE}]
        with_gen = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        before, after = without.split(_USER_PROBE)
        end = after.strip()
        header = before.split(_SYSTEM_PROBE, 1)[1]
        if end and header.startswith(end):
            header = header[len(end) :]
        header = header.lstrip("\n")
        generation = with_gen[len(without) :]
        if not (with_gen.startswith(without) and header and end and generation):
            return _CHATML
        return header, end, generation
    except Exception:  # templates without a system role, odd templates: fall back to ChatML
        return _CHATML


def _normalise(text: str) -> str:
    return " ".join(text.split())


@dataclass
class Progress:
    """What a partial trajectory has done so far."""

    calls: list[tuple[str, str]] = field(default_factory=list)  # completed calls, (tool, content)
    trailing: str = ""  # text after the last completed call's result
    answered: bool = False


def parse_progress(prefix: str, tool_tags: Sequence[str] = DEFAULT_TOOL_TAGS) -> Progress:
    """Completed tool calls (each followed by its ``<result>``) and the text after the last one."""
    blocks = parse_blocks(prefix)
    progress = Progress()
    end = 0
    for k, block in enumerate(blocks):
        if block.kind == ANSWER and block.closed:
            progress.answered = True
        if block.kind not in tool_tags or not block.closed:
            continue
        following = next(
            (b for b in blocks[k + 1 :] if not (b.kind == "text" and not b.content.strip())), None
        )
        if following is not None and following.kind == RESULT and following.closed:
            progress.calls.append((block.kind, block.content.strip()))
            end = following.end
    progress.trailing = prefix[end:]
    return progress


# --------------------------------------------------------------------------------------------
# The generator


@dataclass
class VariantText:
    """A variant with its prior probability under the expert's rates and its rendered segments."""

    prior: float
    variant: Variant
    segments: list[ExpertSegment]

    @property
    def calls(self) -> list[tuple[str, str]]:
        return [s.call for s in self.segments if s.call is not None]


class ExpertPolicy(Generator):
    """A Generator that answers tool-world questions with their (nearly) minimal plan.

    ``world_seeds``: the worlds whose questions it knows; default the default world (seed 0) and
    the world of its own ``seed``. ``questions``: further questions with a ``meta["plan"]`` (e.g. a
    world generated with other sizes).
    """

    name = "expert"

    def __init__(
        self,
        tokenizer: Any,
        *,
        redundant_rate: float = 0.0,
        missing_rate: float = 0.0,
        seed: int = 0,
        world_seeds: Iterable[int] | None = None,
        questions: Iterable[Question] | None = None,
    ):
        for label, rate in (("redundant_rate", redundant_rate), ("missing_rate", missing_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{label} must be in [0, 1], got {rate}")
        self.tokenizer = tokenizer
        self.redundant_rate = redundant_rate
        self.missing_rate = missing_rate
        self.seed = seed
        self.world_seeds = sorted(set(world_seeds)) if world_seeds is not None else sorted({0, seed})
        self._index: dict[str, Question] = {}
        # keyed by question text: ids repeat across worlds (toolworld-dev-0000 exists in each)
        self._variants_cache: dict[str, list[VariantText]] = {}
        for s in self.world_seeds:
            for q in generate_world(s).questions():
                self._index.setdefault(_normalise(q.question), q)
        for q in questions or ():
            self.add_question(q)
        self._markers = _chat_markers(tokenizer)

    @classmethod
    def from_settings(
        cls,
        tokenizer_name: str,
        settings: ExpertConfig | None = None,
        *,
        world_seeds: Iterable[int] | None = None,
        questions: Iterable[Question] | None = None,
    ) -> ExpertPolicy:
        """The expert with ``settings`` (defaults when None); loads only the tokenizer
        ``tokenizer_name`` ("embedded", "tiny" or a directory), never model weights."""
        from etagent.backends.model_store import load_tokenizer

        settings = settings or ExpertConfig()
        return cls(
            load_tokenizer(tokenizer_name),
            redundant_rate=settings.redundant_rate,
            missing_rate=settings.missing_rate,
            seed=settings.seed,
            world_seeds=world_seeds,
            questions=questions,
        )

    def add_question(self, question: Question) -> None:
        """Teach the expert one more question (it needs a ``meta["plan"]``); replaces a same-text one."""
        plan_of(question)
        key = _normalise(question.question)
        self._index[key] = question
        self._variants_cache.pop(key, None)

    # ---- lookup

    def find_question(self, user_text: str) -> Question:
        key = _normalise(user_text)
        q = self._index.get(key)
        if q is not None:
            return q
        # a user turn that wraps the question in other words ("Question: ..."): longest contained question
        contained = [k for k in self._index if k in key]
        if contained:
            return self._index[max(contained, key=len)]
        raise ValueError(
            f"expert: the question {user_text[:120]!r} is not a tool-world question (worlds with seeds "
            f"{self.world_seeds}); the expert policy can only answer questions of the tool world"
        )

    def split_prompt(self, text: str) -> tuple[str, str]:
        """(text of the last user turn, partial trajectory after the last generation prompt)."""
        header, end, generation = self._markers
        u = text.rfind(header)
        if u < 0:
            raise ValueError("expert: the prompt has no user turn")
        start = u + len(header)
        e = text.find(end, start)
        if e < 0:
            raise ValueError("expert: the last user turn of the prompt is not closed")
        g = text.rfind(generation)
        if g < e:
            raise ValueError("expert: the prompt has no assistant generation prompt after the last user turn")
        return text[start:e].strip(), text[g + len(generation) :]

    # ---- choosing the next segment

    def variants(self, question: Question) -> list[VariantText]:
        """Every variant with a positive prior, with its prior and segments."""
        key = _normalise(question.question)
        cached = self._variants_cache.get(key)
        if cached is not None:
            return cached
        plan = plan_of(question)
        miss_priors = (
            [(False, 1.0 - self.missing_rate), (True, self.missing_rate)] if plan else [(False, 1.0)]
        )
        out: list[VariantText] = []
        for missing, p_miss in miss_priors:
            options = redundancy_options(question, missing)
            red_priors: list[tuple[int | None, float]] = [(None, 1.0)]
            if options:
                share = self.redundant_rate / len(options)
                red_priors = [(None, 1.0 - self.redundant_rate)] + [(i, share) for i in range(len(options))]
            for red, p_red in red_priors:
                if p_miss * p_red > 0:
                    v = Variant(missing=missing, redundant=red)
                    out.append(VariantText(p_miss * p_red, v, variant_segments(question, v)))
        self._variants_cache[key] = out
        return out

    def _rng(
        self, question: Question, progress: Progress, sample: int, call_seed: int | None
    ) -> random.Random:
        key = json.dumps([self.seed, question.id, progress.calls, progress.trailing, sample, call_seed])
        return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))

    def continuation(
        self, question: Question, prefix: str, sample: int = 0, call_seed: int | None = None
    ) -> str:
        """The text the expert writes after ``prefix`` (the trajectory so far), up to and including
        the next closing tool tag or ``</answer>``; "" once the trajectory has an answer."""
        progress = parse_progress(prefix)
        if progress.answered:
            return ""
        k = len(progress.calls)
        options: dict[str, tuple[float, ExpertSegment]] = {}
        for v in self.variants(question):
            if v.calls[:k] == progress.calls and len(v.segments) > k:
                seg = v.segments[k]
                weight = options.get(seg.text, (0.0, seg))[0]
                options[seg.text] = (weight + v.prior, seg)
        if not options:
            # the prefix follows no variant (another model wrote it, or an operator edited it):
            # continue the minimal plan at the same number of calls
            minimal = variant_segments(question)
            seg = minimal[min(k, len(minimal) - 1)]
            options = {seg.text: (1.0, seg)}
        written = progress.trailing.lstrip()
        if written:
            resumed = {t: o for t, o in options.items() if t.startswith(written)}
            options = resumed or options
        rng = self._rng(question, progress, sample, call_seed)
        texts = list(options)
        chosen = rng.choices(texts, weights=[options[t][0] for t in texts])[0]
        return _resume(written, options[chosen][1])

    # ---- Generator interface

    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        copies: Counter[tuple[int, ...]] = Counter()
        out: list[list[Completion]] = []
        for prompt in prompts:
            ids = self.prompt_ids(prompt)
            key = tuple(ids)
            copy = copies[key]
            copies[key] += 1
            user_text, prefix = self.split_prompt(self.tokenizer.decode(ids, skip_special_tokens=False))
            question = self.find_question(user_text)
            out.append(
                [
                    self._completion(
                        self.continuation(question, prefix, copy * params.n + j, params.seed), params
                    )
                    for j in range(params.n)
                ]
            )
        return out

    def _completion(self, text: str, params: SamplingParams) -> Completion:
        finish: FinishReason = "eos"
        stop: str | None = None
        first: tuple[int, str] | None = None
        for s in params.stop:
            i = text.find(s) if s else -1
            if i >= 0 and (first is None or i < first[0]):
                first = (i, s)
        if first is not None:
            text = text[: first[0] + len(first[1])]
            finish, stop = "stop", first[1]
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > params.max_new_tokens:
            ids = ids[: params.max_new_tokens]
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            finish, stop = "length", None
        return Completion(text=text, token_ids=ids, finish_reason=finish, stop=stop, logprobs=None)


def _resume(written: str, segment: ExpertSegment) -> str:
    """The rest of ``segment`` after text already written in the current segment."""
    if not written:
        return segment.text
    if segment.text.startswith(written):
        return segment.text[len(written) :]
    if written.rfind(open_tag(THINK)) > written.rfind(close_tag(THINK)):
        # an open think (e.g. a hint injected by a flywheel operator): finish it, then act
        sep = "" if written[-1].isspace() else " "
        return sep + segment.think + close_tag(THINK) + segment.body
    if written.rstrip().endswith(close_tag(THINK)):
        return segment.body
    return segment.text
