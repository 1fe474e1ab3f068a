"""Markdown and HTML reports from scored runs: numbers, deltas, structure, self-containment, caps."""

from __future__ import annotations

import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from etagent.io import DataError
from etagent.report import load_run, load_runs, render_html, render_markdown, write_report
from etagent.report.format import fmt_delta, fmt_value
from etagent.report.html import json_for_script, outcome, viewer_data
from etagent.report.loader import natural_key, run_labels
from tests.report.fixtures import HOSTILE, make_traj, write_run


class _Page(HTMLParser):
    """Collects tags with their attributes and the text of <script> elements."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)

    def find(self, tag: str, **attrs: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in attrs.items())]

    def with_class(self, tag: str, cls: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and cls in (a.get("class") or "").split()]


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def test_markdown_has_one_column_per_run_and_deltas(two_runs):
    md = render_markdown(load_runs(list(two_runs)))
    assert "| metric | before | after | Δ after − before |" in md
    assert md.index("## alpha") < md.index("## beta")
    alpha = md[md.index("## alpha") : md.index("## beta")]
    assert "| correctness | 50.0 | 75.0 | +25.0 |" in alpha
    # beta: b-2 goes from F1 0.8 ("New York" for "New York City") to 0 -> (1 + 0.8 + 0)/3 = 60.0
    beta = md[md.index("## beta") :]
    assert "| correctness | 60.0 | 33.3 | -26.7 |" in beta
    assert "| successful tool results | 66.7 | 66.7 | ±0 |" in beta  # one failed of three results
    assert "model-a" in md and "model-b" in md
    # without a judge or known minima, those rows are left out rather than shown empty
    assert "conciseness (judge)" not in md and "at minimal tool calls" not in md


def test_markdown_single_run_has_no_delta_column(two_runs):
    md = render_markdown(load_runs([two_runs[0]]))
    assert "Δ" not in md and "| metric | before |" in md


def test_value_and_delta_formatting():
    assert fmt_value(0.4583, "pct") == "45.8" and fmt_value(None, "pct") == "–"
    assert fmt_value(1.375, "count") == "1.38" and fmt_value(120.6, "tokens") == "121"
    assert fmt_delta(0.75, 0.5, "pct") == "+25.0" and fmt_delta(0.5, 0.75, "pct") == "-25.0"
    assert fmt_delta(3, 3, "count") == "±0" and fmt_delta(None, 1, "pct") == "–"


def test_html_is_self_contained_and_has_every_section(two_runs):
    runs = load_runs(list(two_runs))
    html = render_html(runs)
    page = _page(html)
    # no network: no external scripts, styles, images or links
    assert not page.find("link")
    for tag, attrs in page.tags:
        for key in ("src", "href"):
            value = attrs.get(key) or ""
            assert not re.match(r"(https?:)?//", value), (tag, attrs)
    assert "https://" not in html and "http://" not in html
    assert len(page.find("svg", id="radar")) == 1
    bars = page.with_class("svg", "dataset-bars")
    assert {b["data-metric"] for b in bars} >= {"correctness", "effi", "mean_tool_calls", "reasoning_length"}
    assert len(page.with_class("svg", "calls-correctness")) == 2  # one per data set
    assert len(page.with_class("svg", "lengths")) == 2
    for control in ("f-run", "f-dataset", "f-correct", "f-calls", "f-change", "f-text"):
        assert page.find("select", id=control) or page.find("input", id=control), control
    assert page.find("ol", id="traj-list")
    # tables: the overall comparison colours the deltas by direction
    assert '<td class="better">+25.0</td>' in html and '<td class="worse">-26.7</td>' in html


def test_embedded_json_cannot_break_out_of_its_script_tag(two_runs):
    html = render_html(load_runs(list(two_runs)))
    page = _page(html)
    data_scripts = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"]
    assert len(data_scripts) == 1 and len(page.scripts) == 2  # the data and the viewer, nothing injected
    assert html.count("</script") == 2
    data = json.loads(data_scripts[0])
    assert HOSTILE in {t["question"] for t in data["trajectories"]}
    assert json.loads(json_for_script({"x": "</script><!--"})) == {"x": "</script><!--"}
    assert "<" not in json_for_script({"x": "</script><!--"})


def test_viewer_data_pairs_runs_and_marks_changes(two_runs):
    runs = load_runs(list(two_runs))
    items = viewer_data(runs)
    assert len(items) == 14  # 7 questions x 2 runs
    keys = [(i["d"], i["q"], i["r"]) for i in items]
    assert keys[:4] == [("alpha", "a-1", 0), ("alpha", "a-1", 1), ("alpha", "a-2", 0), ("alpha", "a-2", 1)]
    assert [k[1] for k in keys[:8:2]] == ["a-1", "a-2", "a-3", "a-10"]  # natural order
    by_key = {(i["q"], i["r"]): i for i in items}
    assert by_key[("a-2", 1)]["chg"] == "improved" and by_key[("b-2", 0)]["chg"] == "regressed"
    assert by_key[("a-1", 0)]["chg"] == "unchanged"
    assert by_key[("b-2", 0)]["o"] == "partial" and by_key[("a-3", 0)]["o"] == "wrong"
    b1 = by_key[("b-1", 0)]
    results = [b for b in b1["blocks"] if b[0] == "result"]
    assert [r[2] for r in results] == ["error", "ok"]
    assert [b[0] for b in b1["blocks"]] == [
        "think",
        "python",
        "result",
        "think",
        "python",
        "result",
        "think",
        "answer",
    ]


def test_viewer_marks_a_result_the_model_wrote_and_cuts_long_blocks(tmp_path):
    fake = make_traj("q-1", "x", "x")
    fake.segments[-1].text = "<think>t</think><result>I made this up</result><answer>\\boxed{x}</answer>"
    long = make_traj("q-2", "y", "y", [("search", "q", "z" * 5000, "ok")])
    # the scoring counts a result mentioning "error" as failed (docs/method.md 7.5); the viewer says so
    marker = make_traj("q-3", "y", "y", [("search", "q", "(1) Error correction codes ...", "ok")])
    run = write_run(tmp_path / "r", {"d": [fake, long, marker]})
    items = viewer_data(load_runs([run]), max_block_chars=100)
    kinds = [b[0] for b in items[0]["blocks"]]
    assert "fake-result" in kinds and "result" not in kinds
    result = next(b for b in items[1]["blocks"] if b[0] == "result")
    assert result[1].startswith("z" * 100) and "4900 more characters" in result[1] and result[2] == "ok"
    assert next(b for b in items[2]["blocks"] if b[0] == "result")[2] == "failure text"


def test_trajectories_are_capped_per_run_and_data_set(two_runs, tmp_path):
    runs = load_runs(list(two_runs), max_trajectories=2)
    assert [t.question_id for t in runs[0].trajectories["alpha"]] == ["a-1", "a-2"]
    assert all(len(ts) == 2 for r in runs for ts in r.trajectories.values())
    assert len(runs[0].scores) == 7  # charts and tables still use every score
    html_path, md_path = write_report(list(two_runs), tmp_path / "out" / "cmp.html", _report_cfg(2))
    assert md_path == tmp_path / "out" / "cmp.md" and md_path.exists()
    data = json.loads(_page(html_path.read_text()).scripts[0][1])
    assert len(data["trajectories"]) == 8


def _report_cfg(max_trajectories: int):
    from etagent.report import ReportConfig

    return ReportConfig(max_trajectories=max_trajectories)


def test_write_report_defaults_to_the_last_run_directory(two_runs, tmp_path):
    before, after = (shutil.copytree(p, tmp_path / p.name) for p in two_runs)
    html_path, md_path = write_report([before, after])
    assert html_path == after / "report.html" and md_path == after / "report.md"
    assert "before" in html_path.read_text() and "Δ after − before" in md_path.read_text()


def test_missing_files_name_the_file_and_the_fix(two_runs, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_run(tmp_path / "nope")
    run = shutil.copytree(two_runs[0], tmp_path / "run")
    (run / "metrics.json").rename(run / "metrics.bak")
    with pytest.raises(DataError, match=r"no metrics\.json; run `etagent score .*run` first"):
        load_run(run)
    (run / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match=r"metrics\.json: malformed JSON"):
        load_run(run)
    (run / "metrics.json").write_text('{"datasets": {}}')
    with pytest.raises(DataError, match="'overall' is missing"):
        load_run(run)
    (run / "metrics.bak").rename(run / "metrics.json")
    (run / "scores.jsonl").unlink()
    with pytest.raises(DataError, match=r"no scores\.jsonl"):
        load_run(run)


def test_trajectories_newer_than_the_scores_are_detected(two_runs, tmp_path):
    run = shutil.copytree(two_runs[0], tmp_path / "run")
    path = run / "datasets" / "alpha" / "trajectories.jsonl"
    path.write_text(path.read_text() + make_traj("a-0", "x", "x").model_dump_json() + "\n")
    with pytest.raises(DataError, match=r"no score for alpha/a-0 .*etagent score"):
        load_run(run)
    (run / "datasets" / "beta" / "trajectories.jsonl").unlink()
    with pytest.raises(
        DataError, match=r"beta.*trajectories\.jsonl: file does not exist.*lists data set 'beta'"
    ):
        load_run(run, max_trajectories=0)


def test_helpers():
    assert sorted(["q-10", "q-9", "q-1"], key=natural_key) == ["q-1", "q-9", "q-10"]
    assert outcome(1.0) == "correct" and outcome(0.0) == "wrong" and outcome(0.4) == "partial"
    assert run_labels([Path("a/run"), Path("b/run"), Path("c/other")]) == ["a/run", "b/run", "other"]
    assert run_labels([Path("x/run"), Path("x/run")]) == ["x/run", "x/run (2)"]
