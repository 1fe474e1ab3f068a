"""The ``etagent`` command line: one subcommand per stage, thin over the library.

Every stage command takes ``--config FILE`` (YAML mapping 1:1 onto the stage's config model),
``--set key.path=value`` overrides (repeatable), and ``--run-dir DIR`` (default
``runs/<command>-<time>``; pointing it at an existing run resumes that run).
"""

from __future__ import annotations

import os

# Must precede any torch import: busy-waiting OpenMP threads slow generation 5-20x as soon as
# anything else (a tool worker, a server) uses a core (docs/cpu.md 3.3).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from etagent.config import ConfigError, load_config, read_yaml
from etagent.io import DataError
from etagent.rundir import CONFIG_FILE, new_run_dir, prepare_run_dir
from etagent.tools.base import Tool

app = typer.Typer(
    name="etagent",
    help="Train effective tool-integrated reasoning agents (ET-Agent).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tool_app = typer.Typer(
    help="Run one tool call and print the result exactly as the agent sees it.", no_args_is_help=True
)
data_app = typer.Typer(help="Data sets: generate the embedded tool world.", no_args_is_help=True)
app.add_typer(tool_app, name="tool")
app.add_typer(data_app, name="data")

console = Console(stderr=True)
C = TypeVar("C", bound=BaseModel)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", "-s", help="override, e.g. --set agent.backend.kind=openai")
]
DataOpt = Annotated[
    str | None, typer.Option(help="task:split (toolworld:dev), a task YAML file[:split], or a question file")
]
TaskOpt = Annotated[str | None, typer.Option(help="the task of a question file given as --data")]
BackendOpt = Annotated[
    str | None, typer.Option(help="hf, openai, expert (the task's oracle) or pkg.mod:Class")
]
FewShotOpt = Annotated[int | None, typer.Option(help="the task's example trajectories in the prompt")]
RunDirOpt = Annotated[Path | None, typer.Option("--run-dir", help="run directory (an existing one resumes)")]


def _load(
    cls: type[C],
    config: Path | None,
    overrides: list[str] | None,
    shortcuts: dict[str, Any],
    run_dir: Path | None = None,
) -> C:
    """Defaults <- saved config of a resumed run <- --config <- shortcut options <- --set."""
    base: dict[str, Any] = {}
    if run_dir is not None and (run_dir / CONFIG_FILE).exists() and config is None:
        base = read_yaml(run_dir / CONFIG_FILE)
    extra = [
        f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in shortcuts.items() if v is not None
    ]
    return load_config(cls, config, extra + list(overrides or []), base=base)


def _setup_logging(verbose: bool = False) -> None:
    from etagent.runtime import process_rank

    root = logging.getLogger()
    ours = not root.handlers  # else a host (a notebook, pytest) configured logging: leave its handlers be
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # in a job of several processes the main one reports progress; the others only problems
    logging.getLogger("etagent").setLevel(logging.INFO if process_rank() == 0 else logging.WARNING)
    from etagent.train.progress import console_filter

    if ours:
        for handler in root.handlers:  # the console: records marked file-only stay in log.txt
            handler.addFilter(console_filter)


def _summary_table(title: str, summaries: dict[str, dict[str, Any]]) -> Table:
    keys = [
        ("exact_match", "correct (EM)"),
        ("f1", "F1"),
        ("format_valid", "format valid"),
        ("mean_tool_calls", "tool calls / traj"),
        ("at_min_tool_calls", "at minimal calls"),
        ("redundant_call_rate", "redundant"),
        ("insufficient_call_rate", "insufficient"),
        ("mean_model_tokens", "model tokens"),
    ]
    table = Table(title=title)
    table.add_column("metric")
    for name in summaries:
        table.add_column(name, justify="right")
    for key, label in keys:
        if not any(key in s for s in summaries.values()):
            continue
        cells = []
        for s in summaries.values():
            v = s.get(key)
            cells.append("-" if v is None else (f"{v:.1f}" if key == "mean_model_tokens" else f"{v:.3f}"))
        table.add_row(label, *cells)
    if any("failed_tool_calls" in s for s in summaries.values()):
        table.add_row("failed tool calls", *[_failed_calls(s) for s in summaries.values()])
    table.add_row("trajectories", *[str(s.get("trajectories", 0)) for s in summaries.values()])
    return table


def _failed_calls(summary: dict[str, Any]) -> str:
    """``k of n``: the tool calls that failed of those run (rollout/stage.py ``tool_failures``)."""
    if "failed_tool_calls" not in summary:
        return "-"
    return f"{summary['failed_tool_calls']} of {summary.get('tool_calls_run', 0)}"


def _keep_summary(run: Any, *args: Any) -> tuple[dict[str, Any], Exception | None]:
    """``run(*args)``'s summary, and the stage's tool-failure error if it raised one: the summary
    is printed before the error (the stage wrote everything before raising)."""
    from etagent.rollout.stage import ToolFailureError

    try:
        return run(*args), None
    except ToolFailureError as e:
        return e.summary, e


@app.command()
def rollout(
    config: ConfigOpt = None,
    data: DataOpt = None,
    task: TaskOpt = None,
    n: Annotated[int | None, typer.Option("--n", help="trajectories per question")] = None,
    backend: BackendOpt = None,
    model: Annotated[str | None, typer.Option(help="embedded, tiny, or a local model dir")] = None,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    few_shot: FewShotOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Multi-turn rollouts with tools; writes trajectories.jsonl (resumable) and a summary."""
    from etagent.rollout.stage import RolloutConfig, run_rollout

    cfg = _load(
        RolloutConfig,
        config,
        set_,
        {
            "data": data,
            "task": task,
            "n": n,
            "agent.backend.kind": backend,
            "agent.backend.model": model,
            "limit": limit,
            "agent.few_shot": few_shot,
        },
        run_dir,
    )
    run_dir = run_dir or new_run_dir("rollout")
    prepare_run_dir(run_dir, cfg)
    summary, failure = _keep_summary(run_rollout, cfg, run_dir)
    console.print(
        _summary_table(
            f"rollout {cfg.data} ({cfg.agent.backend.kind}:{cfg.agent.backend.model})", {"run": summary}
        )
    )
    console.print(f"trajectories: {run_dir / cfg.output}")
    if failure is not None:
        raise failure


@tool_app.command("search")
def tool_search(
    query: Annotated[str, typer.Option("--query", "-q", help="the search query")],
    config: ConfigOpt = None,
    corpus: CorpusOpt = None,
    task: CorpusTaskOpt = "toolworld",
    set_: SetOpt = None,
) -> None:
    """One search call; prints the result text the agent would see."""
    from etagent.tools.search import SearchTool

    _call_tool_once(SearchTool.from_config(_search_config(config, set_, corpus, task)), query)


@tool_app.command("python")
def tool_python(
    code_file: Annotated[Path, typer.Option("--code-file", "-f", help="file with the code ('-' for stdin)")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """One sandboxed Python call; prints the result text the agent would see."""
    from etagent.tools.python_tool import PythonConfig, PythonTool

    code = sys.stdin.read() if str(code_file) == "-" else _read_text(code_file)
    _call_tool_once(PythonTool.from_config(_load(PythonConfig, config, set_, {})), code)


CorpusOpt = Annotated[str | None, typer.Option(help="JSONL corpus {id,title,text}; default: the task's")]
CorpusTaskOpt = Annotated[
    str, typer.Option(help="the task whose corpus is searched when --corpus is not given")
]


def _search_config(config: Path | None, overrides: list[str] | None, corpus: str | None, task: str) -> Any:
    """The search tool's config; a local index without a corpus searches the task's."""
    from etagent.tasks import resolve_task
    from etagent.tools.search import SearchConfig

    cfg = _load(SearchConfig, config, overrides, {"corpus": corpus})
    if cfg.corpus is None and cfg.backend != "remote":
        task_corpus = resolve_task(task).corpus()
        if task_corpus is None:
            raise ConfigError(f"task {task!r} has no corpus; give --corpus")
        cfg.corpus = str(task_corpus)
    return cfg


def _call_tool_once(tool: Tool, content: str) -> None:
    """Print the result text exactly as it would be inserted; exit 1 unless the call succeeded."""
    try:
        result = tool.call(content)
    finally:
        tool.close()
    print(result.text)
    if result.status != "ok":
        raise typer.Exit(1)


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: file does not exist")
    return path.read_text(encoding="utf-8")


KeepAliveOpt = Annotated[
    float,
    typer.Option(
        min=0.1,
        help="seconds an idle connection stays open; keep it longer than clients' pools keep theirs "
        "(httpx 5 s, aiohttp 15 s), or a request sent as the server closes is lost",
    ),
]


@app.command("serve-retriever")
def serve_retriever(
    config: ConfigOpt = None,
    corpus: CorpusOpt = None,
    task: CorpusTaskOpt = "toolworld",
    host: str = "127.0.0.1",
    port: int = 1243,
    set_: SetOpt = None,
    default_topk: Annotated[
        int,
        typer.Option(min=1, max=1000, help="passages for a /retrieve request without topk (Search-R1: 3)"),
    ] = 3,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="largest request body, MiB; larger ones get HTTP 413")
    ] = 4.0,
    max_query_chars: Annotated[
        int, typer.Option(min=1, help="longest query, characters; longer ones get HTTP 422")
    ] = 8192,
    max_batch: Annotated[
        int, typer.Option(min=1, help="most queries in one request; more get HTTP 422")
    ] = 4096,
    keep_alive_s: KeepAliveOpt = 75.0,
) -> None:
    """A retrieval server speaking the FlashRAG (/search, /batch_search) and Search-R1 (/retrieve) APIs."""
    from etagent.tools.search.server import RetrieverLimits, serve

    limits = RetrieverLimits(
        max_body_bytes=int(max_body_mb * 2**20), max_query_chars=max_query_chars, max_batch=max_batch
    )
    serve(
        _search_config(config, set_, corpus, task),
        host=host,
        port=port,
        default_top_k=default_topk,
        limits=limits,
        keep_alive_s=keep_alive_s,
    )


@app.command("serve-model")
def serve_model(
    config: ConfigOpt = None,
    model: Annotated[str | None, typer.Option(help="embedded, tiny, or a local model dir")] = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    dev_mode: Annotated[
        bool,
        typer.Option(
            help="add vLLM's dev-mode weight routes (POST /collective_rpc reload_weights, "
            "/reset_prefix_cache) for RL's vllm_server rollout engine; local use only"
        ),
    ] = False,
    set_: SetOpt = None,
    max_body_mb: Annotated[
        float, typer.Option(min=0.001, help="largest request body, MiB; larger ones get HTTP 413")
    ] = 32.0,
    max_sequences: Annotated[
        int, typer.Option(min=1, help="most sequences (prompts x n) in one request; more get HTTP 422")
    ] = 1024,
    max_logprobs: Annotated[
        int, typer.Option(min=0, help="most log-prob alternatives per token; more get HTTP 422")
    ] = 20,
    max_model_len: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="context window: prompt + max_tokens beyond it get HTTP 400 (default: the model's "
            "max_position_embeddings); listed in /v1/models for clients",
        ),
    ] = None,
    keep_alive_s: KeepAliveOpt = 75.0,
) -> None:
    """An OpenAI-compatible /v1/completions server over the hf backend (log-probs, token ids)."""
    from etagent.backends.config import BackendConfig
    from etagent.backends.server import ModelServerLimits, serve

    cfg = _load(BackendConfig, config, set_, {"model": model, "kind": "hf"})
    limits = ModelServerLimits(
        max_body_bytes=int(max_body_mb * 2**20),
        max_sequences=max_sequences,
        max_logprobs=max_logprobs,
        max_model_len=max_model_len,
    )
    serve(cfg, host=host, port=port, dev_mode=dev_mode, limits=limits, keep_alive_s=keep_alive_s)


@data_app.command("toolworld")
def data_toolworld(
    out: Annotated[Path, typer.Option(help="output directory")],
    seed: int = 0,
) -> None:
    """Write the tool world (corpus.jsonl, train/dev/test.jsonl) to a directory."""
    from etagent.tasks.toolworld import write_toolworld

    path = write_toolworld(out, seed=seed)
    console.print(f"tool world written to {path}")


def _run_stage(
    command: str,
    cls: type[C],
    config: Path | None,
    overrides: list[str] | None,
    shortcuts: dict[str, Any],
    run_dir: Path | None,
    runner: Any,
) -> tuple[C, Path, dict[str, Any]]:
    """The common shape of a stage command: resolve the config, prepare the run dir, run."""
    cfg = _load(cls, config, overrides, shortcuts, run_dir)
    run_dir = run_dir or new_run_dir(command)
    prepare_run_dir(run_dir, cfg)
    summary, failure = _keep_summary(runner, cfg, run_dir)
    if failure is not None:  # the summary of the stage that failed (in a pipeline: one of its stages)
        _print_summary(summary, tuple(k for k in summary if not isinstance(summary[k], (list, dict))))
        raise failure
    return cfg, run_dir, summary


def _print_summary(summary: dict[str, Any], keys: tuple[str, ...]) -> None:
    table = Table(show_header=False)
    for key in keys:
        if summary.get(key) is not None:
            value = summary[key]
            table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


@app.command()
def flywheel(
    config: ConfigOpt = None,
    data: DataOpt = None,
    task: TaskOpt = None,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    rounds: Annotated[int | None, typer.Option(help="evolution rounds per question")] = None,
    policy: Annotated[str | None, typer.Option(help="policy model: embedded or a model dir")] = None,
    cold_start: Annotated[
        bool | None,
        typer.Option("--cold-start/--no-cold-start", help="write the task oracle's trajectories instead"),
    ] = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Self-evolving data flywheel; writes buffers.jsonl (resumable), sft.jsonl and export_stats.json."""
    from etagent.flywheel import FlywheelConfig, run_flywheel

    shortcuts = {
        "data": data,
        "task": task,
        "limit": limit,
        "rounds": rounds,
        "agent.backend.model": policy,
        "cold_start.enabled": cold_start,
    }
    _, run_dir, summary = _run_stage(
        "flywheel", FlywheelConfig, config, set_, shortcuts, run_dir, run_flywheel
    )
    console.print_json(data=summary)
    console.print(f"sft set: {run_dir / 'sft.jsonl'}")


@app.command()
def sft(
    config: ConfigOpt = None,
    data: Annotated[str | None, typer.Option(help="sft.jsonl (the flywheel's export)")] = None,
    model: Annotated[str | None, typer.Option(help="embedded, tiny, or a local model dir")] = None,
    max_steps: Annotated[int | None, typer.Option(help="optimizer steps")] = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Fine-tune on an SFT set (TRL, full or LoRA, tool results masked); writes <run-dir>/model."""
    from etagent.train.sft import SFTConfig, run_sft

    shortcuts = {"data": data, "model": model, "max_steps": max_steps}
    cfg, run_dir, summary = _run_stage("sft", SFTConfig, config, set_, shortcuts, run_dir, run_sft)
    _print_summary(summary, tuple(summary))
    console.print(f"model: {run_dir / cfg.output}")


@app.command()
def pareto(
    config: ConfigOpt = None,
    data: DataOpt = None,
    task: TaskOpt = None,
    model: Annotated[str | None, typer.Option(help="the current policy: embedded or a model dir")] = None,
    group_size: Annotated[int | None, typer.Option("--group-size", "-g", help="samples per question")] = None,
    limit: Annotated[int | None, typer.Option(help="first N questions only")] = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Group sampling, scoring and Pareto selection; writes curriculum stages under stages/."""
    from etagent.pareto.stage import ParetoStageConfig, run_pareto

    shortcuts = {
        "rollout.data": data,
        "rollout.task": task,
        "rollout.agent.backend.model": model,
        "rollout.n": group_size,
        "rollout.limit": limit,
    }
    _, run_dir, summary = _run_stage(
        "pareto", ParetoStageConfig, config, set_, shortcuts, run_dir, run_pareto
    )
    _print_summary(summary, tuple(k for k in summary if not isinstance(summary[k], (list, dict))))
    console.print(f"stages: {run_dir / 'stages'}")


@app.command()
def rl(
    config: ConfigOpt = None,
    data: Annotated[
        str | None, typer.Option(help="questions, e.g. a Pareto stage file (with --task)")
    ] = None,
    task: TaskOpt = None,
    model: Annotated[str | None, typer.Option(help="the policy to train: embedded or a model dir")] = None,
    max_steps: Annotated[int | None, typer.Option(help="rollout steps")] = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Behaviour-calibration RL (GRPO + ET-Agent reward + ARPO branching); writes <run-dir>/model."""
    from etagent.rl.config import RLConfig

    def runner(cfg: RLConfig, rd: Path) -> dict[str, Any]:
        _check_inputs(models=[cfg.model], data=[cfg.data_ref])  # the policy to train, its questions
        from etagent.rl.trl_engine import run_rl  # TRL and datasets: seconds to import

        return run_rl(cfg, rd)

    shortcuts = {"data": data, "task": task, "agent.backend.model": model, "max_steps": max_steps}
    _, run_dir, summary = _run_stage("rl", RLConfig, config, set_, shortcuts, run_dir, runner)
    _print_summary(summary, ("steps", "train_seconds", "seconds_per_step", "model", "train_log"))


def _check_inputs(models: list[str], data: list[Any]) -> None:
    """Fail now on a missing model directory or data file, not after the libraries are imported or
    earlier stages have run for minutes; ``data``: callables that resolve a data setting."""
    from etagent.backends.model_store import EMBEDDED, TINY, resolve_model

    for name in models:
        if name not in (EMBEDDED, TINY):  # those two are built on first use, which takes a while
            resolve_model(name)
    for resolve in data:
        resolve()


def _check_pipeline_inputs(cfg: Any) -> None:
    """The inputs of a pipeline that come from its config (the later stages read earlier outputs)."""
    from functools import partial

    from etagent.tasks import resolve_data

    data = [cfg.flywheel.data_ref, cfg.pareto.rollout.data_ref]
    if cfg.cold_start:
        data.insert(0, cfg.cold_start_data.data_ref)
    data += [partial(resolve_data, d.data, d.task) for d in cfg.eval.datasets]
    _check_inputs(models=[cfg.base_model], data=data)


def _run_pipeline(
    command: str, cls: type[C], config: Path | None, set_: list[str] | None, run_dir: Path | None
) -> None:
    from etagent.pipeline import run_pipeline

    def on_stage(name: str) -> None:
        console.rule(f"[bold]{command}: {name}")

    def runner(cfg: Any, rd: Path) -> dict[str, Any]:
        _check_pipeline_inputs(cfg)
        return run_pipeline(cfg, rd, on_stage)

    _, run_dir, summary = _run_stage(command, cls, config, set_, {}, run_dir, runner)
    from etagent.pipeline import dir_size, format_size, results_tables, stage_times_table

    for table in [*results_tables(run_dir, summary), stage_times_table(summary)]:
        console.print(table)
    console.print(f"run directory: {run_dir} ({format_size(dir_size(run_dir))} on disk)")
    console.print(f"report: {summary['report']['html']}")


@app.command()
def pipeline(config: ConfigOpt = None, set_: SetOpt = None, run_dir: RunDirOpt = None) -> None:
    """The whole method in one run directory: (cold start) flywheel, SFT, K x (Pareto, RL), eval, report.

    Killed at any point, the same command with --run-dir resumes where it stopped."""
    from etagent.pipeline import PipelineConfig

    _run_pipeline("pipeline", PipelineConfig, config, set_, run_dir)


@app.command()
def demo(run_dir: RunDirOpt = None, config: ConfigOpt = None, set_: SetOpt = None) -> None:
    """The pipeline on the embedded defaults, sized for a 2-core CPU; ends with the results of the
    base, fine-tuned and RL models, the stage times, the run directory's size and the report's path."""
    from etagent.demo import DemoConfig

    _run_pipeline("demo", DemoConfig, config, set_, run_dir)


# -- evaluation: eval, score, report -------------------------------------------------------------


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    """One column per data set plus the overall means (metrics.json), percentages x100."""
    from etagent.report.format import terminal_table

    return terminal_table(title, metrics["datasets"], metrics["overall"])


@app.command("eval")
def eval_(
    config: ConfigOpt = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            help="data set (repeatable; replaces the config's): toolworld:<split>, a task YAML, a file"
        ),
    ] = None,
    backend: BackendOpt = None,
    model: Annotated[str | None, typer.Option(help="embedded, tiny, or a local model dir")] = None,
    limit: Annotated[int | None, typer.Option(help="first N questions of every data set")] = None,
    few_shot: FewShotOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
) -> None:
    """Rollouts on one or more data sets, then metrics.json, report.md and report.html (resumable)."""
    from etagent.eval.stage import EvalConfig, run_eval

    datasets = [{"data": d} for d in data] if data else None
    cfg = _load(
        EvalConfig,
        config,
        set_,
        {
            "datasets": datasets,
            "agent.backend.kind": backend,
            "agent.backend.model": model,
            "agent.few_shot": few_shot,
        },
        run_dir,
    )
    if limit is not None:
        for dataset in cfg.datasets:
            dataset.limit = limit
    run_dir = run_dir or new_run_dir("eval")
    prepare_run_dir(run_dir, cfg)
    metrics, failure = _keep_summary(run_eval, cfg, run_dir)
    console.print(_metrics_table(f"eval ({cfg.agent.backend.kind}:{cfg.agent.backend.model})", metrics))
    console.print(f"report: {run_dir / 'report.html'}")
    if failure is not None:
        raise failure


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(help="an `etagent eval` run directory")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Re-score saved trajectories without generating: scores.jsonl, metrics.json and the reports."""
    from etagent.eval.stage import EvalConfig, check_eval_run_dir, rescore

    check_eval_run_dir(run_dir)
    cfg = _load(EvalConfig, config, set_, {}, run_dir)
    metrics = rescore(run_dir, cfg)
    console.print(_metrics_table(f"score {run_dir}", metrics))
    console.print(f"report: {run_dir / 'report.html'}")


@app.command()
def report(
    run_dirs: Annotated[
        list[Path],
        typer.Argument(
            help="run directories: scored eval runs (the first is the baseline), RL and Pareto runs, "
            "or a pipeline run (its eval, RL and Pareto stages)"
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="HTML file (the .md goes next to it); default: the last run dir"),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Compare runs side by side (before/after training), with RL curves and the Pareto selection:
    report.html and report.md."""
    from etagent.report import ReportConfig
    from etagent.report.build import build_report
    from etagent.report.format import OVERALL_METRICS, fmt_value
    from etagent.report.markdown import shown_overall_of

    cfg = _load(ReportConfig, config, set_, {})
    html_path, md_path, inputs = build_report(run_dirs, output, cfg)
    if inputs.evals:
        table = Table(title="overall (mean over data sets)")
        table.add_column("metric")
        for run in inputs.evals:
            table.add_column(run.label, justify="right")
        overall = [shown_overall_of(run) for run in inputs.evals]
        for spec in OVERALL_METRICS:
            table.add_row(spec.label, *[fmt_value(o.get(spec.key), spec.kind) for o in overall])
        console.print(table)
    for rl in inputs.rl:
        console.print(f"RL run {rl.label}: {len(rl.steps)} steps")
    for p in inputs.pareto:
        console.print(
            f"Pareto run {p.label}: {sum(q.stage is not None for q in p.questions)} of {len(p.questions)} selected"
        )
    console.print(f"markdown: {md_path}")
    print(html_path)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input or a missing service: shown as one line, not a traceback."""
    from etagent.backends.openai_backend import BackendResponseError
    from etagent.registry import RegistryError
    from etagent.rollout.stage import ToolFailureError
    from etagent.tools.sandbox.launch import SandboxUnavailable
    from etagent.tools.search.retriever import RetrieverError

    return (
        ConfigError,
        DataError,
        FileNotFoundError,
        ConnectionError,
        SandboxUnavailable,
        RetrieverError,
        BackendResponseError,
        RegistryError,
        ToolFailureError,
    )


#: FutureWarnings of dependencies about their own internal calls, shown once per run and not
#: actionable by a user: silenced in the command line only (tests and library users see them)
KNOWN_DEPENDENCY_WARNINGS = (
    r"`past_key_values` is deprecated",  # transformers' deprecate_kwarg, called by its own generate()
    r"`is_gradient_checkpointing` is deprecated",  # read by TRL and PEFT
)


class _Interrupts:
    """The SIGINT handler of the command line: the first Ctrl-C raises KeyboardInterrupt (the stage
    stops; its finally blocks close the tools, the model and the files), later ones are ignored, so
    that a second Ctrl-C cannot break the shutdown (a KeyboardInterrupt raised inside a finalizer or
    an atexit handler: "Exception ignored in ... weakref ...")."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        if self.count == 1:
            raise KeyboardInterrupt


def resume_command(argv: list[str], run_dir: Path) -> str:
    """``argv`` (the command as run) with ``--run-dir run_dir`` in place of any ``--run-dir``, as
    one shell line; the program by its name when that name finds it on PATH."""
    import shlex
    import shutil

    program = argv[0]
    name = Path(program).name
    found = shutil.which(name)
    if found is not None and Path(program).exists() and Path(found).resolve() == Path(program).resolve():
        program = name
    args: list[str] = []
    rest = iter(argv[1:])
    for arg in rest:
        if arg == "--run-dir":
            next(rest, None)
        elif not arg.startswith("--run-dir="):
            args.append(arg)
    return shlex.join([program, *args, "--run-dir", str(run_dir)])


def _report_interrupt() -> None:
    """One line: what was kept and how to resume; then exit 130 (128 + SIGINT). Further Ctrl-Cs
    are ignored from here on: the interpreter's shutdown (atexit, finalizers) runs undisturbed."""
    import signal

    from etagent.rundir import command_run_dir

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    run_dir = command_run_dir()
    if run_dir is None:
        line = "interrupted"  # a command without a run directory (score, report, tool, serve-*)
    else:
        line = (
            f"interrupted: the finished work is kept in {run_dir}; resume with: "
            f"{resume_command(sys.argv, run_dir)}"
        )
    sys.stderr.write("\n")  # end a progress bar's line
    console.print(line, highlight=False, markup=False, soft_wrap=True)
    sys.exit(130)


def main() -> None:
    import signal
    import warnings

    for message in KNOWN_DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=FutureWarning)
    # the same deprecation, also logged once by transformers' output-capturing wrapper
    logging.getLogger("transformers.utils.generic").addFilter(
        lambda record: "`past_key_values`/`cache_params` are deprecated" not in record.getMessage()
    )
    _setup_logging()
    interrupts = _Interrupts()
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when SIGINT is ignored
        signal.signal(signal.SIGINT, interrupts)
    try:
        app()
    except KeyboardInterrupt:  # outside typer, which turns one into exit 130 silently
        _report_interrupt()
    except SystemExit as e:
        if e.code == 130:  # typer's exit for a KeyboardInterrupt (also when a library replaced our handler)
            _report_interrupt()
        raise
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        console.print(f"[red]error:[/red] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
