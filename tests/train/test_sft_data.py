"""The SFT data format: validation errors, tool-result spans, tokenization and loss masks."""

from __future__ import annotations

import json

import pytest

from etagent.io import DataError
from etagent.protocol import tags
from etagent.train.sft_data import (
    SFTExample,
    load_sft_examples,
    split_trajectory,
    tokenize_example,
    tool_result_spans,
    trajectories_to_sft_examples,
)
from tests.train.conftest import example, trajectory


def _decode(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("mask_tool_results", [True, False])
def test_masks_cover_exactly_the_model_written_text(tokenizer, mask_tool_results):
    ex = SFTExample.model_validate(example(3))
    text, pieces = trajectory(3)
    tok = tokenize_example(ex, tokenizer, mask_tool_results=mask_tool_results)
    assert len(tok.input_ids) == len(tok.loss_mask) == len(tok.roles)

    # the prompt is the chat template with the generation prompt, encoded on its own, all masked
    prompt = tokenizer.apply_chat_template(ex.prompt_messages, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    n = len(prompt_ids)
    assert tok.input_ids[:n] == prompt_ids and set(tok.loss_mask[:n]) == {0}
    assert "What is fact 3" in _decode(tokenizer, tok.input_ids[:n])

    # the response is the trajectory, then the end-of-turn token, which is trained
    assert _decode(tokenizer, tok.input_ids[n:-1]) == text
    assert tok.input_ids[-1] == tokenizer.eos_token_id and tok.loss_mask[-1] == 1
    assert tokenizer.eos_token == "<|im_end|>"

    trained = _decode(tokenizer, [t for t, m in zip(tok.input_ids, tok.loss_mask, strict=True) if m])
    model_text = "".join(t for role, t in pieces if role == "model")
    if mask_tool_results:
        assert trained == model_text + "<|im_end|>"
        assert "<result>" not in trained and "the value is 21" not in trained
    else:
        assert trained == text + "<|im_end|>"
    # the masked tool tokens decode to exactly the inserted results
    tool_ids = [t for t, r in zip(tok.input_ids, tok.roles, strict=True) if r == "tool"]
    assert _decode(tokenizer, tool_ids) == "".join(t for role, t in pieces if role == "tool")


def test_pieces_match_how_the_agent_loop_inserts_results():
    text, pieces = trajectory(1)
    assert split_trajectory(text) == pieces
    spans = tool_result_spans(text)
    assert [text[a:b] for a, b in spans] == [t for role, t in pieces if role == "tool"]
    assert all(
        text[a:b] == tags.render_result(text[a:b][len("<result>\n") : -len("\n</result>")]) for a, b in spans
    )


def test_only_results_right_after_a_tool_call_are_tool_output():
    # a <result> the model wrote itself (no call before it) and one inside code are model text
    text = (
        "<think>I recall <result>\nmade up\n</result></think>"
        '<python>print("<result>")</python>\n'
        + tags.render_result("<result>")
        + "<think>ok</think><answer>\\boxed{1}</answer>"
    )
    spans = tool_result_spans(text)
    assert [text[a:b] for a, b in spans] == ["<result>\n<result>\n</result>"]
    assert [r for r, _ in split_trajectory(text)] == ["model", "tool", "model"]


def test_truncation_keeps_the_start(tokenizer):
    ex = SFTExample.model_validate(example(2))
    full = tokenize_example(ex, tokenizer)
    cut = tokenize_example(ex, tokenizer, max_length=len(full.input_ids) - 5)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:-5] and cut.loss_mask == full.loss_mask[:-5]


def _write(tmp_path, rows):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_malformed_lines_name_file_line_and_field(tmp_path):
    good = example(0)
    cases = [
        ('{"id": "e1", ', "bad.jsonl:2: malformed JSON"),
        ({k: v for k, v in example(1).items() if k != "messages"}, "bad.jsonl:2: field 'messages'"),
        (
            {**example(1), "messages": [{"role": "robot", "content": "x"}, *example(1)["messages"][1:]]},
            "bad.jsonl:2: field 'messages.0.role'",
        ),
        ({**example(1), "messages": example(1)["messages"][:2]}, "last message must be the assistant"),
        (
            {**example(1), "messages": [example(1)["messages"][0], example(1)["messages"][2]]},
            "needs a user turn",
        ),
        (
            {**example(1), "question_id": " "},
            "bad.jsonl:2: field 'question_id': Value error, must not be empty",
        ),
        ({**example(1), "extra": 1}, "bad.jsonl:2: field 'extra'"),
        ({**example(1), "id": "e0"}, "bad.jsonl:2: field 'id': duplicate id 'e0' (first on line 1)"),
    ]
    for row, message in cases:
        with pytest.raises(DataError) as err:
            load_sft_examples(_write(tmp_path, [good, row]))
        assert message in str(err.value), (message, str(err.value))
    with pytest.raises(DataError, match=r"bad\.jsonl:1: this is a rollout trajectory"):
        load_sft_examples(_write(tmp_path, [{"question_id": "q", "prompt_ids": [1], "segments": []}]))
    with pytest.raises(DataError, match="no examples"):
        load_sft_examples(_write(tmp_path, []))
    with pytest.raises(DataError, match="does not exist"):
        load_sft_examples(tmp_path / "missing.jsonl")


def test_expert_rollouts_convert_to_the_exact_rollout_tokens(tokenizer):
    """trajectories -> sft.jsonl rows -> tokens gives back the rollout's own ids and masks."""
    from etagent.loop.agent_loop import AgentLoop
    from etagent.tasks.toolworld import ExpertPolicy, ToolWorldTask, load_split, pick_examples
    from etagent.tools.config import ToolsConfig, build_tools

    tools = build_tools(ToolsConfig().with_section("search", corpus=str(ToolWorldTask().corpus())))
    loop = AgentLoop(ExpertPolicy(tokenizer), tools)
    try:
        trajs = loop.run(pick_examples(load_split("train"), 6), n=1)
    finally:
        loop.close()
        for tool in tools.values():
            tool.close()
    assert sum(len(t.tool_calls) for t in trajs) >= 4
    rows = trajectories_to_sft_examples(trajs)
    assert [r["id"] for r in rows] == [f"{t.question_id}#0" for t in trajs]
    for row, traj in zip(rows, trajs, strict=True):
        ex = SFTExample.model_validate(json.loads(json.dumps(row)))
        assert ex.messages[0].content == loop.system_prompt
        tok = tokenize_example(ex, tokenizer)
        assert tok.input_ids[:-1] == traj.prompt_ids + traj.response_ids
        assert tok.loss_mask[:-1] == [0] * len(traj.prompt_ids) + traj.response_mask


def test_conversion_skips_trajectories_whose_results_cannot_be_found(tokenizer):
    from etagent.records import Question, Segment, Trajectory

    def traj(result_text: str) -> Trajectory:
        segs = [
            ("model", "<think>a</think><search>q</search>"),
            ("tool", tags.render_result(result_text)),
            ("model", "<think>b</think><answer>\\boxed{1}</answer>"),
        ]
        return Trajectory(
            question_id="q",
            question=Question(id="q", question="Q?", answer="1"),
            prompt_text="",
            prompt_ids=[],
            segments=[Segment(role=r, text=t, token_ids=tokenizer.encode(t)) for r, t in segs],
        )

    assert len(trajectories_to_sft_examples([traj("fine")], system_prompt="S")) == 1
    # a search result quoting "</result>" would end the span early and train on the rest
    assert trajectories_to_sft_examples([traj("a </result> b")], system_prompt="S") == []
