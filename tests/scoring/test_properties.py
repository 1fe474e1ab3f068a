"""Properties of answer correctness on arbitrary strings: scores stay in [0, 1], identical answers
score 1, F1 is symmetric and bounded by exact match, and nothing raises."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from etagent.protocol import tags
from etagent.records import Question
from etagent.scoring.correctness import (
    answer_correctness,
    exact_match,
    is_equiv,
    math_equal,
    normalize_answer,
    qa_score,
    strip_string,
    token_f1,
)

QUICK = settings(max_examples=150, deadline=None, derandomize=True, database=None)
MODES = st.sampled_from(["reference", "squad", "compact"])
#: answers as models write them: words, articles, punctuation, LaTeX bits, any unicode
ANSWER = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(
            ["the", "a", "An", "New", "york", "42", "4.0", ",", ".", "\\frac{1}{2}", "x=", "  ", "\n"]
        ),
        max_size=8,
    ).map(" ".join),
)


@QUICK
@given(ANSWER, st.lists(ANSWER, min_size=1, max_size=3), MODES)
def test_qa_scores_lie_in_unit_interval_and_take_the_best_gold(pred, golds, mode):
    f1 = token_f1(pred, golds, mode)
    em = exact_match(pred, golds, mode)
    assert 0.0 <= f1 <= 1.0 and em in (0.0, 1.0)
    assert f1 == max(token_f1(pred, g, mode) for g in golds)
    assert em == max(exact_match(pred, g, mode) for g in golds)
    if em == 1.0:
        assert f1 == 1.0
    assert qa_score(pred, golds, "f1", mode) == f1 and qa_score(pred, golds, "exact_match", mode) == em


@QUICK
@given(ANSWER, ANSWER, MODES)
def test_f1_is_symmetric_and_an_answer_matches_itself(a, b, mode):
    assert token_f1(a, b, mode) == token_f1(b, a, mode)
    assert token_f1(a, a, mode) == 1.0 and exact_match(a, a, mode) == 1.0
    once = normalize_answer(a, mode)
    assert normalize_answer(once, mode) == once  # normalising twice changes nothing


@QUICK
@given(ANSWER)
def test_math_string_normalisation_never_raises_and_is_reflexive(a):
    assert isinstance(strip_string(a), str)
    assert is_equiv(a, a)
    assert math_equal(a, a) == bool(a.strip())  # equal strings need no verifier


@settings(QUICK, max_examples=60)  # maths answers go through math-verify (sympy): slower
@given(ANSWER, st.sampled_from(["qa", "math"]), st.sampled_from(["f1", "exact_match"]))
def test_answer_correctness_is_a_score(pred, task, metric):
    q = Question(id="q", question="?", answer=["New York", "4"], task=task)
    c = answer_correctness(q, pred, qa_metric=metric, normalisation="squad")
    assert 0.0 <= c.value <= 1.0
    assert c.metric == ("math_equiv" if task == "math" else metric)


@QUICK
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz 0123456789", max_size=20).map(str.strip).filter(bool))
def test_a_rendered_answer_is_extracted_and_scores_one(answer):
    text = tags.render_think("x") + tags.render_answer(answer)
    assert tags.extract_answer(text) == answer
    q = Question(id="q", question="?", answer=answer)
    assert answer_correctness(q, tags.extract_answer(text)).value == 1.0
