"""The self-contained HTML report: inline CSS, JS and SVG, data as JSON; no network access.

Sections: run legend; five-dimension radar with the overall table; per-data-set bars and tables;
correctness against the number of tool calls; model-token length distributions; and a trajectory
viewer (filters: run, data set, outcome, tool calls, change between runs, text; also settable
from the URL hash, e.g. ``report.html#dataset=hotpotqa&correct=wrong&calls=2``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from itertools import pairwise
from statistics import mean
from typing import Any

from etagent.protocol import tags
from etagent.records import Trajectory
from etagent.report import charts
from etagent.report.assets import CSS, JS
from etagent.report.charts import RadarAxis, Series
from etagent.report.format import (
    DATASET_METRICS,
    OVERALL_METRICS,
    MetricSpec,
    delta_direction,
    fmt_delta,
    fmt_value,
    has_metric,
    shown_dataset,
    unit_note,
)
from etagent.report.loader import ParetoRun, RLRun, RunResult, natural_key
from etagent.report.markdown import dataset_names, shown_overall_of
from etagent.report.training import pareto_section, rl_section
from etagent.scoring.metrics import result_failed

#: per-data-set bar charts: (metrics.json key, title, kind)
BAR_METRICS: tuple[tuple[str, str, str], ...] = (
    ("correctness", "Correctness", "pct"),
    ("effi", "Efficiency (Effi)", "pct"),
    ("format_valid", "Format valid", "pct"),
    ("mean_tool_calls", "Tool calls per trajectory", "count"),
    ("reasoning_length", "Model tokens per trajectory", "tokens"),
    ("correctness_per_ktoken", "Correct per 1k model tokens", "per_k"),
)
MAX_CALL_BUCKETS = 8
LENGTH_BINS = 10


def outcome(correctness: float) -> str:
    """The viewer's outcome filter: fully correct, wrong, or partially correct (F1 in between)."""
    if correctness >= 1 - 1e-9:
        return "correct"
    return "wrong" if correctness <= 1e-9 else "partial"


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script>: no ``<`` at all, so neither ``</script`` nor ``<!--`` can occur."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def _fmt(kind: str):
    return lambda v: fmt_value(v, kind)  # type: ignore[arg-type]


def _ticks(kind: str):
    return (lambda v: charts.tick_number(100 * v)) if kind == "pct" else charts.tick_number


def _truncate(text: str, max_chars: int) -> str:
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    return text[:max_chars] + f"\n… [{len(text) - max_chars} more characters not embedded]"


def trajectory_blocks(traj: Trajectory, max_chars: int = 2000) -> list[list[str]]:
    """[kind, content, state] per block, in order. Tool segments become ``result`` blocks whose
    state is "ok" or why the result counts as failed; a ``<result>`` the model wrote itself is
    ``fake-result``; an unclosed model block has state "unclosed"."""
    status = {c.segment_index: c.status for c in traj.tool_calls}
    blocks: list[list[str]] = []
    for i, seg in enumerate(traj.segments):
        for b in tags.parse_blocks(seg.text):
            if b.kind == "text" and not b.content.strip():
                continue
            if seg.role == "tool":
                # the scoring's rule: a non-ok status, or an empty result / failure marker in the text
                kind, state = "result", status.get(i, "ok")
                if state == "ok" and result_failed(b.content):
                    state = "failure text"
            else:
                kind, state = (
                    ("fake-result" if b.kind == tags.RESULT else b.kind),
                    ("" if b.closed else "unclosed"),
                )
            blocks.append([kind, _truncate(b.content.strip("\n"), max_chars), state])
    return blocks


def viewer_data(runs: Sequence[RunResult], max_block_chars: int = 2000) -> list[dict[str, Any]]:
    """The embedded trajectories, ordered so that one question's runs sit next to each other."""
    order = {name: i for i, name in enumerate(dataset_names(runs))}
    indexes = [r.score_index() for r in runs]
    items = []
    for ri, run in enumerate(runs):
        for dataset, trajs in run.trajectories.items():
            for t in trajs:
                score = indexes[ri][(dataset, t.question_id, t.sample_index)]
                items.append(
                    {
                        "r": ri, "d": dataset, "q": t.question_id, "s": t.sample_index,
                        "question": t.question.question, "gold": t.question.answers, "pred": score.prediction,
                        "c": score.correctness, "metric": score.correctness_metric, "o": outcome(score.correctness),
                        "t": score.tool_calls, "tok": score.model_tokens, "fin": score.finish_reason,
                        "fmt": score.format_ok, "chg": "",
                        "blocks": trajectory_blocks(t, max_block_chars),
                    }
                )  # fmt: skip
    if len(runs) >= 2:
        # before (first run) -> after (last run), per question and sample
        first = {(i["d"], i["q"], i["s"]): i["c"] for i in items if i["r"] == 0}
        last = {(i["d"], i["q"], i["s"]): i["c"] for i in items if i["r"] == len(runs) - 1}
        for i in items:
            key = (i["d"], i["q"], i["s"])
            if key in first and key in last:
                d = last[key] - first[key]
                i["chg"] = "improved" if d > 1e-9 else ("regressed" if d < -1e-9 else "unchanged")
    items.sort(key=lambda i: (order[i["d"]], natural_key(i["q"]), i["s"], i["r"]))
    return items


# -- tables -------------------------------------------------------------------------------------


def _compare_table(
    runs: Sequence[RunResult], tables: list[dict[str, Any] | None], specs: Sequence[MetricSpec]
) -> str:
    head = "".join(f"<th>{escape(r.label)}</th>" for r in runs)
    head += "".join(f"<th>Δ {escape(r.label)}</th>" for r in runs[1:])
    rows = []
    for spec in specs:
        if not has_metric(spec, tables):
            continue
        values = [None if t is None else t.get(spec.key) for t in tables]
        cells = "".join(f"<td>{fmt_value(v, spec.kind)}</td>" for v in values)
        for v in values[1:]:
            cls = {1: ' class="better"', -1: ' class="worse"'}.get(delta_direction(v, values[0], spec), "")
            cells += f"<td{cls}>{fmt_delta(v, values[0], spec.kind)}</td>"
        rows.append(f'<tr data-metric="{spec.key}"><td>{escape(spec.label)}</td>{cells}</tr>')
    return f'<table class="metrics"><thead><tr><th>metric</th>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


# -- charts -------------------------------------------------------------------------------------


def radar_chart(runs: Sequence[RunResult]) -> str:
    overall = [shown_overall_of(r) for r in runs]
    per_k_peak = max((o.get("correctness_per_ktoken") or 0.0 for o in overall), default=0.0)
    axes = [
        RadarAxis("Correctness P", 1.0, _fmt("pct")),
        RadarAxis("Efficiency Effi", 1.0, _fmt("pct")),
        RadarAxis("Conciseness", 1.0, _fmt("pct")),
        RadarAxis("Successful Execution", 1.0, _fmt("pct")),
        RadarAxis("Reasoning Length", charts.nice_ceil(per_k_peak * 1.05), _fmt("per_k")),
    ]
    keys = ("P", "Effi", "conciseness", "success_exec", "correctness_per_ktoken")
    series = [
        Series(r.label, [o.get(k) for k in keys], charts.color(i))
        for i, (r, o) in enumerate(zip(runs, overall, strict=True))
    ]
    return charts.radar(axes, series, "Five dimensions (rim = scale)")


def dataset_bars(runs: Sequence[RunResult], datasets: list[str]) -> list[str]:
    out = []
    for key, title, kind in BAR_METRICS:
        series = []
        for i, run in enumerate(runs):
            tables = [run.dataset_metrics(d) for d in datasets]
            series.append(
                Series(
                    run.label,
                    [None if t is None else t.get(key) for t in tables],
                    charts.color(i),
                    ["" if t is None else f"n={t.get('n', '?')}" for t in tables],
                )
            )
        if not any(v is not None for s in series for v in s.values):
            continue
        y_max = 1.0 if kind == "pct" else None
        out.append(
            charts.grouped_bars(
                datasets,
                series,
                title,
                _fmt(kind),
                y_max=y_max,
                cls="bars dataset-bars",
                attrs=f'data-metric="{key}"',
                tick_fmt=_ticks(kind),
            )
        )
    return out


def call_buckets(counts: list[int]) -> tuple[list[str], Any]:
    """x labels for tool-call counts and a function mapping a count to its bucket index."""
    top = max(counts, default=0)
    if top < MAX_CALL_BUCKETS:
        return [str(k) for k in range(top + 1)], lambda c: c
    labels = [str(k) for k in range(MAX_CALL_BUCKETS)] + [f"{MAX_CALL_BUCKETS}+"]
    return labels, lambda c: min(c, MAX_CALL_BUCKETS)


def calls_charts(runs: Sequence[RunResult], dataset: str) -> list[str]:
    rows_per_run = [r.dataset_scores(dataset) for r in runs]
    labels, bucket = call_buckets([s.tool_calls for rows in rows_per_run for s in rows])
    correct_series, share_series = [], []
    for i, (run, rows) in enumerate(zip(runs, rows_per_run, strict=True)):
        groups: list[list[float]] = [[] for _ in labels]
        for s in rows:
            groups[bucket(s.tool_calls)].append(s.correctness)
        notes = [f"n={len(g)}" for g in groups]
        correct_series.append(
            Series(run.label, [mean(g) if g else None for g in groups], charts.color(i), notes)
        )
        share_series.append(
            Series(run.label, [len(g) / len(rows) if rows else None for g in groups], charts.color(i), notes)
        )
    return [
        charts.line_chart(
            labels, correct_series, f"{dataset}: correctness by tool calls", _fmt("pct"),
            x_title="tool calls in the trajectory", cls="lines calls-correctness", tick_fmt=_ticks("pct"),
        ),
        charts.grouped_bars(
            labels, share_series, f"{dataset}: share of trajectories by tool calls", _fmt("pct"),
            y_max=None, x_title="tool calls in the trajectory", cls="bars calls-share", tick_fmt=_ticks("pct"),
        ),
    ]  # fmt: skip


def length_chart(runs: Sequence[RunResult], dataset: str) -> str:
    rows_per_run = [r.dataset_scores(dataset) for r in runs]
    peak = max((s.model_tokens for rows in rows_per_run for s in rows), default=0)
    top = charts.nice_ceil(max(peak, 1))
    width = top / LENGTH_BINS
    edges = [charts.tick_number(width * b) for b in range(LENGTH_BINS + 1)]
    labels, ranges = edges[:-1], [f"{lo}–{hi} tokens" for lo, hi in pairwise(edges)]
    series = []
    for i, (run, rows) in enumerate(zip(runs, rows_per_run, strict=True)):
        counts = [0] * LENGTH_BINS
        for s in rows:
            counts[min(int(s.model_tokens / width), LENGTH_BINS - 1)] += 1
        series.append(
            Series(
                run.label,
                [c / len(rows) if rows else None for c in counts],
                charts.color(i),
                [f"n={c}" for c in counts],
            )
        )
    return charts.grouped_bars(
        labels, series, f"{dataset}: model tokens per trajectory", _fmt("pct"),
        x_title=f"model tokens (tool output excluded), bins of {charts.tick_number(width)}", cls="bars lengths",
        tick_fmt=_ticks("pct"), tips=ranges,
    )  # fmt: skip


# -- page ---------------------------------------------------------------------------------------


def _select(name: str, label: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{escape(v)}">{escape(text)}</option>' for v, text in options)
    return f'<label>{escape(label)}<select id="f-{name}">{opts}</select></label>'


def _filters(runs: Sequence[RunResult], items: list[dict[str, Any]]) -> str:
    controls = []
    if len(runs) > 1:
        controls.append(
            _select("run", "run", [("", "all")] + [(str(i), r.label) for i, r in enumerate(runs)])
        )
    datasets = list(dict.fromkeys(i["d"] for i in items))
    controls.append(_select("dataset", "data set", [("", "all")] + [(d, d) for d in datasets]))
    controls.append(
        _select(
            "correct",
            "outcome",
            [("", "all"), ("correct", "correct"), ("partial", "partly correct"), ("wrong", "wrong")],
        )
    )
    calls = sorted({i["t"] for i in items})
    controls.append(_select("calls", "tool calls", [("", "any")] + [(str(c), str(c)) for c in calls]))
    if len(runs) > 1:
        controls.append(
            _select(
                "change", f"{runs[-1].label} vs {runs[0].label}",
                [("", "all"), ("improved", "improved"), ("regressed", "regressed"), ("unchanged", "unchanged")],
            )
        )  # fmt: skip
    controls.append(
        '<label>search<input id="f-text" type="search" placeholder="question id or text"></label>'
    )
    return f'<div class="filters" id="filters">{"".join(controls)}</div>'


def render_html(
    runs: Sequence[RunResult],
    title: str = "etagent evaluation report",
    max_block_chars: int = 2000,
    page_size: int = 50,
    rl: Sequence[RLRun] = (),
    pareto: Sequence[ParetoRun] = (),
) -> str:
    """The whole page as one string. ``runs[0]`` is the baseline the deltas refer to; ``rl`` and
    ``pareto`` add the training sections (RL curves, Pareto selection)."""
    if not (runs or rl or pareto):
        raise ValueError("render_html needs at least one run")
    nav = []
    if runs:
        nav += [("overview", "overview"), ("datasets", "data sets"), ("tool-calls", "tool calls"),
                ("lengths", "lengths"), ("trajectories", "trajectories")]  # fmt: skip
    if rl:
        nav.append(("rl", "RL training"))
    if pareto:
        nav.append(("pareto", "Pareto selection"))
    head = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{escape(title)}</h1>",
        "<nav>" + "".join(f'<a href="#{a}">{escape(text)}</a>' for a, text in nav) + "</nav></header>",
    ]
    training = ([rl_section(rl)] if rl else []) + ([pareto_section(pareto)] if pareto else [])
    if not runs:
        return "\n".join([*head, *training, "</body></html>"]) + "\n"
    return "\n".join([*head, *_eval_parts(runs, max_block_chars, page_size, training)]) + "\n"


def _eval_parts(
    runs: Sequence[RunResult], max_block_chars: int, page_size: int, training: list[str]
) -> list[str]:
    """The eval sections, the training sections, and the viewer's data and script last."""
    datasets = dataset_names(runs)
    items = viewer_data(runs, max_block_chars)
    data = {
        "runs": [
            {"label": r.label, "color": charts.color(i), "model": r.model, "path": str(r.path)}
            for i, r in enumerate(runs)
        ],
        "datasets": datasets,
        "page_size": page_size,
        "trajectories": items,
    }
    legend = charts.legend([r.label for r in runs])
    run_rows = "".join(
        f'<tr><td><span class="swatch" style="background:{charts.color(i)}"></span>{escape(r.label)}</td>'
        f"<td>{escape(r.model or '–')}</td><td>{escape(str(r.path))}</td>"
        f"<td>{escape(str(r.metrics.get('created') or '–'))}</td><td>{escape(str(r.metrics.get('judge') or '–'))}</td></tr>"
        for i, r in enumerate(runs)
    )
    parts = [
        '<table class="runs"><thead><tr><th>run</th><th>model</th><th>directory</th><th>scored</th><th>judge</th></tr></thead>'
        f"<tbody>{run_rows}</tbody></table>",
        f'<p class="note">{escape(unit_note())} Deltas: later runs minus {escape(runs[0].label)}.</p>',
        '<section id="overview"><h2>Overview</h2><div class="overview">',
        f'<div class="card">{radar_chart(runs)}{legend}</div>',
        f"<div>{_compare_table(runs, [shown_overall_of(r) for r in runs], OVERALL_METRICS)}</div></div></section>",
        '<section id="datasets"><h2>Per data set</h2>',
        legend,
        '<div class="grid">'
        + "".join(f'<div class="card">{svg}</div>' for svg in dataset_bars(runs, datasets))
        + "</div>",
    ]
    for name in datasets:
        tables = [shown_dataset(r.dataset_metrics(name)) for r in runs]
        present = next(t for t in tables if t is not None)
        sizes = ", ".join("–" if t is None else str(t.get("n", "?")) for t in tables)
        parts.append(
            f'<h3 id="ds-{escape(name)}">{escape(name)}</h3><p class="note">task {escape(str(present.get("task", "?")))}, '
            f"correctness = {escape(str(present.get('correctness_metric', '?')))}, trajectories: {escape(sizes)}</p>"
            + _compare_table(runs, tables, DATASET_METRICS)
        )
    parts.append("</section>")
    parts.append(
        '<section id="tool-calls"><h2>Correctness against tool calls</h2>' + legend + '<div class="grid">'
    )
    for name in datasets:
        parts += [f'<div class="card">{svg}</div>' for svg in calls_charts(runs, name)]
    parts.append("</div></section>")
    parts.append('<section id="lengths"><h2>Length distributions</h2>' + legend + '<div class="grid">')
    parts += [f'<div class="card">{length_chart(runs, name)}</div>' for name in datasets]
    parts.append("</div></section>")
    parts += [
        '<section id="trajectories"><h2>Trajectories</h2>',
        f'<p class="note">{len(items)} of {sum(len(r.scores) for r in runs)} scored trajectories are embedded '
        "(the first ones by question id, per run and data set); tool calls and their results are highlighted.</p>",
        _filters(runs, items),
        '<p id="traj-count"></p><ol id="traj-list"></ol><button id="traj-more" type="button" hidden>show more</button>',
        "</section>",
        *training,
        f'<script type="application/json" id="report-data">{json_for_script(data)}</script>',
        f"<script>{JS}</script>",
        "</body></html>",
    ]
    return parts
