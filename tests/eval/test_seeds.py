"""Comparisons over seeds (etagent.eval.seeds): the t-interval across seeds against its textbook
value, the pooled paired difference's averaging over seeds and its bootstrap interval, and the
per-question values read from a real scores.jsonl."""

from __future__ import annotations

import math

import pytest

from etagent.eval.seeds import (
    FACTS_FILE,
    Estimate,
    across_seeds,
    keep_result,
    kept_facts,
    paired_differences,
    pooled_paired_difference,
    read_metrics,
    read_scores,
)
from etagent.io import atomic_write_jsonl
from etagent.scoring.metrics import METRICS_FILE, SCORES_FILE, TrajectoryScore


def test_across_seeds_is_the_student_t_interval():
    est = across_seeds([0.4, 0.5, 0.6])
    # mean 0.5, sd 0.1, 2 degrees of freedom: t_0.975 = 4.303 (any t table)
    half = 4.303 * 0.1 / math.sqrt(3)
    assert est.mean == pytest.approx(0.5)
    assert est.low == pytest.approx(0.5 - half, abs=1e-3)
    assert est.high == pytest.approx(0.5 + half, abs=1e-3)
    assert est.n == 3
    assert est.format(3) == f"0.500 [{0.5 - half:.3f}, {0.5 + half:.3f}]"


def test_across_seeds_one_seed_has_no_interval_and_agreeing_seeds_a_zero_width_one():
    one = across_seeds([0.25])
    assert (one.low, one.high, one.format(2)) == (None, None, "0.25")
    same = across_seeds([0.3, 0.3, 0.3])
    assert same.low == same.high == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no values"):
        across_seeds([])


def test_pooled_difference_averages_each_question_over_seeds_before_resampling():
    # q1's differences cancel across the two seeds; q2 and q3 differ by +1 in both; q4 is missing
    # from one run and must not count
    a = [{"q1": 1.0, "q2": 1.0, "q3": 1.0, "q4": 9.0}, {"q1": 0.0, "q2": 1.0, "q3": 1.0}]
    b = [{"q1": 0.0, "q2": 0.0, "q3": 0.0, "q4": 0.0}, {"q1": 1.0, "q2": 0.0, "q3": 0.0, "q4": 0.0}]
    est = pooled_paired_difference(a, b)
    assert est.n == 3
    assert est.mean == pytest.approx(2 / 3)
    assert 0.0 <= est.low <= est.mean <= est.high <= 1.0
    # the same seed resamples the same way
    assert pooled_paired_difference(a, b) == est
    assert est.format(signed=True).startswith("+0.667 [")


def test_pooled_difference_of_constant_differences_and_bad_input():
    est = pooled_paired_difference([{"q": 1.0, "r": 2.0}], [{"q": 0.5, "r": 1.5}])
    assert est == Estimate(0.5, 0.5, 0.5, 2)
    with pytest.raises(ValueError, match="no question"):
        pooled_paired_difference([{"q": 1.0}], [{"r": 1.0}])
    with pytest.raises(ValueError, match="1 runs against 2"):
        pooled_paired_difference([{"q": 1.0}], [{"q": 1.0}, {"q": 1.0}])


def _score(qid: str, correctness: float, calls: int, minimum: int, tokens: int) -> TrajectoryScore:
    return TrajectoryScore(
        dataset="toolworld-test",
        question_id=qid,
        sample_index=0,
        task="toolworld",
        correctness=correctness,
        correctness_metric="f1",
        exact_match=correctness,
        f1=correctness,
        tool_calls=calls,
        search_calls=calls,
        python_calls=0,
        results=calls,
        failed_results=0,
        model_tokens=tokens,
        format_ok=True,
        effi=correctness / calls if calls else correctness,
        min_tool_calls=minimum,
        redundant_calls=max(0, calls - minimum),
        missing_calls=max(0, minimum - calls),
        finish_reason="answer",
        prediction="x",
    )


def test_paired_differences_read_from_eval_directories(tmp_path):
    runs = {}
    for name, rows in {
        # "a" answers q1 with a redundant call, "b" misses q1's second call
        "a": [_score("q1", 1.0, 3, 2, 120), _score("q2", 0.0, 1, 1, 80)],
        "b": [_score("q1", 0.5, 1, 2, 60), _score("q2", 0.0, 1, 1, 100)],
    }.items():
        atomic_write_jsonl(tmp_path / name / SCORES_FILE, rows)
        runs[name] = read_scores(tmp_path / name)
    assert set(runs["a"]) == {("toolworld-test", "q1", 0), ("toolworld-test", "q2", 0)}

    diffs = paired_differences([runs["a"]], [runs["b"]])
    assert diffs["correctness"].mean == pytest.approx(0.25)
    assert diffs["Effi"].mean == pytest.approx((1 / 3 - 0.5) / 2)
    assert diffs["redundant-call rate"].mean == pytest.approx(0.5)
    assert diffs["insufficient-call rate"].mean == pytest.approx(-0.5)
    assert diffs["model tokens"].mean == pytest.approx(20.0)
    assert all(d.n == 2 for d in diffs.values())


def test_a_kept_result_holds_the_eval_and_its_facts_and_is_complete_only_with_them(tmp_path):
    eval_dir = tmp_path / "eval"
    atomic_write_jsonl(eval_dir / SCORES_FILE, [_score("q1", 1.0, 2, 2, 50)])
    (eval_dir / METRICS_FILE).write_text('{"datasets": {"toolworld-test": {"correctness": 1.0}}}\n')
    dest = tmp_path / "results" / "seed0" / "arm"
    assert kept_facts(dest) is None

    keep_result(eval_dir, dest, {"seed": 0, "cost": {"generated_tokens": 7}})
    assert kept_facts(dest) == {"seed": 0, "cost": {"generated_tokens": 7}}
    assert kept_facts(dest, {"seed": 0}) == {"seed": 0, "cost": {"generated_tokens": 7}}
    with pytest.raises(ValueError, match=r"seed0/arm: made with \{'seed': 0\}, not \{'seed': 1\}"):
        kept_facts(dest, {"seed": 1})
    assert read_metrics(dest) == {"correctness": 1.0}
    assert read_scores(dest) == read_scores(eval_dir)

    # a result that lives elsewhere (zero-RL's is the base model's): facts only
    keep_result(None, tmp_path / "facts-only", {"final_model": "base"})
    assert sorted(p.name for p in (tmp_path / "facts-only").iterdir()) == [FACTS_FILE]
