"""Hand-made scored runs for the report tests: known numbers, failed calls, hostile text."""

from __future__ import annotations

from pathlib import Path

from etagent.io import atomic_write_jsonl
from etagent.protocol import tags
from etagent.records import Question, Segment, ToolCall, Trajectory
from etagent.scoring.metrics import score_run

HOSTILE = "Who wrote </script><script>window.__pwned = 1</script> <!-- here?"


def make_traj(
    qid: str,
    answer: str,
    prediction: str,
    calls: list[tuple[str, str, str, str]] = (),  # (tool, input, result, status)
    question: str | None = None,
    model: str = "model-a",
    think_tokens: int = 10,
) -> Trajectory:
    """A trajectory with one think block per step, the given tool calls, and a boxed answer."""
    q = Question(id=qid, question=question or f"Question {qid}?", answer=answer, source="fixture")
    segments: list[Segment] = []
    records: list[ToolCall] = []
    text = tags.render_think(f"thinking about {qid}")
    for tool, content, result, status in calls:
        text += tags.render_call(tool, content)
        segments.append(Segment(role="model", text=text, token_ids=list(range(think_tokens))))
        segments.append(Segment(role="tool", text=tags.render_result(result), token_ids=[7] * 5))
        records.append(
            ToolCall(tool=tool, input=content, result=result, status=status, segment_index=len(segments) - 1)
        )
        text = tags.render_think("next")
    text += tags.render_answer(prediction)
    segments.append(Segment(role="model", text=text, token_ids=list(range(think_tokens))))
    return Trajectory(
        question_id=qid,
        question=q,
        prompt_text="prompt",
        prompt_ids=[1, 2, 3],
        segments=segments,
        tool_calls=records,
        finish_reason="answer",
        prediction=prediction,
        model=model,
    )


def write_run(run_dir: Path, datasets: dict[str, list[Trajectory]]) -> Path:
    for name, trajs in datasets.items():
        atomic_write_jsonl(run_dir / "datasets" / name / "trajectories.jsonl", trajs)
    score_run(run_dir)
    return run_dir


def before_after(root: Path) -> tuple[Path, Path]:
    """Two scored runs over the same questions (``before`` is the baseline).

    alpha (4 questions, natural order a-1, a-2, a-3, a-10): before 2 correct, after 3 (a-2 improves).
    beta (3 questions): a failed python call (b-1), a partly correct answer that regresses to a
    wrong one after (b-2), and a question text trying to break out of the JSON script tag (b-3).
    """
    search = ("search", "Zorvik birth city", "(1) Zorvik was born in Quenmara.", "ok")
    python_ok = ("python", "print(6*7)", "42", "ok")
    python_bad = ("python", "1/0", "ZeroDivisionError: division by zero", "error")

    def alpha(model: str, a2_right: bool) -> list[Trajectory]:
        return [
            make_traj("a-1", "Quenmara", "Quenmara", [search], model=model),
            make_traj("a-2", "42", "42" if a2_right else "41", [python_ok, python_ok], model=model),
            make_traj("a-3", "Paris", "Lyon", [], model=model),
            make_traj("a-10", "7", "7", [search, search, python_ok], model=model, think_tokens=40),
        ]

    def beta(model: str, b2: str) -> list[Trajectory]:
        return [
            make_traj("b-1", "42", "42", [python_bad, python_ok], model=model),
            make_traj("b-2", "New York City", b2, [search], model=model),
            make_traj("b-3", "Shakespeare", "Marlowe", [], question=HOSTILE, model=model),
        ]

    before = write_run(
        root / "before", {"alpha": alpha("model-a", False), "beta": beta("model-a", "New York")}
    )
    after = write_run(root / "after", {"alpha": alpha("model-b", True), "beta": beta("model-b", "Boston")})
    return before, after
