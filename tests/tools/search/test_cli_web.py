"""``etagent eval`` on a maths set with web search, page reading and the summariser, from the shipped
config with overrides only, for each key-free or keyed search engine; no API key reaches any file
of the run, its log or its output."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar

import pytest
from typer.testing import CliRunner

from etagent.cli import app
from tests.tools.search.conftest import FIXTURES, FakeWeb, Reply, json_reply

CONFIG = Path(__file__).resolve().parents[3] / "configs" / "eval_math_web.yaml"
BAD_KEY = "serper-BAD-key-7777-do-not-leak"
GOOD_KEY = "serper-GOOD-key-8888-do-not-leak"
SUMMARY = "The two cities meet 27 miles from A."


def _questions(tmp_path: Path) -> Path:
    rows = [
        {"id": "amc23-0", "question": "Cities A and B are 45 miles apart. Alicia bikes towards B at 18 mph, "
         "Beth towards A at 12 mph. How many miles from A will they meet?", "answer": "27", "task": "math",
         "source": "amc23"},
        {"id": "amc23-x", "question": "What is 3 + 4?", "answer": "7", "task": "math", "source": "amc23"},
    ]  # fmt: skip
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _site(web: FakeWeb) -> list[dict]:
    html = (FIXTURES / "catalan_article.html").read_bytes()
    web.route("/article", [Reply(200, html, {"Content-Type": "text/html; charset=utf-8"})])
    return [
        {
            "title": "Meeting problems",
            "link": web.url + "/article",
            "snippet": "The first Catalan numbers are 1, 1, 2",
        },
        {"title": "Gone", "link": web.url + "/gone", "snippet": "Relative speed: 18 + 12 = 30 mph."},
    ]


class _FakeDDGS:
    """Stands in for ddgs.DDGS inside the CLI run (ddgs cannot be pointed at a local server)."""

    hits: ClassVar[list[dict]] = []

    def __init__(self, **kwargs) -> None:
        pass

    def text(self, query: str, **kwargs) -> list[dict]:
        return [{"title": h["title"], "href": h["link"], "body": h["snippet"]} for h in self.hits]


@pytest.mark.parametrize("engine", ["serper", "searxng", "ddgs"])
def test_eval_maths_with_web_search_and_the_summariser(engine, web: FakeWeb, tmp_path, monkeypatch, caplog):
    hits = _site(web)
    sets = [
        "agent.tools.enabled=[search]",
        "agent.backend.settings.query=relative speed of two cyclists",
        "agent.backend.settings.answer='27'",
        f"agent.tools.search.backend={engine}",
        f"agent.tools.search.cache_path={tmp_path / 'cache' / 'q.sqlite'}",
        f"agent.tools.search.pages.cache_path={tmp_path / 'cache' / 'p.sqlite'}",
        "agent.tools.search.pages.allow_private_hosts=true",
        "agent.tools.search.summariser.backend.kind=tests.tools.search.scripted:ScriptedSummariser",
        f"agent.tools.search.summariser.backend.settings.text=Reading the pages.\n**Final Information**\n{SUMMARY}",
    ]
    if engine == "serper":
        monkeypatch.setenv("SERPER_API_KEY", f"{BAD_KEY},{GOOD_KEY}")

        def serper(request):
            key = request.headers.get("x-api-key")
            if key != GOOD_KEY:  # a service that echoes the rejected key back
                return json_reply({"message": f"Invalid API key: {key}", "statusCode": 403}, status=403)
            return json_reply({"searchParameters": {"q": request.json["q"]}, "organic": hits})

        web.route("/search", serper)
        sets.append(f"agent.tools.search.serper.url={web.url}/search")
    elif engine == "searxng":
        web.route("/search", [json_reply({"query": "q", "results": [
            {"url": h["link"], "title": h["title"], "content": h["snippet"]} for h in hits]})])  # fmt: skip
        sets.append(f"agent.tools.search.searxng.url={web.url}")
    else:
        import ddgs

        monkeypatch.setattr(_FakeDDGS, "hits", hits)
        monkeypatch.setattr(ddgs, "DDGS", _FakeDDGS)
        sets.append("agent.tools.search.ddgs.rate_limit_per_s=null")

    run_dir = tmp_path / "run"
    caplog.set_level(logging.INFO)
    args = ["eval", "-c", str(CONFIG), "--data", str(_questions(tmp_path)), "--run-dir", str(run_dir),
            "--backend", "tests.tools.search.scripted:SearchThenAnswer"]  # fmt: skip
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)

    [trajectories] = run_dir.glob("datasets/*/trajectories.jsonl")
    rows = [json.loads(line) for line in trajectories.read_text().splitlines()]
    assert [r["prediction"] for r in rows] == ["27", "27"]
    call = rows[0]["tool_calls"][0]
    assert call["tool"] == "search" and call["result"] == SUMMARY
    assert call["meta"]["summariser"]["model"] == "scripted-summariser"
    assert call["meta"]["summariser"]["status"] == "ok" and call["meta"]["summariser"]["latency_s"] > 0
    assert [p["status"] for p in call["meta"]["pages"]] == ["ok", "error"]
    assert call["meta"]["pages"][1]["error"] == "HTTP 404 Not Found"
    assert json.loads((run_dir / "metrics.json").read_text())["overall"]

    if engine == "serper":
        # the bad key was tried first, then the good one; neither is anywhere the run wrote
        sent = [r.headers["x-api-key"] for r in web.hits("/search")]
        assert sent[0] == BAD_KEY and sent[-1] == GOOD_KEY
        written = [p for p in run_dir.rglob("*") if p.is_file()]
        assert {p.name for p in written} >= {"config.yaml", "log.txt", "trajectories.jsonl", "metrics.json"}
        for path in written:
            data = path.read_bytes()
            assert BAD_KEY.encode() not in data and GOOD_KEY.encode() not in data, path
        assert "SERPER_API_KEY" in (run_dir / "config.yaml").read_text()  # the variable's name only
        assert "key 1 of 2" in (run_dir / "log.txt").read_text()
        for text in (result.output, caplog.text):
            assert BAD_KEY not in text and GOOD_KEY not in text
