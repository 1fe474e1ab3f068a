"""Which metrics a report shows, how each is printed, and which direction is better.

Metric values in metrics.json are fractions in [0, 1] (shown x100), counts, or token numbers;
one table here keeps the Markdown and HTML reports (and the CLI table) in agreement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["pct", "count", "tokens", "per_k"]


@dataclass(frozen=True)
class MetricSpec:
    key: str
    label: str
    kind: Kind
    #: +1: higher is better, -1: lower is better, 0: neither (tool calls, length)
    better: int = 1
    #: key of the same metric's mean over data sets in metrics.json "overall", if it has one
    overall: str | None = None
    #: the label in the terminal's narrower table (``etagent eval`` / ``score``); None: ``label``
    short: str | None = None

    @property
    def short_label(self) -> str:
        return self.short or self.label


#: the five radar dimensions (keys of metrics.json "overall"), in the paper's order
OVERALL_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("P", "Correctness P", "pct"),
    MetricSpec("Effi", "Efficiency Effi", "pct"),
    MetricSpec("conciseness", "Conciseness", "pct"),
    MetricSpec("success_exec", "Successful Execution", "pct"),
    MetricSpec("correctness_per_ktoken", "Reasoning Length (correct / 1k tokens)", "per_k"),
    MetricSpec("reasoning_length", "model tokens / trajectory", "tokens", 0),
)

DATASET_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("correctness", "correctness", "pct", overall="P", short="correctness P"),
    MetricSpec("exact_match", "exact match", "pct"),
    MetricSpec("f1", "F1", "pct"),
    MetricSpec("effi", "Effi", "pct", overall="Effi"),
    MetricSpec("format_valid", "format valid", "pct"),
    MetricSpec("mean_tool_calls", "tool calls / trajectory", "count", 0, short="tool calls / traj"),
    MetricSpec("mean_search_calls", "search calls / trajectory", "count", 0),
    MetricSpec("mean_python_calls", "python calls / trajectory", "count", 0),
    MetricSpec("tool_usage_rate", "trajectories using a tool", "pct", 0),
    MetricSpec("success_exec_rate", "successful tool results", "pct"),
    MetricSpec(
        "success_exec_weighted",
        "successful execution (weighted)",
        "pct",
        overall="success_exec",
        short="successful execution",
    ),
    MetricSpec("conciseness", "conciseness (judge)", "pct", overall="conciseness", short="conciseness"),
    MetricSpec("conciseness_exact", "no redundant call", "pct"),
    MetricSpec("at_min_tool_calls", "at minimal tool calls", "pct", short="at minimal calls"),
    MetricSpec("redundant_call_rate", "with redundant calls", "pct", -1),
    MetricSpec("insufficient_call_rate", "with missing calls", "pct", -1),
    MetricSpec(
        "reasoning_length",
        "model tokens / trajectory",
        "tokens",
        0,
        overall="reasoning_length",
        short="model tokens",
    ),
    MetricSpec("correctness_per_ktoken", "correct / 1k tokens", "per_k", overall="correctness_per_ktoken"),
)

_DATASET_SPECS = {spec.key: spec for spec in DATASET_METRICS}

#: the rows of the terminal's metrics table (``etagent eval`` / ``score``): one column per data set
#: and the overall mean (``spec.overall``), labelled ``spec.short_label``
TERMINAL_METRICS: tuple[MetricSpec, ...] = tuple(
    _DATASET_SPECS[key]
    for key in (
        "correctness",
        "effi",
        "conciseness",
        "conciseness_exact",
        "success_exec_weighted",
        "correctness_per_ktoken",
        "exact_match",
        "format_valid",
        "mean_tool_calls",
        "at_min_tool_calls",
        "reasoning_length",
    )
)


#: how each ``correctness_metric`` of metrics.json is named in tables
CORRECTNESS_MEASURES = {
    "f1": "F1",
    "exact_match": "exact match",
    "math_equiv": "math equivalence",
    "judge": "judge",
    "mixed": "mixed measures",
}


def correctness_label(tables: list[dict[str, Any] | None], base: str = "correctness P") -> str:
    """``base`` with the measure behind correctness, e.g. ``correctness P (F1)``, or the measures
    of all ``tables`` (data set metrics) when they differ: ``correctness P (F1 / judge)``."""
    found: list[str] = []
    for t in tables:
        if t is None or t.get("correctness_metric") is None:
            continue
        name = CORRECTNESS_MEASURES.get(t["correctness_metric"], str(t["correctness_metric"]))
        if name not in found:
            found.append(name)
    return f"{base} ({' / '.join(found)})" if found else base


def terminal_table(
    title: str, columns: dict[str, dict[str, Any] | None], overall: dict[str, Any] | None = None
) -> Any:
    """The terminal's metrics table (a ``rich`` Table): the :data:`TERMINAL_METRICS` rows that have a
    value, one column per data set metrics dict (None: not evaluated), and with ``overall`` (the
    ``overall`` of metrics.json) a last column of the means over data sets. Used by ``etagent eval``
    / ``score`` (columns: data sets) and at the end of the pipeline (columns: models)."""
    from rich.table import Table

    tables = [shown_dataset(t) for t in columns.values()]
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    if overall is not None:
        table.add_column("overall", justify="right")
    for spec in TERMINAL_METRICS:
        values = [t.get(spec.key) if t is not None else None for t in tables]
        if overall is not None:
            values.append(overall.get(spec.overall) if spec.overall else None)
        if all(v is None for v in values):
            continue
        label = correctness_label(tables, spec.short_label) if spec.key == "correctness" else spec.short_label
        table.add_row(label, *[fmt_value(v, spec.kind) for v in values])
    present = [t for t in tables if t is not None and "failed_tool_calls" in t]
    if present:  # tool calls the tool failed on, of those run (rollout/stage.py tool_failures)
        cells = [
            f"{t['failed_tool_calls']} of {t['tool_calls_run']}"
            if t is not None and "failed_tool_calls" in t
            else "–"
            for t in tables
        ]
        if overall is not None:
            failed, run = (sum(t[k] for t in present) for k in ("failed_tool_calls", "tool_calls_run"))
            cells.append(f"{failed} of {run}")
        table.add_row("failed tool calls", *cells)
    sizes = [str(t.get("n", 0)) if t is not None else "–" for t in tables]
    table.add_row("trajectories", *sizes, *([""] if overall is not None else []))
    return table


def overall_table(title: str, overall: dict[str, dict[str, Any]]) -> Any:
    """The :data:`OVERALL_METRICS` of several runs (their metrics.json ``overall``), one column each."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    for label in overall:
        table.add_column(label, justify="right")
    for spec in OVERALL_METRICS:
        table.add_row(spec.label, *[fmt_value(o.get(spec.key), spec.kind) for o in overall.values()])
    return table


def fmt_value(value: Any, kind: Kind) -> str:
    """A metric value as shown in tables: fractions as percentages with one decimal."""
    if value is None:
        return "–"
    v = float(value)
    if kind == "pct":
        return f"{100 * v:.1f}"
    if kind == "count":
        return f"{v:.2f}"
    if kind == "tokens":
        return f"{v:.0f}"
    return f"{v:.2f}"


def fmt_delta(new: Any, old: Any, kind: Kind) -> str:
    """``new - old`` in the display unit, signed; "–" when either is missing."""
    if new is None or old is None:
        return "–"
    d = float(new) - float(old)
    if kind == "pct":
        d *= 100
    digits = 0 if kind == "tokens" else (1 if kind == "pct" else 2)
    text = f"{d:+.{digits}f}"
    return "±0" if float(text) == 0 else text


def delta_direction(new: Any, old: Any, spec: MetricSpec) -> int:
    """+1 when ``new`` is better than ``old``, -1 when worse, 0 when equal or not comparable."""
    if new is None or old is None or spec.better == 0:
        return 0
    d = float(new) - float(old)
    if abs(d) < 1e-12:
        return 0
    return spec.better if d > 0 else -spec.better


def has_metric(spec: MetricSpec, tables: list[dict[str, Any] | None]) -> bool:
    """Show a row only when some run has a value for it (e.g. no judge -> no conciseness row)."""
    return any(t is not None and t.get(spec.key) is not None for t in tables)


#: metrics that say nothing about a run without tool calls: a trajectory without calls counts
#: as concise (docs/method.md 7.5), so such a run would score 100 for making no call at all
NEEDS_TOOL_CALLS = ("conciseness", "conciseness_exact")


def made_no_tool_calls(table: dict[str, Any] | None) -> bool:
    """A data set's metrics (metrics.json) of a run that made no tool call on it."""
    return (
        table is not None
        and table.get("mean_tool_calls") is not None
        and float(table["mean_tool_calls"]) == 0
    )


def shown_dataset(table: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data set metrics as the reports show them: conciseness left out (None) without tool calls."""
    if not made_no_tool_calls(table):
        return table
    assert table is not None
    return {**table, **dict.fromkeys(NEEDS_TOOL_CALLS)}


def shown_overall(overall: dict[str, Any], datasets: list[dict[str, Any] | None]) -> dict[str, Any]:
    """metrics.json ``overall`` as the reports show it: conciseness left out (None) when the run
    made no tool call on any data set (its mean would be the vacuous 100)."""
    present = [t for t in datasets if t is not None]
    if present and all(made_no_tool_calls(t) for t in present):
        return {**overall, **dict.fromkeys(NEEDS_TOOL_CALLS)}
    return overall


def unit_note() -> str:
    return (
        "Percentages are fractions x100; Effi = mean correctness / tool calls (docs/method.md 7.4); "
        "Reasoning Length = mean correctness per 1k model tokens (docs/method.md 7.5). "
        "Conciseness is shown as – for a run that made no tool call (on that data set, or, overall, on any): "
        "a trajectory without calls counts as concise, so the value would be 100 without meaning anything."
    )
