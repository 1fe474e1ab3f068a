"""Answer correctness, pure functions: exact match and token F1 (docs/method.md 7.3) for QA, equivalence for math.

QA normalisations (``Normalisation``):
- ``"reference"`` (docs/method.md 7.3, the ET-Agent evaluator): lower-case, remove articles, collapse
  whitespace; punctuation is kept. Evaluation F1 uses it (docs/method.md, Decision 3).
- ``"squad"``: the SQuAD normalisation, which also removes punctuation. The RL reward's real token F1
  uses it (the reference reward normalises this way before its space-deleting quirk).
- ``"compact"``: SQuAD, then every space deleted: the reference RL reward's "F1" (docs/method.md 6.4), which
  makes each side one token, i.e. normalised exact match. Only to reproduce that quirk.

Math (``math_equal``): a real verifier, ``math-verify`` (sympy), OR the Hendrycks MATH string
normalisation (``strip_string``/``is_equiv``, the reference's check) as the fallback. Either one
saying "equal" is enough. Word answers ("Tuesday", "\\text{east}") skip math-verify: it parses
letters as commuting symbols, so "New York" would equal "York New".

The rule every stage uses (``answer_correctness``): a maths judge's verdict when there is one,
else the task's own answer check when it gives a number, else the standard rule of the question's
kind (equivalence for maths, F1 or exact match for QA). Each caller passes the normalisation it
has always used.
"""

from __future__ import annotations

import functools
import logging
import numbers
import re
import string
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from etagent.protocol import tags
from etagent.records import Question, Trajectory

Normalisation = Literal["reference", "squad", "compact"]
QAMetric = Literal["f1", "exact_match"]
#: the rule a correctness came from: QA token F1 or exact match, maths equivalence, an LLM judge's
#: verdict, or the task's own answer check
CorrectnessMetric = Literal["f1", "exact_match", "math_equiv", "judge", "task"]
#: a task's own answer check (``Task.check_answer``): the correctness of a prediction in [0, 1], or
#: None to use the standard rule for this question
AnswerCheck = Callable[[Question, str], "float | None"]

log = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def as_gold_list(golds: str | list[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def normalize_answer(text: str, mode: Normalisation = "squad") -> str:
    text = text.lower().strip()
    if mode in ("squad", "compact"):
        text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    if mode == "compact":
        return "".join(text.split())
    return " ".join(text.split())


def exact_match(prediction: str, golds: str | list[str], mode: Normalisation = "squad") -> float:
    pred = normalize_answer(prediction, mode)
    return float(any(pred == normalize_answer(g, mode) for g in as_gold_list(golds)))


def token_f1(prediction: str, golds: str | list[str], mode: Normalisation = "squad") -> float:
    """Max over gold answers of the multiset token-overlap F1."""
    pred_tokens = normalize_answer(prediction, mode).split()
    best = 0.0
    for gold in as_gold_list(golds):
        gold_tokens = normalize_answer(gold, mode).split()
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
            continue
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred_tokens), common / len(gold_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def qa_score(
    prediction: str, golds: str | list[str], metric: QAMetric = "f1", mode: Normalisation = "reference"
) -> float:
    """Token F1 or exact match, in [0, 1]."""
    if metric == "f1":
        return token_f1(prediction, golds, mode)
    if metric == "exact_match":
        return exact_match(prediction, golds, mode)
    raise ValueError(f"unknown QA metric {metric!r} (expected 'f1' or 'exact_match')")


# --------------------------------------------------------------------------------------------
# Hendrycks MATH string normalisation (the reference's is_equiv, docs/method.md 5.2 / 6.4 / 7.2).
# Same steps as the MATH repository's ``_strip_string``; its asserts are replaced by returning the
# input unchanged, which is what its callers fell back to on the AssertionError.


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}``."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{"):
            out += part
            continue
        if len(part) < 2:
            return s
        a, b, rest = part[0], part[1], part[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _fix_a_slash_b(s: str) -> str:
    """``3/4`` (integers only) -> ``\\frac{3}{4}``."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return s
    if s != f"{a}/{b}":
        return s
    return f"\\frac{{{a}}}{{{b}}}"


def _remove_right_units(s: str) -> str:
    # "\text{ " only ever introduces units in MATH answers
    parts = s.split("\\text{ ")
    return parts[0] if len(parts) == 2 else s


def _fix_sqrt(s: str) -> str:
    """``\\sqrt3`` -> ``\\sqrt{3}``."""
    parts = s.split("\\sqrt")
    out = parts[0]
    for part in parts[1:]:
        if part and part[0] != "{":
            out += "\\sqrt{" + part[0] + "}" + part[1:]
        else:
            out += "\\sqrt" + part
    return out


def strip_string(s: str) -> str:
    """The MATH answer normalisation (Hendrycks et al. 2021)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "")
    s = _remove_right_units(s)
    s = s.replace("\\%", "")
    # " .5" -> " 0.5", "{.5" -> "{0.5", ".5" -> "0.5"
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    # "x = 5" / "k=5" -> "5" (a short left-hand side is a variable name)
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def is_equiv(prediction: str | None, gold: str | None) -> bool:
    """The reference's MATH equivalence: equal after ``strip_string``."""
    if prediction is None or gold is None:
        return prediction is None and gold is None
    try:
        return strip_string(prediction) == strip_string(gold)
    except Exception:  # the normalisation is string surgery; never let it fail a whole evaluation
        return prediction == gold


# --------------------------------------------------------------------------------------------
# math-verify


_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _is_word_answer(s: str) -> bool:
    """True when the answer holds a word (2+ letters outside LaTeX commands): not a formula."""
    return bool(_WORD.search(_LATEX_COMMAND.sub(" ", s)))


@functools.lru_cache(maxsize=65536)
def _math_verify_equal(prediction: str, gold: str) -> bool:
    from math_verify import parse, verify

    # math-verify's timeouts use signal.alarm, which only works in the main thread; elsewhere run
    # without one (parsing a boxed answer is fast; the pathological cases are huge expressions)
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    try:
        # "$...$" makes both sides LaTeX, so a bare "\frac{1}{2}" or "(3, \pi/2)" is parsed as maths
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
        pred_parsed = parse(f"${prediction}$", parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception as e:  # a verifier crash means "not shown equal", never a failed run
        log.debug("math-verify failed on %r vs %r: %s", prediction, gold, e)
        return False


def math_verify_equal(prediction: str, gold: str) -> bool:
    """math-verify's symbolic/numeric equivalence of two answers (LaTeX or plain)."""
    prediction, gold = prediction.strip(), gold.strip()
    if not prediction or not gold or _is_word_answer(prediction) or _is_word_answer(gold):
        return False
    return _math_verify_equal(prediction, gold)


_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def _unwrap_text(s: str) -> str:
    """``\\text{Tuesday}`` -> ``Tuesday`` (word answers are often boxed in a text macro)."""
    return _TEXT_WRAPPER.sub(r"\1", s).strip()


def math_equal(prediction: str, golds: str | list[str]) -> bool:
    """Any gold equals the prediction by the MATH normalisation (also with ``\\text{}`` wrappers
    removed) or by math-verify."""
    if not prediction.strip():
        return False
    for gold in as_gold_list(golds):
        if is_equiv(prediction, gold) or is_equiv(_unwrap_text(prediction), _unwrap_text(gold)):
            return True
        if math_verify_equal(prediction, gold):
            return True
    return False


def answer_equal(prediction: str, golds: str | list[str], task: str) -> bool:
    """The rule-based "same answer" check a judge falls back to: ``math_equal`` for maths, the MATH
    string normalisation otherwise (math-verify would treat words as symbols)."""
    if task == "math":
        return math_equal(prediction, golds)
    return bool(prediction.strip()) and any(is_equiv(prediction, g) for g in as_gold_list(golds))


# --------------------------------------------------------------------------------------------
# The correctness rule


@dataclass(frozen=True)
class Correctness:
    """How correct a prediction is, in [0, 1], and which rule said so."""

    value: float
    metric: CorrectnessMetric


def final_answer(traj: Trajectory) -> str:
    """The trajectory's prediction, or the answer in its text when none was recorded."""
    return traj.prediction or tags.extract_answer(traj.response_text)


def answer_correctness(
    question: Question,
    prediction: str,
    *,
    qa_metric: QAMetric = "f1",
    normalisation: Normalisation = "reference",
    judge_verdict: bool | None = None,
    check: AnswerCheck | None = None,
    blank_is_wrong: bool = False,
) -> Correctness:
    """The correctness of ``prediction`` for ``question``: the first of these rules that applies.

    1. ``judge_verdict`` (an LLM judge's verdict, docs/method.md 7.2), for a maths question: 1 or 0 ("judge");
    2. ``check(question, prediction)`` (the task's ``check_answer``), when it returns a number ("task");
    3. a maths question: ``math_equal`` to a gold answer, 1 or 0 ("math_equiv");
    4. any other question: token F1 or exact match (``qa_metric``) under ``normalisation``.

    Callers pass the normalisation they use: "reference" in evaluation (docs/method.md 7.3), "squad" for
    the reward's F1 and the flywheel, "compact" for the reward's exact match (docs/method.md 6.4).
    ``blank_is_wrong`` scores a blank prediction 0 in rule 4 even when a gold answer normalises to
    nothing (the flywheel's rule); maths never counts a blank prediction as correct.

    >>> q = Question(id="q", question="Largest US city?", answer=["New York", "NYC"])
    >>> answer_correctness(q, "New York City")
    Correctness(value=0.8, metric='f1')
    >>> answer_correctness(q, "new york", qa_metric="exact_match")
    Correctness(value=1.0, metric='exact_match')
    >>> answer_correctness(q, "Gotham", check=lambda q, p: 1.0 if p == "Gotham" else None)
    Correctness(value=1.0, metric='task')
    """
    if judge_verdict is not None and question.task == "math":
        return Correctness(float(judge_verdict), "judge")
    if check is not None:
        value = check(question, prediction)
        if value is not None:
            if not (isinstance(value, numbers.Real) and 0.0 <= value <= 1.0):
                raise ValueError(
                    f"the answer check returned {value!r} for question {question.id!r}: "
                    "expected a number in [0, 1], or None for the standard rule"
                )
            return Correctness(float(value), "task")
    golds = question.answers
    if question.task == "math":
        return Correctness(float(math_equal(prediction, golds)), "math_equiv")
    if qa_metric not in ("f1", "exact_match"):
        raise ValueError(f"unknown QA metric {qa_metric!r} (expected 'f1' or 'exact_match')")
    if blank_is_wrong and not prediction.strip():
        return Correctness(0.0, qa_metric)
    return Correctness(qa_score(prediction, golds, qa_metric, normalisation), qa_metric)
