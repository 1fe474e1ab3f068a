import json

import pytest

from etagent.io import atomic_write_jsonl, read_records
from etagent.scoring.metrics import (
    TrajectoryScore,
    dataset_metrics,
    overall_metrics,
    result_failed,
    score_run,
    score_trajectory,
)
from tests.scoring.helpers import make_traj


def test_score_trajectory_qa():
    traj = make_traj("Paris, France", 2, gold=["Paris France", "Lutetia"], min_tool_calls=1)
    row = score_trajectory(traj, "hotpotqa")
    assert row.dataset == "hotpotqa" and row.task == "qa" and row.correctness_metric == "f1"
    # docs/method.md 7.3 normalisation keeps punctuation: "paris," != "paris"
    assert row.f1 == 0.5 and row.correctness == 0.5 and row.exact_match == 0.0
    assert row.effi == 0.25  # correctness / 2 calls
    assert (row.tool_calls, row.search_calls, row.python_calls) == (2, 2, 0)
    assert (row.results, row.failed_results) == (2, 0)
    assert (row.min_tool_calls, row.redundant_calls, row.missing_calls) == (1, 1, 0)
    assert row.format_ok and row.model_tokens == 30 and row.prediction == "Paris, France"
    em = score_trajectory(make_traj("paris"), "x", qa_metric="exact_match")
    assert em.correctness_metric == "exact_match" and em.correctness == 0.0
    assert score_trajectory(make_traj("42"), "x", qa_metric="exact_match").correctness == 1.0
    # without calls, Effi is the correctness itself
    assert score_trajectory(make_traj("42"), "x").effi == 1.0
    assert score_trajectory(make_traj("42", 0, min_tool_calls=2), "x").missing_calls == 2


def test_score_trajectory_math_uses_the_judge_when_given():
    traj = make_traj("0.5", 1, gold="\\frac{1}{2}", task="math", tool="python")
    row = score_trajectory(traj, "math500")
    assert row.correctness_metric == "math_equiv" and row.correctness == 1.0 and row.judge is None
    assert row.python_calls == 1 and row.search_calls == 0
    judged = score_trajectory(traj, "math500", judge_verdict=False, concise=True)
    assert judged.correctness_metric == "judge" and judged.correctness == 0.0 and judged.judge is False
    assert judged.concise is True and judged.effi == 0.0


def test_failed_results_by_the_reference_rule_and_by_status():
    assert result_failed("") and result_failed("  \n")
    assert result_failed("Execution Timeout after 30 s") and result_failed("Tool execute failed")
    assert result_failed("NameError: name 'x' is not defined")  # "error", case-insensitive
    assert not result_failed("1783881")
    traj = make_traj(
        "42",
        4,
        results=["ok text", "", "Traceback ... ZeroDivisionError", "fine but refused"],
        statuses=["ok", "ok", "error", "budget_exceeded"],
    )
    row = score_trajectory(traj, "x")
    assert (row.results, row.failed_results) == (4, 3)
    # imported trajectories without call records: the <result> blocks of the text, reference rule only
    bare = traj.model_copy(update={"tool_calls": []})
    assert (score_trajectory(bare, "x").results, score_trajectory(bare, "x").failed_results) == (4, 2)


def _rows() -> list[TrajectoryScore]:
    trajs = [
        make_traj("42", 1, min_tool_calls=1, think_tokens=100),  # correct at the minimum, 200 tokens
        make_traj("42", 3, min_tool_calls=1, think_tokens=100, results=["a", "error", "c"]),  # redundant
        make_traj("41", 0, min_tool_calls=1, think_tokens=50, finish_reason="eos"),  # insufficient, wrong
        make_traj("42", 2, min_tool_calls=2, think_tokens=100, well_formed=False),
    ]
    return [score_trajectory(t, "toolworld") for t in trajs]


def test_dataset_metrics():
    m = dataset_metrics(_rows())
    assert m["n"] == 4 and m["task"] == "qa" and m["correctness_metric"] == "f1"
    assert m["correctness"] == 0.75 and m["exact_match"] == 0.75 and m["f1"] == 0.75
    assert m["effi"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert m["format_valid"] == 0.75
    assert m["mean_tool_calls"] == 1.5 and m["mean_search_calls"] == 1.5 and m["mean_python_calls"] == 0
    assert m["tool_usage_rate"] == 0.75
    assert m["success_exec_rate"] == pytest.approx(5 / 6)  # one failed result out of six
    assert m["success_exec_weighted"] == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert m["reasoning_length"] == (200 + 400 + 50 + 300) / 4
    assert m["correctness_per_ktoken"] == pytest.approx((1 / 200 + 1 / 400 + 0 + 1 / 300) / 4 * 1000)
    assert m["conciseness"] is None  # no judge
    assert m["conciseness_exact"] == 0.75 and m["redundant_call_rate"] == 0.25
    assert m["insufficient_call_rate"] == 0.25 and m["at_min_tool_calls"] == 0.5
    assert m["finish_reasons"] == {"answer": 3, "eos": 1}
    json.dumps(m)  # serialisable as is
    with pytest.raises(ValueError, match="at least one"):
        dataset_metrics([])


def test_dataset_metrics_without_minimum_or_results():
    rows = [
        score_trajectory(make_traj("42"), "d"),
        score_trajectory(make_traj("1", gold="1", task="math"), "d"),
    ]
    m = dataset_metrics(rows)
    assert (
        m["success_exec_rate"] is None and m["conciseness_exact"] is None and m["at_min_tool_calls"] is None
    )
    assert m["redundant_call_rate"] is None and m["insufficient_call_rate"] is None
    assert m["task"] == "mixed" and m["correctness_metric"] == "mixed"
    judged = [r.model_copy(update={"concise": v}) for r, v in zip(rows, [True, False], strict=True)]
    assert dataset_metrics(judged)["conciseness"] == 0.5


def test_overall_metrics_average_over_datasets_like_the_paper():
    # ET-Agent's row of the main table (docs/method.md 8): Avg P 60.1, Avg Effi 46.0
    table = {
        "aime24": (46.7, 43.3),
        "amc23": (77.5, 71.3),
        "math500": (81.6, 76.1),
        "2wiki": (67.2, 35.6),
        "bamboogle": (59.4, 34.4),
        "musique": (28.0, 15.3),
    }
    per = {
        name: {
            "correctness": p / 100,
            "effi": e / 100,
            "conciseness": None,
            "conciseness_exact": None,
            "success_exec_weighted": 0.5,
            "reasoning_length": 100.0,
            "correctness_per_ktoken": 3.0,
        }
        for name, (p, e) in table.items()
    }
    overall = overall_metrics(per)
    assert round(overall["P"] * 100, 1) == 60.1 and round(overall["Effi"] * 100, 1) == 46.0
    assert overall["conciseness"] is None and overall["success_exec"] == 0.5
    per["aime24"]["conciseness_exact"] = 0.4
    assert overall_metrics(per)["conciseness"] == 0.4  # exact one when no judge verdicts
    per["amc23"]["conciseness"] = 0.9
    assert overall_metrics(per)["conciseness"] == 0.9  # the judge's wins
    assert set(overall) == {
        "P",
        "Effi",
        "conciseness",
        "success_exec",
        "reasoning_length",
        "correctness_per_ktoken",
    }


def write_run(root, datasets: dict[str, list]) -> None:
    for name, trajs in datasets.items():
        atomic_write_jsonl(root / "datasets" / name / "trajectories.jsonl", trajs)


def test_score_run_writes_scores_and_metrics(tmp_path):
    run = tmp_path / "eval-1"
    qa = [make_traj("42", k, qid=f"q{k}", min_tool_calls=1, model="policy-7b") for k in range(3)]
    maths = [
        make_traj(a, 1, gold="\\frac{1}{2}", task="math", qid=f"m{i}", tool="python", model="policy-7b")
        for i, a in enumerate(["0.5", "2"])
    ]
    write_run(run, {"toolworld": qa, "math500": maths})
    metrics = score_run(run)
    assert metrics["run"] == "eval-1" and metrics["judge"] is None and metrics["created"]
    assert metrics["model"] == "policy-7b"
    assert list(metrics["datasets"]) == ["math500", "toolworld"]
    assert metrics["datasets"]["math500"]["correctness"] == 0.5
    assert metrics["datasets"]["math500"]["correctness_metric"] == "math_equiv"
    assert metrics["datasets"]["toolworld"]["at_min_tool_calls"] == pytest.approx(1 / 3)
    assert metrics["overall"]["P"] == pytest.approx((0.5 + 1.0) / 2)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["datasets"] == metrics["datasets"] and on_disk["overall"] == metrics["overall"]
    rows = read_records(run / "scores.jsonl", TrajectoryScore)
    assert len(rows) == 5 and {r.dataset for r in rows} == {"math500", "toolworld"}
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries

    # deterministic, and independent of the order the (resumable) rollout wrote the groups in
    write_run(run, {"toolworld": qa[::-1]})
    again = score_run(run)
    assert again["datasets"] == metrics["datasets"] and again["overall"] == metrics["overall"]
    assert (run / "scores.jsonl").read_text().splitlines() == [r.model_dump_json() for r in rows]


def test_score_run_without_trajectories_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"trajectories\.jsonl"):
        score_run(tmp_path)
    write_run(tmp_path, {"empty": []})
    with pytest.raises(FileNotFoundError, match="empty"):
        score_run(tmp_path)
    write_run(tmp_path, {"full": [make_traj("42")]})
    assert list(score_run(tmp_path)["datasets"]) == ["full"]  # the empty one is skipped
