"""``etagent serve-retriever``: one retriever behind HTTP, speaking both wire formats of
:mod:`etagent.tools.search.remote`, so ET-Agent/FlashRAG clients, Search-R1 clients and
``search.backend=remote`` all work against it.

* ``POST /search`` ``{"query", "top_n" = 10, "return_score" = false}`` -> ``[doc, ...]`` or ``[[doc, ...], [score, ...]]``
* ``POST /batch_search`` ``{"query": [...], ...}`` -> a list of those (``"queries"`` is accepted
  too: the reference clients send that name, which the reference server rejects)
* ``POST /retrieve`` ``{"queries", "topk" = 3, "return_scores" = false}`` -> ``{"result": [...]}``
  (Search-R1)
* ``GET /health`` -> ``{"status": "healthy", ...}``

A document is ``{"id", "contents", "title", "text"}``: ``contents`` is FlashRAG's ``"Title"\\ntext``,
the two extra fields spare clients from parsing it.

Empty queries are answered as each reference server does: FlashRAG's endpoints reject an empty or
blank query with HTTP 400; Search-R1's ``/retrieve`` answers ``{"result": []}`` to ``"queries": []``
(its training loop sends that on a turn where no trajectory searched) and an empty list for a blank
query (a model's ``<search></search>``), and takes a missing or zero ``topk`` as the server's
default (3, as Search-R1's ``--topk``).

Request limits (:class:`RetrieverLimits`, ``etagent serve-retriever --help``): a body over
``max_body_bytes`` gets HTTP 413 before it is parsed; more than ``max_batch`` queries or a query
over ``max_query_chars`` characters get HTTP 422. Each answer says which option raises the limit.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from pydantic import AliasChoices, BaseModel, Field

from etagent.http_server import DEFAULT_KEEP_ALIVE_S, MIB, BodySizeLimit, uvicorn_config
from etagent.tools.search.backends import build_retriever
from etagent.tools.search.config import DEFAULT_PORT, SearchConfig
from etagent.tools.search.corpus import Doc
from etagent.tools.search.retriever import Retriever

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

MAX_TOP_K = 1000
#: Search-R1's retrieval_server.py ``--topk`` default: passages for a /retrieve without ``topk``
DEFAULT_RETRIEVE_TOP_K = 3


@dataclass(frozen=True)
class RetrieverLimits:
    """What one request may ask of ``serve-retriever``. The defaults leave room for any real
    client (the search tool cuts queries to 1000 characters; a batch of 4096 queries of 200
    characters is under 1 MiB) and keep one request from holding the server for seconds."""

    max_body_bytes: int = 4 * MIB
    max_query_chars: int = 8192
    max_batch: int = 4096

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_query_chars", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


class SearchRequest(BaseModel):
    query: str
    top_n: int = Field(10, ge=1, le=MAX_TOP_K)
    return_score: bool = False


class BatchSearchRequest(BaseModel):
    query: list[str] = Field(validation_alias=AliasChoices("query", "queries"))
    top_n: int = Field(10, ge=1, le=MAX_TOP_K)
    return_score: bool = False


class RetrieveRequest(BaseModel):
    queries: list[str]
    # Search-R1 takes a missing, null or 0 topk as its default
    topk: int | None = Field(None, ge=0, le=MAX_TOP_K)
    return_scores: bool = False


def _wire(doc: Doc) -> dict[str, Any]:
    return {"id": doc.id, "contents": doc.contents, "title": doc.title, "text": doc.text}


def _reject_empty(queries: list[str]) -> None:
    """FlashRAG's rule: no queries, or an empty or blank one, is a bad request."""
    if not queries:
        raise HTTPException(status_code=400, detail="no queries given")
    for i, q in enumerate(queries):
        if not q or not q.strip():
            where = "" if len(queries) == 1 else f" (query {i})"
            raise HTTPException(status_code=400, detail=f"Query content cannot be empty{where}")


def _check_limits(queries: list[str], limits: RetrieverLimits) -> None:
    if len(queries) > limits.max_batch:
        raise HTTPException(
            status_code=422,
            detail=f"too many queries: {len(queries)} in one request; this server accepts at most "
            f"{limits.max_batch} (serve-retriever --max-batch)",
        )
    for i, q in enumerate(queries):
        if len(q) > limits.max_query_chars:
            where = "query" if len(queries) == 1 else f"query {i}"
            raise HTTPException(
                status_code=422,
                detail=f"{where} too long: {len(q)} characters; this server accepts at most "
                f"{limits.max_query_chars} (serve-retriever --max-query-chars)",
            )


def create_app(
    retriever: Retriever,
    *,
    default_top_k: int = DEFAULT_RETRIEVE_TOP_K,
    limits: RetrieverLimits | None = None,
) -> FastAPI:
    """The HTTP app around ``retriever``. ``default_top_k`` answers Search-R1 requests without ``topk``.

    Handlers are plain functions, so FastAPI runs them in its thread pool and concurrent requests
    search in parallel (the retrievers are thread-safe).
    """
    if not 1 <= default_top_k <= MAX_TOP_K:
        raise ValueError(f"default_top_k must be in [1, {MAX_TOP_K}], got {default_top_k}")
    limits = limits or RetrieverLimits()
    app = FastAPI(title="etagent retriever", description="BM25 / dense retrieval over a JSONL corpus")
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes, option="serve-retriever --max-body-mb")
    app.state.limits = limits
    stats = {"requests": 0, "queries": 0}
    stats_lock = threading.Lock()

    def run(queries: list[str], top_k: int) -> list[list[Doc]]:
        """Search non-empty, checked ``queries``."""
        with stats_lock:
            stats["requests"] += 1
            stats["queries"] += len(queries)
        try:
            return retriever.search_batch(queries, top_k)
        except Exception as e:
            log.exception("retrieval failed")
            raise HTTPException(
                status_code=500, detail=f"retrieval failed: {type(e).__name__}: {e}"
            ) from None

    @app.get("/health")
    def health() -> dict[str, Any]:
        with stats_lock:
            counts = dict(stats)
        return {
            "status": "healthy",
            "backend": retriever.identity,
            "documents": len(retriever) if hasattr(retriever, "__len__") else None,
            # same shape as the reference server's answer (one retriever, always available)
            "retrievers": {"total": 1, "available": 1},
            **counts,
        }

    @app.post("/search")
    def search(request: SearchRequest) -> Any:
        _check_limits([request.query], limits)
        _reject_empty([request.query])
        docs = run([request.query], request.top_n)[0]
        wire = [_wire(d) for d in docs]
        if request.return_score:
            return [wire, [d.score for d in docs]]
        return wire

    @app.post("/batch_search")
    def batch_search(request: BatchSearchRequest) -> Any:
        _check_limits(request.query, limits)
        _reject_empty(request.query)
        results = run(request.query, request.top_n)
        wire = [[_wire(d) for d in docs] for docs in results]
        if request.return_score:
            return [wire, [[d.score for d in docs] for docs in results]]
        return wire

    @app.post("/retrieve")
    def retrieve(request: RetrieveRequest) -> dict[str, Any]:
        queries = request.queries
        _check_limits(queries, limits)
        # as Search-R1's server: [] for no queries, an empty list for an empty or blank query
        results: list[list[Doc]] = [[] for _ in queries]
        todo = [i for i, q in enumerate(queries) if q.strip()]
        if todo:
            found = run([queries[i] for i in todo], request.topk or default_top_k)
            for i, docs in zip(todo, found, strict=True):
                results[i] = docs
        if request.return_scores:
            return {"result": [[{"document": _wire(d), "score": d.score} for d in docs] for docs in results]}
        return {"result": [[_wire(d) for d in docs] for docs in results]}

    return app


def serve(
    cfg: SearchConfig,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    log_level: str = "info",
    *,
    default_top_k: int = DEFAULT_RETRIEVE_TOP_K,
    limits: RetrieverLimits | None = None,
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
) -> None:
    """Build the local retriever ``cfg`` describes and serve it until interrupted.

    ``host`` defaults to loopback; use ``0.0.0.0`` to let other machines (GPU nodes) reach it.
    ``keep_alive_s``: how long an idle connection stays open (see :mod:`etagent.http_server`).
    """
    import uvicorn

    if cfg.backend == "remote":
        raise ValueError("serve-retriever needs a local backend (search.backend=bm25 or dense), not 'remote'")
    t0 = time.perf_counter()
    retriever = build_retriever(cfg)
    log.info(
        "retriever %s ready in %.1f s; serving on http://%s:%d",
        retriever.identity,
        time.perf_counter() - t0,
        host,
        port,
    )
    try:
        app = create_app(retriever, default_top_k=default_top_k, limits=limits)
        config = uvicorn_config(app, host=host, port=port, keep_alive_s=keep_alive_s, log_level=log_level)
        uvicorn.Server(config).run()
    finally:
        retriever.close()


class BackgroundServer:
    """Serve an app from a background thread on a free loopback port (tests, notebooks)::

    with BackgroundServer(create_app(index)) as server:
        client = make_client(server.url)
    """

    def __init__(
        self,
        app: FastAPI,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout_s: float = 30.0,
        keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
    ):
        import uvicorn

        # bind here so the port is known before the thread starts and nobody can take it meanwhile
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.startup_timeout_s = startup_timeout_s
        config = uvicorn_config(
            app, keep_alive_s=keep_alive_s, log_level="warning", access_log=False, lifespan="off"
        )
        self._server: uvicorn.Server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"retriever-{self.port}",
            daemon=True,
        )

    def start(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"retrieval server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
