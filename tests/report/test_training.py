"""The report's training part (RL curves, Pareto selection), pipeline directories, overlapping runs
and conciseness without tool calls."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from etagent.io import DataError, atomic_write_jsonl
from etagent.report import load_runs, render_html, render_markdown, write_report
from etagent.report.build import build_report
from etagent.report.charts import spread_overlaps
from etagent.report.format import terminal_table
from etagent.report.loader import load_inputs, load_pareto_run, load_rl_run, run_kind
from etagent.report.training import objectives, stage_rows
from tests.report.fixtures import make_traj, write_run
from tests.report.training_fixtures import write_pareto_run, write_pipeline_run, write_rl_run


def _svg(html: str, cls: str, attr: str = "") -> str:
    """The first <svg> whose class list holds ``cls`` (and whose tag holds ``attr``)."""
    for m in re.finditer(r"<svg [^>]*>.*?</svg>", html, re.S):
        tag = m.group(0)[: m.group(0).index(">")]
        if cls in re.search(r'class="([^"]*)"', tag).group(1).split() and attr in tag:
            return m.group(0)
    raise AssertionError(f"no svg .{cls} {attr}")


def _circles(svg: str) -> list[tuple[float, float, str]]:
    return [
        (float(x), float(y), title)
        for x, y, title in re.findall(
            r'<circle[^>]*cx="([-\d.]+)" cy="([-\d.]+)"[^>]*><title>(.*?)</title>', svg, re.S
        )
    ]


@pytest.fixture()
def rl_dir(tmp_path) -> Path:
    return write_rl_run(tmp_path / "rl-a")


@pytest.fixture()
def pareto_dir(tmp_path) -> Path:
    return write_pareto_run(tmp_path / "pareto-a")


def test_rl_markdown_table_has_first_and_last_values(rl_dir):
    md = render_markdown([], rl=[load_rl_run(rl_dir)])
    assert "## RL training" in md and "### rl-a" in md and "3 steps" in md
    assert "| reward | 0.1 (step 1) | 0.7 (step 3) | +0.6 |" in md
    assert "| correctness | 20.0 (step 1) | 60.0 (step 3) | +40 |" in md
    assert "| tool_calls | 1.5 (step 1) | 1 (step 3) | -0.5 |" in md
    # entropy is missing at step 3: its last value is step 2's; branching_rate was never logged
    assert "| entropy | 0.9 (step 1) | 0.8 (step 2) | -0.1 |" in md
    assert "branching_rate" not in md


def test_rl_curves_in_html_one_point_per_step(rl_dir, tmp_path):
    other = write_rl_run(tmp_path / "rl-b", [{"step": 1, "reward": 0.3}, {"step": 2, "reward": 0.3}])
    html = render_html([], rl=[load_rl_run(rl_dir), load_rl_run(other)])
    assert 'id="rl"' in html and "http://" not in html and "https://" not in html
    reward = _svg(html, "rl-curve", 'data-metric="reward"')
    points = _circles(reward)
    assert len(points) == 5 and reward.count("<polyline") == 2
    assert any("rl-a · step 3: 0.7" in t for *_, t in points)
    assert any("rl-a · step 2: -0.2" in t for *_, t in points)  # negative rewards are on the axis
    assert all(30 <= y <= 260 - 44 for _, y, _ in points)
    # rl-b logs only the reward: its other curves are absent, rl-a's are there; no branching chart
    assert (
        _circles(_svg(html, "rl-curve", 'data-metric="entropy"'))
        and "rl-b" not in _svg(html, "rl-curve", 'data-metric="entropy"').split("</text>", 1)[1]
    )
    assert 'data-metric="branching_rate"' not in html
    assert 'class="metrics rl-table" data-run="rl-a"' in html


def test_pareto_stage_table_and_objectives(pareto_dir):
    run = load_pareto_run(pareto_dir)
    assert [q.stage for q in run.questions] == [1, 2, None, None, None]
    assert stage_rows(run) == [
        ("stage 1", "1", "50.0", "2.00", "0"),
        ("stage 2", "1", "75.0", "2.00", "1"),
        ("not selected", "3", "33.3", "0.33", "–"),
    ]
    objs, complete = objectives(run)
    assert complete and objs["q-1"] == (1.0, 0.25) and objs["q-3"] == (0.0, 0.0) and objs["q-4"] == (0.0, 0.0)
    md = render_markdown([], pareto=[run])
    assert "## Pareto selection" in md and "5 questions, 2 selected" in md
    assert "| stage 1 | 1 | 50.0 | 2.00 | 0 |" in md and "| not selected | 3 | 33.3 | 0.33 | – |" in md


def test_pareto_scatter_marks_questions_at_the_same_place(pareto_dir):
    html = render_html([], pareto=[load_pareto_run(pareto_dir)])
    means = _svg(html, "pareto-means")
    dots = re.findall(
        r'<circle class="pt dot"[^>]*data-count="(\d+)" data-group="([^"]*)"><title>(.*?)</title>',
        means,
        re.S,
    )
    # q-3 and q-5 coincide: one dot that counts 2 and lists both; 4 dots for 5 questions
    assert sorted(int(c) for c, _, _ in dots) == [1, 1, 1, 2]
    pair = next(t for c, _, t in dots if c == "2")
    assert "q-3" in pair and "q-5" in pair and "×2" in means
    groups = {g for _, g, _ in dots}
    assert groups == {"stage 1", "stage 2", "not selected"}
    # objectives: q-3, q-4, q-5 all at (0, 0) and q-2 at (0, 0.0625): every question is drawn
    objectives_svg = _svg(html, "pareto-objectives")
    counts = [int(c) for c in re.findall(r'data-count="(\d+)"', objectives_svg)]
    assert sum(counts) == 5 and 3 in counts


def test_pareto_objectives_of_unselected_left_out_when_not_reproducible(pareto_dir):
    path = pareto_dir / "stages" / "stage1.jsonl"
    row = json.loads(path.read_text())
    row["meta"]["pareto"]["tool_objective"] = 0.5  # a std / ddof the default does not give
    atomic_write_jsonl(path, [row])
    objs, complete = objectives(load_pareto_run(pareto_dir))
    assert not complete and set(objs) == {"q-1", "q-2"} and objs["q-1"] == (0.5, 0.25)


def test_pareto_run_errors_name_the_file(pareto_dir):
    (pareto_dir / "stages" / "stages.json").unlink()
    with pytest.raises(DataError, match=r"no stages/stages\.json; the Pareto stage has not finished"):
        load_pareto_run(pareto_dir)


def test_rl_log_errors_and_sft_logs_are_not_rl(tmp_path):
    bad = tmp_path / "rl"
    atomic_write_jsonl(bad / "train_log.jsonl", [{"reward": 1.0}])
    with pytest.raises(DataError, match=r"train_log\.jsonl:1: field 'step' is missing"):
        load_rl_run(bad)
    sft = tmp_path / "sft"
    atomic_write_jsonl(sft / "train_log.jsonl", [{"step": 1, "loss": 2.0}])
    with pytest.raises(DataError, match=r"no metrics\.json.*RL runs with train_log\.jsonl"):
        run_kind(sft)


def test_pipeline_directory_brings_its_stages(tmp_path):
    run = write_pipeline_run(tmp_path)
    inputs = load_inputs([run])
    assert [r.label for r in inputs.evals] == ["base", "sft", "rl"]  # pipeline.json order, base first
    assert [r.label for r in inputs.rl] == ["06-rl-1"] and [p.label for p in inputs.pareto] == ["05-pareto-1"]
    html_path, md_path, _ = build_report([run])
    assert html_path == run / "report.html"
    md = md_path.read_text(encoding="utf-8")
    assert "| metric | base | sft | rl |" in md
    assert "### 06-rl-1" in md and "| reward | 0.1 (step 1) | 0.7 (step 3) | +0.6 |" in md
    assert "### 05-pareto-1" in md and "| stage 2 | 1 | 75.0 | 2.00 | 1 |" in md
    html = html_path.read_text(encoding="utf-8")
    assert all(f'id="{s}"' in html for s in ("overview", "trajectories", "rl", "pareto"))
    assert '<a href="#rl">' in html and '<a href="#pareto">' in html


def test_pipeline_calls_the_report_with_its_training_stages():
    import inspect

    from etagent import pipeline

    source = inspect.getsource(pipeline.Pipeline.run)
    assert "pipeline_stage_dirs(self.run_dir)" in source and "*rl_dirs, *pareto_dirs" in source


def test_unfinished_pipeline_is_a_clear_error(tmp_path):
    (tmp_path / "p" / "07-eval").mkdir(parents=True)
    with pytest.raises(DataError, match="pipeline run without a finished eval, RL or Pareto stage"):
        write_report([tmp_path / "p"])


# -- overlapping runs ---------------------------------------------------------------------------


def test_spread_overlaps_sets_equal_points_apart():
    assert spread_overlaps([(1.0, 2.0), (1.0, 2.0), (5.0, 2.0), None], 6) == [-3.0, 3.0, 0.0, 0.0]


def test_equal_runs_are_both_visible_in_radar_and_calls_chart(tmp_path):
    search = ("search", "Zorvik", "(1) Zorvik was born in Quenmara.", "ok")
    trajs = [make_traj("a-1", "Quenmara", "Quenmara", [search]), make_traj("a-2", "7", "8", [])]
    one = write_run(tmp_path / "one", {"alpha": trajs})
    two = write_run(tmp_path / "two", {"alpha": trajs})
    html = render_html(load_runs([one, two]))
    radar = _svg(html, "radar")
    pts = _circles(radar)
    assert len(pts) == 10
    # every (run, axis) point has its own position, and the tooltip says which run it equals
    assert len({(round(x, 1), round(y, 1)) for x, y, _ in pts}) == 10
    assert sum("same as two" in t for *_, t in pts) == 5 and sum("same as one" in t for *_, t in pts) == 5
    dashes = re.findall(r'<polygon class="area"[^>]*?(stroke-dasharray="[^"]*")?/>', radar)
    assert len(dashes) == 2 and dashes[0] != dashes[1]  # solid, then dashed: both outlines show
    calls = _svg(html, "calls-correctness")
    cpts = _circles(calls)
    assert len(cpts) == 4 and len({(x, y) for x, y, _ in cpts}) == 4


# -- conciseness without tool calls -------------------------------------------------------------


def _with_conciseness(run: Path, value: float) -> Path:
    """Pretend a judge rated conciseness (metrics.json 9.4): every trajectory concise = ``value``."""
    path = run / "metrics.json"
    metrics = json.loads(path.read_text())
    for table in metrics["datasets"].values():
        table["conciseness"] = value
    metrics["overall"]["conciseness"] = value
    path.write_text(json.dumps(metrics))
    return run


def test_conciseness_hidden_for_a_run_without_tool_calls(tmp_path):
    search = ("search", "Zorvik", "(1) Zorvik was born in Quenmara.", "ok")
    base = _with_conciseness(
        write_run(tmp_path / "base", {"alpha": [make_traj("a-1", "Quenmara", "Lyon")]}), 1.0
    )
    sft = _with_conciseness(
        write_run(tmp_path / "sft", {"alpha": [make_traj("a-1", "Quenmara", "Quenmara", [search, search])]}),
        0.5,
    )
    runs = load_runs([base, sft])
    md = render_markdown(runs)
    assert "| Conciseness | – | 50.0 | – |" in md  # not "100.0" for the base model
    assert "| conciseness (judge) | – | 50.0 | – |" in md
    assert "made no tool call" in md
    html = render_html(runs)
    radar = _svg(html, "radar")
    assert "base · Conciseness: n/a" in radar and "sft · Conciseness: 50.0" in radar
    assert "made no tool call" in html
    table = terminal_table(
        "t", {"base": runs[0].dataset_metrics("alpha"), "sft": runs[1].dataset_metrics("alpha")}
    )
    row = next(i for i, c in enumerate(table.columns[0]._cells) if c == "conciseness")
    assert table.columns[1]._cells[row] == "–" and table.columns[2]._cells[row] == "50.0"


# -- the viewer ---------------------------------------------------------------------------------


def test_opened_entry_does_not_repeat_the_question():
    from etagent.report.assets import JS

    body = JS[JS.index("function body(t)") : JS.index("function item(t)")]
    item = JS[JS.index("function item(t)") : JS.index("function render()")]
    # the summary line shows the question once; the opened body lists gold, prediction, ... only
    assert "t.question" not in body and item.count("t.question") == 1
