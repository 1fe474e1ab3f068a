"""Web search backends against a local server speaking each API: request shapes, result parsing,
errors, empty answers, rate limiting (429), timeouts, several keys, the query cache."""

from __future__ import annotations

import logging
import time

import pytest

from etagent.tools.search import SearchConfig, SearchTool
from etagent.tools.search.config import BingConfig, DdgsConfig, SearxngConfig, SerperConfig
from etagent.tools.search.retriever import RetrieverError, RetrieverTimeout
from etagent.tools.search.web import (
    BingSearch,
    DdgsSearch,
    RateLimiter,
    SearxngSearch,
    SerperSearch,
    read_keys,
)
from tests.tools.search.conftest import FakeWeb, Reply, json_reply

KEY_1 = "serper-key-AAAA-1111-secret"
KEY_2 = "serper-key-BBBB-2222-secret"

SERPER_ANSWER = {
    "searchParameters": {"q": "catalan numbers", "gl": "us", "hl": "en", "type": "search", "num": 10},
    "knowledgeGraph": {"title": "Catalan number", "type": "Integer sequence"},
    "organic": [
        {
            "title": "Catalan number - Wikipedia",
            "link": "https://en.wikipedia.org/wiki/Catalan_number",
            "snippet": "In combinatorial mathematics, the Catalan numbers are a sequence of natural numbers "
            "that occur in various counting problems.",
            "position": 1,
        },
        {
            "title": "Catalan Number -- from Wolfram MathWorld",
            "link": "https://mathworld.wolfram.com/CatalanNumber.html",
            "snippet": "The Catalan numbers on nonnegative integers n are a set of numbers that arise in "
            "tree enumeration problems: 1, 1, 2, 5, 14, 42, 132, ...",
            "date": "Mar 1, 2024",
            "position": 2,
        },
        {"title": "no link, skipped", "snippet": "an entry without a link"},
    ],
    "peopleAlsoAsk": [{"question": "What is the 10th Catalan number?"}],
    "credits": 1,
}


def serper(web: FakeWeb, keys: list[str] | None = None, **settings) -> SerperSearch:
    cfg = SerperConfig(url=web.url + "/search", retries=2, backoff_s=0.01, timeout_s=2, **settings)
    return SerperSearch(cfg, keys=keys or [KEY_1])


# ------------------------------------------------------------------------------------ Serper


def test_serper_request_and_result_shape(web: FakeWeb) -> None:
    web.route("/search", [json_reply(SERPER_ANSWER)])
    docs = serper(web).search("catalan numbers", 5)
    [request] = web.hits("/search")
    assert request.method == "POST" and request.headers["x-api-key"] == KEY_1
    assert request.json == {"q": "catalan numbers", "hl": "en", "gl": "us", "num": 10}
    assert [d.id for d in docs] == [
        "https://en.wikipedia.org/wiki/Catalan_number",
        "https://mathworld.wolfram.com/CatalanNumber.html",
    ]
    assert docs[1].title == "Catalan Number -- from Wolfram MathWorld" and "1, 1, 2, 5, 14" in docs[1].text

    web.requests.clear()
    serper(web).search("卡塔兰数 前十项", 3)  # language from the query, as the reference's langid
    assert (web.requests[0].json["hl"], web.requests[0].json["gl"]) == ("zh-cn", "cn")
    web.requests.clear()
    serper(web, hl="de", gl="de").search("catalan", 2)
    assert (web.requests[0].json["hl"], web.requests[0].json["gl"]) == ("de", "de")


def test_serper_results_as_the_agent_reads_them(web: FakeWeb, tmp_path) -> None:
    web.route("/search", [json_reply(SERPER_ANSWER)])
    tool = SearchTool(serper(web), top_k=2, max_doc_chars=64, pages_format=True)
    result = tool.call("  catalan   numbers ")
    assert result.status == "ok"
    assert result.text.splitlines() == [
        "Page 1: In combinatorial mathematics, the Catalan numbers are a sequence...",
        "Page 2: The Catalan numbers on nonnegative integers n are a set of numbe...",
    ]
    titled = SearchTool(serper(web), top_k=1, max_doc_chars=1000, pages_format=True, page_titles=True)
    assert titled.call("catalan").text.startswith("Page 1: Catalan number - Wikipedia: In combinatorial")


def test_serper_retries_rate_limits_and_server_errors(web: FakeWeb) -> None:
    web.route(
        "/search",
        [
            Reply(429, b'{"message": "Too many requests"}', {"Retry-After": "0.05"}),
            Reply(503, b"upstream down"),
            json_reply(SERPER_ANSWER),
        ],
    )
    t0 = time.monotonic()
    docs = serper(web).search("catalan", 2)
    assert len(docs) == 2 and len(web.hits("/search")) == 3
    assert time.monotonic() - t0 >= 0.05  # the Retry-After header was honoured


def test_serper_empty_answers_are_asked_again_then_no_results(web: FakeWeb) -> None:
    empty = {**SERPER_ANSWER, "organic": []}
    web.route("/search", [json_reply(empty), json_reply(SERPER_ANSWER)])
    assert len(serper(web).search("catalan", 2)) == 2 and len(web.hits("/search")) == 2
    web.requests.clear()
    web.route("/search", [json_reply(empty)])
    tool = SearchTool(serper(web), pages_format=True)
    assert tool.call("nothing at all").text == "No results found."
    assert len(web.hits("/search")) == 3  # the reference asks twice more


def test_serper_keys_are_tried_in_order_and_never_shown(web: FakeWeb, caplog) -> None:
    def by_key(request):
        if request.headers["x-api-key"] == KEY_1:
            return json_reply({"message": "Unauthorized.", "statusCode": 403}, status=403)
        return json_reply(SERPER_ANSWER)

    web.route("/search", by_key)
    caplog.set_level(logging.DEBUG)
    docs = serper(web, keys=[KEY_1, KEY_2]).search("catalan", 2)
    assert len(docs) == 2
    assert [r.headers["x-api-key"] for r in web.requests] == [KEY_1, KEY_2]  # a rejected key is not retried
    assert "key 1 of 2" in caplog.text and KEY_1 not in caplog.text and KEY_2 not in caplog.text
    web.requests.clear()
    engine = serper(web, keys=[KEY_1, KEY_2])
    engine.search("catalan", 2)
    engine.search("numbers", 2)
    assert [r.headers["x-api-key"] for r in web.requests] == [KEY_1, KEY_2, KEY_2]  # a refused key goes last

    # every key out of credit: one error naming the service, without a key
    web.requests.clear()
    web.route("/search", [json_reply({"message": "Not enough credits", "statusCode": 402}, status=402)])
    with pytest.raises(RetrieverError) as err:
        serper(web, keys=[KEY_1, KEY_2]).search("catalan", 2)
    assert "serper" in str(err.value) and "402" in str(err.value) and "2 keys" in str(err.value)
    assert KEY_1 not in str(err.value) and KEY_2 not in str(err.value)


def test_serper_keys_come_from_the_environment(web: FakeWeb, monkeypatch) -> None:
    monkeypatch.setenv("SERPER_API_KEY", f"{KEY_1}, {KEY_2}")
    monkeypatch.setenv("SERPER_BACKUP_KEY", KEY_1)  # a duplicate is tried once
    assert read_keys(["SERPER_API_KEY", "SERPER_BACKUP_KEY", "UNSET_VARIABLE"]) == [KEY_1, KEY_2]
    web.route("/search", [json_reply(SERPER_ANSWER)])
    cfg = SearchConfig(
        backend="serper",
        serper={"url": web.url + "/search", "api_key_env": ["SERPER_API_KEY", "SERPER_BACKUP_KEY"]},
        cache=False,
    )
    tool = SearchTool.from_config(cfg)
    assert tool.call("catalan").status == "ok" and web.requests[0].headers["x-api-key"] == KEY_1
    assert KEY_1 not in repr(tool.retriever) and KEY_1 not in tool.retriever.identity
    tool.close()

    monkeypatch.delenv("SERPER_API_KEY")
    monkeypatch.delenv("SERPER_BACKUP_KEY")
    with pytest.raises(
        RetrieverError, match="set the environment variable SERPER_API_KEY or SERPER_BACKUP_KEY"
    ):
        SearchTool.from_config(cfg)


def test_serper_timeouts_and_a_dead_server(web: FakeWeb) -> None:
    web.route("/search", [Reply(200, b"{}", delay_s=1.0)])
    engine = SerperSearch(
        SerperConfig(url=web.url + "/search", retries=1, backoff_s=0.01, timeout_s=0.2), keys=[KEY_1]
    )
    with pytest.raises(RetrieverTimeout, match=r"did not answer within 0.2 s"):
        engine.search("catalan", 2)
    assert len(web.hits("/search")) == 2  # asked once more
    result = SearchTool(engine, pages_format=True).call("catalan")
    assert result.status == "timeout" and result.text == "Search failed: catalan"

    web.close()
    dead = SerperSearch(SerperConfig(url=web.url + "/search", retries=0, timeout_s=1), keys=[KEY_1])
    with pytest.raises(RetrieverError, match="unreachable"):
        dead.search("catalan", 2)


def test_serper_bad_answers_are_clear_errors(web: FakeWeb) -> None:
    web.route("/search", [Reply(200, b"<html>maintenance</html>", {"Content-Type": "text/html"})])
    with pytest.raises(RetrieverError, match="did not answer JSON: <html>maintenance"):
        serper(web).search("catalan", 2)
    web.route("/search", [json_reply({"message": "Query is required", "statusCode": 400}, status=400)])
    with pytest.raises(RetrieverError, match="rejected the request: HTTP 400"):
        serper(web).search("catalan", 2)
    web.route("/search", [json_reply({"organic": {"not": "a list"}})])
    with pytest.raises(RetrieverError, match="expected a list of results"):
        serper(web).search("catalan", 2)


def test_web_results_are_cached_by_query_without_the_key(web: FakeWeb, tmp_path, monkeypatch) -> None:
    web.route("/search", [json_reply(SERPER_ANSWER)])
    monkeypatch.setenv("ETAGENT_TEST_SERPER", KEY_1)
    cfg = SearchConfig(
        backend="serper",
        serper={"url": web.url + "/search", "api_key_env": ["ETAGENT_TEST_SERPER"]},
        cache_path=str(tmp_path / "q.sqlite"),
    )
    first = SearchTool.from_config(cfg)
    text = first.call("catalan").text
    first.close()
    again = SearchTool.from_config(cfg)
    assert again.call(" catalan ").text == text
    again.close()
    assert len(web.hits("/search")) == 1
    assert KEY_1.encode() not in (tmp_path / "q.sqlite").read_bytes()


# ------------------------------------------------------------------------------------ Bing


BING_ANSWER = {
    "general": {"search_engine": "bing", "query": "catalan numbers", "language": "en", "search_type": "text"},
    "organic": [
        {
            "link": "https://en.wikipedia.org/wiki/Catalan_number",
            "display_link": "en.wikipedia.org › wiki › Catalan_number",
            "title": "Catalan number - Wikipedia",
            "description": "The Catalan numbers are a sequence of natural numbers that occur in counting problems.",
            "rank": 1,
            "global_rank": 1,
        },
        {
            "link": "https://mirror.example.org/wiki/Catalan_number",
            "title": "Catalan number (mirror)",
            "description": "The Catalan numbers are a sequence of natural numbers that occur in counting problems.",
            "rank": 2,
        },
        {
            "link": "https://oeis.org/A000108",
            "title": "A000108 - OEIS",
            "description": "Catalan numbers: C(n) = binomial(2n,n)/(n+1) = (2n)!/(n!(n+1)!).",
            "rank": 3,
        },
    ],
}


def test_bing_through_bright_data(web: FakeWeb) -> None:
    web.route("/request", [json_reply(BING_ANSWER)])
    engine = BingSearch(
        BingConfig(url=web.url + "/request", zone="serp_zone1", backoff_s=0.01), keys=["bd-key-9"]
    )
    docs = engine.search("catalan numbers", 5)
    [request] = web.requests
    assert request.method == "POST" and request.headers["authorization"] == "Bearer bd-key-9"
    body = request.json
    assert body["zone"] == "serp_zone1" and body["format"] == "raw"
    assert (
        body["url"] == "https://www.bing.com/search?q=catalan+numbers&brd_json=1&cc=us&mkt=en-US&setlang=en"
    )
    # snippets are de-duplicated, as the reference does
    assert [d.id for d in docs] == [
        "https://en.wikipedia.org/wiki/Catalan_number",
        "https://oeis.org/A000108",
    ]
    assert "mkt=zh-CN" in engine.page_url("卡塔兰数")
    assert "bd-key-9" not in engine.identity and "serp_zone1" in engine.identity

    web.route(
        "/request", [Reply(200, b"<!doctype html><html>a Bing page</html>", {"Content-Type": "text/html"})]
    )
    with pytest.raises(RetrieverError, match="SERP zone"):
        engine.search("catalan", 2)
    with pytest.raises(RetrieverError, match=r"set search\.bing\.zone"):
        BingSearch(BingConfig(url=web.url + "/request"), keys=["k"])


def test_bing_rate_limit_is_retried_then_fails_cleanly(web: FakeWeb) -> None:
    web.route("/request", [Reply(429, b"slow down")])
    engine = BingSearch(
        BingConfig(url=web.url + "/request", zone="z", retries=2, backoff_s=0.01, rate_limit_per_s=None),
        keys=["bd-key-9"],
    )
    with pytest.raises(RetrieverError, match=r"rate limiting \(HTTP 429\).*2 retries each") as err:
        engine.search("catalan", 2)
    assert "bd-key-9" not in str(err.value)
    assert len(web.requests) == 3


# ------------------------------------------------------------------------------------ SearXNG


SEARXNG_ANSWER = {
    "query": "catalan numbers",
    "number_of_results": 0,
    "results": [
        {
            "url": "https://en.wikipedia.org/wiki/Catalan_number",
            "title": "Catalan number - Wikipedia",
            "content": "In combinatorial mathematics, the Catalan numbers are a sequence of natural numbers.",
            "engine": "duckduckgo",
            "engines": ["duckduckgo", "brave"],
            "score": 2.0,
            "category": "general",
        },
        {
            "url": "https://oeis.org/A000108",
            "title": "A000108 - OEIS",
            "content": "Catalan numbers: C(n) = binomial(2n,n)/(n+1).",
            "engine": "brave",
            "score": 1.0,
        },
    ],
    "answers": [],
    "suggestions": ["catalan numbers formula"],
    "unresponsive_engines": [["google", "timeout"]],
}


def test_searxng_json_api(web: FakeWeb) -> None:
    web.route("/search", [json_reply(SEARXNG_ANSWER)])
    engine = SearxngSearch(SearxngConfig(url=web.url + "/", engines="duckduckgo,brave"))
    docs = engine.search("catalan numbers", 1)
    [request] = web.requests
    assert request.method == "GET" and "authorization" not in request.headers
    assert request.query == {
        "q": "catalan numbers",
        "format": "json",
        "language": "en",
        "categories": "general",
        "safesearch": "0",
        "pageno": "1",
        "engines": "duckduckgo,brave",
    }
    assert [(d.id, d.title) for d in docs] == [
        ("https://en.wikipedia.org/wiki/Catalan_number", "Catalan number - Wikipedia")
    ]
    web.route("/search", [json_reply({**SEARXNG_ANSWER, "results": []})])
    assert engine.search("nothing", 3) == []


def test_searxng_without_the_json_format_says_how_to_fix_it(web: FakeWeb) -> None:
    web.route("/search", [Reply(403, b"<html>403 Forbidden</html>", {"Content-Type": "text/html"})])
    engine = SearxngSearch(SearxngConfig(url=web.url))
    with pytest.raises(RetrieverError, match=r"'json' is missing from search\.formats"):
        engine.search("catalan", 2)
    assert len(web.requests) == 1  # not retried


# ------------------------------------------------------------------------------------ ddgs


class FakeDDGS:
    """Stands in for ``ddgs.DDGS``: scripted answers (lists of result dicts, or exceptions)."""

    def __init__(self, answers: list) -> None:
        self.answers = answers
        self.calls: list[tuple[str, dict]] = []

    def __call__(self) -> FakeDDGS:  # the client factory
        return self

    def text(self, query: str, **kwargs) -> list[dict]:
        self.calls.append((query, kwargs))
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


DDGS_RESULTS = [
    {
        "title": "Catalan number - Wikipedia",
        "href": "https://en.wikipedia.org/wiki/Catalan_number",
        "body": "The Catalan numbers are a sequence of natural numbers that occur in counting problems.",
    },
    {"title": "A000108 - OEIS", "href": "https://oeis.org/A000108", "body": "Catalan numbers C(n)."},
]


def test_ddgs_through_its_client(monkeypatch) -> None:
    from ddgs.exceptions import DDGSException, RatelimitException, TimeoutException

    fake = FakeDDGS([RatelimitException("202 Ratelimit"), DDGS_RESULTS])
    engine = DdgsSearch(
        DdgsConfig(backoff_s=0.01, rate_limit_per_s=None, region="uk-en"), client_factory=fake
    )
    docs = engine.search("catalan numbers", 2)
    assert [d.id for d in docs] == [
        "https://en.wikipedia.org/wiki/Catalan_number",
        "https://oeis.org/A000108",
    ]
    assert fake.calls[-1] == (
        "catalan numbers",
        {"region": "uk-en", "safesearch": "moderate", "max_results": 2, "backend": "auto"},
    )
    assert len(fake.calls) == 2  # the rate-limited call was retried

    assert (
        DdgsSearch(DdgsConfig(), client_factory=FakeDDGS([DDGSException("No results found.")])).search("x", 2)
        == []
    )
    slow = DdgsSearch(
        DdgsConfig(retries=1, backoff_s=0.01, rate_limit_per_s=None),
        client_factory=FakeDDGS([TimeoutException("timed out")]),
    )
    with pytest.raises(RetrieverTimeout, match="ddgs"):
        slow.search("x", 2)


def test_the_real_ddgs_client_is_the_default() -> None:
    engine = DdgsSearch(DdgsConfig(proxy=None, timeout_s=3))
    client = engine._factory()
    from ddgs import DDGS

    assert isinstance(client, DDGS) and client._timeout == 3


# ------------------------------------------------------------------------------------ shared parts


def test_rate_limiter_spaces_requests_across_threads() -> None:
    from concurrent.futures import ThreadPoolExecutor

    limiter = RateLimiter(50.0)
    t0 = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: limiter.wait(), range(6)))
    assert time.monotonic() - t0 >= 5 / 50 - 0.005
    RateLimiter(None).wait()  # no limit: returns at once


def test_batches_search_concurrently_and_keep_query_order(web: FakeWeb) -> None:
    def answer(request):
        q = request.json["q"]
        return json_reply({"organic": [{"link": f"https://x.test/{q}", "title": q, "snippet": f"about {q}"}]})

    web.route("/search", answer)
    results = serper(web).search_batch(["alpha", "beta", "gamma"], 3)
    assert [r[0].title for r in results] == ["alpha", "beta", "gamma"]


def test_search_config_names_web_backends_and_their_settings() -> None:
    cfg = SearchConfig(backend="searxng", searxng={"url": "http://searx.local:8080"})
    assert cfg.is_web and cfg.formats_pages and cfg.web_section().url == "http://searx.local:8080"
    assert not SearchConfig().formats_pages
    assert SearchConfig(backend="bm25", result_format="pages").formats_pages
    with pytest.raises(ValueError, match=r"unknown search backend 'google'.*serper"):
        SearchConfig(backend="google")
    with pytest.raises(ValueError, match=r"settings: only for a web backend"):
        SearchConfig(backend="serper", settings={"url": "x"})
    with pytest.raises(ValueError, match=r"pages\.enabled: page reading needs a web search backend"):
        SearchConfig(backend="bm25", pages={"enabled": True})
    with pytest.raises(ValueError, match=r"serper\.retries"):
        SearchConfig(backend="serper", serper={"retries": -1})
    with pytest.raises(ValueError, match=r"not a subclass of etagent\.tools\.search\.web\.WebSearch"):
        SearchConfig(backend="tests.tools.search.test_web:FakeDDGS")


class EchoWeb(SerperSearch):
    """A user's own web backend, used by dotted path with its settings under ``settings``."""

    name = "echo"
    needs_key = False

    def _search_once(self, query, top_k, key):
        from etagent.tools.search.corpus import Doc

        return [Doc(id=f"https://echo.test/{i}", title="", text=f"{query} #{i}") for i in range(top_k)]


def test_a_web_backend_by_dotted_path() -> None:
    cfg = SearchConfig(
        backend="tests.tools.search.test_web:EchoWeb", settings={"hl": "fr", "api_key_env": []}, cache=False
    )
    assert isinstance(cfg.settings, SerperConfig) and cfg.settings.hl == "fr"
    tool = SearchTool.from_config(cfg)
    assert tool.call("bonjour").text.splitlines() == ["Page 1: bonjour #0", "Page 2: bonjour #1",
                                                      "Page 3: bonjour #2", "Page 4: bonjour #3"]  # fmt: skip
    assert "searches the web" in tool.spec.description
    tool.close()
