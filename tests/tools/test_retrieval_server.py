"""``etagent serve-retriever``: Search-R1 compatibility, request limits, and kept-alive connections."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from etagent.http_server import DEFAULT_KEEP_ALIVE_S
from etagent.tools.search import BM25Index, Doc
from etagent.tools.search.remote import KEEPALIVE_EXPIRY_S, make_client
from etagent.tools.search.server import BackgroundServer, RetrieverLimits, create_app
from tests.raw_http import read_response

# six documents about towers, so that a query for "tower" has more matches than any default top-k
DOCS = [
    Doc(f"t{i}", f"Tower {i}", f"Tower number {i} is a tall stone tower in town {i}.") for i in range(6)
] + [Doc("e", "Mount Everest", "Mount Everest is Earth's highest mountain above sea level.")]


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index.from_docs(DOCS, threads=1)


@pytest.fixture(scope="module")
def server(index: BM25Index) -> Iterator[BackgroundServer]:
    limits = RetrieverLimits(max_body_bytes=64 * 1024, max_query_chars=100, max_batch=5)
    with BackgroundServer(create_app(index, limits=limits)) as srv:
        yield srv


def post(server: BackgroundServer, path: str, payload: dict) -> httpx.Response:
    return httpx.post(server.url + path, json=payload, timeout=30)


# --------------------------------------------------------------------------------------------
# Search-R1's /retrieve, answered as Search-R1's retrieval_server.py does


def search_r1_client_turn(url: str, queries: list[str], topk: int = 3) -> list[str]:
    """Search-R1's ``batch_search`` (llm_agent/generation.py): what its training loop runs on every turn."""
    payload = {"queries": queries, "topk": topk, "return_scores": True}
    results = httpx.post(url + "/retrieve", json=payload, timeout=30).json()["result"]
    texts = []
    for result in results:
        text = ""
        for idx, doc_item in enumerate(result):
            content = doc_item["document"]["contents"]
            title = content.split("\n")[0]
            body = "\n".join(content.split("\n")[1:])
            text += f"Doc {idx + 1}(Title: {title}) {body}\n"
        texts.append(text)
    return texts


def test_search_r1_turn_without_searches_and_with_empty_queries(server: BackgroundServer) -> None:
    # a turn where no trajectory searched sends no queries at all; Search-R1's server answers 200
    response = post(server, "/retrieve", {"queries": [], "topk": 3, "return_scores": True})
    assert response.status_code == 200 and response.json() == {"result": []}
    # a model's <search></search> sends an empty query: an empty list, the other queries answered
    response = post(server, "/retrieve", {"queries": ["", "Everest", "  \n"], "return_scores": True})
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert [len(r) for r in result] == [0, 1, 0]
    assert result[1][0]["document"]["id"] == "e" and result[1][0]["score"] > 0
    # Search-R1's own client code, end to end: no crash, one text per query
    assert search_r1_client_turn(server.url, []) == []
    texts = search_r1_client_turn(server.url, ["", "Everest"])
    assert texts[0] == "" and texts[1].startswith('Doc 1(Title: "Mount Everest") Mount Everest is')


def test_search_r1_default_topk_is_3(server: BackgroundServer) -> None:
    def count(payload: dict) -> int:
        response = post(server, "/retrieve", {"queries": ["tower"], **payload})
        assert response.status_code == 200, response.text
        return len(response.json()["result"][0])

    assert count({}) == 3  # absent
    assert count({"topk": None}) == 3
    assert count({"topk": 0}) == 3  # Search-R1: `if not request.topk` -> its --topk
    assert count({"topk": 5}) == 5
    # without scores each entry is the document itself
    docs = post(server, "/retrieve", {"queries": ["tower"]}).json()["result"][0]
    assert all(d["id"].startswith("t") and "contents" in d for d in docs)
    assert post(server, "/retrieve", {"queries": ["tower"], "topk": -1}).status_code == 422


def test_default_topk_is_configurable(index: BM25Index) -> None:
    with BackgroundServer(create_app(index, default_top_k=2)) as srv:
        assert len(post(srv, "/retrieve", {"queries": ["tower"]}).json()["result"][0]) == 2
    with pytest.raises(ValueError, match="default_top_k"):
        create_app(index, default_top_k=0)


def test_search_r1_client_sends_nothing_for_no_queries(server: BackgroundServer) -> None:
    with make_client(server.url, api="search-r1", retries=0) as client:
        assert client.search_batch([], 3) == []
        assert [len(r) for r in client.search_batch(["tower", "Everest"], 2)] == [2, 1]


# --------------------------------------------------------------------------------------------
# request limits


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/search", {"query": "x" * 101}),
        ("/batch_search", {"query": ["tower", "x" * 101]}),
        ("/retrieve", {"queries": ["tower", "x" * 101]}),
    ],
)
def test_a_query_over_the_limit_gets_422(server: BackgroundServer, path: str, payload: dict) -> None:
    response = post(server, path, payload)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "101 characters" in detail and "at most 100" in detail and "--max-query-chars" in detail


@pytest.mark.parametrize(
    ("path", "key"), [("/batch_search", "query"), ("/batch_search", "queries"), ("/retrieve", "queries")]
)
def test_a_batch_over_the_limit_gets_422(server: BackgroundServer, path: str, key: str) -> None:
    assert post(server, path, {key: ["tower"] * 5}).status_code == 200  # at the limit
    response = post(server, path, {key: ["tower"] * 6})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "6 in one request" in detail and "at most 5" in detail and "--max-batch" in detail


def test_at_the_query_limit_is_fine(server: BackgroundServer) -> None:
    response = post(server, "/search", {"query": ("tower " * 20)[:100]})
    assert response.status_code == 200 and len(response.json()) > 0


def test_a_body_over_the_limit_gets_413_before_it_is_parsed(server: BackgroundServer) -> None:
    # 70 KiB of queries, each within the query limit: only the body limit (64 KiB) applies
    big = {"queries": ["tower"] * 12_000}
    response = post(server, "/retrieve", big)
    assert response.status_code == 413
    detail = response.json()["detail"]
    assert "at most 65536 bytes" in detail and "--max-body-mb" in detail

    # a chunked upload (no Content-Length) is cut off as soon as it passes the limit
    def chunks() -> Iterator[bytes]:
        yield b'{"queries": ['
        for _ in range(2000):
            yield b'"tower tower tower tower tower tower", '
        yield b'"tower"]}'

    response = httpx.post(
        server.url + "/retrieve", content=chunks(), headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 413 and "at most 65536 bytes" in response.json()["detail"]
    # a chunked body within the limit reaches the app intact
    small = b'{"queries": ["tower", "Everest"], "topk": 1}'
    response = httpx.post(
        server.url + "/retrieve",
        content=iter([small[:10], small[10:]]),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200 and [len(r) for r in response.json()["result"]] == [1, 1]


def test_a_refused_body_is_read_so_that_the_client_gets_the_413(server: BackgroundServer) -> None:
    """Closing a connection with the body unread resets it: a client still uploading would get a
    connection error instead of the answer (async httpx clients did, under load)."""
    body = b"x" * (20 * 2**20)  # more than the socket buffers hold
    head = f"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    with socket.create_connection((server.host, server.port)) as s:
        s.settimeout(30)
        s.sendall(head.encode() + b"\r\n" + body)  # a reset would raise here or in the read
        response = read_response(s)
    assert response.startswith(b"HTTP/1.1 413") and b"20 MiB" in response
    # a client that waits for "100 Continue" sends no body: it gets the answer at once
    with socket.create_connection((server.host, server.port)) as s:
        s.settimeout(30)
        s.sendall(f"{head}Expect: 100-continue\r\n\r\n".encode())
        assert read_response(s).startswith(b"HTTP/1.1 413")


def test_a_10_mib_query_is_refused_at_once_with_the_default_limits(index: BM25Index) -> None:
    """The reported fault: a 10 MiB query was read, parsed and searched (3.5 s, memory)."""
    with BackgroundServer(create_app(index)) as srv:
        t0 = time.monotonic()
        response = post(srv, "/search", {"query": "tower " * (10 * 2**20 // 6)})
        assert response.status_code == 413 and time.monotonic() - t0 < 3
        # under the body limit but over the query limit
        response = post(srv, "/search", {"query": "tower " * 2000})
        assert response.status_code == 422 and "at most 8192" in response.json()["detail"]
        assert post(srv, "/search", {"query": "tower"}).status_code == 200
    with pytest.raises(ValueError, match="max_batch"):
        RetrieverLimits(max_batch=0)


# --------------------------------------------------------------------------------------------
# kept-alive connections


def test_keep_alive_outlasts_client_pools(index: BM25Index) -> None:
    """An idle connection stays open longer than httpx's pool keeps one (5 s): the client, not the
    server, ends it, so no request is sent into a connection the server is closing."""
    assert (
        DEFAULT_KEEP_ALIVE_S > 15 and KEEPALIVE_EXPIRY_S < 5
    )  # aiohttp keeps 15 s; uvicorn's default is 5 s
    with BackgroundServer(create_app(index)) as srv, socket.create_connection((srv.host, srv.port)) as s:
        body = b'{"query": "tower"}'
        head = f"POST /search HTTP/1.1\r\nHost: {srv.host}\r\nContent-Type: application/json\r\n"
        request = f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        s.settimeout(10)
        s.sendall(request)
        assert read_response(s).startswith(b"HTTP/1.1 200")
        time.sleep(5.5)
        s.sendall(request)  # the same connection, idle longer than uvicorn's default keep-alive
        assert read_response(s).startswith(b"HTTP/1.1 200")


def _idle_timer_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether uvicorn's idle timer of a connection is due and queued to run in this loop pass.

    Reads asyncio's run queue (``_ready``, private but stable since Python 3.4): the one way to act
    at the exact pass the timer runs in.
    """
    ready = getattr(loop, "_ready", ())
    return any(
        getattr(getattr(h, "_callback", None), "__name__", "") == "timeout_keep_alive_handler"
        and not h.cancelled()
        for h in ready
    )


def _stall_app(index: BM25Index) -> FastAPI:
    """The retriever app plus ``POST /stall``: waits until an idle connection's keep-alive timer is
    due, then blocks the event loop for ``block_s`` before the timer runs."""
    app = create_app(index)

    @app.post("/stall")
    async def stall(body: dict) -> dict:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, body["near"] - time.monotonic()))
        deadline = time.monotonic() + 5
        # a task step queued in the previous pass runs before the timers moved to the queue in
        # this one: spin one pass at a time until the idle timer sits behind us in the queue
        while not _idle_timer_ready(loop):
            assert time.monotonic() < deadline, "no idle keep-alive timer came due"
            await asyncio.sleep(0)
        time.sleep(body["block_s"])  # a loaded server's long pass; the request arrives meanwhile
        return {}

    return app


KEEP_ALIVE_S = 1.0


def _race(server: BackgroundServer, send: object) -> object:
    """Send ``send()`` on a kept-alive connection at the instant the server's idle timer closes it.

    The server's last answer on that connection set its idle timer (``KEEP_ALIVE_S``); another
    connection stalls the event loop in the pass that runs the timer, before the timer. ``send``
    goes out during the stall; the timer then closes the connection with the request unread and
    the kernel answers with a reset. On a loaded server this happens by chance (3 of 15,700
    requests); here on every run.
    """
    due = time.monotonic() + KEEP_ALIVE_S  # the previous answer has just arrived
    stall = threading.Thread(
        target=httpx.post,
        args=(server.url + "/stall",),
        kwargs={"json": {"near": due - 0.5, "block_s": 1.5}, "timeout": 30},
    )
    stall.start()
    time.sleep(max(0.0, due + 0.2 - time.monotonic()))
    try:
        return send()  # type: ignore[operator]
    finally:
        stall.join()


def test_idle_timeout_race_loses_a_plain_clients_request(index: BM25Index) -> None:
    """The fault, reproduced: a pooled client without retries loses the request."""
    with BackgroundServer(_stall_app(index), keep_alive_s=KEEP_ALIVE_S) as srv, httpx.Client() as client:
        assert client.post(srv.url + "/search", json={"query": "tower"}).status_code == 200
        with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
            _race(srv, lambda: client.post(srv.url + "/search", json={"query": "tower"}))


@pytest.mark.parametrize("api", ["flashrag", "search-r1"])
def test_our_client_does_not_lose_a_request_to_the_idle_timeout_race(index: BM25Index, api: str) -> None:
    with (
        BackgroundServer(_stall_app(index), keep_alive_s=KEEP_ALIVE_S) as srv,
        make_client(srv.url, api=api, retries=0) as client,  # no ordinary retries: only the resend
    ):
        assert [d.id for d in client.search("Everest", 1)] == ["e"]
        docs = _race(srv, lambda: client.search("Everest", 1))
        assert [d.id for d in docs] == ["e"]  # type: ignore[attr-defined]
        assert client.resent == 1
