"""The ``search`` tool: ``<search>query</search>`` -> the top passages as one ``<result>`` text.

Result text (docs/method.md 2.1 client formatting, plus numbering and titles, which multi-hop questions
need to tell passages apart)::

    (1) Ed Wood (film): Ed Wood is a 1994 American biographical ...

    (2) Tim Burton: Timothy Walter Burton is ...

Each passage (``Title: text``) is cut to ``max_doc_chars`` with ``...`` marking the cut. Bad
queries and failed retrievals come back as error texts, never as exceptions.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from etagent.protocol.tags import ToolSpec
from etagent.records import ToolStatus
from etagent.tools.base import Tool, ToolResult
from etagent.tools.search.backends import build_retriever
from etagent.tools.search.cache import QueryCache
from etagent.tools.search.config import SearchConfig
from etagent.tools.search.corpus import Doc
from etagent.tools.search.retriever import Retriever, RetrieverTimeout

log = logging.getLogger(__name__)

EMPTY_QUERY = "Invalid search query: the query is empty."
NO_RESULTS = "No results found."


def format_doc(doc: Doc, max_chars: int) -> str:
    body = f"{doc.title}: {doc.text}" if doc.title else doc.text
    body = " ".join(body.split())  # passages are inserted inline; stray newlines only cost tokens
    if len(body) > max_chars:
        body = body[:max_chars].rstrip() + "..."
    return body


def format_docs(docs: list[Doc], max_doc_chars: int = 1200) -> str:
    """The text inserted into the trajectory for one search."""
    if not docs:
        return NO_RESULTS
    return "\n\n".join(f"({i}) {format_doc(d, max_doc_chars)}" for i, d in enumerate(docs, 1))


def _failure(error: Exception) -> ToolResult:
    status: ToolStatus = "timeout" if isinstance(error, RetrieverTimeout) else "error"
    return ToolResult(f"Search failed: {error}", status=status)


class SearchTool(Tool):
    """Searches the knowledge corpus (BM25, dense, or a retrieval server) through a query cache."""

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
    ):
        if top_k < 1 or max_doc_chars < 1 or max_query_chars < 1:
            raise ValueError("top_k, max_doc_chars and max_query_chars must be >= 1")
        self.retriever = retriever
        self.top_k = top_k
        self.max_doc_chars = max_doc_chars
        self.max_query_chars = max_query_chars
        self.cache = cache

    @classmethod
    def from_config(cls, cfg: SearchConfig) -> SearchTool:
        """Build the backend (a local index is loaded, or built once and cached) and the cache.

        Configuration problems (missing corpus, bad model, missing extra) raise here, at start-up,
        rather than turning every later call into an error text.
        """
        retriever = build_retriever(cfg)
        cache = QueryCache(cfg.cache_path) if cfg.cache else None
        return cls(
            retriever,
            top_k=cfg.top_k,
            max_doc_chars=cfg.max_doc_chars,
            max_query_chars=cfg.max_query_chars,
            cache=cache,
        )

    # ------------------------------------------------------------------ calls

    def _clean(self, query: str) -> str | None:
        q = " ".join(query.split())
        return q[: self.max_query_chars] if q else None

    def call(self, content: str) -> ToolResult:
        return self.call_batch([content])[0]

    def call_batch(self, contents: list[str]) -> list[ToolResult]:
        """One retrieval call for all cache misses; results keep the order of ``contents``."""
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
            except Exception as e:  # the model reads the failure; the rollout goes on
                log.warning("search failed for %d queries: %s", len(missing), e)
                errors = {q: _failure(e) for q in missing}
            else:
                fresh = dict(zip(missing, retrieved, strict=True))
                found.update(fresh)
                self._cache_put(fresh)
        results = []
        for q in cleaned:
            if q is None:
                results.append(ToolResult(EMPTY_QUERY, status="error"))
            elif q in errors:
                results.append(errors[q])
            else:
                results.append(ToolResult(format_docs(found[q], self.max_doc_chars)))
        return results

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
