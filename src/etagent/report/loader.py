"""Read an evaluation run directory (docs/run-directory.md 3) into one object for the reports.

    <run>/metrics.json, <run>/scores.jsonl, <run>/datasets/<name>/trajectories.jsonl

Every missing or malformed file is a :class:`DataError` naming the file and what to run.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etagent.io import DataError, iter_jsonl, read_records, validate_record
from etagent.records import Trajectory
from etagent.scoring.metrics import TrajectoryScore

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.jsonl"
DATASETS_DIR = "datasets"
TRAJECTORIES_FILE = "trajectories.jsonl"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"

ScoreKey = tuple[str, str, int]  # (dataset, question_id, sample_index)


def trajectories_path(run_dir: Path, dataset: str) -> Path:
    return Path(run_dir) / DATASETS_DIR / dataset / TRAJECTORIES_FILE


@dataclass
class RunResult:
    """One scored run: its metrics, every score row, and a capped sample of trajectories."""

    path: Path
    label: str
    metrics: dict[str, Any]
    scores: list[TrajectoryScore]
    #: dataset -> the trajectories shown in the viewer (the first ``max_trajectories`` by question id)
    trajectories: dict[str, list[Trajectory]] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return list(self.metrics["datasets"])

    @property
    def model(self) -> str:
        return str(self.metrics.get("model") or "")

    def dataset_metrics(self, dataset: str) -> dict[str, Any] | None:
        return self.metrics["datasets"].get(dataset)

    def dataset_scores(self, dataset: str) -> list[TrajectoryScore]:
        return [s for s in self.scores if s.dataset == dataset]

    def score_index(self) -> dict[ScoreKey, TrajectoryScore]:
        return {(s.dataset, s.question_id, s.sample_index): s for s in self.scores}


def natural_key(text: str) -> tuple:
    """Sort key in which "q-10" follows "q-9": digit runs compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text))


def _read_metrics(run_dir: Path) -> dict[str, Any]:
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: no {METRICS_FILE}; run `etagent score {run_dir}` first")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(metrics).__name__}")
    for key in ("datasets", "overall"):
        if not isinstance(metrics.get(key), dict):
            raise DataError(f"{path}: field '{key}' is missing or not an object")
    for name, table in metrics["datasets"].items():
        if not isinstance(table, dict):
            raise DataError(f"{path}: field 'datasets.{name}' is not an object")
    return metrics


def _sample_trajectories(path: Path, limit: int | None) -> list[Trajectory]:
    """The first ``limit`` trajectories by (question id, sample index); only those are validated."""
    rows = list(iter_jsonl(path))
    if limit is not None:

        def key(row: tuple[int, dict[str, Any]]) -> tuple:
            obj = row[1]
            return natural_key(str(obj.get("question_id", ""))), obj.get("sample_index", 0)

        rows = sorted(rows, key=key)[:limit]
    return [validate_record(Trajectory, obj, f"{path}:{lineno}") for lineno, obj in rows]


def load_run(run_dir: str | Path, max_trajectories: int | None = 200, label: str | None = None) -> RunResult:
    """Read a scored run; ``max_trajectories`` caps the trajectories kept per dataset (None: all)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run directory does not exist")
    metrics = _read_metrics(run_dir)
    scores_path = run_dir / SCORES_FILE
    if not scores_path.is_file():
        raise DataError(f"{run_dir}: no {SCORES_FILE}; run `etagent score {run_dir}` first")
    scores = read_records(scores_path, TrajectoryScore)
    index = {(s.dataset, s.question_id, s.sample_index) for s in scores}
    trajectories: dict[str, list[Trajectory]] = {}
    for dataset in metrics["datasets"]:
        path = trajectories_path(run_dir, dataset)
        if not path.is_file():
            raise DataError(
                f"{path}: file does not exist, but {run_dir / METRICS_FILE} lists data set '{dataset}'"
            )
        kept = _sample_trajectories(path, max_trajectories) if max_trajectories != 0 else []
        for t in kept:
            if (dataset, t.question_id, t.sample_index) not in index:
                raise DataError(
                    f"{scores_path}: no score for {dataset}/{t.question_id} sample {t.sample_index}; "
                    f"the trajectories changed since scoring, run `etagent score {run_dir}`"
                )
        trajectories[dataset] = kept
    return RunResult(
        path=run_dir, label=label or run_dir.name, metrics=metrics, scores=scores, trajectories=trajectories
    )


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique labels: the directory names, with the parent added where two collide."""
    resolved = [p.resolve() for p in paths]
    names = [p.name for p in resolved]
    labels = []
    for p, name in zip(resolved, names, strict=True):
        labels.append(f"{p.parent.name}/{name}" if names.count(name) > 1 and p.parent.name else name)
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def load_runs(run_dirs: list[str | Path], max_trajectories: int | None = 200) -> list[RunResult]:
    paths = [Path(p) for p in run_dirs]
    return [
        load_run(p, max_trajectories=max_trajectories, label=label)
        for p, label in zip(paths, run_labels(paths), strict=True)
    ]
