"""The search-result summariser (docs/method.md 1.6): a model condenses what a search found.

Given the question, the previous reasoning (truncated as the reference does), the current query
and the searched pages, the summarising model writes its analysis and then the useful facts after
a ``**Final Information**`` marker; the agent reads only the text after the last marker. Any
etagent backend can summarise (``summariser.backend``: a large model behind ``openai``, the
embedded model on CPU). Requests that arrive together (the agent loop runs tool calls
concurrently) share one ``generate`` call; calls to the generator never overlap, so a backend
that is not thread-safe (hf) is safe here.

Previous reasoning: the trajectory so far (without the pending search call) as numbered steps,
one step per tagged block (``<think>``, ``<search>``, ``<result>``, ...). Beyond ``max_steps``
steps only step 1, the last ``keep_last_steps``, every search call and every result that follows a
search are kept; each run of dropped steps becomes ``...`` (the reference splits at line breaks,
which cuts multi-line results apart; a block keeps a result whole).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Literal

from etagent.backends.base import Generator, Message, SamplingParams
from etagent.protocol import tags
from etagent.tools.search.config import SummariserConfig
from etagent.tools.search.corpus import Doc
from etagent.tools.search.pages import Page

log = logging.getLogger(__name__)

NO_INFORMATION = "No helpful information found."

SummaryStatus = Literal["ok", "no_marker", "error"]

_PROMPT = """**Task:** You help an assistant who is answering a question step by step and has just \
searched {where}. Read the searched {found} and pick out the information that is relevant to the \
current search query and that moves the previous reasoning forward.

**Guidelines:**
1. Read every one of the {found} with the current search query and the previous reasoning steps in mind.
2. Keep facts, numbers, names, dates, definitions and formulas that answer the query or help the \
reasoning; quote them accurately and say which page they come from when that matters.
3. Leave out anything unrelated. If nothing helps, say that no helpful information was found.

**Output format:** first your short analysis, then a line with the marker and the information \
after it:
**{marker}**

[the helpful information]

**Question:** {question}

**Previous reasoning steps:**
{previous}

**Current search query:** {query}

**Searched {found}:**
{pages}

Now find the information in the {found} that helps with the current search query "{query}" and \
the previous reasoning steps."""


@dataclass
class Summary:
    """The summariser's answer for one search and how it went (recorded in the trajectory)."""

    text: str
    status: SummaryStatus
    model: str
    latency_s: float
    input_chars: int
    output_tokens: int = 0
    error: str | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "status": self.status,
            "latency_s": self.latency_s,
            "input_chars": self.input_chars,
            "output_tokens": self.output_tokens,
        }
        if self.error is not None:
            out["error"] = self.error
        return out


# ------------------------------------------------------------------------- prompt pieces


def reasoning_steps(response_text: str, tool_tags: tuple[str, ...]) -> list[tuple[str, str]]:
    """(kind, text) of each non-blank block of a response: ``think``, a tool tag, ``result``, ``text``..."""
    known = (*tags.STRUCTURE_TAGS, *tool_tags)
    out = []
    for block in tags.parse_blocks(response_text, known):
        text = response_text[block.start : block.end].strip()
        if text:
            out.append((block.kind, text))
    return out


def truncate_reasoning(
    steps: list[tuple[str, str]], *, search_tag: str = tags.SEARCH, max_steps: int = 5, keep_last: int = 4
) -> str:
    """``Step i: ...`` paragraphs; beyond ``max_steps`` only step 1, the last ``keep_last``, search
    calls and the results after them stay, every run of dropped steps becomes ``...``."""
    if not steps:
        return "(none yet)"
    keep = set(range(len(steps)))
    if len(steps) > max_steps:
        keep = {0, *range(max(0, len(steps) - keep_last), len(steps))}
        for i, (kind, _) in enumerate(steps):
            if kind == search_tag or (kind == tags.RESULT and i > 0 and steps[i - 1][0] == search_tag):
                keep.add(i)
    out: list[str] = []
    for i, (_, text) in enumerate(steps):
        if i in keep:
            out.append(f"Step {i + 1}: {text}")
        elif not out or out[-1] != "...":
            out.append("...")
    return "\n\n".join(out)


def previous_reasoning(
    response_text: str, tool_tags: tuple[str, ...], *, max_steps: int = 5, keep_last: int = 4
) -> str:
    """The reasoning before the current search call (which ends ``response_text``), truncated."""
    steps = reasoning_steps(response_text, tool_tags)
    if steps and steps[-1][0] == tags.SEARCH:
        steps = steps[:-1]  # the current query: shown on its own
    return truncate_reasoning(steps, max_steps=max_steps, keep_last=keep_last)


def pages_block(docs: list[Doc], pages: list[Page] | None, max_chars: int, *, web: bool = True) -> str:
    """What was found, as the summariser reads it, cut to ``max_chars``: per web hit ``**Web Page
    i:**`` and a JSON object (title, url, snippet, and the page text or why it could not be read);
    per retrieved passage (``web=False``) ``**Document i:**`` and its title and text."""
    read = {p.url: p for p in pages or []}
    parts = []
    for i, doc in enumerate(docs, 1):
        if not web:
            passage = json.dumps({"title": doc.title, "text": doc.text}, ensure_ascii=False, indent=2)
            parts.append(f"**Document {i}:**\n{passage}")
            continue
        info: dict[str, str] = {"title": doc.title, "url": doc.id, "snippet": doc.text}
        page = read.get(doc.id)
        if page is not None:
            if page.ok:
                info["context"] = page.text
            else:
                info["context"] = f"(the page could not be read: {page.error})"
        parts.append(f"**Web Page {i}:**\n{json.dumps(info, ensure_ascii=False, indent=2)}")
    text = "\n\n".join(parts) if parts else "(no results)"
    return text if len(text) <= max_chars else text[:max_chars] + "..."


def after_marker(output: str, marker: str) -> str | None:
    """The text after the last ``marker`` (markdown emphasis, colons and code fences around it
    dropped), or None when the output has no marker."""
    at = output.lower().rfind(marker.lower())
    if at < 0:
        return None
    rest = output[at + len(marker) :]
    rest = re.sub(r"^[\s*#:_]+", "", rest)
    return rest.strip().strip("`").strip()


def _drop_think(text: str) -> str:
    """Reasoning models' ``<think>...</think>`` preamble is not part of the summary."""
    close = tags.close_tag(tags.THINK)
    return text.rsplit(close, 1)[-1] if close in text else text


# ------------------------------------------------------------------------- batching


@dataclass
class _Request:
    messages: list[Message]
    future: Future[tuple[str, int]] = field(default_factory=Future)


class _Batcher:
    """Requests from several threads share one generate call; calls never overlap."""

    def __init__(self, generator: Generator, params: SamplingParams, wait_s: float, max_batch: int):
        self.generator = generator
        self.params = params
        self.wait_s = wait_s
        self.max_batch = max_batch
        self._queue: list[_Request] = []
        self._lock = threading.Lock()
        self._running = False

    def run(self, messages: list[Message]) -> tuple[str, int]:
        """(text, output tokens) for one prompt; raises what the generator raised."""
        request = _Request(messages)
        with self._lock:
            self._queue.append(request)
            lead = not self._running
            if lead:
                self._running = True
        if lead:
            self._lead()
        return request.future.result()

    def _lead(self) -> None:
        """Serve batches until the queue is empty, then hand leadership back."""
        while True:
            if self.wait_s:
                time.sleep(self.wait_s)  # let concurrent requests join this batch
            with self._lock:
                batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
                if not batch:
                    self._running = False
                    return
            try:
                outs = self.generator.generate([r.messages for r in batch], self.params)
                for r, completions in zip(batch, outs, strict=True):
                    c = completions[0]
                    r.future.set_result((c.text, len(c.token_ids)))
            except BaseException as e:
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(e)
                if not isinstance(e, Exception):
                    with self._lock:
                        self._running = False
                    raise


# ------------------------------------------------------------------------- the summariser


class Summariser:
    """Condenses search results with a model; failures fall back to the raw results."""

    def __init__(self, generator: Generator, cfg: SummariserConfig, *, owns_generator: bool = True):
        self.generator = generator
        self.cfg = cfg
        self.owns_generator = owns_generator
        params = SamplingParams(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty,
        )
        self._batcher = _Batcher(generator, params, cfg.batch_wait_s, cfg.max_batch)

    @classmethod
    def from_config(cls, cfg: SummariserConfig) -> Summariser:
        """Build the summarising model (an API key comes from ``api_key_env``, never from a file)."""
        from etagent.backends.config import BackendConfig, build_generator

        backend = cfg.backend if cfg.backend is not None else BackendConfig(kind="hf", model="embedded")
        if cfg.api_key_env is not None:
            key = os.environ.get(cfg.api_key_env, "")
            if not key:
                raise ValueError(
                    f"search.summariser.api_key_env: the environment variable {cfg.api_key_env} is not set"
                )
            if backend.kind != "openai":
                raise ValueError("search.summariser.api_key_env: only the openai backend takes an API key")
            # a private copy: the key never reaches a config that is written down
            backend, section = backend.model_copy(deep=True), "openai"
            setattr(backend, section, backend.section(section).model_copy(update={"api_key": key}))
        return cls(build_generator(backend), cfg)

    @property
    def model(self) -> str:
        return str(getattr(self.generator, "name", "") or type(self.generator).__name__)

    def prompt(self, question: str, query: str, previous: str, pages: str, web: bool = True) -> list[Message]:
        text = _PROMPT.format(
            marker=self.cfg.marker,
            question=question,
            previous=previous,
            query=query,
            pages=pages,
            where="the web" if web else "a document collection",
            found="web pages" if web else "documents",
        )
        return [{"role": "user", "content": text}]

    def summarise(
        self, question: str, query: str, previous: str, pages: str, raw: str, *, web: bool = True
    ) -> Summary:
        """The summary of ``pages`` (web pages, or retrieved documents when not ``web``) for the
        agent. ``raw`` (the unsummarised result text) is what the agent gets when the summariser
        fails or, with ``on_missing_marker: raw``, writes no marker."""
        messages = self.prompt(question, query, previous, pages, web)
        started = time.perf_counter()
        base = {"model": self.model, "input_chars": len(messages[0]["content"])}
        try:
            output, n_tokens = self._batcher.run(messages)
        except Exception as e:
            log.warning(
                "search summariser failed (%s: %s); the agent gets the raw results", type(e).__name__, e
            )
            return Summary(
                raw,
                "error",
                latency_s=time.perf_counter() - started,
                error=f"{type(e).__name__}: {e}",
                **base,
            )
        latency = time.perf_counter() - started
        found = after_marker(_drop_think(output), self.cfg.marker)
        if found:
            return Summary(self._cut(found), "ok", latency_s=latency, output_tokens=n_tokens, **base)
        fallback = {
            "output": self._cut(_drop_think(output).strip()) or NO_INFORMATION,
            "raw": raw,
            "none": NO_INFORMATION,
        }[self.cfg.on_missing_marker]
        return Summary(fallback, "no_marker", latency_s=latency, output_tokens=n_tokens, **base)

    def _cut(self, text: str) -> str:
        limit = self.cfg.max_output_chars
        return text if len(text) <= limit else text[:limit].rstrip() + "..."

    def close(self) -> None:
        if self.owns_generator:
            self.generator.close()
