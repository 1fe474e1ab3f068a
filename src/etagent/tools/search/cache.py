"""A persistent query -> documents cache in SQLite, shared by threads and processes.

Rollouts repeat queries a lot (many samples of one question), and a remote dense retriever
costs tens of milliseconds per call, so results are kept on disk. Keys are (backend identity,
normalised query, top_k); the identity names the corpus version, so an edited corpus never
serves stale results. Values are the documents (not the formatted text), so changing how
results are shown does not invalidate the cache. Web search hits are documents too (``id`` = URL,
``text`` = snippet), cached the same way under the web backend's identity (which holds no key).

:class:`PageCache` keeps the text extracted from the pages behind web hits, by URL.

Concurrency is :class:`etagent.sqlite_store.SQLiteStore`'s (WAL, busy timeout, a connection per
thread and process).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from pathlib import Path

from etagent.sqlite_store import SQLiteStore
from etagent.tools.search.corpus import Doc

_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_cache (
    backend TEXT NOT NULL,
    query TEXT NOT NULL,
    top_k INTEGER NOT NULL,
    docs TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (backend, query, top_k)
)
"""
_WS = re.compile(r"\s+")


def default_cache_path() -> Path:
    from etagent.runtime import cache_dir

    return cache_dir() / "search" / "query_cache.sqlite"


def normalize_query(query: str) -> str:
    """Whitespace-insensitive key. Case and punctuation are kept: dense encoders can see them."""
    return _WS.sub(" ", query).strip()


class QueryCache(SQLiteStore):
    """``get``/``put`` (and batched ``get_many``/``put_many``) of document lists."""

    SCHEMA = _SCHEMA

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = 60.0):
        super().__init__(path if path is not None else default_cache_path(), busy_timeout_s=busy_timeout_s)

    # ------------------------------------------------------------------ API

    def get(self, backend: str, query: str, top_k: int) -> list[Doc] | None:
        row = (
            self.conn()
            .execute(
                "SELECT docs FROM search_cache WHERE backend = ? AND query = ? AND top_k = ?",
                (backend, normalize_query(query), top_k),
            )
            .fetchone()
        )
        return None if row is None else _decode(row[0])

    def get_many(self, backend: str, queries: Iterable[str], top_k: int) -> dict[str, list[Doc]]:
        """Cached entries for the queries that have one, keyed by the query as given."""
        by_key: dict[str, list[str]] = {}
        for q in queries:
            by_key.setdefault(normalize_query(q), []).append(q)
        found: dict[str, list[Doc]] = {}
        rows = self.select_in(
            "SELECT query, docs FROM search_cache WHERE backend = ? AND top_k = ? AND query IN ({marks})",
            list(by_key),
            (backend, top_k),
        )
        for key, payload in rows:
            docs = _decode(payload)
            for original in by_key[key]:
                found[original] = docs
        return found

    def put(self, backend: str, query: str, top_k: int, docs: list[Doc]) -> None:
        self.put_many(backend, {query: docs}, top_k)

    def put_many(self, backend: str, results: dict[str, list[Doc]], top_k: int) -> None:
        if not results:
            return
        now = time.time()
        rows = [(backend, normalize_query(q), top_k, _encode(docs), now) for q, docs in results.items()]
        self.write_many("INSERT OR REPLACE INTO search_cache VALUES (?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self.conn().execute("SELECT COUNT(*) FROM search_cache").fetchone()[0])

    def clear(self, backend: str | None = None) -> None:
        """Remove every entry, or only those of one backend identity."""
        if backend is None:
            self.conn().execute("DELETE FROM search_cache")
        else:
            self.conn().execute("DELETE FROM search_cache WHERE backend = ?", (backend,))


def _encode(docs: list[Doc]) -> str:
    return json.dumps([d.to_dict() for d in docs], ensure_ascii=False)


def _decode(payload: str) -> list[Doc]:
    return [Doc.from_dict(d) for d in json.loads(payload)]


# ---------------------------------------------------------------------------------------------
# pages behind web hits

_PAGE_SCHEMA = """
CREATE TABLE IF NOT EXISTS page_cache (
    url TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    error TEXT,
    created REAL NOT NULL
)
"""


def default_page_cache_path() -> Path:
    from etagent.runtime import cache_dir

    return cache_dir() / "search" / "page_cache.sqlite"


class PageCache(SQLiteStore):
    """URL -> the text extracted from the page (``kind`` html, pdf or text), or the reason it could
    not be read. Failures are kept too, so a dead page is not fetched again by every rollout; the
    reader decides how long a failure counts (``max_failure_age_s``)."""

    SCHEMA = _PAGE_SCHEMA

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = 60.0):
        super().__init__(
            path if path is not None else default_page_cache_path(), busy_timeout_s=busy_timeout_s
        )

    def get(self, url: str, max_failure_age_s: float = 0.0) -> tuple[str, str, str | None] | None:
        """(kind, text, error) of a cached page; a failure older than ``max_failure_age_s`` is
        not returned (it is fetched again)."""
        row = (
            self.conn()
            .execute("SELECT kind, text, error, created FROM page_cache WHERE url = ?", (url,))
            .fetchone()
        )
        if row is None:
            return None
        kind, text, error, created = row
        if error is not None and time.time() - created > max_failure_age_s:
            return None
        return kind, text, error

    def put(self, url: str, kind: str, text: str, error: str | None = None) -> None:
        self.write_many(
            "INSERT OR REPLACE INTO page_cache VALUES (?, ?, ?, ?, ?)",
            [(url, kind, text, error, time.time())],
        )

    def __len__(self) -> int:
        return int(self.conn().execute("SELECT COUNT(*) FROM page_cache").fetchone()[0])
