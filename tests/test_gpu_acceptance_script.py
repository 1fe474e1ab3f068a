"""The GPU acceptance script runs its checks end to end in its small CPU form, so that a lent GPU
machine's few minutes go to measuring, not to debugging the script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_acceptance.py"


def test_cpu_form_prints_one_passing_json_line_per_check():
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--shape", "tiny", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert [line["check"] for line in lines] == ["device", "hf/fp32", "rl/tiny", "sft/tiny"]
    assert all(line["ok"] for line in lines)
    hf = lines[1]
    assert hf["batched_equals_single"] == "4/4" and hf["max_logprob_diff"] <= hf["tolerance"]
    assert hf["max_margin_where_they_part"] == 0.0  # nothing parted, so no tie to measure
    assert lines[2]["steps"] == 1 and lines[2]["seconds_per_step"] > 0
