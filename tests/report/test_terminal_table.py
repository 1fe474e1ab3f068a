"""The terminal's metrics table (``etagent eval`` / ``score``, the end of the pipeline) names the
measure behind correctness, as the reports do."""

from __future__ import annotations

from rich.console import Console

from etagent.cli import _metrics_table
from etagent.report.format import correctness_label, terminal_table


def _dataset(metric: str, correctness: float, n: int = 4) -> dict:
    return {"n": n, "task": "qa", "correctness_metric": metric, "correctness": correctness, "effi": 0.5}


def _render(table) -> str:
    console = Console(width=200, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(table)
    return console.export_text()


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("│").split("│")]


def test_the_label_names_the_measure_of_every_column():
    assert correctness_label([_dataset("f1", 1.0)]) == "correctness P (F1)"
    assert correctness_label([_dataset("f1", 1.0), _dataset("f1", 0.5)]) == "correctness P (F1)"
    mixed = [_dataset("f1", 1.0), None, _dataset("judge", 0.5), _dataset("math_equiv", 0.2)]
    assert correctness_label(mixed) == "correctness P (F1 / judge / math equivalence)"
    assert correctness_label([_dataset("exact_match", 1.0)]) == "correctness P (exact match)"
    assert correctness_label([None]) == "correctness P"  # nothing evaluated: no measure to name


def test_eval_table_names_the_measure_and_keeps_its_columns():
    metrics = {
        "datasets": {"hotpotqa": _dataset("f1", 0.25), "aime": {**_dataset("judge", 0.5), "task": "math"}},
        "overall": {"P": 0.375, "Effi": 0.5},
    }
    text = _render(_metrics_table("eval", metrics))
    row = next(line for line in text.splitlines() if "correctness P" in line)
    assert "correctness P (F1 / judge)" in row
    assert _cells(row)[-3:] == ["25.0", "50.0", "37.5"]  # per data set, then overall
    assert "overall" in text and "trajectories" in text


def test_model_columns_with_a_missing_data_set():
    text = _render(terminal_table("results", {"base": _dataset("exact_match", 0.1), "rl": None}))
    row = next(line for line in text.splitlines() if "correctness P" in line)
    assert "correctness P (exact match)" in row and _cells(row)[-2:] == ["10.0", "–"]
    assert "overall" not in text
