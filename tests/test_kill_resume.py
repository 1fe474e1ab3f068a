"""Real kills: a resumable stage run by the CLI is killed with SIGKILL at a random point, resumed
on the same run directory, and must then hold exactly what an uninterrupted run writes (every
record once, none lost, the same content; trained weights within float noise).

The record stages (rollout, flywheel, Pareto) run on the tool world with its expert (no model),
so the work is quick; most of each test is the CLI's start-up. The training stages (SFT, RL) and
the pipeline run on the tiny random-weight model. The killed run is the CLI; the resume and the
uninterrupted run use the configuration the CLI saved in its run directory, in this process. The
kill point is drawn at random (``ETAGENT_KILL_SEED`` replays the draw) and lies inside the run:
after the first question's records (or the first checkpoint) are written and before the last ones
are.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from etagent.config import dump_config, load_config
from etagent.flywheel.buffer import BufferRecord
from etagent.flywheel.stage import FlywheelConfig, run_flywheel
from etagent.io import iter_jsonl, read_records
from etagent.pareto.stage import GROUPS, SCORES, STAGES_DIR, ParetoStageConfig, run_pareto
from etagent.pipeline import PipelineConfig, run_pipeline
from etagent.records import Trajectory
from etagent.rl import RLConfig, run_rl
from etagent.rollout.stage import RolloutConfig, run_rollout
from etagent.train.sft import SFTConfig, run_sft
from tests.train.conftest import write_sft

QUESTIONS = 40
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Stage:
    args: list[str]  # the CLI command and its arguments (the run directory comes last)
    output: str  # the resumable output file
    kind: type  # its record type
    per_question: int  # records per question
    cfg: type  # the stage's config
    run: Callable[..., Any]  # run(cfg, run_dir): the stage, resuming what run_dir holds


STAGES = {
    "rollout": Stage(
        [
            "rollout",
            "--backend",
            "expert",
            "--data",
            "toolworld:train",
            "--n",
            "2",
            "--limit",
            str(QUESTIONS),
        ],
        "trajectories.jsonl",
        Trajectory,
        2,
        RolloutConfig,
        run_rollout,
    ),
    # several batches of 8 questions evolved together (one seed and one batched generate each)
    "flywheel": Stage(
        [
            "flywheel",
            "-c",
            str(REPO / "configs" / "flywheel_cold_start.yaml"),
            "--limit",
            str(QUESTIONS),
            "--set",
            "concurrency=8",
        ],
        "buffers.jsonl",
        BufferRecord,
        1,
        FlywheelConfig,
        run_flywheel,
    ),
    # the group sampling of `etagent pareto` (G samples of a question written together); the scores
    # and the curriculum stages are computed from all of them once the sampling is complete
    "pareto": Stage(
        [
            "pareto",
            "-c",
            str(REPO / "configs" / "pareto_toolworld.yaml"),
            "--limit",
            str(QUESTIONS),
            "--group-size",
            "4",
            "--set",
            "rollout.agent.backend.kind=expert",
            "--set",
            "rollout.agent.backend.expert.missing_rate=0.5",
            "--set",
            "rollout.agent.backend.expert.redundant_rate=0.3",
            "--set",
            "selection.budget=8",
            "--set",
            "selection.stages=2",
        ],
        GROUPS,
        Trajectory,
        4,
        ParetoStageConfig,
        run_pareto,
    ),
}
#: fields that measure time, not content
TIMING = {"timings", "latency_s"}


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _content(obj: Any) -> Any:
    """A record as data, without the fields that measure time."""
    if isinstance(obj, dict):
        return {k: _content(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_content(v) for v in obj]
    return obj


def _files(folder: Path) -> list[str]:
    """The files under ``folder``, relative to its parent (the run directory)."""
    assert folder.is_dir(), folder
    return sorted(str(p.relative_to(folder.parent)) for p in folder.rglob("*") if p.is_file())


def _data(path: Path) -> Any:
    """A JSON or JSONL file as data, without the fields that measure time."""
    if path.suffix == ".jsonl":
        return [_content(obj) for _, obj in iter_jsonl(path)]
    return _content(json.loads(path.read_text(encoding="utf-8")))


def _by_sample(path: Path) -> dict[tuple[str, int], Any]:
    """The rows of a JSONL file by (question id, sample index), each once."""
    rows = {(o["question_id"], o["sample_index"]): _content(o) for _, o in iter_jsonl(path)}
    assert len(rows) == _lines(path), f"rows written twice in {path}"
    return rows


def _records(path: Path, kind: type) -> dict[tuple[str, int], Any]:
    rows = read_records(path, kind)
    keys = [(r.question_id, getattr(r, "sample_index", 0)) for r in rows]
    assert len(set(keys)) == len(keys), f"records written twice in {path}"
    return {k: _content(r.model_dump(mode="json")) for k, r in zip(keys, rows, strict=True)}


def _run_and_kill(args: list[str], run_dir: Path, ready: Callable[[], bool]) -> tuple[bool, str]:
    """Run ``etagent ARGS --run-dir RUN_DIR`` and SIGKILL it once ``ready()``; returns whether it
    was still running then and the end of its stderr (a kill is checked to be a SIGKILL exit)."""
    stderr = run_dir.parent / f"{run_dir.name}.stderr"
    with stderr.open("wb") as err:  # a file, not a pipe: progress bars would fill a pipe and block
        victim = subprocess.Popen(
            [sys.executable, "-m", "etagent.cli", *args, "--run-dir", str(run_dir)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        try:
            while not ready() and victim.poll() is None:
                time.sleep(0.001)
            running = victim.poll() is None
            victim.send_signal(signal.SIGKILL)
            victim.wait(timeout=60)
        finally:
            if victim.poll() is None:
                victim.kill()
    tail = stderr.read_text(errors="replace")[-3000:]
    assert not running or victim.returncode == -signal.SIGKILL, tail
    return running, tail


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_killed_at_a_random_point_resumes_to_the_uninterrupted_result(stage, tmp_path):
    st = STAGES[stage]
    seed = int(os.environ.get("ETAGENT_KILL_SEED", random.randrange(2**32)))
    # after a whole number of questions is written: at least one, at most half
    kill_after = st.per_question * random.Random(seed).randint(1, QUESTIONS // 2)
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    out = killed_dir / st.output
    running, err = _run_and_kill(st.args, killed_dir, lambda: _lines(out) >= kill_after)
    assert running, f"{stage} ended before the kill point (ETAGENT_KILL_SEED={seed}): {err}"
    written = _lines(out)
    assert kill_after <= written < st.per_question * QUESTIONS, (seed, written)

    cfg = load_config(st.cfg, killed_dir / "config.yaml")  # the configuration the CLI ran
    st.run(cfg, killed_dir)  # the resume
    st.run(cfg, straight_dir)  # the uninterrupted run
    resumed, expected = _records(out, st.kind), _records(straight_dir / st.output, st.kind)
    assert len(expected) == st.per_question * QUESTIONS
    assert resumed.keys() == expected.keys(), f"ETAGENT_KILL_SEED={seed}"
    for key, record in expected.items():
        assert resumed[key] == record, f"{key} differs after the resume (ETAGENT_KILL_SEED={seed})"
    if stage == "flywheel":  # the fine-tuning set is written from the buffers at the end
        straight_sft = [_content(o) for _, o in iter_jsonl(straight_dir / "sft.jsonl")]
        assert [_content(o) for _, o in iter_jsonl(killed_dir / "sft.jsonl")] == straight_sft
    if stage == "pareto":  # the scores, the selection and its stages are computed from the groups
        # one score row per sample, in the order the samples finished (concurrent, as the groups)
        assert _by_sample(killed_dir / SCORES) == _by_sample(straight_dir / SCORES), (
            f"ETAGENT_KILL_SEED={seed}"
        )
        for name in ("pareto_summary.json", *_files(straight_dir / STAGES_DIR)):
            assert _data(killed_dir / name) == _data(straight_dir / name), (
                f"{name} (ETAGENT_KILL_SEED={seed})"
            )


def test_a_flywheel_batch_cut_short_is_evolved_again_whole(tmp_path):
    """A buffer file that ends inside a batch (an older run, a copy cut short): the resumed run
    evolves that batch again as the uninterrupted run did and keeps only its missing questions."""
    cfg = load_config(
        FlywheelConfig, REPO / "configs" / "flywheel_cold_start.yaml", ["limit=20", "concurrency=8"]
    )
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    run_flywheel(cfg, straight)
    lines = (straight / "buffers.jsonl").read_text().splitlines(keepends=True)
    cut.mkdir()
    (cut / "buffers.jsonl").write_text("".join(lines[:11]))  # the second batch cut after 3 questions
    run_flywheel(cfg, cut)
    assert _records(cut / "buffers.jsonl", BufferRecord) == _records(straight / "buffers.jsonl", BufferRecord)


# ---------------------------------------------------------------------------------------------
# Training stages: killed between checkpoints or while one is being written


def text_reward(trajectories: Sequence[Trajectory], **_: Any) -> list[float]:
    """An RL reward term (``reward.extra_terms``) that tells the tiny model's samples apart by
    their text, so each group has a learning signal and the update depends on what was sampled."""
    return [zlib.crc32(t.response_text.encode()) % 1000 / 1000 for t in trajectories]


def _complete_checkpoint(folder: Path) -> bool:
    """``folder`` holds a whole checkpoint: the trainer state, written last, reads back."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return False
    return True


def _kill_training(args: list[str], run_dir: Path, steps: int, seed: int) -> str:
    """Run ``etagent ARGS --run-dir RUN_DIR`` and SIGKILL it at a point drawn from ``seed``: just
    after checkpoint k is complete, or as soon as checkpoint k+1 is begun (usually while it is
    being written), for k in [1, steps - 2]; returns where."""
    draw = random.Random(seed)
    k = draw.randint(1, steps - 2)
    checkpoints = run_dir / "checkpoints"
    if draw.random() < 0.5:
        where = f"after checkpoint-{k}"

        def ready() -> bool:
            return _complete_checkpoint(checkpoints / f"checkpoint-{k}")
    else:
        where = f"when checkpoint-{k + 1} was begun"

        def ready() -> bool:
            return (checkpoints / f"checkpoint-{k + 1}").exists()

    running, tail = _run_and_kill(args, run_dir, ready)
    assert running, f"{args[0]} ended before the kill {where} (ETAGENT_KILL_SEED={seed}): {tail}"
    assert not (run_dir / "model").exists(), where
    return f"killed {where} (ETAGENT_KILL_SEED={seed})"


def _log(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The per-step lines of a train log (those with a loss) by step, each step once."""
    steps = [obj for _, obj in iter_jsonl(run_dir / "train_log.jsonl") if "loss" in obj]
    by_step = {obj["step"]: obj for obj in steps}
    assert len(by_step) == len(steps), f"a step logged twice in {run_dir}: {[o['step'] for o in steps]}"
    return by_step


def _assert_same_weights(a: Path, b: Path, what: str, tol: float = 1e-5) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys(), what
    for name in wa:
        diff = (wa[name].float() - wb[name].float()).abs().max().item()
        assert diff <= tol, f"{name} differs by {diff:.2e} after the resume ({what})"


def _assert_trained(model: Path, base: Path) -> None:
    """The run changed the weights (else equal weights would prove nothing)."""
    trained, initial = load_file(str(model / "model.safetensors")), load_file(str(base / "model.safetensors"))
    assert any((trained[n].float() - initial[n].float()).abs().max() > 1e-4 for n in initial)


SFT_STEPS = 5


def test_sft_killed_at_a_random_point_resumes_to_the_uninterrupted_weights(tmp_path, tiny_model_path):
    seed = int(os.environ.get("ETAGENT_KILL_SEED", random.randrange(2**32)))
    data = write_sft(tmp_path / "sft.jsonl", 12)
    args = [
        "sft", "--data", str(data), "--model", str(tiny_model_path), "--max-steps", str(SFT_STEPS),
        "--set", "threads=1", "--set", "max_length=256", "--set", "batch_size=1", "--set", "grad_accum=2",
        "--set", "learning_rate=1e-3", "--set", "warmup_ratio=0", "--set", "save_steps=1",
    ]  # fmt: skip
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    where = _kill_training(args, killed_dir, SFT_STEPS, seed)

    cfg = load_config(SFTConfig, killed_dir / "config.yaml")
    resumed = run_sft(cfg, killed_dir)
    straight = run_sft(cfg, straight_dir)
    assert resumed["resumed_from_step"] >= 1, where  # resumed in the middle, not started again
    assert resumed["steps"] == straight["steps"] == SFT_STEPS
    log, expected = _log(killed_dir), _log(straight_dir)
    assert sorted(log) == sorted(expected) == list(range(1, SFT_STEPS + 1)), where
    for step, line in expected.items():  # the same batches in the same order, before and after
        assert log[step]["loss"] == pytest.approx(line["loss"], rel=1e-5), f"step {step}, {where}"
        assert log[step]["grad_norm"] == pytest.approx(line["grad_norm"], rel=1e-4), f"step {step}, {where}"
    _assert_trained(straight_dir / "model", tiny_model_path)
    _assert_same_weights(killed_dir / "model", straight_dir / "model", where)


RL_STEPS = 3


def test_rl_killed_in_the_middle_resumes_to_the_uninterrupted_steps_and_weights(tmp_path, tiny_model_path):
    """The rollouts are sampled: the resumed run must draw what the uninterrupted one drew at each
    step (the sampling seed of a rollout step follows from the step; the question order and torch's
    state come back from the checkpoint), so its steps and weights are the uninterrupted run's."""
    seed = int(os.environ.get("ETAGENT_KILL_SEED", random.randrange(2**32)))
    args = [
        "rl", "--model", str(tiny_model_path), "--max-steps", str(RL_STEPS),
        "--set", "threads=1", "--set", "logging.report_to=none", "--set", "agent.tools.enabled=[search]",
        "--set", "agent.budget.max_new_tokens_per_call=16", "--set", "agent.budget.max_response_tokens=32",
        "--set", "num_generations=2", "--set", "arpo.n=2", "--set", "arpo.initial_rollouts=1",
        "--set", "questions_per_step=2", "--set", "micro_batch_size=2", "--set", "save_steps=1",
        "--set", "learning_rate=1e-3", "--set", "limit=8",
        "--set", "reward.extra_terms=[{name: 'tests.test_kill_resume:text_reward', weight: 1.0}]",
    ]  # fmt: skip
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    where = _kill_training(args, killed_dir, RL_STEPS, seed)

    cfg = load_config(RLConfig, killed_dir / "config.yaml")
    resumed = run_rl(cfg, killed_dir)
    straight = run_rl(cfg, straight_dir)
    assert resumed["resumed_from"] is not None, where  # resumed in the middle, not started again
    assert resumed["steps"] == straight["steps"] == RL_STEPS
    log, expected = _log(killed_dir), _log(straight_dir)
    assert sorted(log) == sorted(expected) == list(range(1, RL_STEPS + 1)), where
    for step, line in expected.items():  # the same samples, rewards and update at every step
        for key in ("reward", "reward_std", "length", "generated_tokens", "loss", "grad_norm"):
            assert log[step][key] == pytest.approx(line[key], rel=1e-4, abs=1e-7), (
                f"{key} of step {step}, {where}"
            )
    assert any(line["grad_norm"] > 1e-6 for line in expected.values())  # the groups carried a signal
    _assert_trained(straight_dir / "model", tiny_model_path)
    _assert_same_weights(killed_dir / "model", straight_dir / "model", where)


# ---------------------------------------------------------------------------------------------
# The pipeline: killed inside a later stage, resumed; what every stage hands on is the same

PIPELINE_BUDGET = {"max_tool_calls": 2, "max_new_tokens_per_call": 16, "max_response_tokens": 32}
PIPELINE = {
    "base_model": "tiny",
    "cold_start_data": {"data": "toolworld:train", "limit": 4},
    "cold_start_sft": {"data": "", "max_steps": 1, "grad_accum": 1, "max_length": 512, "threads": 1},
    "eval_base": False,
    "flywheel": {"data": "toolworld:train", "limit": 2, "rounds": 1, "agent": {"budget": PIPELINE_BUDGET},
                 "continuation_budget": PIPELINE_BUDGET},
    "sft": {"data": "", "max_steps": 2, "grad_accum": 1, "max_length": 512, "threads": 1, "learning_rate": 1e-3},
    "pareto": {
        "rollout": {"data": "toolworld:train", "limit": 4, "n": 2, "agent": {"budget": PIPELINE_BUDGET}},
        "selection": {"budget": 2, "mixed_outcome_filter": "off"},
    },
    "rl": {"num_generations": 2, "use_arpo": False, "questions_per_step": 1, "micro_batch_size": 2,
           "max_steps": 2, "save_steps": 1, "threads": 1, "learning_rate": 1e-3, "logging": {"report_to": "none"},
           "agent": {"budget": PIPELINE_BUDGET}},
    "eval": {"datasets": [{"data": "toolworld:dev", "limit": 2}], "agent": {"budget": PIPELINE_BUDGET}},
}  # fmt: skip
#: where the pipeline may be killed: inside the Pareto sampling, between RL checkpoints, in an eval
PIPELINE_KILLS: dict[str, Callable[[Path], bool]] = {
    "during the Pareto sampling": lambda d: _lines(d / "05-pareto-1" / GROUPS) >= 2,
    "after the first RL checkpoint": lambda d: _complete_checkpoint(
        d / "06-rl-1" / "checkpoints" / "checkpoint-1"
    ),
    "during the evaluation of the RL model": lambda d: (d / "07-eval" / "rl").exists(),
}


# seven stages, twice: about 1.5 min with 2 shared cores
def test_the_pipeline_killed_in_a_later_stage_resumes_to_the_uninterrupted_results(tmp_path):
    seed = int(os.environ.get("ETAGENT_KILL_SEED", random.randrange(2**32)))
    where = random.Random(seed).choice(sorted(PIPELINE_KILLS))
    ready = PIPELINE_KILLS[where]
    config = tmp_path / "pipeline.yaml"
    config.write_text(dump_config(PipelineConfig.model_validate(PIPELINE)))
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    running, tail = _run_and_kill(["pipeline", "-c", str(config)], killed_dir, lambda: ready(killed_dir))
    what = f"killed {where} (ETAGENT_KILL_SEED={seed})"
    assert running, f"the pipeline ended before it was {what}: {tail}"
    assert not (killed_dir / "07-eval" / "rl" / "stage.json").exists(), what

    cfg = load_config(PipelineConfig, killed_dir / "config.yaml")
    run_pipeline(cfg, killed_dir)  # the resume
    run_pipeline(cfg, straight_dir)  # the uninterrupted run
    for stage in (
        "01-cold-start-data",
        "02-cold-start-sft",
        "03-flywheel",
        "04-sft",
        "05-pareto-1",
        "06-rl-1",
        "07-eval/sft",
        "07-eval/rl",
    ):
        assert (killed_dir / stage / "stage.json").exists(), f"{stage} not finished, {what}"
    assert _data(killed_dir / "03-flywheel" / "sft.jsonl") == _data(
        straight_dir / "03-flywheel" / "sft.jsonl"
    ), what
    for model in ("02-cold-start-sft/model", "04-sft/model", "06-rl-1/model"):
        _assert_same_weights(killed_dir / model, straight_dir / model, f"{model}, {what}")
    pareto = "05-pareto-1"
    assert _by_sample(killed_dir / pareto / SCORES) == _by_sample(straight_dir / pareto / SCORES), what
    for name in _files(straight_dir / pareto / STAGES_DIR):
        assert _data(killed_dir / pareto / name) == _data(straight_dir / pareto / name), f"{name}, {what}"
    assert sorted(_log(killed_dir / "06-rl-1")) == sorted(_log(straight_dir / "06-rl-1")) == [1, 2], what
    for label in ("sft", "rl"):
        metrics = f"07-eval/{label}/metrics.json"
        assert _metrics(killed_dir, metrics) == _metrics(straight_dir, metrics), f"{metrics}, {what}"


def _metrics(run_dir: Path, name: str) -> Any:
    """An eval's metrics.json as data, without when it was written and with the run directory in
    the paths it names (the models) replaced by ``RUN``."""
    metrics = json.loads((run_dir / name).read_text(encoding="utf-8").replace(str(run_dir), "RUN"))
    metrics.pop("created")
    return _content(metrics)


def test_a_checkpoint_cut_short_by_a_kill_is_not_resumed_from(tmp_path):
    """A kill while the trainer writes checkpoint N leaves its directory without (or with a torn)
    trainer_state.json, which the trainer writes last: SFT and RL resume from the one before."""
    from etagent.rl.trl_engine import last_checkpoint as rl_last_checkpoint
    from etagent.train.sft import last_checkpoint as sft_last_checkpoint

    folder = tmp_path / "checkpoints"
    for step, state in ((1, '{"global_step": 1}'), (2, '{"global_step": 2}'), (3, None), (4, '{"global_st')):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "model.safetensors").write_bytes(b"weights")
        if state is not None:
            (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (folder / "checkpoint-10").write_text("a file, not a checkpoint")
    assert sft_last_checkpoint(tmp_path) == rl_last_checkpoint(tmp_path) == folder / "checkpoint-2"
    for step in (1, 2):
        (folder / f"checkpoint-{step}" / "trainer_state.json").unlink()
    assert sft_last_checkpoint(tmp_path) is None and rl_last_checkpoint(tmp_path) is None
