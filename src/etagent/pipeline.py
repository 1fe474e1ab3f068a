"""``etagent pipeline``: the whole method in one run directory, resumable stage by stage.

    warm-up, one of (``warmup``):
      sft:  cold-start data -> cold-start SFT   (only for a policy that cannot follow the tool format)
            flywheel -> SFT                      (docs/method.md 3-4: the fine-tuned policy pi_0)
      e3:   the E3-TIR warm-up                   (docs/e3tir.md: RL on mixed expert / own experience)
      none: nothing (zero-RL)
    K x (Pareto sampling -> RL)             (docs/method.md 5-6: each stage samples with the latest policy)
    eval of base / warmed-up / RL models -> one report comparing them

Each stage runs in its own sub-directory and, once finished, leaves ``stage.json`` (its summary)
there; a resumed pipeline skips finished stages and re-enters the unfinished one, whose own
resume logic (rollouts, buffers, checkpoints) picks up what is on disk. The model a stage hands
to the next is always a directory on disk (``<stage>/model``), so nothing lives only in memory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from etagent.config import ConfigModel
from etagent.eval.stage import EvalConfig, run_eval
from etagent.flywheel.export import SFT_FILE
from etagent.flywheel.stage import FlywheelConfig, run_flywheel
from etagent.io import atomic_write_json, atomic_write_jsonl, iter_jsonl
from etagent.pareto.selection import stage_file
from etagent.pareto.stage import STAGES_DIR, ParetoStageConfig, run_pareto
from etagent.report.build import write_report
from etagent.report.loader import PIPELINE_WARMUP_RL as E3_WARMUP
from etagent.report.loader import pipeline_stage_dirs
from etagent.rl.config import RLConfig
from etagent.rl.e3.config import E3Config
from etagent.rl.trl_engine import run_rl
from etagent.rollout.stage import ToolFailureError
from etagent.tasks import load_questions
from etagent.tools.search.config import SummariserConfig
from etagent.train.sft import SFTConfig, run_sft

log = logging.getLogger("etagent.pipeline")

STAGE_DONE = "stage.json"
REPORT = "report.html"


def _cold_start_default() -> FlywheelConfig:
    return FlywheelConfig(data="toolworld:train", limit=120, cold_start={"enabled": True})


def _e3_warmup_default() -> RLConfig:
    return RLConfig(
        data="toolworld:train",
        warmup=E3Config(),
        num_generations=8,
        arpo={"n": 8, "initial_rollouts": 4},
        questions_per_step=2,
        micro_batch_size=4,
        max_steps=20,
        learning_rate=1e-5,
        keep_checkpoints=False,
    )


class PipelineConfig(ConfigModel):
    base_model: str = Field("embedded", description="the model every stage starts from")
    warmup: Literal["sft", "e3", "none"] = Field(
        "sft",
        description="what makes the policy that RL starts from: sft = cold start (cold_start) + flywheel + "
        "SFT (the ET-Agent paper); e3 = the E3-TIR warm-up, RL on expert prefixes, expert-guided and "
        "self-explored trajectories (e3_warmup, docs/e3tir.md); none = RL from the base model (zero-RL)",
    )
    e3_warmup: RLConfig = Field(
        default_factory=_e3_warmup_default,
        description="warmup e3: the warm-up's RL config (its warmup section: method e3); the model is the base model",
    )
    cold_start: bool = Field(
        True,
        description="fine-tune on expert-written trajectories before the flywheel (for a policy that "
        "cannot follow the tool format from the prompt, like the embedded 135M model)",
    )
    cold_start_data: FlywheelConfig = Field(default_factory=_cold_start_default)
    cold_start_sft: SFTConfig = Field(default_factory=lambda: SFTConfig(data="", max_steps=30))
    flywheel: FlywheelConfig = Field(default_factory=FlywheelConfig)
    sft: SFTConfig = Field(default_factory=lambda: SFTConfig(data=""))
    sft_includes_cold_start: bool = Field(
        True, description="train the main SFT on the cold-start examples too, not only the flywheel's"
    )
    curriculum_stages: int = Field(1, ge=0, description="K rounds of Pareto sampling + RL")
    pareto: ParetoStageConfig = Field(default_factory=ParetoStageConfig)
    # a finished RL stage's checkpoints (optimizer state: ~4x an fp32 model each) are not kept
    rl: RLConfig = Field(default_factory=lambda: RLConfig(keep_checkpoints=False))
    eval: EvalConfig = Field(default_factory=EvalConfig)
    eval_base: bool = Field(True, description="also evaluate the base model (the report's baseline)")
    eval_warmup: bool = Field(
        True, description="also evaluate the warm-up's model (sft or e3) when an RL stage follows it"
    )
    search_summariser: SummariserConfig | None = Field(
        None,
        description="the search tool's summariser in every phase at once: the flywheel, Pareto "
        "sampling, RL and evaluation (docs/method.md Decision 7); None = each stage's own "
        "agent.tools.search.summariser",
    )

    @model_validator(mode="after")
    def _e3_section(self) -> PipelineConfig:
        if self.warmup == "e3" and self.e3_warmup.warmup is None:
            raise ValueError("warmup e3: e3_warmup.warmup must be set (method: e3 and its settings)")
        return self

    @model_validator(mode="after")
    def _one_summariser(self) -> PipelineConfig:
        if self.search_summariser is not None:
            agents = (
                self.flywheel.agent,
                self.e3_warmup.agent,
                self.pareto.rollout.agent,
                self.rl.agent,
                self.eval.agent,
            )
            for agent in agents:
                agent.tools = agent.tools.with_section("search", summariser=self.search_summariser)
        return self


class Pipeline:
    """Runs the stages of :class:`PipelineConfig` in ``run_dir``, skipping finished ones."""

    def __init__(self, cfg: PipelineConfig, run_dir: Path, on_stage: Callable[[str], None] | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.on_stage = on_stage or (lambda name: None)
        self.summaries: dict[str, Any] = {}

    def stage(
        self, name: str, body: Callable[[Path], dict[str, Any]], section: str | None = None
    ) -> dict[str, Any]:
        """Run ``body(stage_dir)`` unless ``stage_dir/stage.json`` says it finished. ``section``:
        the stage's config in :class:`PipelineConfig`, named by its tool-failure error."""
        stage_dir = self.run_dir / name
        done = stage_dir / STAGE_DONE
        if done.exists():
            log.info("pipeline: %s already done", name)
            summary = json.loads(done.read_text(encoding="utf-8"))
        else:
            self.on_stage(name)
            log.info("pipeline: %s", name)
            stage_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            try:
                summary = body(stage_dir)
            except ToolFailureError as e:
                if section is None:
                    raise
                raise e.in_section(section) from None
            summary = {**summary, "stage_seconds": time.perf_counter() - t0}
            atomic_write_json(done, summary)
        self.summaries[name] = summary
        atomic_write_json(self.run_dir / "pipeline.json", self.summaries)
        return summary

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        models = {"base": cfg.base_model} if cfg.eval_base else {}
        if cfg.warmup == "sft":
            policy = models["sft"] = self.supervised_warmup(cfg.base_model)
        elif cfg.warmup == "e3":
            warm = cfg.e3_warmup.model_copy(update={"agent": cfg.e3_warmup.agent.with_model(cfg.base_model)})
            self.stage(E3_WARMUP, lambda d: run_rl(warm, d))
            policy = models["e3"] = str(self.run_dir / E3_WARMUP / "model")
        else:
            policy = cfg.base_model
        start = policy

        earlier_stages: list[str] = []
        for k in range(1, cfg.curriculum_stages + 1):
            rollout = cfg.pareto.rollout.model_copy(
                update={"agent": cfg.pareto.rollout.agent.with_model(policy)}
            )
            pareto = cfg.pareto.model_copy(
                update={"rollout": rollout, "exclude": cfg.pareto.exclude + earlier_stages}
            )
            pareto_dir = self.run_dir / f"05-pareto-{k}"
            self.stage(pareto_dir.name, lambda d, p=pareto: run_pareto(p, d), "pareto")
            stage_questions = stage_file(pareto_dir / STAGES_DIR, 1)
            earlier_stages.append(str(stage_questions))
            if not load_questions(str(stage_questions)):
                log.warning("pipeline: Pareto stage %d selected no question; RL stage %d skipped", k, k)
                continue
            # the stage file holds questions of the task the Pareto stage sampled
            rl = cfg.rl.model_copy(
                update={
                    "agent": cfg.rl.agent.with_model(policy),
                    "data": str(stage_questions),
                    "task": rollout.data_ref().task_spec,
                }
            )
            self.stage(f"06-rl-{k}", lambda d, r=rl: run_rl(r, d))
            policy = str(self.run_dir / f"06-rl-{k}" / "model")

        if policy != start:
            models["rl"] = policy
            if not cfg.eval_warmup:
                models.pop(cfg.warmup, None)  # the warm-up's model is labelled by its kind
        eval_dirs = []
        for label, model in models.items():
            ev = cfg.eval.model_copy(update={"agent": cfg.eval.agent.with_model(model)})
            eval_dir = self.run_dir / "07-eval" / label  # the directory name labels the run in the report
            self.stage(f"07-eval/{label}", lambda d, e=ev: run_eval(e, d), "eval")
            eval_dirs.append(eval_dir)
        # the comparison of the eval runs, with the RL curves and Pareto selections of this run's stages
        _, rl_dirs, pareto_dirs = pipeline_stage_dirs(self.run_dir)
        html, md = write_report([*eval_dirs, *rl_dirs, *pareto_dirs], self.run_dir / REPORT, cfg.eval.report)
        self.summaries["report"] = {"html": str(html), "markdown": str(md)}
        atomic_write_json(self.run_dir / "pipeline.json", self.summaries)
        return self.summaries

    def supervised_warmup(self, policy: str) -> str:
        """Cold start (when configured), flywheel and SFT from ``policy``; the fine-tuned model."""
        cfg = self.cfg
        sft_data: list[Path] = []
        if cfg.cold_start:
            cold = cfg.cold_start_data.model_copy(deep=True)
            cold.cold_start.enabled = True
            cold.agent = cold.agent.with_model(policy)
            self.stage("01-cold-start-data", lambda d: run_flywheel(cold, d), "cold_start_data")
            cold_file = self.run_dir / "01-cold-start-data" / SFT_FILE
            sft_data.append(cold_file)
            cold_sft = cfg.cold_start_sft.model_copy(update={"model": policy, "data": str(cold_file)})
            self.stage("02-cold-start-sft", lambda d: run_sft(cold_sft, d))
            policy = str(self.run_dir / "02-cold-start-sft" / cold_sft.output)

        flywheel = cfg.flywheel.model_copy(update={"agent": cfg.flywheel.agent.with_model(policy)})
        self.stage("03-flywheel", lambda d: run_flywheel(flywheel, d), "flywheel")
        sft_data.insert(0, self.run_dir / "03-flywheel" / SFT_FILE)

        def sft_body(d: Path) -> dict[str, Any]:
            files = sft_data if cfg.sft_includes_cold_start else sft_data[:1]
            merged = d / "sft_data.jsonl"
            # ids are unique per export; the stage's name keeps them unique across exports
            rows = [{**obj, "id": f"{f.parent.name}/{obj['id']}"} for f in files for _, obj in iter_jsonl(f)]
            atomic_write_jsonl(merged, rows)
            return run_sft(cfg.sft.model_copy(update={"model": policy, "data": str(merged)}), d)

        self.stage("04-sft", sft_body)
        return str(self.run_dir / "04-sft" / cfg.sft.output)


def run_pipeline(
    cfg: PipelineConfig, run_dir: Path, on_stage: Callable[[str], None] | None = None
) -> dict[str, Any]:
    return Pipeline(cfg, run_dir, on_stage).run()


def pipeline_finished(run_dir: Path) -> bool:
    """Whether a pipeline run has finished: its report is written after the last eval."""
    summary = Path(run_dir) / "pipeline.json"
    return summary.is_file() and "report" in json.loads(summary.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# what the pipeline and the demo print at the end


def dir_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed)."""
    total = 0
    for p in Path(path).rglob("*"):
        if p.is_file() and not p.is_symlink():
            total += p.stat().st_size
    return total


def format_size(size: int) -> str:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


def format_seconds(seconds: float) -> str:
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def eval_metrics(run_dir: Path, summaries: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``metrics.json`` of each evaluated model, by label (base, sft, rl), in run order."""
    out = {}
    for name in summaries:
        if name.startswith("07-eval/"):
            path = Path(run_dir) / name / "metrics.json"
            out[name.split("/", 1)[1]] = json.loads(path.read_text(encoding="utf-8"))
    return out


def results_tables(run_dir: Path, summaries: dict[str, Any]) -> list[Any]:
    """The evaluated models side by side: per data set the rows ``etagent eval`` prints (one
    column per model), and with several data sets the overall means as ``etagent report`` prints."""
    from etagent.report.format import overall_table, terminal_table

    metrics = eval_metrics(run_dir, summaries)
    names: list[str] = []
    for m in metrics.values():
        names += [n for n in m["datasets"] if n not in names]
    tables = [
        terminal_table(f"results: {name}", {label: m["datasets"].get(name) for label, m in metrics.items()})
        for name in names
    ]
    if len(names) > 1:
        overall = {label: m["overall"] for label, m in metrics.items()}
        tables.append(overall_table("results: overall (mean over data sets)", overall))
    return tables


def stage_times_table(summaries: dict[str, Any]) -> Any:
    """Wall time of each stage (``stage_seconds`` of its ``stage.json``: the invocation that finished
    it; a stage resumed after a kill counts only its last part)."""
    from rich.table import Table

    table = Table(title="stage times")
    table.add_column("stage")
    table.add_column("time", justify="right")
    total = 0.0
    for name, summary in summaries.items():
        seconds = summary.get("stage_seconds") if isinstance(summary, dict) else None
        if seconds is None:
            continue
        total += seconds
        table.add_row(name, format_seconds(seconds))
    table.add_row("total", format_seconds(total))
    return table
