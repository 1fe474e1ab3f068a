"""Progress inside long steps: the agent loop's and ARPO's reports, and how they are shown."""

from __future__ import annotations

import io
import logging
import time

import pytest

from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.loop.arpo import ArpoConfig, ArpoRollout
from etagent.progress import Progress, ProgressDisplay
from etagent.train.progress import UpdateProgress
from tests.loop.test_agent_loop import EchoTool, ScriptedGenerator

# three segments: two tool calls, then the answer (three generate rounds per trajectory)
SCRIPT = (
    "<think>Look it up.</think><search>alpha</search>"
    "<think>Compute.</think><python>print(1)</python>"
    "<think>Done.</think><answer>\\boxed{42}</answer>"
)


def _loop(tokenizer, questions: list[str], max_active: int = 16) -> AgentLoop:
    tools = {"search": EchoTool("search"), "python": EchoTool("python")}
    gen = ScriptedGenerator(tokenizer, {q: SCRIPT for q in questions})
    return AgentLoop(gen, tools, budget=BudgetConfig(), max_active=max_active)


def _questions(k: int):
    from etagent.records import Question

    return [Question(id=f"q{i}", question=f"Q{i}?", answer="42") for i in range(k)]


class Recorder:
    """Every change a Progress reports: (round, phase, rows, finished, total, tokens)."""

    def __init__(self, progress: Progress):
        self.seen: list[tuple[int, str, int, int, int | None, int]] = []
        progress.listen(self)

    def __call__(self, p: Progress, announce: bool) -> None:
        self.seen.append((p.round, p.phase, p.rows, p.finished, p.total, p.tokens))


def test_agent_loop_reports_rounds_tools_tokens_and_finished_trajectories(tokenizer):
    questions = _questions(3)
    loop = _loop(tokenizer, [q.question for q in questions], max_active=4)
    progress = Progress("rollout")
    rec = Recorder(progress)
    with loop.reporting(progress):
        trajs = loop.run(questions, n=2)
    assert loop.progress is None  # detached after the block
    assert progress.total == 6 and progress.finished == 6
    assert progress.tokens == sum(t.num_model_tokens for t in trajs) > 0
    # max_active 4: two questions (4 rows) run 3 rounds, then the third question (2 rows) 3 more
    # (each change is recorded: a round's finished trajectories repeat its phase)
    rounds = list(dict.fromkeys((r, rows) for r, phase, rows, *_ in rec.seen if phase == "generate"))
    assert rounds == [(1, 4), (2, 4), (3, 4), (4, 2), (5, 2), (6, 2)]
    assert progress.round == loop.generator.calls == 6
    tools = list(dict.fromkeys((r, rows) for r, phase, rows, *_ in rec.seen if phase == "tools"))
    assert tools == [(1, 4), (2, 4), (4, 2), (5, 2)]  # rounds 3 and 6 end with answers
    finished = [(r, f) for r, _, _, f, _, _ in rec.seen if f]
    assert finished[0] == (3, 1) and finished[-1] == (6, 6)  # nothing finishes before round 3
    assert [f for _, f in finished] == sorted(f for _, f in finished)


def test_without_reporting_the_loop_reports_nothing(tokenizer):
    questions = _questions(1)
    loop = _loop(tokenizer, [q.question for q in questions])
    progress = Progress("rollout")
    rec = Recorder(progress)
    loop.run(questions)
    assert rec.seen == [] and progress.round == 0


def test_arpo_reports_rounds_and_kept_trajectories_finished(tokenizer):
    questions = _questions(2)
    loop = _loop(tokenizer, [q.question for q in questions])
    arpo = ArpoRollout(loop, ArpoConfig(n=4, initial_rollouts=2, top_k_logprobs=0))
    progress = Progress("rollout")
    rec = Recorder(progress)
    with loop.reporting(progress):
        result = arpo.run(questions, seed=3)
    assert progress.total == 8 and progress.finished == 8
    assert progress.round == result.stats["rounds"]
    assert progress.tokens == result.stats["generated_tokens"]
    starts = dict.fromkeys((r, rows) for r, phase, rows, *_ in rec.seen if phase == "generate")
    assert [rows for _, rows in starts] == result.stats["round_rows"]


def test_not_a_terminal_logs_a_line_every_interval_and_writes_nothing_else(caplog):
    stream = io.StringIO()
    progress = Progress("rollout", total=16)
    logger = logging.getLogger("etagent.test_progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with ProgressDisplay(progress, stream=stream, tty=False, logger=logger, interval_s=0.05) as shown:
            progress.start_round(16)
            progress.add_tokens(812)
            progress.add_finished(5)
            time.sleep(0.4)
        lines = [r.getMessage() for r in caplog.records]
        time.sleep(0.15)
    assert stream.getvalue() == ""
    assert 3 <= len(lines) == shown.lines_logged
    assert lines[-1].startswith("rollout: round 1 (generate, 16 rows, ")
    assert "5/16 trajectories finished, 812 tokens" in lines[-1]
    assert len(caplog.records) == len(lines)  # nothing after close


def test_long_interval_logs_nothing_in_a_short_step(caplog):
    progress = Progress("rollout", total=2)
    with caplog.at_level(logging.INFO, logger="etagent.progress"), ProgressDisplay(progress, tty=False):
        progress.start_round(2)
        progress.add_finished(2)
    assert caplog.records == []


def test_a_terminal_shows_the_status_in_place():
    stream = io.StringIO()
    progress = Progress("rollout", total=4)
    with ProgressDisplay(progress, stream=stream, tty=True, refresh_s=0.05):
        progress.start_round(4)
        progress.add_tokens(99)
        progress.add_finished(1)
        time.sleep(0.2)
        shown = stream.getvalue()
    assert "\r" in shown and "round 1 (generate, 4 rows" in shown and "99 tokens" in shown
    assert "1/4" in shown  # the bar's own count


def test_update_progress_announces_and_counts_micro_batches(caplog):
    update = UpdateProgress(tty=False, interval_s=60)
    callback = update.callback()
    with caplog.at_level(logging.INFO, logger="etagent.progress"):
        update.begin(16, 4)
        progress = update.progress
        assert progress is not None
        for _ in range(3):
            callback.on_substep_end(None, None, None)
        assert progress.finished == 3 and update.progress is progress
        callback.on_step_end(None, None, None)
    assert progress.finished == 4 and update.progress is None  # the last micro-batch ends it
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("update: 16 sequences, 0/4 micro-batches finished")
    callback.on_step_end(None, None, None)  # outside an update: ignored


def test_update_progress_of_another_process_shows_nothing(caplog):
    update = UpdateProgress(enabled=False, tty=False, interval_s=0.01)
    with caplog.at_level(logging.INFO, logger="etagent.progress"):
        update.begin(8, 2)
        time.sleep(0.05)
        update.end()
    assert caplog.records == []


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="interval_s"):
        ProgressDisplay(Progress("x"), tty=False, interval_s=0)
    with pytest.raises(ValueError, match="at least one micro-batch"):
        UpdateProgress(tty=False).begin(4, 0)
