import pytest

from etagent.records import Question, Segment, ToolCall, Trajectory
from etagent.scoring.correctness import exact_match, normalize_answer, token_f1
from etagent.scoring.summary import summarize, trajectory_scores


def test_normalisations():
    assert normalize_answer("The  Big Apple, NY!") == "big apple ny"
    # the reference evaluator (docs/method.md 7.3) keeps punctuation
    assert normalize_answer("The  Big Apple, NY!", "reference") == "big apple, ny!"


def test_exact_match_and_f1():
    assert exact_match("the Eiffel Tower", ["Eiffel tower"]) == 1.0
    assert exact_match("Paris", "London") == 0.0
    assert token_f1("New York City", ["new york"]) == pytest.approx(0.8)
    assert token_f1("x b c", ["y", "b c d"]) == pytest.approx(2 / 3)
    assert token_f1("", ["x"]) == 0.0
    assert token_f1("", [""]) == 1.0
    assert token_f1("yes", ["no"]) == 0.0
    # multiset overlap: a repeated token counts once per gold occurrence
    assert token_f1("the the paris paris", ["paris"]) == pytest.approx(2 * 0.5 * 1 / 1.5)


def _traj(prediction: str, calls: int, minimum: int) -> Trajectory:
    q = Question(id=f"q{prediction}{calls}", question="?", answer="42", meta={"min_tool_calls": minimum})
    body = "".join("<think>t</think><search>s</search><result>\nr\n</result>" for _ in range(calls))
    text = body + f"<think>t</think><answer>\\boxed{{{prediction}}}</answer>"
    return Trajectory(
        question_id=q.id,
        question=q,
        prompt_text="p",
        prompt_ids=[1],
        segments=[Segment(role="model", text=text, token_ids=[5] * 10)],
        tool_calls=[ToolCall(tool="search", input="s", result="r")] * calls,
        prediction=prediction,
        finish_reason="answer",
    )


def test_summary_counts_redundant_and_insufficient_calls():
    trajs = [_traj("42", 1, 1), _traj("42", 3, 1), _traj("41", 0, 1), _traj("42", 2, 2)]
    row = trajectory_scores(trajs[1])
    assert row["redundant_calls"] == 2 and row["missing_calls"] == 0 and row["format_ok"]
    s = summarize(trajs)
    assert s["exact_match"] == 0.75
    assert s["at_min_tool_calls"] == 0.5
    assert s["redundant_call_rate"] == 0.25
    assert s["insufficient_call_rate"] == 0.25
    assert s["correct_at_min_tool_calls"] == 0.5
    assert s["mean_tool_calls"] == 1.5
    assert summarize([]) == {"trajectories": 0}


# ------------------------------------------------------------------------------------------------
# normalisations and maths

from etagent.scoring.correctness import (  # noqa: E402
    answer_equal,
    is_equiv,
    math_equal,
    math_verify_equal,
    qa_score,
    strip_string,
)


def test_compact_normalisation_reproduces_the_reference_reward_quirk():
    # docs/method.md 6.4: "New York City" vs "new york" -> 0; "the Big Apple, NY" vs "Big Apple NY" -> 1
    assert exact_match("New York City", ["new york"], "compact") == 0.0
    assert exact_match("the Big Apple, NY", ["Big Apple NY"], "compact") == 1.0
    # spaces vanish, so the token F1 collapses to exact match
    assert token_f1("New York City", ["new york"], "compact") == 0.0
    assert exact_match("NewYork", ["New York"], "compact") == 1.0
    assert exact_match("NewYork", ["New York"], "squad") == 0.0


def test_reference_normalisation_keeps_punctuation_in_f1():
    assert token_f1("Paris, France", ["Paris France"], "reference") == 0.5
    assert token_f1("Paris, France", ["Paris France"], "squad") == 1.0
    assert qa_score("Paris, France", ["Paris France"], "exact_match", "squad") == 1.0
    with pytest.raises(ValueError, match="unknown QA metric"):
        qa_score("a", ["a"], "accuracy")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("\\dfrac{1}{2}", "\\frac{1}{2}"),
        ("0.5", "\\frac{1}{2}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{72}", "\\frac{1}{72}"),
        ("3/4", "\\frac{3}{4}"),
        ("x = 5", "5"),
        ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})"),
        ("90^\\circ", "90"),
        ("\\sqrt3", "\\sqrt{3}"),
        ("50\\%", "50"),
        (".5 + x", "0.5+x"),
        ("10 \\text{ cm}", "10"),
        ("\\frac", "\\frac"),  # malformed input is returned, not raised
        ("", ""),
    ],
)
def test_strip_string_follows_the_math_normalisation(raw, normalised):
    assert strip_string(raw) == normalised


def test_is_equiv():
    assert is_equiv("\\dfrac{14}{3}", "\\frac{14}{3}")
    assert not is_equiv("\\frac{14}{3}", "4.67")
    assert is_equiv(None, None) and not is_equiv("1", None)


@pytest.mark.parametrize(
    ("prediction", "gold", "equal"),
    [
        ("0.5", "\\frac{1}{2}", True),
        ("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)", True),  # only math-verify sees this
        ("\\frac{\\sqrt2}{2}", "\\sqrt{2}/2", True),
        ("070", "70", True),
        ("2,125", "2125", True),
        ("-1.0", "-1", True),
        ("x=5", "5", True),
        ("71", "70", False),
        ("\\frac{1}{3}", "0.34", False),
        ("", "0", False),
        ("York New", "New York", False),  # words are not commuting symbols
        ("\\text{Tuesday}", "Tuesday", True),  # by the string normalisation
    ],
)
def test_math_equal(prediction, gold, equal):
    assert math_equal(prediction, gold) is equal


def test_math_verify_alone_and_gold_lists():
    assert math_verify_equal("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert not is_equiv("(3, \\pi/2)", "\\left( 3, \\frac{\\pi}{2} \\right)")
    assert not math_verify_equal("New York", "York New")
    assert math_equal("12", ["11", "12"])
    # a text task never goes through math-verify (letters would be symbols)
    assert answer_equal("York New", ["New York"], "qa") is False
    assert answer_equal("new york", ["New York"], "qa") is False  # the MATH normalisation keeps case
    assert answer_equal("0.5", ["\\frac{1}{2}"], "qa") is True
    assert answer_equal(" ", ["x"], "math") is False


def test_math_equal_works_off_the_main_thread():
    # math-verify's timeout needs signals (main thread only); elsewhere it must run without one
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert list(pool.map(math_verify_equal, ["\\frac{2}{4}", "0.25"], ["1/2", "1/3"])) == [True, False]


# ------------------------------------------------------------------------------------------------
# the one correctness rule and the three callers that use it

from etagent.flywheel.buffer import judge_trajectories  # noqa: E402
from etagent.scoring.correctness import Correctness, answer_correctness  # noqa: E402
from etagent.scoring.metrics import score_trajectory  # noqa: E402
from etagent.scoring.reward import RewardConfig, group_rewards  # noqa: E402
from tests.scoring.helpers import make_traj  # noqa: E402


def _qa(gold="new york"):
    return Question(id="q0", question="?", answer=gold)


def test_answer_correctness_standard_rules_and_normalisations():
    q = _qa(["Paris France"])
    assert answer_correctness(q, "Paris, France") == Correctness(0.5, "f1")  # reference keeps ","
    assert answer_correctness(q, "Paris, France", normalisation="squad") == Correctness(1.0, "f1")
    assert answer_correctness(q, "Paris, France", qa_metric="exact_match") == Correctness(0.0, "exact_match")
    assert answer_correctness(_qa(), "NewYork", qa_metric="exact_match", normalisation="compact").value == 1.0
    maths = Question(id="m", question="?", answer="\\frac{1}{2}", task="math")
    assert answer_correctness(maths, "0.5") == Correctness(1.0, "math_equiv")
    # a blank prediction against a gold that normalises to nothing: F1 1, unless blank is wrong
    assert answer_correctness(_qa("the"), " ", normalisation="squad").value == 1.0
    assert answer_correctness(_qa("the"), " ", normalisation="squad", blank_is_wrong=True).value == 0.0
    with pytest.raises(ValueError, match="unknown QA metric"):
        answer_correctness(q, "a", qa_metric="accuracy")  # type: ignore[arg-type]


def test_judge_before_task_check_before_standard_rule():
    maths = Question(id="m", question="?", answer="\\frac{1}{2}", task="math")
    always_zero = lambda q, p: 0.0  # noqa: E731
    # the judge's verdict decides maths, even against the task's check
    judged = answer_correctness(maths, "0.5", judge_verdict=False, check=always_zero)
    assert judged == Correctness(0.0, "judge")
    assert answer_correctness(maths, "0.5", check=always_zero) == Correctness(0.0, "task")
    # a verdict means nothing for a QA question (evaluation only judges maths)
    assert answer_correctness(_qa(), "new york", judge_verdict=False) == Correctness(1.0, "f1")
    # None from the check: the standard rule
    assert answer_correctness(_qa(), "new york", check=lambda q, p: None) == Correctness(1.0, "f1")
    with pytest.raises(ValueError, match=r"returned 1.5 for question 'q0'"):
        answer_correctness(_qa(), "x", check=lambda q, p: 1.5)


def _gotham(question, prediction):
    """A task's own check: only "Gotham" is right, whatever the gold says."""
    return 1.0 if prediction == "Gotham" else 0.0


class _Critic:
    def __init__(self):
        self.asked = []

    def judge_correct(self, items):
        self.asked += items
        return [p == "0.5" for _, p in items]


def test_every_caller_passes_the_task_check_through():
    group = [make_traj("Gotham", gold="new york"), make_traj("new york", gold="new york")]
    flat = RewardConfig(sigma_tool=0, sigma_length=0)
    assert [p.correctness for p in group_rewards(group, flat)] == [0.0, 1.0]
    assert [p.correctness for p in group_rewards(group, flat, check=_gotham)] == [1.0, 0.0]
    rows = [score_trajectory(t, "d", check=_gotham) for t in group]
    assert [(r.correctness, r.correctness_metric) for r in rows] == [(1.0, "task"), (0.0, "task")]
    assert [r.f1 for r in rows] == [0.0, 1.0]  # the F1 column is still the F1
    maths = make_traj("0.5", gold="\\frac{1}{2}", task="math")
    critic = _Critic()
    verdicts = judge_trajectories([*group, maths], critic, check=_gotham)
    assert [(v.correct, v.correctness, v.metric) for v in verdicts] == [
        (True, 1.0, "task"),
        (False, 0.0, "task"),
        (True, 1.0, "judge"),  # the critic's judge keeps maths
    ]
    assert critic.asked == [(maths.question, "0.5")]
    # without a check: token F1 at the threshold, as before
    plain = judge_trajectories([*group, maths], _Critic(), qa_f1_threshold=0.8)
    assert [(v.correct, v.correctness, v.metric) for v in plain] == [
        (False, 0.0, "f1"),
        (True, 1.0, "f1"),
        (True, 1.0, "judge"),
    ]
