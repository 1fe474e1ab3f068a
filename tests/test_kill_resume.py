"""Real kills: a resumable stage run by the CLI is killed with SIGKILL at a random point, resumed
on the same run directory, and must then hold exactly what an uninterrupted run writes (every
record once, none lost, the same content).

The stages run on the tool world with its expert (no model), so the work is quick; most of each
test is the CLI's start-up. The killed run is the CLI; the resume and the uninterrupted run use
the configuration the CLI saved in its run directory, in this process. The kill point is drawn at
random (``ETAGENT_KILL_SEED`` replays the draw) and lies inside the run: after the first
question's records are written and before the last ones are.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from etagent.config import load_config
from etagent.flywheel.buffer import BufferRecord
from etagent.flywheel.stage import FlywheelConfig, run_flywheel
from etagent.io import iter_jsonl, read_records
from etagent.records import Trajectory
from etagent.rollout.stage import RolloutConfig, run_rollout

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


def _records(path: Path, kind: type) -> dict[tuple[str, int], Any]:
    rows = read_records(path, kind)
    keys = [(r.question_id, getattr(r, "sample_index", 0)) for r in rows]
    assert len(set(keys)) == len(keys), f"records written twice in {path}"
    return {k: _content(r.model_dump(mode="json")) for k, r in zip(keys, rows, strict=True)}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_stage_killed_at_a_random_point_resumes_to_the_uninterrupted_result(stage, tmp_path):
    st = STAGES[stage]
    seed = int(os.environ.get("ETAGENT_KILL_SEED", random.randrange(2**32)))
    # after a whole number of questions is written: at least one, at most half
    kill_after = st.per_question * random.Random(seed).randint(1, QUESTIONS // 2)
    killed_dir, straight_dir = tmp_path / "killed", tmp_path / "straight"
    victim = subprocess.Popen(
        [sys.executable, "-m", "etagent.cli", *st.args, "--run-dir", str(killed_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    out = killed_dir / st.output
    try:
        while _lines(out) < kill_after and victim.poll() is None:
            time.sleep(0.001)
        running = victim.poll() is None
        victim.send_signal(signal.SIGKILL)
        _, err = victim.communicate(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert running, f"{stage} ended before the kill point (ETAGENT_KILL_SEED={seed}): {err.decode()[-2000:]}"
    assert victim.returncode == -signal.SIGKILL
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
