"""Trajectories built by hand for the scoring tests (no model, no tools)."""

from __future__ import annotations

from etagent.protocol import tags
from etagent.records import Question, Segment, ToolCall, Trajectory


def make_traj(
    answer: str,
    calls: int = 0,
    *,
    gold: str | list[str] = "42",
    task: str = "qa",
    qid: str = "q0",
    sample: int = 0,
    think_tokens: int = 10,
    tool: str = "search",
    results: list[str] | None = None,
    statuses: list[str] | None = None,
    min_tool_calls: int | None = None,
    well_formed: bool = True,
    question: str = "What is the answer?",
    finish_reason: str = "answer",
    model: str = "m",
) -> Trajectory:
    """A trajectory with ``calls`` tool calls (model and tool segments, as the agent loop writes
    them) and a boxed final answer. ``think_tokens`` is the model tokens of each model segment;
    ``well_formed=False`` leaves the last think block open, so only the strict format check fails."""
    meta = {} if min_tool_calls is None else {"min_tool_calls": min_tool_calls}
    q = Question(id=qid, question=question, answer=gold, task=task, meta=meta)
    results = results if results is not None else [f"result {k}" for k in range(calls)]
    statuses = statuses if statuses is not None else ["ok"] * calls
    segments: list[Segment] = []
    tool_calls: list[ToolCall] = []
    for k in range(calls):
        text = tags.render_think("t") + tags.render_call(tool, f"input {k}")
        segments.append(Segment(role="model", text=text, token_ids=[5] * think_tokens))
        rendered = tags.render_result(results[k])
        segments.append(Segment(role="tool", text=rendered, token_ids=[7] * 3))
        tool_calls.append(
            ToolCall(
                tool=tool,
                input=f"input {k}",
                result=results[k],
                status=statuses[k],
                segment_index=len(segments) - 1,
            )
        )
    # not well formed: the last think block is never closed (fails the strict check only)
    final = (tags.render_think("t") if well_formed else "<think>t") + tags.render_answer(answer)
    segments.append(Segment(role="model", text=final, token_ids=[5] * think_tokens))
    return Trajectory(
        question_id=qid,
        sample_index=sample,
        question=q,
        prompt_text="p",
        prompt_ids=[1],
        segments=segments,
        tool_calls=tool_calls,
        prediction=tags.extract_answer("".join(s.text for s in segments)),
        finish_reason=finish_reason,
        model=model,
    )
