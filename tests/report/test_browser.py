"""The HTML report in headless Chromium: loads without console errors, shows every part, filters.

Driven over the DevTools protocol on a pipe (tests/report/cdp.py). With ETAGENT_WITH_BROWSER=1
(set by ./dev.sh test, which CI runs; scripts/bootstrap.sh then installs Chromium) these tests must
run, and fail when no Chromium is there; without it they skip when Chromium is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from etagent.report import ReportConfig, load_runs, write_report
from etagent.report.html import viewer_data
from tests.report.cdp import Browser, find_chromium

CHROMIUM = find_chromium()
#: the installer was asked for the browser (./dev.sh test, CI): a missing one is a failure, not a skip
BROWSER_REQUIRED = os.environ.get("ETAGENT_WITH_BROWSER") == "1"
pytestmark = pytest.mark.skipif(
    CHROMIUM is None and not BROWSER_REQUIRED,
    reason="Chromium is not installed (apt-get install chromium, or set ETAGENT_CHROMIUM); CI installs it",
)
PAGE_SIZE = 5

STATE = """(() => {
  const items = [...document.querySelectorAll('#traj-list li.traj')];
  return {
    items: items.length,
    runs: items.map(li => li.dataset.run), datasets: items.map(li => li.dataset.dataset),
    calls: items.map(li => li.dataset.calls), outcomes: items.map(li => li.dataset.outcome),
    count: document.getElementById('traj-count').textContent,
    more: !document.getElementById('traj-more').hidden,
    hash: location.hash,
  };
})()"""


@pytest.fixture(scope="module")
def report_page(two_runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("page") / "report.html"
    write_report(list(two_runs), out, ReportConfig(page_size=PAGE_SIZE))
    return out


@pytest.fixture(scope="module")
def expected(two_runs) -> list[dict]:
    return viewer_data(load_runs(list(two_runs)))


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail(
            "ETAGENT_WITH_BROWSER=1 but no Chromium was found: scripts/bootstrap.sh could not install it "
            "(it installs only as root with apt-get). Install it (apt-get install chromium) or point "
            "ETAGENT_CHROMIUM at a Chromium binary.",
            pytrace=False,
        )
    with Browser(CHROMIUM) as b:
        yield b


def _go(page, fragment: str) -> dict:
    """Set the URL hash (the viewer's filters) and return the list once the viewer has reacted."""
    return page.evaluate(
        "new Promise(done => { window.addEventListener('hashchange', () => done("
        + STATE
        + "), {once: true});"
        f" location.hash = {json.dumps(fragment)}; }})"
    )


def test_page_loads_without_errors_and_shows_every_part(browser, report_page, expected):
    page = browser.open(report_page.as_uri())
    assert page.errors() == []
    parts = page.evaluate(
        """({
      radarAreas: document.querySelectorAll('svg#radar polygon.area').length,
      radarAxes: document.querySelectorAll('svg#radar line.spoke').length,
      correctnessBars: document.querySelectorAll('svg.dataset-bars[data-metric="correctness"] rect.bar').length,
      barCharts: document.querySelectorAll('svg.dataset-bars').length,
      callCharts: document.querySelectorAll('svg.calls-correctness polyline.line').length,
      lengthCharts: document.querySelectorAll('svg.lengths').length,
      filters: [...document.querySelectorAll('#filters select, #filters input')].map(e => e.id),
      searchBlocks: document.querySelectorAll('#traj-list .blk-search').length,
      failedResults: document.querySelectorAll('#traj-list .blk-result.failed').length,
      answers: document.querySelectorAll('#traj-list .blk-answer').length,
      radarVisible: document.getElementById('radar').getBoundingClientRect().width > 100,
    })"""
    )
    assert parts["radarAreas"] == 2 and parts["radarAxes"] == 5 and parts["radarVisible"]
    assert parts["correctnessBars"] == 4  # 2 runs x 2 data sets
    assert parts["barCharts"] >= 5 and parts["lengthCharts"] == 2 and parts["callCharts"] >= 2
    assert parts["filters"] == ["f-run", "f-dataset", "f-correct", "f-calls", "f-change", "f-text"]
    # the first page: a-1 (1 search each run), a-2 x2, a-3 -> searches and answers highlighted
    assert parts["searchBlocks"] == 2 and parts["answers"] == PAGE_SIZE
    state = page.evaluate(STATE)
    assert state["items"] == PAGE_SIZE and state["more"]
    assert state["count"] == f"showing {PAGE_SIZE} of {len(expected)} matching ({len(expected)} embedded)"
    page.evaluate("document.getElementById('traj-more').click()")
    assert page.evaluate(STATE)["items"] == min(2 * PAGE_SIZE, len(expected))
    assert page.errors() == []


@pytest.mark.parametrize(
    ("fragment", "keep"),
    [
        ("dataset=beta", lambda i: i["d"] == "beta"),
        ("correct=wrong", lambda i: i["o"] == "wrong"),
        ("correct=partial&run=0", lambda i: i["o"] == "partial" and i["r"] == 0),
        ("calls=2", lambda i: i["t"] == 2),
        ("change=improved", lambda i: i["chg"] == "improved"),
        ("change=regressed&dataset=beta", lambda i: i["chg"] == "regressed" and i["d"] == "beta"),
        ("text=Marlowe", lambda i: False),  # the text filter reads the id and question, not answers
        ("text=b-3", lambda i: i["q"] == "b-3"),
        ("text=__PWNED", lambda i: "__pwned" in i["question"].lower()),
    ],
)
def test_filters_from_the_url_hash(browser, report_page, expected, fragment, keep):
    page = browser.open(report_page.as_uri() + "#dataset=alpha")
    assert page.evaluate(STATE)["datasets"] == ["alpha"] * PAGE_SIZE  # the hash applies on load too
    want = [i for i in expected if keep(i)]
    state = _go(page, fragment)
    assert state["count"].startswith(f"showing {min(PAGE_SIZE, len(want))} of {len(want)} matching")
    shown = want[:PAGE_SIZE]
    assert state["runs"] == [str(i["r"]) for i in shown]
    assert state["datasets"] == [i["d"] for i in shown]
    assert state["calls"] == [str(i["t"]) for i in shown]
    assert state["outcomes"] == [i["o"] for i in shown]
    assert page.errors() == []
    assert page.evaluate("window.__pwned === undefined")


def test_controls_filter_and_update_the_hash(browser, report_page, expected):
    page = browser.open(report_page.as_uri())
    state = page.evaluate(
        """(() => { const s = document.getElementById('f-calls'); s.value = '0';
                   s.dispatchEvent(new Event('change')); return """
        + STATE
        + "; })()"
    )
    want = [i for i in expected if i["t"] == 0]
    assert state["items"] == min(PAGE_SIZE, len(want)) and set(state["calls"]) == {"0"}
    assert state["hash"] == "#calls=0"
    page.evaluate("document.querySelector('#traj-list details').open = true")
    visible = page.evaluate(
        "document.querySelector('#traj-list .blk-answer').getBoundingClientRect().height > 0"
    )
    assert visible
    assert page.errors() == []


def test_opened_entry_shows_its_question_once(browser, report_page):
    page = browser.open(report_page.as_uri() + "#text=a-2")
    counts = page.evaluate(
        """(() => [...document.querySelectorAll('#traj-list li.traj')].map(li => {
             li.querySelector('details').open = true;
             return li.textContent.split('Question a-2?').length - 1; }))()"""
    )
    assert counts == [1, 1]  # a-2 of both runs; the question in the summary line only
    assert page.errors() == []


def test_training_sections_load_without_errors(browser, tmp_path):
    from tests.report.training_fixtures import write_pipeline_run

    run = write_pipeline_run(tmp_path)
    html, _ = write_report([run])
    page = browser.open(html.as_uri())
    parts = page.evaluate(
        """({
      rlCharts: document.querySelectorAll('#rl svg.rl-curve').length,
      paretoDots: document.querySelectorAll('#pareto svg.pareto-means circle.dot').length,
      visible: document.querySelector('#pareto svg.pareto-means').getBoundingClientRect().width > 100,
      items: document.querySelectorAll('#traj-list li.traj').length,
    })"""
    )
    assert parts == {"rlCharts": 5, "paretoDots": 4, "visible": True, "items": 3}
    assert page.errors() == []
