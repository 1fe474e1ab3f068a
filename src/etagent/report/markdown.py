"""The Markdown summary: one table per data set, one column per run, and deltas against the first run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from etagent.report.format import (
    DATASET_METRICS,
    OVERALL_METRICS,
    MetricSpec,
    fmt_delta,
    fmt_value,
    has_metric,
    shown_dataset,
    shown_overall,
    unit_note,
)
from etagent.report.loader import ParetoRun, RLRun, RunResult
from etagent.report.training import markdown_lines


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A pipe table; ``numeric``: every column but the first is right-aligned."""
    aligns = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "| " + " | ".join(aligns) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _compare_rows(
    runs: Sequence[RunResult], tables: list[dict[str, Any] | None], specs: Sequence[MetricSpec]
) -> list[list[str]]:
    rows = []
    for spec in specs:
        if not has_metric(spec, tables):
            continue
        values = [None if t is None else t.get(spec.key) for t in tables]
        row = [spec.label] + [fmt_value(v, spec.kind) for v in values]
        # deltas of every later run against the first (before -> after)
        row += [fmt_delta(v, values[0], spec.kind) for v in values[1:]]
        rows.append(row)
    return rows


def _header(runs: Sequence[RunResult]) -> list[str]:
    first = runs[0].label
    return ["metric"] + [r.label for r in runs] + [f"Δ {r.label} − {first}" for r in runs[1:]]


def dataset_names(runs: Sequence[RunResult]) -> list[str]:
    """Every data set of every run, in first-seen order."""
    names: list[str] = []
    for run in runs:
        names += [d for d in run.datasets if d not in names]
    return names


def shown_overall_of(run: RunResult) -> dict[str, Any]:
    """The run's overall metrics as the reports show them (format.shown_overall)."""
    return shown_overall(run.metrics["overall"], [run.dataset_metrics(d) for d in run.datasets])


def render_markdown(
    runs: Sequence[RunResult],
    title: str = "etagent evaluation report",
    rl: Sequence[RLRun] = (),
    pareto: Sequence[ParetoRun] = (),
) -> str:
    """Eval runs (``runs[0]`` the baseline), then the RL runs' first/last values and the Pareto stages."""
    if not (runs or rl or pareto):
        raise ValueError("render_markdown needs at least one run")
    lines = [f"# {title}"]
    if runs:
        lines += _eval_lines(runs)
    lines += markdown_lines(rl, pareto)
    return "\n".join(lines) + "\n"


def _eval_lines(runs: Sequence[RunResult]) -> list[str]:
    lines = [""]
    lines += _table(
        ["run", "model", "directory", "scored", "judge"],
        [
            [
                r.label,
                r.model or "–",
                str(r.path),
                str(r.metrics.get("created") or "–"),
                str(r.metrics.get("judge") or "–"),
            ]
            for r in runs
        ],
        numeric=False,
    )
    lines += ["", unit_note(), "", "## Overall (five dimensions, mean over data sets)", ""]
    lines += _table(_header(runs), _compare_rows(runs, [shown_overall_of(r) for r in runs], OVERALL_METRICS))
    for name in dataset_names(runs):
        tables = [shown_dataset(r.dataset_metrics(name)) for r in runs]
        present = [t for t in tables if t is not None]
        task = present[0].get("task", "?")
        metric = present[0].get("correctness_metric", "?")
        sizes = ", ".join("–" if t is None else str(t.get("n", "?")) for t in tables)
        lines += ["", f"## {name}", "", f"task {task}, correctness = {metric}, trajectories: {sizes}", ""]
        rows = _compare_rows(runs, tables, DATASET_METRICS)
        rows.append(
            ["finish reasons"]
            + ["–" if t is None else _finish_reasons(t) for t in tables]
            + [""] * (len(runs) - 1)
        )
        lines += _table(_header(runs), rows)
    return lines


def _finish_reasons(table: dict[str, Any]) -> str:
    reasons = table.get("finish_reasons") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))) or "–"
