"""The search-result summariser: prompt pieces, the reference's reasoning truncation, the marker,
fallbacks, batching, its record in the trajectory, and one run with the embedded model."""

from __future__ import annotations

import threading

import pytest

from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.records import Question
from etagent.tools.search import SearchTool
from etagent.tools.search.config import SerperConfig, SummariserConfig
from etagent.tools.search.corpus import Doc
from etagent.tools.search.pages import Page
from etagent.tools.search.summariser import (
    NO_INFORMATION,
    Summariser,
    after_marker,
    pages_block,
    previous_reasoning,
    truncate_reasoning,
)
from etagent.tools.search.web import SerperSearch
from tests.loop.test_agent_loop import ScriptedGenerator
from tests.tools.search.conftest import FakeWeb, json_reply
from tests.tools.search.scripted import SummaryModel

TOOLS = ("search", "python")

LONG = (
    "<think>Plan: find the 10th Catalan number.</think>\n"  # 1
    "<search>Catalan numbers list</search>"  # 2
    "<result>\nPage 1: 1, 1, 2, 5, 14, 42\n</result>\n"  # 3 (a result after a search: kept)
    "<think>I could compute it instead.</think>\n"  # 4
    "<python>from math import comb\nprint(comb(20, 10) // 11)</python>"  # 5
    "<result>\n16796\n</result>\n"  # 6
    "<think>Check with a second source.</think>\n"  # 7
    "<python>print(16796)</python>"  # 8
    "<result>\n16796\n</result>\n"  # 9
    "<think>Search once more to be sure.</think>\n"  # 10
    "<search>10th Catalan number</search>"  # the current query: not part of the previous reasoning
)


def test_previous_reasoning_is_truncated_as_the_reference_does() -> None:
    text = previous_reasoning(LONG, TOOLS)
    assert text.split("\n\n") == [
        "Step 1: <think>Plan: find the 10th Catalan number.</think>",
        "Step 2: <search>Catalan numbers list</search>",
        "Step 3: <result>\nPage 1: 1, 1, 2, 5, 14, 42\n</result>",
        "...",
        "Step 7: <think>Check with a second source.</think>",
        "Step 8: <python>print(16796)</python>",
        "Step 9: <result>\n16796\n</result>",
        "Step 10: <think>Search once more to be sure.</think>",
    ]
    short = previous_reasoning("<think>First thought.</think>\n<search>q</search>", TOOLS)
    assert short == "Step 1: <think>First thought.</think>"
    assert previous_reasoning("<search>q</search>", TOOLS) == "(none yet)"
    # up to max_steps, nothing is dropped
    five = [("think", f"t{i}") for i in range(5)]
    assert "..." not in truncate_reasoning(five, max_steps=5)
    dropped = truncate_reasoning([("think", f"t{i}") for i in range(8)], max_steps=5, keep_last=2)
    assert dropped.split("\n\n") == ["Step 1: t0", "...", "Step 7: t6", "Step 8: t7"]


def test_the_summary_is_the_text_after_the_last_marker() -> None:
    assert after_marker("Analysis...\n**Final Information**\n\nC(10) = 16796.", "Final Information") == (
        "C(10) = 16796."
    )
    assert after_marker("a\n### Final Information:\n```\nfacts\n```", "Final Information") == "facts"
    assert (
        after_marker("Final Information: old\nmore\n**final information** new", "Final Information") == "new"
    )
    assert after_marker("no marker at all", "Final Information") is None


def test_pages_block_holds_page_text_or_why_not() -> None:
    docs = [Doc("https://a.test/1", "A", "snippet a"), Doc("https://b.test/2", "B", "snippet b")]
    pages = [
        Page("https://a.test/1", "A", "snippet a", text="page text a"),
        Page("https://b.test/2", "B", "snippet b", error="HTTP 404"),
    ]
    block = pages_block(docs, pages, 10_000)
    assert block.startswith("**Web Page 1:**\n{")
    assert '"context": "page text a"' in block and "(the page could not be read: HTTP 404)" in block
    assert '"url": "https://b.test/2"' in block
    assert "context" not in pages_block(docs, None, 10_000)
    assert pages_block(docs, pages, 40).endswith("...") and len(pages_block(docs, pages, 40)) == 43


ANSWER = "The pages agree.\n**Final Information**\nThe 10th Catalan number is C(10) = 16796 (OEIS A000108)."


def test_summarise_with_a_scripted_model() -> None:
    model = SummaryModel(ANSWER)
    summariser = Summariser(model, SummariserConfig(enabled=True, batch_wait_s=0))
    summary = summariser.summarise(
        "What is the 10th Catalan number?", "10th Catalan number", "Step 1: <think>x</think>", "PAGES", "RAW"
    )
    assert summary.text == "The 10th Catalan number is C(10) = 16796 (OEIS A000108)."
    assert summary.status == "ok" and summary.model == "scripted-summariser" and summary.output_tokens > 0
    [prompt] = model.prompts
    for part in (
        "**Question:** What is the 10th Catalan number?",
        "**Previous reasoning steps:**\nStep 1: <think>x</think>",
        "**Current search query:** 10th Catalan number",
        "**Searched web pages:**\nPAGES",
        "**Final Information**",
    ):
        assert part in prompt
    record = summary.record()
    assert set(record) == {"model", "status", "latency_s", "input_chars", "output_tokens"}
    assert record["input_chars"] == len(prompt)


@pytest.mark.parametrize(
    ("option", "expected"),
    [("output", "I could not find it."), ("raw", "RAW RESULTS"), ("none", NO_INFORMATION)],
)
def test_without_a_marker(option: str, expected: str) -> None:
    model = SummaryModel("<think>hmm</think>I could not find it.")
    summary = Summariser(model, SummariserConfig(on_missing_marker=option, batch_wait_s=0)).summarise(
        "q", "q", "", "pages", "RAW RESULTS"
    )
    assert (summary.text, summary.status) == (expected, "no_marker")


def test_a_failing_summariser_gives_the_raw_results(caplog) -> None:
    def broken(_prompt: str) -> str:
        raise ConnectionError("summariser server is down")

    summary = Summariser(SummaryModel(broken), SummariserConfig(batch_wait_s=0)).summarise(
        "q", "q", "", "p", "RAW"
    )
    assert (summary.text, summary.status) == ("RAW", "error")
    assert summary.error == "ConnectionError: summariser server is down" and "raw results" in caplog.text


def test_long_summaries_are_cut() -> None:
    model = SummaryModel("**Final Information**\n" + "word " * 100)
    summary = Summariser(model, SummariserConfig(max_output_chars=20, batch_wait_s=0)).summarise(
        "q", "q", "", "", ""
    )
    assert summary.text == "word word word word..."


def test_concurrent_requests_share_generate_calls_that_never_overlap() -> None:
    model = SummaryModel(
        lambda prompt: "**Final Information** " + prompt.split("**Current search query:** ")[1][:2]
    )
    summariser = Summariser(model, SummariserConfig(batch_wait_s=0.05, max_batch=8))
    results: dict[int, str] = {}

    def ask(i: int) -> None:
        results[i] = summariser.summarise("question", f"q{i}", "", "pages", "raw").text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"q{i}" for i in range(6)}
    assert sum(model.batches) == 6 and len(model.batches) < 6 and not model.overlapped
    summariser.close()
    assert model.closed


def test_the_summariser_model_is_built_from_config(monkeypatch) -> None:
    cfg = SummariserConfig(
        enabled=True,
        backend={"kind": "tests.tools.search.scripted:ScriptedSummariser", "settings": {"text": ANSWER}},
    )
    summariser = Summariser.from_config(cfg)
    assert summariser.summarise("q", "q", "", "p", "raw").text.startswith("The 10th Catalan number")

    openai = SummariserConfig(
        backend={"kind": "openai", "model": "tiny", "openai": {"base_url": "http://127.0.0.1:9/v1"}},
        api_key_env="ETAGENT_TEST_SUMMARISER_KEY",
    )
    with pytest.raises(ValueError, match="ETAGENT_TEST_SUMMARISER_KEY is not set"):
        Summariser.from_config(openai)
    monkeypatch.setenv("ETAGENT_TEST_SUMMARISER_KEY", "sum-secret-1")
    built = Summariser.from_config(openai)
    assert built.generator.api_key == "sum-secret-1"
    assert openai.backend.section("openai").api_key == "EMPTY"  # the config itself never holds it
    built.close()


SERP = {
    "organic": [
        {
            "title": "Catalan number",
            "link": "https://en.wikipedia.org/wiki/Catalan_number",
            "snippet": "1, 2, 5, 14",
        },
        {"title": "OEIS A000108", "link": "https://oeis.org/A000108", "snippet": "C(10) = 16796"},
    ]
}


def test_the_agent_loop_records_the_summariser_call(web: FakeWeb, tokenizer) -> None:
    web.route("/search", [json_reply(SERP)])
    model = SummaryModel(ANSWER)
    tool = SearchTool(
        SerperSearch(SerperConfig(url=web.url + "/search"), keys=["k"]),
        pages_format=True,
        summariser=Summariser(model, SummariserConfig(batch_wait_s=0)),
    )
    question = "What is the 10th Catalan number?"
    script = (
        "<think>I recall the first few only.</think>\n<search>10th Catalan number</search>"
        "<result>\nThe 10th Catalan number is C(10) = 16796 (OEIS A000108).\n</result>"
        "\n<answer>The final answer is \\[ \\boxed{16796} \\]</answer>"
    )
    loop = AgentLoop(
        ScriptedGenerator(tokenizer, {question: script}), {"search": tool}, budget=BudgetConfig()
    )
    [traj] = loop.run([Question(id="c10", question=question, answer="16796", task="math")])
    loop.close()
    assert traj.prediction == "16796" and traj.finish_reason == "answer"
    [call] = traj.tool_calls
    assert call.result == "The 10th Catalan number is C(10) = 16796 (OEIS A000108)."
    record = call.meta["summariser"]
    assert record["model"] == "scripted-summariser" and record["status"] == "ok"
    assert 0 < record["latency_s"] <= call.latency_s
    [prompt] = model.prompts
    assert f"**Question:** {question}" in prompt
    assert "Step 1: <think>I recall the first few only.</think>" in prompt
    assert (
        "**Current search query:** 10th Catalan number" in prompt and '"snippet": "C(10) = 16796"' in prompt
    )
    # the record survives the JSONL round trip; old records without meta still load
    again = type(traj).model_validate_json(traj.model_dump_json())
    assert again.tool_calls[0].meta == call.meta
    old = call.model_dump()
    del old["meta"]
    assert type(call).model_validate(old).meta == {}


@pytest.mark.integration
def test_the_embedded_model_summarises_on_cpu(web: FakeWeb) -> None:
    """The real 135M model as the summariser: it runs, its call is timed, and whatever it writes
    (a small model rarely follows the marker format) reaches the agent as a bounded text."""
    web.route("/search", [json_reply(SERP)])
    cfg = SummariserConfig(
        enabled=True,
        max_new_tokens=48,
        max_output_chars=400,
        backend={"kind": "hf", "model": "embedded", "hf": {"threads": 2}},
    )
    summariser = Summariser.from_config(cfg)
    tool = SearchTool(
        SerperSearch(SerperConfig(url=web.url + "/search"), keys=["k"]),
        pages_format=True,
        summariser=summariser,
    )
    result = tool.call("10th Catalan number")
    tool.close()
    record = result.meta["summariser"]
    assert record["model"] == "hf:embedded" and record["status"] in ("ok", "no_marker")
    assert record["latency_s"] > 0 and 0 < record["output_tokens"] <= 48
    assert result.status == "ok" and 0 < len(result.text) <= 403
