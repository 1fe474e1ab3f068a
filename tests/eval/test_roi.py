"""ROI of a training paradigm (etagent.eval.roi): the arithmetic, and the cost read from small
synthetic pipeline run directories with hand-computed token counts."""

from __future__ import annotations

import json

import pytest

from etagent.eval import roi
from etagent.eval.roi import TrainingCost, cost_of_run, gain, relative_roi
from etagent.records import Question, Segment, Trajectory


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _traj(*segments):
    """A trajectory record (as JSON): segments given as (role, token ids)."""
    return Trajectory(
        question_id="q",
        question=Question(id="q", question="Q?", answer="A"),
        prompt_text="",
        prompt_ids=[],
        segments=[Segment(role=role, text="", token_ids=list(ids)) for role, ids in segments],
    ).model_dump(mode="json")


def _entry(entry_id, traj, parent=None):
    return {
        "id": entry_id,
        "operator": "x",
        "parent": parent,
        "round": 0,
        "verdict": True,
        "trajectory": traj,
    }


def _rl_log(path, rows):
    _write_jsonl(
        path, [{"step": s, "rollout_step": s, "generated_tokens": g, "num_tokens": n} for s, g, n in rows]
    )


def _common_stages(run):
    # Pareto: 4 + 6 model tokens
    _write_jsonl(
        run / "05-pareto-1" / "groups.jsonl",
        [_traj(("model", range(4)), ("tool", range(9))), _traj(("model", range(6)))],
    )
    # RL: 100 + 50 generated (the third row has none); num_tokens is cumulative: 900
    _rl_log(run / "06-rl-1" / "train_log.jsonl", [(1, 100, 400), (2, 50, 700), (3, None, 900)])


def test_relative_roi_arithmetic():
    ref = TrainingCost(
        expert_trajectories=100, expert_tokens=10_000, generated_tokens=2_000, trained_tokens=6_000
    )
    assert ref.compute == 2_000 + 3 * 6_000 == 20_000
    assert gain(0.5, 0.1) == pytest.approx(0.4)
    assert relative_roi(0.4, ref, 0.4, ref) == pytest.approx(1.0)  # the reference: 1
    # equal gain at half the compute and a tenth of the expert data: 0.4 / (0.5 + 0.1) / (0.4 / 2) = 2 / 0.6
    cheap = TrainingCost(
        expert_trajectories=10, expert_tokens=1_000, generated_tokens=4_000, trained_tokens=2_000
    )
    assert cheap.compute == 10_000
    assert relative_roi(0.4, cheap, 0.4, ref) == pytest.approx(10 / 3)
    # no expert data (zero-RL) at the reference's compute and half its gain: 0.2 / (1 + 0) / 0.2 = 1
    zero = TrainingCost(generated_tokens=2_000, trained_tokens=6_000)
    assert relative_roi(0.2, zero, 0.4, ref) == pytest.approx(1.0)
    # a loss gives a negative ROI
    assert relative_roi(-0.1, ref, 0.4, ref) == pytest.approx(-0.25)
    with pytest.raises(ValueError, match="reference run used no expert data"):
        relative_roi(0.4, ref, 0.4, zero)
    with pytest.raises(ValueError, match="not positive"):
        relative_roi(0.4, ref, 0.0, ref)
    assert ref + cheap == TrainingCost(110, 11_000, 6_000, 8_000)


def test_cost_of_an_sft_then_rl_run(tmp_path):
    run = tmp_path / "sft-run"
    cold = run / "01-cold-start-data"
    # the expert's exported trajectories: a#0 (10 model tokens) and b#0 (4 + 6); a#1 was not exported
    _write_jsonl(cold / "sft.jsonl", [{"id": "a#0", "messages": []}, {"id": "b#0", "messages": []}])
    _write_jsonl(
        cold / "buffers.jsonl",
        [
            {
                "question_id": "a",
                "entries": [
                    _entry("a#0", _traj(("model", range(10)), ("tool", range(5)))),
                    _entry("a#1", _traj(("model", range(7)))),
                ],
            },
            {
                "question_id": "b",
                "entries": [_entry("b#0", _traj(("model", range(4)), ("tool", [1]), ("model", range(6))))],
            },
        ],
    )
    # cold-start SFT: 1,000 tokens, a fifth of the data's tokens are tool results -> 800
    _write_json(
        run / "02-cold-start-sft" / "sft_summary.json",
        {
            "steps": 10,
            "resumed_from_step": 0,
            "tokens_this_run": 1000.0,
            "data_tokens_by_role": {"prompt": 300, "model": 500, "tool": 200, "end": 0},
        },
    )
    # SFT resumed at step 4 of 6: 300 tokens in its last 2 steps -> 900 in all (no tool tokens)
    _write_json(
        run / "04-sft" / "sft_summary.json",
        {"steps": 6, "resumed_from_step": 4, "tokens_this_run": 300.0, "data_tokens_by_role": {"model": 10}},
    )
    # flywheel: x#0 has 3 + 2 model tokens; its edit x#1 shares [1, 2, 3, 4, 5] with it and adds 3
    _write_jsonl(
        run / "03-flywheel" / "buffers.jsonl",
        [
            {
                "question_id": "x",
                "entries": [
                    _entry("x#0", _traj(("model", [1, 2, 3]), ("tool", [4, 5]), ("model", [6, 7]))),
                    _entry(
                        "x#1",
                        _traj(("model", [1, 2, 3]), ("tool", [4, 5]), ("model", [8, 9, 10])),
                        parent="x#0",
                    ),
                ],
            }
        ],
    )
    _common_stages(run)
    cost = cost_of_run(run)
    assert cost == TrainingCost(
        expert_trajectories=2,
        expert_tokens=20,
        generated_tokens=8 + 10 + 150,
        trained_tokens=800 + 900 + 900,
    )
    assert cost.compute == 168 + 3 * 2600


def test_cost_of_an_e3_run_and_of_zero_rl(tmp_path):
    run = tmp_path / "e3-run"
    _write_json(
        run / "02-e3-warmup" / "rl_summary.json",
        {"steps": 2, "e3": {"experts_used": 3, "expert_tokens": 120, "expert_trajectories_sampled": 8}},
    )
    _rl_log(run / "02-e3-warmup" / "train_log.jsonl", [(1, 30, 200), (2, 40, 500)])
    _common_stages(run)
    assert cost_of_run(run) == TrainingCost(3, 120, 70 + 10 + 150, 500 + 900)

    zero = tmp_path / "zero-run"
    _common_stages(zero)
    assert cost_of_run(zero) == TrainingCost(0, 0, 160, 900)
    assert cost_of_run(tmp_path / "empty") == TrainingCost()


def test_rl_log_with_several_rows_per_rollout_step(tmp_path):
    # mini_batches 2: two optimizer steps per rollout step, each may repeat the step's generated tokens
    path = tmp_path / "train_log.jsonl"
    rows = [
        {"step": 1, "rollout_step": 1, "generated_tokens": 80, "num_tokens": 300},
        {"step": 2, "rollout_step": 1, "generated_tokens": 80, "num_tokens": 300},
        {"step": 3, "rollout_step": 2, "generated_tokens": 20, "num_tokens": 500},
        {"step": 4, "rollout_step": 2, "generated_tokens": None, "num_tokens": 500},
    ]
    _write_jsonl(path, rows)
    assert roi.rl_tokens(path) == (100, 500)


def test_file_names_match_the_pipeline():
    from etagent.flywheel.export import SFT_FILE
    from etagent.flywheel.stage import BUFFERS
    from etagent.pareto.stage import GROUPS
    from etagent.report.loader import PIPELINE_WARMUP_RL
    from etagent.rl.trl_engine import SUMMARY, TRAIN_LOG
    from etagent.train.sft import SUMMARY as SFT_SUMMARY

    assert (roi.SFT_FILE, roi.BUFFERS, roi.GROUPS) == (SFT_FILE, BUFFERS, GROUPS)
    assert (roi.E3_WARMUP, roi.RL_SUMMARY, roi.RL_TRAIN_LOG) == (PIPELINE_WARMUP_RL, SUMMARY, TRAIN_LOG)
    assert roi.SFT_SUMMARY == SFT_SUMMARY
