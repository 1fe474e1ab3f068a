"""HTTP clients for retrieval servers (docs/method.md 2.1).

Two wire formats:

* ``flashrag`` - the ET-Agent / FlashRAG ``host_wiki.py`` API, also spoken by ``etagent
  serve-retriever``: ``POST /search {"query", "top_n", "return_score"}`` answers a list of
  ``{"id", "contents"}`` (or ``[docs, scores]``); ``POST /batch_search`` takes ``"query": [...]``
  and answers a list of lists (or ``[lists, score lists]``).
* ``search-r1`` - Search-R1's ``retrieval_server.py``: ``POST /retrieve {"queries", "topk",
  "return_scores"}`` answers ``{"result": [[{"document": {...}, "score": s}, ...], ...]}`` (without
  scores each entry is the document itself).

Documents arrive as ``contents`` (``"Title"\\ntext``); explicit ``title``/``text`` fields win when
a server sends them. Connection errors, timeouts and HTTP 5xx are retried with exponential
backoff; what finally fails raises :class:`RetrieverError` naming the URL.

Kept-alive connections: the pool gives up an idle connection after :data:`KEEPALIVE_EXPIRY_S`,
before servers with uvicorn's default keep-alive (5 s, as FlashRAG's ``host_wiki.py``) close it.
A request sent on a connection that the server closes at that instant is lost without ever
running (``ReadError``, "server disconnected"; see :mod:`etagent.http_server`); such a request is
sent once more at once, on a fresh connection, without counting against ``retries`` (searches are
idempotent).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from numbers import Real
from typing import Any, Literal

import httpx

from etagent.tools.search.corpus import Doc, parse_contents
from etagent.tools.search.retriever import RetrieverError, RetrieverTimeout

Api = Literal["flashrag", "search-r1"]

#: seconds the client keeps an idle connection for reuse: below uvicorn's default keep-alive (5 s)
KEEPALIVE_EXPIRY_S = 4.0

#: what a request sent on a connection the server closed under it raises (the request did not run)
_CLOSED_UNDER_US = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


class RetrieverHTTPError(RetrieverError):
    """The server answered with an HTTP error status that retrying will not fix (4xx)."""

    def __init__(self, message: str, status_code: int):
        super().__init__(message)
        self.status_code = status_code


def normalize_url(url: str) -> str:
    """``127.0.0.1:1243`` (the reference scripts' style) -> ``http://127.0.0.1:1243``."""
    url = url.strip()
    if not url:
        raise ValueError("search server URL is empty")
    if "://" not in url:
        url = "http://" + url
    return url.rstrip("/")


def _snippet(response: httpx.Response, n: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


def doc_from_wire(item: Any, where: str) -> Doc:
    """One document as a server sends it (``{"id", "contents"}``, optionally ``title``/``text``)."""
    if not isinstance(item, dict):
        raise RetrieverError(f"{where}: expected a document object, got {type(item).__name__}")
    score = item.get("score")
    if isinstance(item.get("title"), str) and isinstance(item.get("text"), str):
        title, text = item["title"], item["text"]
    elif isinstance(item.get("contents"), str):
        title, text = parse_contents(item["contents"])
    else:
        raise RetrieverError(
            f"{where}: document has neither 'contents' nor 'title'/'text': {str(item)[:200]}"
        )
    return Doc(
        id=str(item.get("id", "")),
        title=title,
        text=text,
        score=float(score) if isinstance(score, Real) else None,
    )


def _with_scores(docs: list[Doc], scores: Any) -> list[Doc]:
    if not isinstance(scores, list) or len(scores) != len(docs):
        return docs
    return [
        Doc(d.id, d.title, d.text, float(s) if isinstance(s, Real) else d.score)
        for d, s in zip(docs, scores, strict=True)
    ]


def _is_score_list(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(v, Real) for v in x)


def parse_flashrag_search(payload: Any, where: str) -> list[Doc]:
    """Answer of ``POST /search``: ``[doc, ...]`` or ``[[doc, ...], [score, ...]]``."""
    if not isinstance(payload, list):
        raise RetrieverError(f"{where}: expected a JSON list, got {type(payload).__name__}")
    if len(payload) == 2 and isinstance(payload[0], list) and _is_score_list(payload[1]):
        docs = [doc_from_wire(d, where) for d in payload[0]]
        return _with_scores(docs, payload[1])
    return [doc_from_wire(d, where) for d in payload]


def parse_flashrag_batch(payload: Any, n_queries: int, where: str) -> list[list[Doc]]:
    """Answer of ``POST /batch_search``: ``[[doc, ...], ...]`` or ``[[[doc, ...], ...], [[score, ...], ...]]``."""
    if not isinstance(payload, list):
        raise RetrieverError(f"{where}: expected a JSON list, got {type(payload).__name__}")
    lists, scores = payload, None
    if (
        len(payload) == 2
        and isinstance(payload[0], list)
        and isinstance(payload[1], list)
        and len(payload[0]) == len(payload[1]) == n_queries
        and all(isinstance(x, list) for x in payload[0])
        # without scores, payload[1] would be the second query's documents (objects, not numbers)
        and all(_is_score_list(x) for x in payload[1])
    ):
        lists, scores = payload[0], payload[1]
    if len(lists) != n_queries or not all(isinstance(x, list) for x in lists):
        raise RetrieverError(f"{where}: expected {n_queries} result lists, got {str(payload)[:200]}")
    out = [[doc_from_wire(d, where) for d in docs] for docs in lists]
    if scores is not None:
        out = [_with_scores(docs, s) for docs, s in zip(out, scores, strict=True)]
    return out


def parse_search_r1(payload: Any, n_queries: int, where: str) -> list[list[Doc]]:
    """Answer of ``POST /retrieve``: ``{"result": [[{"document": doc, "score": s} | doc, ...], ...]}``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("result"), list):
        raise RetrieverError(f"{where}: expected an object with a 'result' list, got {str(payload)[:200]}")
    lists = payload["result"]
    if len(lists) != n_queries or not all(isinstance(x, list) for x in lists):
        raise RetrieverError(f"{where}: expected {n_queries} result lists, got {len(lists)}")
    out: list[list[Doc]] = []
    for items in lists:
        docs = []
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("document"), dict):
                doc = doc_from_wire(item["document"], where)
                score = item.get("score")
                if isinstance(score, Real):
                    doc = Doc(doc.id, doc.title, doc.text, float(score))
                docs.append(doc)
            else:
                docs.append(doc_from_wire(item, where))
        out.append(docs)
    return out


class RemoteRetriever(ABC):
    """Shared HTTP plumbing: one pooled, thread-safe ``httpx.Client``, retries, clear errors."""

    api: Api

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = normalize_url(url)
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.identity = f"remote:{self.api}:{self.base_url}"
        # connecting to a live local server takes milliseconds; a short connect timeout makes a
        # dead server fail fast instead of waiting out the whole read timeout
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S),
            transport=transport,
        )
        #: requests re-sent at once because the server closed their connection under them
        self.resent = 0
        self._resent_lock = threading.Lock()

    def _send(self, url: str, payload: dict[str, Any]) -> httpx.Response:
        try:
            return self._client.post(url, json=payload)
        except _CLOSED_UNDER_US:
            # the server closed the kept-alive connection as we reused it (idle-timeout race): the
            # request never ran; send it again now (httpx dropped that connection from the pool)
            with self._resent_lock:
                self.resent += 1
            return self._client.post(url, json=payload)

    def _post(self, path: str, payload: dict[str, Any]) -> Any:
        url = self.base_url + path
        attempts = self.retries + 1
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                response = self._send(url, payload)
            except httpx.TransportError as e:  # includes timeouts
                last = e
                continue
            if response.status_code >= 500:
                last = RetrieverError(
                    f"search server {url} answered HTTP {response.status_code}: {_snippet(response)}"
                )
                continue
            if response.status_code >= 400:
                raise RetrieverHTTPError(
                    f"search server {url} rejected the request: HTTP {response.status_code}: {_snippet(response)}",
                    response.status_code,
                )
            try:
                return response.json()
            except ValueError:
                raise RetrieverError(
                    f"search server {url} did not answer JSON: {_snippet(response)}"
                ) from None
        tries = f"{attempts} attempt{'s' if attempts > 1 else ''}"
        if isinstance(last, httpx.TimeoutException):
            raise RetrieverTimeout(
                f"search server {url} did not answer within {self.timeout_s:g} s ({tries})"
            )
        if isinstance(last, httpx.ConnectError):
            raise RetrieverError(
                f"search server {url} is unreachable ({type(last).__name__}: {last}; {tries}); "
                "start one with `etagent serve-retriever` or fix search.url"
            )
        if isinstance(last, httpx.TransportError):
            raise RetrieverError(
                f"search server {url} dropped the connection ({type(last).__name__}: {last}; {tries})"
            )
        assert last is not None
        raise last

    def search(self, query: str, top_k: int) -> list[Doc]:
        return self.search_batch([query], top_k)[0]

    @abstractmethod
    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]:
        """Top-``top_k`` documents per query, in the server's order."""

    def health(self) -> dict[str, Any]:
        """``GET /health`` of the server (FlashRAG-style servers and ``etagent serve-retriever``)."""
        url = self.base_url + "/health"
        try:
            response = self._client.get(url)
            response.raise_for_status()
            return response.json()
        except (httpx.HTTPError, ValueError) as e:
            raise RetrieverError(
                f"search server {url} health check failed: {type(e).__name__}: {e}"
            ) from None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteRetriever:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FlashRAGClient(RemoteRetriever):
    """Client of the FlashRAG / ET-Agent API (``/search``, ``/batch_search``)."""

    api: Api = "flashrag"
    #: parallel single searches when a server has no working /batch_search
    fallback_concurrency = 8

    def search(self, query: str, top_k: int) -> list[Doc]:
        payload = self._post("/search", {"query": query, "top_n": top_k, "return_score": True})
        return parse_flashrag_search(payload, self.base_url + "/search")

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]:
        if not queries:
            return []
        if len(queries) == 1:
            return [self.search(queries[0], top_k)]
        try:
            payload = self._post("/batch_search", {"query": queries, "top_n": top_k, "return_score": True})
        except RetrieverHTTPError as e:
            # servers without (or with a differently shaped) batch endpoint: fall back to /search
            if e.status_code not in (404, 405, 422):
                raise
            with ThreadPoolExecutor(min(self.fallback_concurrency, len(queries))) as pool:
                return list(pool.map(lambda q: self.search(q, top_k), queries))
        return parse_flashrag_batch(payload, len(queries), self.base_url + "/batch_search")


class SearchR1Client(RemoteRetriever):
    """Client of Search-R1's ``/retrieve`` API (always batched)."""

    api: Api = "search-r1"

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]:
        if not queries:
            return []
        payload = self._post("/retrieve", {"queries": queries, "topk": top_k, "return_scores": True})
        return parse_search_r1(payload, len(queries), self.base_url + "/retrieve")


def make_client(
    url: str,
    *,
    api: Api = "flashrag",
    timeout_s: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
    transport: httpx.BaseTransport | None = None,
) -> RemoteRetriever:
    """A client for ``api`` at ``url``; ``transport`` replaces the network (tests)."""
    classes: dict[str, type[RemoteRetriever]] = {"flashrag": FlashRAGClient, "search-r1": SearchR1Client}
    if api not in classes:
        raise ValueError(f"unknown search API {api!r}; expected one of {sorted(classes)}")
    return classes[api](url, timeout_s=timeout_s, retries=retries, backoff_s=backoff_s, transport=transport)
