"""The training part of the report: RL curves per step (train_log.jsonl, docs/run-directory.md
9.8) and the Pareto selection by curriculum stage (group_scores.jsonl and stages/, 9.7), as
HTML sections (inline SVG) and Markdown tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from html import escape
from statistics import mean

from etagent.report import charts
from etagent.report.charts import ScatterPoint, XYSeries
from etagent.report.format import fmt_value
from etagent.report.loader import ParetoQuestion, ParetoRun, RLRun

#: the RL curves: (train_log.jsonl key, title, format of values)
RL_CURVES: tuple[tuple[str, str, str], ...] = (
    ("reward", "Reward (mean)", "num"),
    ("correctness", "Correctness (batch mean)", "pct"),
    ("tool_calls", "Tool calls per trajectory", "num"),
    ("length", "Length (reward's length term)", "num"),
    ("entropy", "Policy entropy", "num"),
    ("branching_rate", "ARPO branching rate (branches per decision)", "num"),
)
NOT_SELECTED = "#98a2b3"
OBJECTIVE_TOLERANCE = 1e-6


def _fmt(kind: str) -> Callable[[float], str]:
    if kind == "pct":
        return lambda v: fmt_value(v, "pct")
    return lambda v: f"{v:.4g}"


def _ticks(kind: str) -> Callable[[float], str]:
    return (lambda v: charts.tick_number(100 * v)) if kind == "pct" else charts.tick_number


def rl_rows(run: RLRun) -> list[tuple[str, str, str, str]]:
    """(metric, first value with its step, last value with its step, change) per logged curve."""
    rows = []
    for key, _, kind in RL_CURVES:
        first, last = run.first_last(key)
        if first is None or last is None:
            continue
        f = _fmt(kind)
        change = last[1] - first[1]
        rows.append(
            (
                key,
                f"{f(first[1])} (step {first[0]})",
                f"{f(last[1])} (step {last[0]})",
                f"{change * (100 if kind == 'pct' else 1):+.4g}",
            )
        )
    return rows


def rl_charts(runs: Sequence[RLRun]) -> list[str]:
    out = []
    for key, title, kind in RL_CURVES:
        series = []
        for i, run in enumerate(runs):
            xs, ys = run.series(key)
            series.append(XYSeries(run.label, xs, ys, charts.color(i)))
        if not any(y is not None for s in series for y in s.ys):
            continue
        out.append(
            charts.step_chart(
                series, title, _ticks(kind) if kind == "pct" else _fmt(kind), cls="lines steps rl-curve",
                attrs=f'data-metric="{key}"',
            )
        )  # fmt: skip
    return out


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str, attrs: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}" {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def rl_section(runs: Sequence[RLRun]) -> str:
    parts = [
        '<section id="rl"><h2>RL training</h2>',
        '<p class="note">One line per optimizer step of each RL run\'s train_log.jsonl '
        "(docs/run-directory.md 9.8); hover a point for its step and value.</p>",
        charts.legend([r.label for r in runs]),
        '<div class="grid">'
        + "".join(f'<div class="card">{svg}</div>' for svg in rl_charts(runs))
        + "</div>",
    ]
    for run in runs:
        parts.append(
            f'<h3>{escape(run.label)}</h3><p class="note">{escape(str(run.path))}: {len(run.steps)} steps</p>'
            + _table(["metric", "first", "last", "change"], rl_rows(run), "metrics rl-table",
                     f'data-run="{escape(run.label)}"')
        )  # fmt: skip
    parts.append("</section>")
    return "\n".join(parts)


# -- Pareto --------------------------------------------------------------------------------------


def stage_rows(run: ParetoRun) -> list[tuple[str, str, str, str, str]]:
    """(stage, questions, mean correctness, mean tool calls, fronts) per curriculum stage, then
    the questions not selected."""
    rows = []
    groups: list[tuple[str, list[ParetoQuestion]]] = [
        (f"stage {k}", run.stage_questions(k)) for k in range(1, run.stages + 1)
    ]
    groups.append(("not selected", run.stage_questions(None)))
    for name, qs in groups:
        fronts = sorted({q.pareto["front"] for q in qs if isinstance(q.pareto.get("front"), int)})
        rows.append(
            (
                name,
                str(len(qs)),
                fmt_value(mean(q.mean_correctness for q in qs), "pct") if qs else "–",
                fmt_value(mean(q.mean_tool_calls for q in qs), "count") if qs else "–",
                (f"{fronts[0]}–{fronts[-1]}" if len(fronts) > 1 else str(fronts[0])) if fronts else "–",
            )
        )
    return rows


def objectives(run: ParetoRun) -> tuple[dict[str, tuple[float, float]], bool]:
    """Each question's (tool objective, correctness objective). Selected questions' come from the
    stage files; the others' are recomputed with the default objectives (variance, ddof 0) and
    kept only if that reproduces every selected question's stored pair (second value True)."""
    from etagent.pareto.selection import group_objectives

    stored = {
        q.question_id: (float(q.pareto["tool_objective"]), float(q.pareto["correctness_objective"]))
        for q in run.questions
        if q.stage is not None and "tool_objective" in q.pareto and "correctness_objective" in q.pareto
    }
    computed = group_objectives([q.correctness for q in run.questions], [q.tool_calls for q in run.questions])
    by_id = {q.question_id: (float(t), float(c)) for q, (t, c) in zip(run.questions, computed, strict=True)}
    agrees = all(
        abs(by_id[qid][0] - t) < OBJECTIVE_TOLERANCE and abs(by_id[qid][1] - c) < OBJECTIVE_TOLERANCE
        for qid, (t, c) in stored.items()
    )
    return ({**by_id, **stored} if agrees else stored), agrees


def _stage_color(stage: int | None) -> str:
    return NOT_SELECTED if stage is None else charts.color(stage - 1)


def _stage_name(stage: int | None) -> str:
    return "not selected" if stage is None else f"stage {stage}"


def pareto_charts(run: ParetoRun) -> tuple[list[str], bool]:
    means = [
        ScatterPoint(
            q.mean_tool_calls, q.mean_correctness, _stage_color(q.stage),
            f"{q.question_id} ({_stage_name(q.stage)}): correctness {fmt_value(q.mean_correctness, 'pct')}, "
            f"tool calls {q.mean_tool_calls:.2f}, {q.samples} samples",
            _stage_name(q.stage),
        )
        for q in run.questions
    ]  # fmt: skip
    objs, complete = objectives(run)
    stage_of = {q.question_id: q.stage for q in run.questions}
    obj_points = [
        ScatterPoint(
            t, c, _stage_color(stage_of[qid]),
            f"{qid} ({_stage_name(stage_of[qid])}): tool objective {t:.4g}, correctness objective {c:.4g}"
            + (f", front {front}" if (front := _front(run, qid)) is not None else ""),
            _stage_name(stage_of[qid]),
        )
        for qid, (t, c) in objs.items()
    ]  # fmt: skip
    label = run.label
    return [
        charts.scatter(
            means, f"{label}: questions by mean tool calls and correctness", "mean tool calls of the group",
            "mean correctness (%)", y_fmt=lambda v: charts.tick_number(100 * v), y_max=1.0,
            cls="scatter pareto-means", attrs=f'data-run="{escape(label)}"',
        ),
        charts.scatter(
            obj_points, f"{label}: Pareto objectives", "tool-call objective (spread)",
            "correctness objective", y_max=None if obj_points else 1.0,
            cls="scatter pareto-objectives", attrs=f'data-run="{escape(label)}"',
        ),
    ], complete  # fmt: skip


def _front(run: ParetoRun, qid: str) -> int | None:
    for q in run.questions:
        if q.question_id == qid:
            front = q.pareto.get("front")
            return front if isinstance(front, int) else None
    return None


def pareto_section(runs: Sequence[ParetoRun]) -> str:
    parts = [
        '<section id="pareto"><h2>Pareto selection</h2>',
        '<p class="note">Every sampled question of each Pareto run (group_scores.jsonl), coloured by the '
        "curriculum stage that selected it (stages/), grey when not selected; a dot with a count stands for "
        "several questions at the same place (hover for the list). docs/run-directory.md 9.7.</p>",
    ]
    for run in runs:
        svgs, complete = pareto_charts(run)
        stages = [_stage_name(k) for k in range(1, run.stages + 1)] + ["not selected"]
        legend = "".join(
            f'<span class="legend-item"><span class="swatch" style="background:{_stage_color(k)}"></span>'
            f"{escape(name)}</span>"
            for k, name in zip([*range(1, run.stages + 1), None], stages, strict=True)
        )
        note = (
            ""
            if complete
            else '<p class="note">The objectives of questions not selected are not shown: the default '
            "objectives (variance) do not reproduce the stage files' values.</p>"
        )
        parts.append(
            f'<h3>{escape(run.label)}</h3><p class="note">{escape(str(run.path))}: {len(run.questions)} questions, '
            f"{sum(q.stage is not None for q in run.questions)} selected</p>"
            + _table(["stage", "questions", "mean correctness", "mean tool calls", "fronts"], stage_rows(run),
                     "metrics pareto-table", f'data-run="{escape(run.label)}"')
            + f'<div class="legend">{legend}</div><div class="grid">'
            + "".join(f'<div class="card">{svg}</div>' for svg in svgs)
            + "</div>" + note
        )  # fmt: skip
    parts.append("</section>")
    return "\n".join(parts)


# -- Markdown ------------------------------------------------------------------------------------


def markdown_lines(rl: Sequence[RLRun], pareto: Sequence[ParetoRun]) -> list[str]:
    def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        lines = ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
        return lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]

    lines: list[str] = []
    if rl:
        lines += ["", "## RL training", "", "First and last logged value of each curve (train_log.jsonl)."]
        for run in rl:
            lines += ["", f"### {run.label}", "", f"{run.path}: {len(run.steps)} steps", ""]
            rows = rl_rows(run)
            lines += table(["metric", "first", "last", "change"], rows) if rows else ["(no curve logged)"]
    if pareto:
        lines += [
            "",
            "## Pareto selection",
            "",
            "Questions per curriculum stage (group_scores.jsonl, stages/).",
        ]
        for p in pareto:
            selected = sum(q.stage is not None for q in p.questions)
            lines += [
                "",
                f"### {p.label}",
                "",
                f"{p.path}: {len(p.questions)} questions, {selected} selected",
                "",
            ]
            lines += table(
                ["stage", "questions", "mean correctness", "mean tool calls", "fronts"], stage_rows(p)
            )
    return lines
