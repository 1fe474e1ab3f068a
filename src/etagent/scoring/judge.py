"""LLM-as-judge over any generation backend: answer correctness (docs/method.md 7.2) and conciseness (7.5).

Correctness ("LJ"): a chat prompt gives the question, the golden answer(s) and the prediction and
asks for "Correct" or "Incorrect". A prediction equal to a gold by the rule-based check
(``answer_equal``: math-verify or the MATH normalisation) is correct without asking, as in the
reference. A reply is read from its ``<judgment>`` tags when present: "incorrect", "not correct" or
"wrong" mean incorrect, otherwise "correct" means correct, otherwise it is unparseable and the item
is asked again (sampled), up to ``max_attempts`` times in all; then the rule-based check decides.

Conciseness: a raw completion prompt (no chat template) asks whether the trajectory holds a
redundant or ineffective tool call, ``<answer>yes</answer>`` or ``<answer>no</answer>``; ``votes``
independent samples, and the trajectory is concise unless "yes" strictly outnumbers "no".

Every call is batched (one ``generate()`` over many prompts, ``chunk_size`` at a time) and every
real verdict is stored in a SQLite cache keyed by (kind, judge identity, prompt): a verdict is
never paid twice, across runs and processes. Fallback verdicts are not stored, so a later run with
a working judge still asks.

Point the judge at a vLLM server through the openai backend::

    judge:
      backend: {kind: openai, model: /models/Qwen2.5-72B-Instruct,   # tokenizer for the chat template
                openai: {base_url: "http://judge-host:8051/v1"}}
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from etagent.backends.base import Generator, Message, Prompt, SamplingParams
from etagent.backends.config import BackendConfig
from etagent.config import ConfigModel
from etagent.protocol import tags
from etagent.records import Trajectory
from etagent.scoring.correctness import answer_equal
from etagent.scoring.judge_cache import VerdictCache

log = logging.getLogger(__name__)

CORRECTNESS_KIND = "correctness/v1"
CONCISENESS_KIND = "conciseness/v1"


class JudgeConfig(ConfigModel):
    """Which model judges, and how it is asked."""

    backend: BackendConfig = Field(
        default_factory=lambda: BackendConfig(kind="openai"),
        description="the judge's generator; for a vLLM server use kind openai with model = a local "
        "directory holding the judge's tokenizer",
    )
    name: str | None = Field(
        None,
        description="the judge's identity in the verdict cache and metrics.json; None = from the backend",
    )
    cache: bool = Field(True, description="keep verdicts in a persistent SQLite cache")
    cache_path: str | None = Field(None, description="None = <etagent cache dir>/judge/verdicts.sqlite")
    max_attempts: int = Field(3, ge=1, description="times an item is asked before the rule-based fallback")
    chunk_size: int = Field(
        256, ge=1, description="prompts per generate() call; verdicts are cached after each"
    )
    max_new_tokens: int = Field(256, ge=1, description="correctness reply budget")
    temperature: float = Field(0.0, ge=0, description="first correctness attempt (0 = greedy)")
    retry_temperature: float = Field(
        0.7, ge=0, description="later attempts, so an unparseable reply can change"
    )
    concise_temperature: float = Field(0.6, ge=0, description="conciseness votes (docs/method.md 7.5: 0.6)")
    concise_top_p: float = Field(0.95, gt=0, le=1)
    concise_max_new_tokens: int = Field(128, ge=1)
    seed: int | None = Field(None, description="sampling seed passed to the backend")

    def identity(self) -> str:
        if self.name:
            return self.name
        b = self.backend
        model = b.openai.served_model if b.kind == "openai" and b.openai.served_model else b.model
        return f"{b.kind}:{model}"


@dataclass(frozen=True)
class CorrectnessItem:
    """What the correctness judge sees about one answer."""

    question: str
    golds: list[str]
    prediction: str
    task: str = "math"

    @classmethod
    def from_trajectory(cls, traj: Trajectory) -> CorrectnessItem:
        q = traj.question
        prediction = traj.prediction or tags.extract_answer(traj.response_text)
        return cls(q.question, q.answers, prediction, q.task)


# --------------------------------------------------------------------------------------------
# Prompts and reply parsing

CORRECTNESS_SYSTEM = "You are a strict and careful grader of answers."

CORRECTNESS_PROMPT = """\
Decide whether the predicted answer to the question below is correct.

Question:
{question}

Golden answer{plural} (matching any one of them is enough):
{golds}

Predicted answer:
{prediction}

The prediction is correct if it is fully aligned with the meaning and the key information of a \
golden answer; equivalent forms count as the same (for example 0.5 and 1/2, or a name and its \
well-known alias). Extra explanation around a correct answer is fine; a different, partial or \
ambiguous answer is not.
Reply with exactly one word: Correct or Incorrect."""

CONCISENESS_PROMPT = """\
Below are a question, its golden answer and the reasoning trajectory of an agent that can call \
tools: a search engine (query inside <search> </search>) and a Python interpreter (code inside \
<python> </python>). Each tool's output is shown inside <result> </result>.

A tool call is REDUNDANT if its result only repeats information already available, is not used \
later, or does not contribute to reaching the answer. A tool call is INEFFECTIVE if its result is \
irrelevant or unhelpful.

Question: {question}
Golden answer: {gold}

Trajectory:
{trajectory}

Does the trajectory contain any redundant or ineffective tool call? Answer <answer>yes</answer> or \
<answer>no</answer>.
Judgment: """

_JUDGMENT = re.compile(r"<judgment>(.*?)</judgment>", re.DOTALL | re.IGNORECASE)
_NEGATIVE = ("incorrect", "not correct", "wrong")
_VOTE = re.compile(r"^\W*(yes|no)\b", re.IGNORECASE)


def correctness_messages(item: CorrectnessItem) -> list[Message]:
    golds = item.golds or [""]
    body = CORRECTNESS_PROMPT.format(
        question=item.question.strip(),
        plural="s" if len(golds) > 1 else "",
        golds="\n".join(f"- {g}" for g in golds) if len(golds) > 1 else golds[0],
        prediction=item.prediction.strip(),
    )
    return [{"role": "system", "content": CORRECTNESS_SYSTEM}, {"role": "user", "content": body}]


def parse_verdict(reply: str) -> bool | None:
    """True (correct), False (incorrect) or None (unparseable) from a judge's reply."""
    inside = _JUDGMENT.findall(reply)
    text = (inside[-1] if inside else reply).lower()
    if any(neg in text for neg in _NEGATIVE):
        return False
    if "correct" in text:
        return True
    return None


def conciseness_prompt(traj: Trajectory) -> str:
    q = traj.question
    return CONCISENESS_PROMPT.format(
        question=q.question.strip(), gold=" | ".join(q.answers), trajectory=traj.response_text.strip()
    )


def parse_vote(completion: str) -> bool | None:
    """True for "yes, a redundant/ineffective call exists", False for "no", None if unreadable."""
    open_at = completion.lower().rfind(tags.open_tag(tags.ANSWER))
    text = completion[open_at + len(tags.open_tag(tags.ANSWER)) :] if open_at >= 0 else completion
    m = _VOTE.match(text)
    return None if m is None else m.group(1).lower() == "yes"


def majority_concise(votes: Sequence[bool | None]) -> bool | None:
    """Concise unless "yes" strictly outnumbers "no" (docs/method.md 7.5); None when no vote was readable."""
    yes = sum(v is True for v in votes)
    no = sum(v is False for v in votes)
    if yes + no == 0:
        return None
    return not yes > no


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------
# The judge


@dataclass
class JudgeStats:
    """What the judge did, for logs and tests."""

    asked: int = 0  # prompts sent to the generator
    cached: int = 0  # verdicts served from the cache
    rule: int = 0  # correct by the rule-based check without asking
    fallback: int = 0  # unparseable after every attempt: the rule-based check decided
    generate_calls: int = 0
    errors: list[str] = field(default_factory=list)


class LLMJudge:
    """Correctness and conciseness verdicts from a Generator, cached on disk."""

    def __init__(
        self,
        generator: Generator,
        cfg: JudgeConfig | None = None,
        cache: VerdictCache | None = None,
    ) -> None:
        self.generator = generator
        self.cfg = cfg or JudgeConfig(name=generator.name)
        self.cache = cache
        self.stats = JudgeStats()

    @classmethod
    def from_config(cls, cfg: JudgeConfig) -> LLMJudge:
        from etagent.backends.config import build_generator

        cache = VerdictCache(cfg.cache_path) if cfg.cache else None
        return cls(build_generator(cfg.backend), cfg, cache)

    @property
    def model(self) -> str:
        """The judge's identity (cache key part; ``judge`` in metrics.json)."""
        return self.cfg.identity()

    def close(self) -> None:
        self.generator.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> LLMJudge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing

    def _generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[str]] | None:
        """Texts per prompt, or None when the backend failed (logged; the caller treats the batch
        as unanswered)."""
        self.stats.generate_calls += 1
        self.stats.asked += len(prompts)
        try:
            out = self.generator.generate(prompts, params)
        except Exception as e:  # a judge outage must not kill the evaluation: fall back instead
            msg = f"{type(e).__name__}: {e}"
            self.stats.errors.append(msg)
            log.warning("judge %s failed on %d prompts: %s", self.model, len(prompts), msg)
            return None
        return [[c.text for c in completions] for completions in out]

    def _cached(self, keys: list[str]) -> dict[str, Any]:
        return self.cache.get_many(keys) if self.cache is not None else {}

    def _store(self, kind: str, values: dict[str, Any]) -> None:
        if self.cache is not None and values:
            self.cache.put_many(kind, self.model, values)

    def _chunks(self, items: list[Any]) -> list[list[Any]]:
        n = self.cfg.chunk_size
        return [items[i : i + n] for i in range(0, len(items), n)]

    # ------------------------------------------------------------------ correctness

    def judge_correctness(self, items: Sequence[CorrectnessItem | Trajectory]) -> list[bool]:
        """One verdict per item, in order."""
        found = [i if isinstance(i, CorrectnessItem) else CorrectnessItem.from_trajectory(i) for i in items]
        verdicts: list[bool | None] = [None] * len(found)
        pending: dict[str, list[int]] = {}  # cache key -> indices of the items it decides
        messages: dict[str, list[Message]] = {}
        for k, item in enumerate(found):
            if not item.prediction.strip():
                verdicts[k] = False  # nothing to judge
            elif answer_equal(item.prediction, item.golds, item.task):
                verdicts[k] = True
                self.stats.rule += 1
            else:
                msgs = correctness_messages(item)
                key = _digest(CORRECTNESS_KIND, self.model, msgs)
                pending.setdefault(key, []).append(k)
                messages[key] = msgs
        cached = self._cached(list(pending))
        for key, value in cached.items():
            for k in pending.pop(key):
                verdicts[k] = bool(value["verdict"])
                self.stats.cached += 1
        fallback = 0
        for chunk in self._chunks(list(pending)):
            decided = self._ask_correctness(chunk, messages)
            self._store(CORRECTNESS_KIND, decided)
            for key in chunk:
                for k in pending[key]:
                    if key in decided:
                        verdicts[k] = decided[key]["verdict"]
                    else:
                        item = found[k]
                        verdicts[k] = answer_equal(item.prediction, item.golds, item.task)
                        fallback += 1
        self.stats.fallback += fallback
        if fallback:
            log.warning(
                "judge %s: %d verdicts fell back to the rule-based check (unparseable replies or errors)",
                self.model,
                fallback,
            )
        return [bool(v) for v in verdicts]

    def _ask_correctness(
        self, keys: list[str], messages: dict[str, list[Message]]
    ) -> dict[str, dict[str, Any]]:
        """Ask until every key has a parseable reply or the attempts run out."""
        decided: dict[str, dict[str, Any]] = {}
        todo = list(keys)
        for attempt in range(self.cfg.max_attempts):
            if not todo:
                break
            params = SamplingParams(
                max_new_tokens=self.cfg.max_new_tokens,
                temperature=self.cfg.temperature if attempt == 0 else self.cfg.retry_temperature,
                seed=None if self.cfg.seed is None else self.cfg.seed + attempt,
            )
            replies = self._generate([messages[k] for k in todo], params)
            if replies is None:
                continue
            still = []
            for key, texts in zip(todo, replies, strict=True):
                reply = texts[0] if texts else ""
                verdict = parse_verdict(reply)
                if verdict is None:
                    still.append(key)
                else:
                    decided[key] = {"verdict": verdict, "reply": reply, "attempts": attempt + 1}
            todo = still
        return decided

    # ------------------------------------------------------------------ conciseness

    def judge_conciseness(self, trajectories: Sequence[Trajectory], votes: int = 10) -> list[bool | None]:
        """Per trajectory: True (concise), False (a redundant/ineffective call), None (no readable vote)."""
        if votes < 1:
            raise ValueError(f"votes must be >= 1, got {votes}")
        params = SamplingParams(
            max_new_tokens=self.cfg.concise_max_new_tokens,
            temperature=self.cfg.concise_temperature,
            top_p=self.cfg.concise_top_p,
            stop=[tags.close_tag(tags.ANSWER)],
            n=votes,
            seed=self.cfg.seed,
        )
        setting = [votes, params.temperature, params.top_p]
        result: list[bool | None] = [None] * len(trajectories)
        pending: dict[str, list[int]] = {}
        prompts: dict[str, str] = {}
        for k, traj in enumerate(trajectories):
            prompt = conciseness_prompt(traj)
            key = _digest(CONCISENESS_KIND, self.model, setting, prompt)
            pending.setdefault(key, []).append(k)
            prompts[key] = prompt
        for key, value in self._cached(list(pending)).items():
            for k in pending.pop(key):
                result[k] = value["verdict"]
                self.stats.cached += 1
        unreadable = 0
        for chunk in self._chunks(list(pending)):
            texts = self._generate([self._raw_prompt(prompts[key]) for key in chunk], params)
            if texts is None:
                continue  # result stays None: not judged
            fresh = {}
            for key, completions in zip(chunk, texts, strict=True):
                parsed = [parse_vote(t) for t in completions]
                verdict = majority_concise(parsed)
                if verdict is None:
                    unreadable += 1
                    continue
                fresh[key] = {"verdict": verdict, "votes": parsed}
                for k in pending[key]:
                    result[k] = verdict
            self._store(CONCISENESS_KIND, fresh)
        if unreadable:
            log.warning("judge %s: %d trajectories got no readable conciseness vote", self.model, unreadable)
        return result

    def _raw_prompt(self, text: str) -> list[int]:
        """A raw completion prompt (no chat template): the text's token ids."""
        return list(self.generator.tokenizer.encode(text, add_special_tokens=False))
