"""Ctrl-C in a stage command: one line with the run directory and the command that resumes,
exit 130, no traceback; the resume command finishes the run with every record once."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from etagent.cli import resume_command

ETAGENT = str(Path(sys.executable).with_name("etagent"))
ARGS = ["rollout", "--backend", "expert", "--data", "toolworld:train", "--n", "4", "--limit", "60"]


def _start(cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # SIGINT at its default: a shell's background job would inherit it ignored
    return subprocess.Popen(
        [ETAGENT, *ARGS],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _wait_for_records(cwd: Path, proc: subprocess.Popen[str], timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list((cwd / "runs").glob("rollout-*/trajectories.jsonl"))
        if found and found[0].stat().st_size > 0:
            return found[0].parent
        if proc.poll() is not None:
            pytest.fail(f"the rollout ended before it wrote a record: {proc.communicate()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the rollout wrote no record in time")


def _interrupt(tmp_path: Path, presses: int) -> tuple[str, Path]:
    proc = _start(tmp_path)
    run_dir = _wait_for_records(tmp_path, proc)
    for _ in range(presses):
        proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return err, run_dir


def _check_resume(tmp_path: Path, err: str, run_dir: Path) -> None:
    lines = [line for line in err.splitlines() if "resume with:" in line]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("interrupted: the finished work is kept in runs/rollout-"), line
    kept = sum(1 for _ in (run_dir / "trajectories.jsonl").open())
    assert kept < 240, "the rollout finished before the interrupt: the test needs a longer run"
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[1:] == [*ARGS, "--run-dir", str(run_dir.relative_to(tmp_path))]
    done = subprocess.run([ETAGENT, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    keys = [(r["question_id"], r["sample_index"]) for r in records]
    assert len(keys) == len(set(keys)) == 240


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path: Path) -> None:
    err, run_dir = _interrupt(tmp_path, presses=1)
    _check_resume(tmp_path, err, run_dir)


def test_a_second_ctrl_c_during_shutdown_changes_nothing(tmp_path: Path) -> None:
    err, run_dir = _interrupt(tmp_path, presses=2)
    _check_resume(tmp_path, err, run_dir)


def test_resume_command_replaces_the_run_dir() -> None:
    argv = [
        "/nowhere/etagent",
        "eval",
        "--run-dir",
        "old",
        "--limit",
        "3",
        "--run-dir=older",
        "--set",
        "a=b c",
    ]
    assert resume_command(argv, Path("runs/x")) == (
        "/nowhere/etagent eval --limit 3 --set 'a=b c' --run-dir runs/x"
    )
