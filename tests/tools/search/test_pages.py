"""Page reading on saved pages (an HTML article, a PDF) served by a local server: extraction, the
window around the snippet, timeouts, size caps, content types, private hosts, the page cache."""

from __future__ import annotations

import pytest

from etagent.tools.search import SearchTool
from etagent.tools.search.cache import PageCache
from etagent.tools.search.config import PageReaderConfig, SerperConfig
from etagent.tools.search.corpus import Doc
from etagent.tools.search.pages import (
    PageReader,
    _blocked_address,
    extract_html,
    extract_pdf,
    sentence_spans,
    snippet_window,
    word_f1,
    words,
)
from etagent.tools.search.web import SerperSearch
from tests.tools.search.conftest import FIXTURES, FakeWeb, Reply, json_reply

HTML = (FIXTURES / "catalan_article.html").read_bytes()
PDF = (FIXTURES / "lattice_paths.pdf").read_bytes()
SNIPPET = "The first Catalan numbers for n = 0, 1, 2, 3, ... are 1, 1, 2, 5, 14, 42, 132, 429"


def test_html_main_text_without_menus_ads_and_comments() -> None:
    text = extract_html(HTML, "https://notes.example/catalan")
    assert text.startswith("Catalan numbers\nThe Catalan numbers form a sequence")
    assert "C(n) = (2n choose n) / (n + 1)" in text and "triangulated in C(4) = 14 ways" in text
    for boilerplate in (
        "Accept all",
        "Popular this week",
        "premium problem sets",
        "All rights reserved",
        "anna_k",
    ):
        assert boilerplate not in text


def test_pdf_text_page_by_page() -> None:
    text = extract_pdf(PDF)
    assert "Lecture 7: Counting lattice paths" in text and "C(5) = 42 of them" in text
    assert "is 132." in text  # second page
    assert "Exercise 7.3" not in extract_pdf(PDF, max_pages=1)


def test_window_around_the_sentence_that_best_matches_the_snippet() -> None:
    assert word_f1(words("a b c"), words("b c d")) == pytest.approx(2 / 3)
    assert word_f1(words("x"), words("y")) == 0.0
    text = extract_html(HTML)
    spans = sentence_spans(text)
    assert text[slice(*spans[0])] == "Catalan numbers"
    window = snippet_window(text, SNIPPET, window_chars=60)
    assert window.startswith("! / ((n + 1)! n!).") or "Equivalently" in window[:80]
    assert "16796." in window and len(window) < 300
    assert "Tower of Hanoi" not in window and "Asymptotically" not in window
    # no sentence matches: the start of the page
    assert snippet_window(text, "zebra migration patterns", fallback_chars=40) == text[:40].strip()
    assert snippet_window(text, "", fallback_chars=15) == "Catalan numbers"


def site(web: FakeWeb) -> None:
    web.route("/catalan", [Reply(200, HTML, {"Content-Type": "text/html; charset=utf-8"})])
    web.route("/notes.pdf", [Reply(200, PDF, {"Content-Type": "application/pdf"})])
    web.route("/download", [Reply(200, PDF, {"Content-Type": "application/octet-stream"})])
    web.route("/readme.txt", [Reply(200, b"Plain notes: C(3) = 5.", {"Content-Type": "text/plain"})])
    web.route("/figure.png", [Reply(200, b"\x89PNG\r\n\x1a\n....", {"Content-Type": "image/png"})])
    web.route("/old", [Reply(301, b"", {"Location": "/catalan"})])
    web.route("/slow", [Reply(200, HTML, {"Content-Type": "text/html"}, delay_s=1.5)])
    web.route(
        "/empty", [Reply(200, b"<html><body><script>1</script></body></html>", {"Content-Type": "text/html"})]
    )
    web.route("/big.pdf", [Reply(200, PDF + b"%" * 4000, {"Content-Type": "application/pdf"})])


def reader(tmp_path, **settings) -> PageReader:
    cfg = PageReaderConfig(enabled=True, allow_private_hosts=True, timeout_s=0.5, **settings)
    return PageReader(cfg, cache=PageCache(tmp_path / "pages.sqlite"))


def hit(web: FakeWeb, path: str, snippet: str = SNIPPET) -> Doc:
    return Doc(id=web.url + path, title=path.strip("/"), text=snippet)


def test_reading_pages_and_failures(web: FakeWeb, tmp_path) -> None:
    site(web)
    r = reader(tmp_path, window_chars=80, max_bytes=3000)
    pages = r.read([hit(web, p) for p in ("/catalan", "/notes.pdf", "/download", "/readme.txt", "/old")])
    assert [p.kind for p in pages] == ["html", "pdf", "pdf", "text", "html"]
    assert all(p.ok for p in pages)
    assert "16796" in pages[0].text and "Tower of Hanoi" not in pages[0].text
    assert "252 paths in total" in pages[1].text  # the window around "... 42 of them ..."
    assert pages[3].text == "Plain notes: C(3) = 5."
    assert pages[4].text == pages[0].text  # redirect followed

    failed = r.read([hit(web, p) for p in ("/figure.png", "/missing", "/slow", "/empty", "/big.pdf")])
    assert [p.error for p in failed] == [
        "unsupported content type 'image/png'",
        "HTTP 404 Not Found",
        "no answer within 0.5 s",
        "no text found in the HTML page",
        "the PDF is larger than 3000 bytes",
    ]
    assert [p.record()["status"] for p in failed] == ["error"] * 5
    r.close()


def test_pages_on_private_addresses_are_refused_unless_allowed(web: FakeWeb, tmp_path) -> None:
    site(web)
    strict = PageReader(PageReaderConfig(enabled=True), cache=None)
    [page] = strict.read([hit(web, "/catalan")])
    assert page.error is not None and "127.0.0.1 is a private or local address" in page.error
    assert not web.requests
    [page] = strict.read([Doc(id="file:///etc/passwd", title="", text="")])
    assert page.error == "only http and https pages are read, not file"
    strict.close()
    for host in ("10.1.2.3", "169.254.169.254", "::1", "localhost", "[fd00::1]"):
        assert _blocked_address(host), host
    assert not _blocked_address("93.184.216.34")


def test_pages_are_cached_by_url_failures_for_a_while(web: FakeWeb, tmp_path) -> None:
    site(web)
    r = reader(tmp_path)
    first = r.read_one(hit(web, "/catalan"))
    again = reader(tmp_path).read_one(hit(web, "/catalan"))  # another reader, the same cache file
    assert again.cached and not first.cached and again.text == first.text
    assert len(web.hits("/catalan")) == 1

    assert r.read_one(hit(web, "/missing")).error == "HTTP 404 Not Found"
    assert r.read_one(hit(web, "/missing")).error == "HTTP 404 Not Found"
    assert len(web.hits("/missing")) == 1  # a dead page is not fetched again at once
    no_memory = reader(tmp_path, failure_ttl_s=0)
    no_memory.read_one(hit(web, "/missing"))
    assert len(web.hits("/missing")) == 2
    assert len(PageCache(tmp_path / "pages.sqlite")) == 2


SERP = {
    "organic": [
        {"title": "Catalan numbers | Maths Notes", "link": "{url}/catalan", "snippet": SNIPPET},
        {
            "title": "Gone",
            "link": "{url}/missing",
            "snippet": "A page about Catalan numbers that was removed.",
        },
        {
            "title": "Lecture 7",
            "link": "{url}/notes.pdf",
            "snippet": "For n = 5 there are 252 paths in total and C(5) = 42 of them stay below the diagonal.",
        },
    ]
}


def test_search_tool_reads_the_pages_behind_web_hits(web: FakeWeb, tmp_path) -> None:
    site(web)
    serp = {
        "organic": [{k: v.replace("{url}", web.url) for k, v in item.items()} for item in SERP["organic"]]
    }
    web.route("/search", [json_reply(serp)])
    engine = SerperSearch(SerperConfig(url=web.url + "/search"), keys=["k"])
    tool = SearchTool(
        engine, top_k=3, max_doc_chars=300, pages_format=True, reader=reader(tmp_path, window_chars=50)
    )
    result = tool.call("catalan numbers first values")
    lines = result.text.splitlines()
    assert len(lines) == 3 and result.status == "ok"
    assert lines[0].startswith("Page 1: ") and "1430, 4862" in lines[0] and "Tower of Hanoi" not in lines[0]
    assert (
        lines[1]
        == "Page 2: [could not read the page: HTTP 404 Not Found] A page about Catalan numbers that was removed."
    )
    assert lines[2].startswith("Page 3: ") and "252 paths" in lines[2]
    assert [p["status"] for p in result.meta["pages"]] == ["ok", "error", "ok"]
    assert result.meta["pages"][1] == {
        "url": web.url + "/missing",
        "status": "error",
        "error": "HTTP 404 Not Found",
    }
    tool.close()
