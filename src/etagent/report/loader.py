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


# -- training runs: RL (docs/run-directory.md 7, 9.8) and Pareto (6, 9.7) ------------------------

#: rl/trl_engine.py TRAIN_LOG, SUMMARY
RL_TRAIN_LOG = "train_log.jsonl"
RL_SUMMARY = "rl_summary.json"
#: pareto/stage.py SCORES, STAGES_DIR; pareto/selection.py STAGES_MANIFEST
PARETO_SCORES = "group_scores.jsonl"
PARETO_STAGES_DIR = "stages"
PARETO_MANIFEST = "stages.json"
#: pipeline.py: the summaries file and the stage directories the report reads (section 8)
PIPELINE_FILE = "pipeline.json"
PIPELINE_EVAL_DIR = "07-eval"
PIPELINE_PARETO_GLOB = "05-pareto-*"
PIPELINE_RL_GLOB = "06-rl-*"
PIPELINE_WARMUP_RL = "02-e3-warmup"  # the E3-TIR warm-up is an RL run too


@dataclass
class RLRun:
    """One RL run's train_log.jsonl: one row per optimizer step, in step order."""

    path: Path
    label: str
    steps: list[dict[str, Any]]

    def series(self, key: str) -> tuple[list[float], list[float | None]]:
        """(steps, values of ``key``); None where the step did not log it."""
        xs = [float(r["step"]) for r in self.steps]
        ys = [r.get(key) if isinstance(r.get(key), int | float) else None for r in self.steps]
        return xs, [None if v is None else float(v) for v in ys]

    def first_last(self, key: str) -> tuple[tuple[int, float] | None, tuple[int, float] | None]:
        """The first and the last (step, value) with a value for ``key``."""
        found = [(int(s), v) for s, v in zip(*self.series(key), strict=True) if v is not None]
        return (found[0], found[-1]) if found else (None, None)


@dataclass
class ParetoQuestion:
    """One sampled question of a Pareto run: its group's means and, if selected, its stage."""

    question_id: str
    samples: int
    mean_correctness: float
    mean_tool_calls: float
    correctness: list[float]
    tool_calls: list[int]
    #: curriculum stage (1-based), None when not selected
    stage: int | None = None
    #: meta.pareto of the stage file (front, tool_objective, correctness_objective, ...)
    pareto: dict[str, Any] = field(default_factory=dict)


@dataclass
class ParetoRun:
    path: Path
    label: str
    #: every question of group_scores.jsonl, by question id in natural order
    questions: list[ParetoQuestion]
    manifest: dict[str, Any]
    stages: int

    def stage_questions(self, k: int | None) -> list[ParetoQuestion]:
        return [q for q in self.questions if q.stage == k]


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def load_rl_run(run_dir: str | Path, label: str | None = None) -> RLRun:
    run_dir = Path(run_dir)
    path = run_dir / RL_TRAIN_LOG
    if not path.is_file():
        raise DataError(f"{run_dir}: no {RL_TRAIN_LOG}; not an RL run directory (`etagent rl`)")
    rows = []
    for lineno, obj in iter_jsonl(path):
        step = obj.get("step")
        if not isinstance(step, int | float) or isinstance(step, bool):
            raise DataError(f"{path}:{lineno}: field 'step' is missing or not a number")
        rows.append(obj)
    rows.sort(key=lambda r: r["step"])
    return RLRun(path=run_dir, label=label or run_dir.name, steps=rows)


def _number(obj: dict[str, Any], key: str, where: str) -> float:
    v = obj.get(key)
    if not isinstance(v, int | float) or isinstance(v, bool):
        raise DataError(f"{where}: field '{key}' is missing or not a number")
    return float(v)


def load_pareto_run(run_dir: str | Path, label: str | None = None) -> ParetoRun:
    """group_scores.jsonl (every sampled question) and stages/ (the selection, complete runs only)."""
    run_dir = Path(run_dir)
    scores_path = run_dir / PARETO_SCORES
    manifest_path = run_dir / PARETO_STAGES_DIR / PARETO_MANIFEST
    for p in (scores_path, manifest_path):
        if not p.is_file():
            raise DataError(f"{run_dir}: no {p.relative_to(run_dir)}; the Pareto stage has not finished")
    groups: dict[str, list[tuple[int, float, int]]] = {}
    for lineno, obj in iter_jsonl(scores_path):
        where = f"{scores_path}:{lineno}"
        qid = obj.get("question_id")
        if not isinstance(qid, str):
            raise DataError(f"{where}: field 'question_id' is missing or not a string")
        groups.setdefault(qid, []).append(
            (
                int(obj.get("sample_index", 0)),
                _number(obj, "correctness", where),
                int(_number(obj, "tool_calls", where)),
            )
        )
    manifest = _read_json_object(manifest_path)
    files = manifest.get("files")
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise DataError(f"{manifest_path}: field 'files' is missing or not a list of file names")
    selected: dict[str, tuple[int, dict[str, Any]]] = {}
    for k, name in enumerate(files, 1):
        stage_path = run_dir / PARETO_STAGES_DIR / name
        for lineno, obj in iter_jsonl(stage_path):
            info = (obj.get("meta") or {}).get("pareto")
            if not isinstance(info, dict) or not isinstance(obj.get("id"), str):
                raise DataError(f"{stage_path}:{lineno}: a question with 'id' and 'meta.pareto' expected")
            selected[obj["id"]] = (int(info.get("stage", k)), info)
    unknown = [q for q in selected if q not in groups]
    if unknown:
        raise DataError(
            f"{run_dir / PARETO_STAGES_DIR}: selected question {unknown[0]!r} has no row in {scores_path}"
        )
    questions = []
    for qid in sorted(groups, key=natural_key):
        rows = sorted(groups[qid])
        corr = [c for _, c, _ in rows]
        calls = [t for _, _, t in rows]
        stage, info = selected.get(qid, (None, {}))
        questions.append(
            ParetoQuestion(
                question_id=qid,
                samples=len(rows),
                mean_correctness=sum(corr) / len(corr),
                mean_tool_calls=sum(calls) / len(calls),
                correctness=corr,
                tool_calls=calls,
                stage=stage,
                pareto=info,
            )
        )
    return ParetoRun(
        path=run_dir, label=label or run_dir.name, questions=questions, manifest=manifest, stages=len(files)
    )


def run_kind(run_dir: Path) -> str:
    """``eval``, ``rl``, ``pareto`` or ``pipeline``, from the files the directory holds."""
    if (run_dir / METRICS_FILE).is_file():
        return "eval"
    if (run_dir / PARETO_SCORES).is_file() or (run_dir / PARETO_STAGES_DIR / PARETO_MANIFEST).is_file():
        return "pareto"
    if (run_dir / RL_SUMMARY).is_file() or (
        (run_dir / RL_TRAIN_LOG).is_file() and _looks_like_rl(run_dir / RL_TRAIN_LOG)
    ):
        return "rl"
    if (run_dir / PIPELINE_FILE).is_file() or (run_dir / PIPELINE_EVAL_DIR).is_dir():
        return "pipeline"
    raise DataError(
        f"{run_dir}: no {METRICS_FILE}; run `etagent score {run_dir}` first "
        f"(the report reads eval runs with {METRICS_FILE}, RL runs with {RL_TRAIN_LOG}, Pareto runs with "
        f"{PARETO_SCORES}, and pipeline runs with {PIPELINE_FILE})"
    )


def _looks_like_rl(path: Path) -> bool:
    """An RL train log (not SFT's): its lines carry ``rollout_step`` or ``reward``."""
    for _, obj in iter_jsonl(path):
        return "rollout_step" in obj or "reward" in obj
    return True  # empty: a run that has not logged a step yet


def pipeline_stage_dirs(run_dir: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(eval, rl, pareto) directories of a pipeline run: eval runs in run order (pipeline.json,
    base first), the Pareto and RL stages by curriculum stage; unfinished stages left out."""
    evals: list[Path] = []
    summaries = run_dir / PIPELINE_FILE
    if summaries.is_file():
        for name in _read_json_object(summaries):
            if name.startswith(PIPELINE_EVAL_DIR + "/") and (run_dir / name / METRICS_FILE).is_file():
                evals.append(run_dir / name)
    eval_root = run_dir / PIPELINE_EVAL_DIR
    if eval_root.is_dir():
        for d in sorted(eval_root.iterdir(), key=lambda p: natural_key(p.name)):
            if (d / METRICS_FILE).is_file() and d not in evals:
                evals.append(d)
    pareto = [
        d
        for d in sorted(run_dir.glob(PIPELINE_PARETO_GLOB), key=lambda p: natural_key(p.name))
        if (d / PARETO_STAGES_DIR / PARETO_MANIFEST).is_file() and (d / PARETO_SCORES).is_file()
    ]
    rl = [
        d
        for d in [
            run_dir / PIPELINE_WARMUP_RL,
            *sorted(run_dir.glob(PIPELINE_RL_GLOB), key=lambda p: natural_key(p.name)),
        ]
        if (d / RL_TRAIN_LOG).is_file()
    ]
    return evals, rl, pareto


@dataclass
class ReportInputs:
    """What ``etagent report`` was given, sorted by kind (pipeline runs expanded)."""

    evals: list[RunResult]
    rl: list[RLRun]
    pareto: list[ParetoRun]


def load_inputs(run_dirs: list[str | Path], max_trajectories: int | None = 200) -> ReportInputs:
    """Read every directory: eval runs (in the given order, the first the baseline), RL and Pareto
    runs, and pipeline runs, whose 07-eval/*, 06-rl-* and 05-pareto-* stages are read."""
    if not run_dirs:
        raise DataError("no run directory given")
    evals: list[Path] = []
    rl: list[Path] = []
    pareto: list[Path] = []
    for raw in run_dirs:
        d = Path(raw)
        if not d.is_dir():
            raise DataError(f"{d}: run directory does not exist")
        kind = run_kind(d)
        if kind == "eval":
            evals.append(d)
        elif kind == "rl":
            rl.append(d)
        elif kind == "pareto":
            pareto.append(d)
        else:
            e, r, p = pipeline_stage_dirs(d)
            if not (e or r or p):
                raise DataError(f"{d}: pipeline run without a finished eval, RL or Pareto stage yet")
            evals += e
            rl += r
            pareto += p
    return ReportInputs(
        evals=load_runs(evals, max_trajectories=max_trajectories) if evals else [],
        rl=[load_rl_run(p, label) for p, label in zip(rl, run_labels(rl), strict=True)],
        pareto=[load_pareto_run(p, label) for p, label in zip(pareto, run_labels(pareto), strict=True)],
    )
