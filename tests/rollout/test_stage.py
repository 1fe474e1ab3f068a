"""The rollout stage: JSONL output, interruption and resume, summaries."""

from __future__ import annotations

import json
import logging
import time

import pytest

from etagent.io import read_records
from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.records import Trajectory
from etagent.rollout.stage import RolloutConfig, completed_questions, run_rollout
from tests.loop.test_agent_loop import EchoTool, ScriptedGenerator


class Interrupt(Exception):
    pass


class InterruptingGenerator(ScriptedGenerator):
    """Raises (like a Ctrl-C or a kill) once ``fail_after`` generate calls have been made."""

    def __init__(self, tokenizer, scripts, fail_after: int | None):
        super().__init__(tokenizer, scripts)
        self.fail_after = fail_after
        self.questions_seen: list[str] = []

    def generate(self, prompts, params):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupt
        for p in prompts:
            text = self.tokenizer.decode(self.prompt_ids(p))
            self.questions_seen.append(text.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0])
        return super().generate(prompts, params)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "q.jsonl"
    rows = [
        {"id": f"q{i}", "question": f"Question {i}?", "answer": str(i), "task": "qa", "source": "t"}
        for i in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _scripts():
    return {
        f"Question {i}?": f"<think>{i}</think><search>s{i}</search><think>k</think><answer>\\boxed{{{i}}}</answer>"
        for i in range(6)
    }


def _loop(tokenizer, fail_after):
    gen = InterruptingGenerator(tokenizer, _scripts(), fail_after)
    tools = {"search": EchoTool("search"), "python": EchoTool("python")}
    return AgentLoop(gen, tools, budget=BudgetConfig(), max_active=2), gen


def test_interrupted_rollout_resumes_without_duplicates(tokenizer, data_file, tmp_path):
    cfg = RolloutConfig(data=str(data_file), n=2, agent={"max_active": 2})
    run_dir = tmp_path / "run"
    loop, _ = _loop(tokenizer, fail_after=5)  # each question takes 2 turns; dies in the 3rd question
    with pytest.raises(Interrupt):
        run_rollout(cfg, run_dir, loop=loop)
    out = run_dir / cfg.output
    first = read_records(out, Trajectory)
    done_before = {t.question_id for t in first}
    assert 0 < len(done_before) < 6 and len(first) == 2 * len(done_before)

    with out.open("a") as f:  # the process died in the middle of writing a line
        f.write('{"question_id": "q5", "sample_ind')

    loop, gen = _loop(tokenizer, fail_after=None)
    summary = run_rollout(cfg, run_dir, loop=loop)
    trajs = read_records(out, Trajectory)
    keys = [(t.question_id, t.sample_index) for t in trajs]
    assert sorted(keys) == sorted((f"q{i}", k) for i in range(6) for k in range(2))
    assert len(set(keys)) == len(keys)  # nothing written twice
    # only unfinished questions were generated again
    regenerated = {"q" + q.split()[1].rstrip("?") for q in gen.questions_seen}
    assert regenerated and not done_before & regenerated
    assert summary["exact_match"] == 1.0 and summary["trajectories"] == 12
    assert json.loads((run_dir / "trajectories.summary.json").read_text())["questions"] == 6


def test_incomplete_question_groups_are_dropped(tokenizer, data_file, tmp_path):
    cfg = RolloutConfig(data=str(data_file), n=2)
    run_dir = tmp_path / "run"
    loop, _ = _loop(tokenizer, fail_after=None)
    run_rollout(cfg.model_copy(update={"limit": 2}), run_dir, loop=loop)
    out = run_dir / cfg.output
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:3]))  # the second question lost one of its two samples
    assert completed_questions(out, n=2) == {"q0"}
    assert len(out.read_text().splitlines()) == 2


class SlowGenerator(InterruptingGenerator):
    """Each generate call takes ``delay_s``: a round long enough for the progress log to speak."""

    def __init__(self, tokenizer, scripts, delay_s: float):
        super().__init__(tokenizer, scripts, fail_after=None)
        self.delay_s = delay_s

    def generate(self, prompts, params):
        time.sleep(self.delay_s)
        return super().generate(prompts, params)


def test_not_on_a_terminal_the_rollout_logs_its_progress_periodically(tokenizer, data_file, tmp_path, caplog):
    cfg = RolloutConfig(data=str(data_file), n=2, limit=2)
    gen = SlowGenerator(tokenizer, _scripts(), delay_s=0.15)
    loop = AgentLoop(gen, {"search": EchoTool("search")}, budget=BudgetConfig(), max_active=4)
    with caplog.at_level(logging.INFO, logger="etagent.rollout"):
        run_rollout(cfg, tmp_path / "run", loop=loop, progress_interval_s=0.05)
    lines = [r.getMessage() for r in caplog.records if "trajectories finished" in r.getMessage()]
    # 2 questions x 2 samples, all four in each of the 2 rounds (0.3 s): several lines
    assert len(lines) >= 3, lines
    assert all(line.startswith("rollout: round ") for line in lines)
    assert any(", 0/4 trajectories finished" in line for line in lines)  # before any question is done
    assert any("(generate, 4 rows" in line and " tokens" in line for line in lines)


def test_a_short_rollout_logs_no_progress_lines(tokenizer, data_file, tmp_path, caplog):
    loop, _ = _loop(tokenizer, fail_after=None)
    with caplog.at_level(logging.INFO, logger="etagent.rollout"):
        run_rollout(RolloutConfig(data=str(data_file), limit=2), tmp_path / "run", loop=loop)
    assert not [r for r in caplog.records if "trajectories finished" in r.getMessage()]
