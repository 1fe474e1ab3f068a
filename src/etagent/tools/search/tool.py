"""The ``search`` tool: ``<search>query</search>`` -> the top passages (or web hits) as one ``<result>`` text.

Result text of local retrieval (docs/method.md 2.1 client formatting, plus numbering and titles,
which multi-hop questions need to tell passages apart)::

    (1) Ed Wood (film): Ed Wood is a 1994 American biographical ...

    (2) Tim Burton: Timothy Walter Burton is ...

Result text of web search (docs/method.md 2.2)::

    Page 1: Ed Wood is a 1994 American biographical ...
    Page 2: [could not read the page: HTTP 404 Not Found] Timothy Walter Burton is ...

Each passage / page is cut to ``max_doc_chars`` with ``...`` marking the cut. With page reading
(``pages.enabled``) a page's text is the window around its snippet; with the summariser
(``summariser.enabled``) the agent reads the summary instead (docs/method.md 1.6), and the
summariser's call is recorded in the tool call's ``meta``. Bad queries and failed retrievals come
back as error texts, never as exceptions.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from etagent.protocol.tags import ToolSpec
from etagent.records import ToolStatus, Trajectory
from etagent.tools.base import Tool, ToolResult
from etagent.tools.failure_log import FailureLog
from etagent.tools.search.backends import build_retriever
from etagent.tools.search.cache import QueryCache
from etagent.tools.search.config import SearchConfig
from etagent.tools.search.corpus import Doc
from etagent.tools.search.retriever import Retriever, RetrieverTimeout

if TYPE_CHECKING:
    from etagent.tools.search.pages import Page, PageReader
    from etagent.tools.search.summariser import Summariser

log = logging.getLogger(__name__)

EMPTY_QUERY = "Invalid search query: the query is empty."
NO_RESULTS = "No results found."
#: tags that structure the reasoning the summariser reads (an unknown tag counts as text)
_TOOL_TAGS = ("search", "python")


def _cut(body: str, max_chars: int) -> str:
    body = " ".join(body.split())  # passages are inserted inline; stray newlines only cost tokens
    if len(body) > max_chars:
        body = body[:max_chars].rstrip() + "..."
    return body


def format_doc(doc: Doc, max_chars: int) -> str:
    return _cut(f"{doc.title}: {doc.text}" if doc.title else doc.text, max_chars)


def format_docs(docs: list[Doc], max_doc_chars: int = 1200) -> str:
    """The text inserted into the trajectory for one search of a corpus."""
    if not docs:
        return NO_RESULTS
    return "\n\n".join(f"({i}) {format_doc(d, max_doc_chars)}" for i, d in enumerate(docs, 1))


def format_pages(
    docs: list[Doc], pages: list[Page] | None = None, max_doc_chars: int = 1000, titles: bool = False
) -> str:
    """The text inserted into the trajectory for one web search: ``Page i: ...`` per hit, the
    snippet or (when read) the page's text around it; a page that could not be read says why."""
    if not docs:
        return NO_RESULTS
    read = {p.url: p for p in pages or []}
    lines = []
    for i, doc in enumerate(docs, 1):
        page = read.get(doc.id)
        body = page.text if page is not None and page.ok and page.text else doc.text
        if titles and doc.title:
            body = f"{doc.title}: {body}"
        note = f"[could not read the page: {page.error}] " if page is not None and not page.ok else ""
        lines.append(f"Page {i}: {note}{_cut(body, max_doc_chars)}")
    return "\n".join(lines)


@dataclass
class SearchResult(ToolResult):
    """A result with an account of how it was made (pages read, the summariser's call), which
    the agent loop records as the tool call's ``meta``."""

    meta: dict[str, Any] = field(default_factory=dict)


def _failure(error: Exception, query: str) -> ToolResult:
    """The neutral text the model reads when retrieval fails; the reason goes to the log."""
    status: ToolStatus = "timeout" if isinstance(error, RetrieverTimeout) else "error"
    return ToolResult(f"Search failed: {query}", status=status)


#: the start of every web search backend's identity (etagent.tools.search.web.WebSearch)
WEB_IDENTITY = "web:"
WEB_SPEC = ToolSpec("search", "searches the web and returns the top results", "<a short query>")


class SearchTool(Tool):
    """Searches the knowledge corpus (BM25, dense, or a retrieval server) or the web through a
    query cache; optionally reads the pages behind web hits and summarises what was found."""

    name = "search"
    config_class = SearchConfig

    spec: ClassVar[ToolSpec] = ToolSpec(
        "search",
        "searches the knowledge corpus (Wikipedia-style passages) and returns the top passages",
        "<a short query>",
    )

    def __init__(
        self,
        retriever: Retriever,
        *,
        top_k: int = 4,
        max_doc_chars: int = 1200,
        max_query_chars: int = 1000,
        cache: QueryCache | None = None,
        pages_format: bool | None = None,
        page_titles: bool = False,
        reader: PageReader | None = None,
        summariser: Summariser | None = None,
        max_summary_input_chars: int = 20_000,
        web: bool | None = None,
    ):
        """``web``: the retriever searches the web (the prompt says so, the summariser reads web
        pages); None = a web search backend's retriever (its identity starts with ``web:``).
        ``pages_format``: show hits as ``Page i: ...`` instead of ``(i) Title: text``; None = for
        web search. ``reader`` reads the pages behind the hits; ``summariser`` condenses the results."""
        if top_k < 1 or max_doc_chars < 1 or max_query_chars < 1:
            raise ValueError("top_k, max_doc_chars and max_query_chars must be >= 1")
        self.retriever = retriever
        self.top_k = top_k
        self.max_doc_chars = max_doc_chars
        self.max_query_chars = max_query_chars
        self.cache = cache
        self.web = web if web is not None else retriever.identity.startswith(WEB_IDENTITY)
        self.pages_format = pages_format if pages_format is not None else self.web
        self.page_titles = page_titles
        self.reader = reader
        self.summariser = summariser
        self.max_summary_input_chars = max_summary_input_chars
        if self.web:
            self.spec = WEB_SPEC  # type: ignore[misc]  # an instance may describe itself
        self._failures = FailureLog(log, "search failed")

    @classmethod
    def from_config(cls, cfg: SearchConfig) -> SearchTool:
        """Build the backend (a local index is loaded, or built once and cached) and the cache.

        Configuration problems (missing corpus, bad model, missing extra, a web backend without
        its API key) raise here, at start-up, rather than turning every later call into an error
        text. The page reader and the summariser's model are built here too, when enabled.
        """
        built: list[Any] = [build_retriever(cfg)]
        try:
            cache = QueryCache(cfg.cache_path) if cfg.cache else None
            built.append(cache)
            reader = summariser = None
            if cfg.pages.enabled:
                from etagent.tools.search.pages import PageReader

                reader = PageReader.from_config(cfg.pages)
                built.append(reader)
            if cfg.summariser.enabled:
                from etagent.tools.search.summariser import Summariser

                summariser = Summariser.from_config(cfg.summariser)
            return cls(
                built[0],
                top_k=cfg.top_k,
                max_doc_chars=cfg.max_doc_chars,
                max_query_chars=cfg.max_query_chars,
                cache=cache,
                pages_format=cfg.formats_pages,
                page_titles=cfg.page_titles,
                reader=reader,
                summariser=summariser,
                max_summary_input_chars=cfg.summariser.max_input_chars,
                web=cfg.is_web,
            )
        except BaseException:
            for resource in reversed(built):
                if resource is not None:
                    resource.close()
            raise

    # ------------------------------------------------------------------ calls

    def _clean(self, query: str) -> str | None:
        q = " ".join(query.split())
        return q[: self.max_query_chars] if q else None

    def call(self, content: str) -> ToolResult:
        return self.call_batch([content])[0]

    def call_in_context(self, content: str, trajectory: Trajectory) -> ToolResult:
        """One call made inside ``trajectory`` (the agent loop's entry point): the summariser reads
        the question and the reasoning so far. Without a summariser this is :meth:`call`."""
        if self.summariser is None:
            return self.call(content)
        from etagent.tools.search.summariser import previous_reasoning

        cfg = self.summariser.cfg
        previous = previous_reasoning(
            trajectory.response_text, _TOOL_TAGS, max_steps=cfg.max_steps, keep_last=cfg.keep_last_steps
        )
        return self.call_batch([content], [(trajectory.question.question, previous)])[0]

    def call_batch(
        self, contents: list[str], contexts: list[tuple[str, str]] | None = None
    ) -> list[ToolResult]:
        """One retrieval call for all cache misses; results keep the order of ``contents``.

        ``contexts``: per call, (question, previous reasoning) for the summariser; without them
        the query stands for the question and there is no previous reasoning.
        """
        cleaned = [self._clean(c) for c in contents]
        unique = list(dict.fromkeys(q for q in cleaned if q is not None))
        found: dict[str, list[Doc]] = self._cache_get(unique)
        errors: dict[str, ToolResult] = {}
        missing = [q for q in unique if q not in found]
        if missing:
            try:
                retrieved = self.retriever.search_batch(missing, self.top_k)
                if len(retrieved) != len(missing):
                    raise RuntimeError(
                        f"retriever returned {len(retrieved)} result lists for {len(missing)} queries"
                    )
            except Exception as e:  # the model reads a neutral text; the rollout goes on
                self._failures.record(f"{type(e).__name__}: {e}")
                errors = {q: _failure(e, q) for q in missing}
            else:
                fresh = dict(zip(missing, retrieved, strict=True))
                found.update(fresh)
                self._cache_put(fresh)
        results: list[ToolResult | None] = []
        todo: list[tuple[int, str]] = []
        for i, q in enumerate(cleaned):
            if q is None:
                results.append(ToolResult(EMPTY_QUERY, status="error"))
            elif q in errors:
                results.append(errors[q])
            elif self.reader is None and self.summariser is None:
                results.append(ToolResult(self._format(found[q], None)))
            else:
                results.append(None)
                todo.append((i, q))

        def present(item: tuple[int, str]) -> ToolResult:
            i, q = item
            question, previous = contexts[i] if contexts is not None else (q, "(none yet)")
            return self._present(q, found[q], question, previous)

        if len(todo) > 1:
            with ThreadPoolExecutor(min(8, len(todo)), thread_name_prefix="etagent-search") as pool:
                presented = list(pool.map(present, todo))
        else:
            presented = [present(item) for item in todo]
        for (i, _), result in zip(todo, presented, strict=True):
            results[i] = result
        return [r for r in results if r is not None]

    def _format(self, docs: list[Doc], pages: list[Page] | None) -> str:
        if self.pages_format:
            return format_pages(docs, pages, self.max_doc_chars, self.page_titles)
        return format_docs(docs, self.max_doc_chars)

    def _present(self, query: str, docs: list[Doc], question: str, previous: str) -> SearchResult:
        """Hits -> what the agent reads: pages read behind them, then the summary, each recorded."""
        meta: dict[str, Any] = {}
        pages = None
        if self.reader is not None and docs:
            pages = self.reader.read(docs)
            meta["pages"] = [p.record() for p in pages]
        text = self._format(docs, pages)
        if self.summariser is not None and docs:
            from etagent.tools.search.summariser import pages_block

            found = pages_block(docs, pages, self.max_summary_input_chars, web=self.web)
            summary = self.summariser.summarise(question, query, previous, found, text, web=self.web)
            meta["summariser"] = summary.record()
            text = summary.text
        return SearchResult(text, meta=meta)

    def _cache_get(self, queries: list[str]) -> dict[str, list[Doc]]:
        if self.cache is None or not queries:
            return {}
        try:
            return self.cache.get_many(self.retriever.identity, queries, self.top_k)
        except Exception as e:  # a broken cache must not break searching
            log.warning("search cache read failed (%s); searching without it", e)
            return {}

    def _cache_put(self, results: dict[str, list[Doc]]) -> None:
        if self.cache is None or not results:
            return
        try:
            self.cache.put_many(self.retriever.identity, results, self.top_k)
        except Exception as e:
            log.warning("search cache write failed: %s", e)

    def close(self) -> None:
        self.retriever.close()
        if self.cache is not None:
            self.cache.close()
        if self.reader is not None:
            self.reader.close()
        if self.summariser is not None:
            self.summariser.close()
