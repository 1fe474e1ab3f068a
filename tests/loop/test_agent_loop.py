"""The agent loop with a scripted generator and fake tools, checked against the real tokenizer.

The scripted generator behaves like a model writing a fixed stream of text token by token: it
respects max_new_tokens and stop strings (which may end inside a token), so every path of the
loop (tool calls, length continuations, budgets, unknown tags, response budget) is exercised
while the token/text/mask invariants are checked.
"""

from __future__ import annotations

import pytest

from etagent.backends.base import Completion, Generator, SamplingParams, trim_at_stop
from etagent.loop.agent_loop import AgentLoop, BudgetConfig
from etagent.protocol import tags
from etagent.records import Question, Trajectory
from etagent.tools.base import Tool, ToolResult

ASSISTANT = "<|im_start|>assistant\n"


def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet (GPT-2's, which SmolLM2 uses): the character standing for each byte."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = dict(zip(printable, printable, strict=True))
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + len(chars) - len(printable)
    return {b: chr(c) for b, c in chars.items()}


class ScriptedGenerator(Generator):
    """Writes ``scripts[question text]`` as the model's part of the trajectory.

    Works on bytes, like a byte-level model: when a call ends inside a multi-byte character (the
    per-call token limit), the next call goes on with that character's remaining bytes, one
    byte token each.
    """

    name = "scripted"

    def __init__(self, tokenizer, scripts: dict[str, str]):
        self.tokenizer = tokenizer
        self.scripts = scripts
        self.calls = 0
        self._marker = tokenizer.encode(ASSISTANT, add_special_tokens=False)
        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
        #: a token for each UTF-8 continuation byte (a byte-level vocabulary has them all)
        self._byte_token = {
            b: tokenizer.convert_tokens_to_ids(bytes_to_unicode()[b]) for b in range(0x80, 0xC0)
        }
        assert tokenizer.unk_token_id not in self._byte_token.values(), "a byte-level tokenizer is expected"
        self._special = set(tokenizer.all_special_ids)

    def _model_written(self, response: str) -> str:
        # the model's own text so far: the response minus inserted tool results
        out, pos = [], 0
        while True:
            i = response.find("<result>", pos)
            if i < 0:
                out.append(response[pos:])
                return "".join(out)
            out.append(response[pos:i])
            pos = response.index("</result>", i) + len("</result>")

    def _bytes(self, ids: list[int]) -> bytes:
        out = []
        for i in ids:
            token = self.tokenizer.convert_ids_to_tokens(i)
            out.append(token.encode() if i in self._special else bytes(self._byte_decoder[c] for c in token))
        return b"".join(out)

    def _response_ids(self, ids: list[int]) -> list[int]:
        m = len(self._marker)
        starts = [k for k in range(len(ids) - m + 1) if ids[k : k + m] == self._marker]
        return ids[starts[-1] + m :]

    def _encode(self, rest: bytes) -> list[int]:
        """Token ids of ``rest``: the bytes left of a character cut by the previous call (UTF-8
        continuation bytes) one token each, then the rest as the tokenizer writes it."""
        k = 0
        while k < len(rest) and rest[k] & 0xC0 == 0x80:
            k += 1
        return [self._byte_token[b] for b in rest[:k]] + self.tokenizer.encode(
            rest[k:].decode(), add_special_tokens=False
        )

    def generate(self, prompts, params: SamplingParams):
        self.calls += 1
        results = []
        for p in prompts:
            ids = self.prompt_ids(p)
            head = self.tokenizer.decode(ids, skip_special_tokens=False).rsplit(ASSISTANT, 1)[0]
            question = head.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>")[0]
            script = self.scripts[question].encode()
            response = self._bytes(self._response_ids(ids)).decode(errors="surrogateescape")
            written = self._model_written(response).encode(errors="surrogateescape")
            assert script.startswith(written), (script, written)
            rest = script[len(written) :]
            if not rest:
                results.append([Completion("", [], "eos")])
                continue
            ids = self._encode(rest)
            cut = ids[: params.max_new_tokens]
            out_text, out_ids, stop, _ = trim_at_stop(self.tokenizer, cut, params.stop)
            if stop is not None:
                reason = "stop"
            elif len(cut) < len(ids):
                reason = "length"
            else:
                reason = "eos"
            results.append([Completion(out_text, out_ids, reason, stop=stop)])
        return results


class EchoTool(Tool):
    def __init__(self, name: str):
        self.name = name  # type: ignore[misc]
        self.spec = tags.ToolSpec(name, f"{name} tool", "x")  # type: ignore[misc]
        self.seen: list[str] = []

    def call(self, content: str) -> ToolResult:
        self.seen.append(content)
        if not content:
            return ToolResult("Invalid query: empty.", "error")
        return ToolResult(f"{self.name} says: {content.upper()} ünïcødé ✓", "ok")


def _question(qid: str, text: str) -> Question:
    return Question(id=qid, question=text, answer="42", meta={"min_tool_calls": 1})


def _check_invariants(tok, traj: Trajectory) -> None:
    ids, mask = traj.response_ids, traj.response_mask
    assert len(ids) == len(mask)
    assert tok.decode(ids, skip_special_tokens=False) == traj.response_text
    assert tok.decode(traj.prompt_ids, skip_special_tokens=False) == traj.prompt_text
    for seg in traj.segments:
        assert tok.decode(seg.token_ids, skip_special_tokens=False) == seg.text
        if seg.role == "tool":
            assert seg.text.startswith("<result>\n") and seg.text.endswith("\n</result>")
    # masked-out text is exactly the inserted results
    tool_text = tok.decode([i for i, m in zip(ids, mask, strict=True) if m == 0], skip_special_tokens=False)
    assert tool_text == "".join(s.text for s in traj.segments if s.role == "tool")
    for call in traj.tool_calls:
        assert traj.segments[call.segment_index].role == "tool"
        assert call.result in traj.segments[call.segment_index].text


def _loop(tok, scripts, **budget):
    tools = {"search": EchoTool("search"), "python": EchoTool("python")}
    return AgentLoop(ScriptedGenerator(tok, scripts), tools, budget=BudgetConfig(**budget)), tools


def test_multi_turn_calls_results_and_masks(tokenizer):
    script = (
        "<think>Look it up.</think><search>capital of Peru</search>"
        "<think>Compute.</think><python>print(6*7)</python>"
        "<think>Done.</think><answer>The final answer is \\[ \\boxed{42} \\]</answer>"
    )
    loop, tools = _loop(tokenizer, {"Q1?": script})
    (traj,) = loop.run([_question("q1", "Q1?")])
    assert traj.finish_reason == "answer"
    assert traj.prediction == "42"
    assert [c.tool for c in traj.tool_calls] == ["search", "python"]
    assert tools["search"].seen == ["capital of Peru"] and tools["python"].seen == ["print(6*7)"]
    assert [s.role for s in traj.segments] == ["model", "tool", "model", "tool", "model"]
    assert "SEARCH SAYS" not in traj.response_text and "search says: CAPITAL OF PERU" in traj.response_text
    assert tags.check_format(traj.response_text).ok
    _check_invariants(tokenizer, traj)


def _token_ends(tok, text: str) -> set[int]:
    """Character offsets at which the tokens of ``text`` end."""
    ends, pos = set(), 0
    for i in tok.encode(text, add_special_tokens=False):
        pos += len(tok.decode([i], skip_special_tokens=False))
        ends.add(pos)
    return ends


@pytest.mark.parametrize(
    ("after", "inside"),
    [
        ("<think>", True),  # SmolLM2 merges "><" into one token: the stop ends inside it
        (")<think>", False),  # ")<" is a token of its own: the stop ends on a token boundary
    ],
)
def test_stop_inside_a_token_keeps_text_and_ids_aligned(tokenizer, after, inside):
    script = f"<think>a</think><search>x</search>{after}b</think><answer>\\boxed{{42}}</answer>"
    stop_end = script.index("</search>") + len("</search>")
    assert (stop_end not in _token_ends(tokenizer, script)) == inside
    loop, tools = _loop(tokenizer, {"Q?": script})
    (traj,) = loop.run([_question("q", "Q?")])
    assert [s.role for s in traj.segments] == ["model", "tool", "model"]
    assert traj.segments[0].text == "<think>a</think><search>x</search>"
    assert tools["search"].seen == ["x"] and traj.tool_calls[0].input == "x"
    assert traj.finish_reason == "answer" and traj.prediction == "42"
    _check_invariants(tokenizer, traj)


def test_length_limited_calls_continue_the_same_segment(tokenizer):
    script = (
        "<think>"
        + "thinking about the question " * 6
        + "</think><search>q</search><think>ok</think><answer>\\boxed{42}</answer>"
    )
    loop, _ = _loop(tokenizer, {"Q?": script}, max_new_tokens_per_call=5)
    (traj,) = loop.run([_question("q", "Q?")])
    assert traj.finish_reason == "answer"
    assert [s.role for s in traj.segments] == ["model", "tool", "model"]
    assert loop.generator.calls > 5
    _check_invariants(tokenizer, traj)


def test_tool_budget_final_turn_and_stop(tokenizer):
    calls = "".join(f"<think>again</think><search>q{i}</search>" for i in range(4))
    script = calls + "<think>fine</think><answer>\\boxed{42}</answer>"
    loop, tools = _loop(tokenizer, {"Q?": script}, max_calls_per_tool=2, max_tool_calls=10)
    (traj,) = loop.run([_question("q", "Q?")])
    statuses = [c.status for c in traj.tool_calls]
    assert statuses[:3] == ["ok", "ok", "budget_exceeded"]
    assert tools["search"].seen == ["q0", "q1"]  # the over-budget call was never executed
    assert "Tool budget exhausted" in traj.response_text
    # final turn: only </answer> stops generation, so the remaining calls are written as text
    assert traj.finish_reason == "answer" and traj.prediction == "42"
    _check_invariants(tokenizer, traj)

    loop, _ = _loop(tokenizer, {"Q?": script}, max_calls_per_tool=6, max_tool_calls=1, on_budget="stop")
    (traj,) = loop.run([_question("q", "Q?")])
    assert traj.finish_reason == "tool_budget"
    assert [c.status for c in traj.tool_calls] == ["ok", "budget_exceeded"]
    _check_invariants(tokenizer, traj)


def test_bad_calls_become_error_results(tokenizer):
    script = "<think>hm</think><search>   </search><think>try</think><calculator>2+2</calculator> and then"
    loop, _ = _loop(tokenizer, {"Q?": script + "<think>x</think><answer>\\boxed{4}</answer>"})
    (traj,) = loop.run([_question("q", "Q?")])
    assert traj.tool_calls[0].status == "error" and "empty" in traj.tool_calls[0].result
    # the unknown tag ends with EOS in this script only if nothing follows; here the script goes
    # on, so the unknown call is just text until the answer
    assert traj.finish_reason == "answer"
    _check_invariants(tokenizer, traj)

    loop, _ = _loop(tokenizer, {"Q?": "<think>try</think><calculator>2+2</calculator> trailing words"})
    (traj,) = loop.run([_question("q", "Q?")])
    unknown = [c for c in traj.tool_calls if c.status == "unknown_tool"]
    assert unknown and unknown[0].tool == "calculator" and "<search>" in unknown[0].result
    assert traj.segments[0].text.endswith("</calculator>")
    _check_invariants(tokenizer, traj)


def test_response_budget_ends_the_trajectory(tokenizer):
    script = "<think>" + "very long reasoning " * 50 + "</think><answer>\\boxed{42}</answer>"
    loop, _ = _loop(tokenizer, {"Q?": script}, max_response_tokens=40, max_new_tokens_per_call=16)
    (traj,) = loop.run([_question("q", "Q?")])
    assert traj.finish_reason == "response_budget"
    assert len(traj.response_ids) == 40
    _check_invariants(tokenizer, traj)


def test_batching_many_questions_and_samples(tokenizer):
    scripts = {
        f"Question {i}?": f"<think>{i}</think>"
        + ("<search>s</search><think>k</think>" * (i % 3))
        + f"<answer>\\boxed{{{i}}}</answer>"
        for i in range(7)
    }
    loop, _ = _loop(tokenizer, scripts)
    loop.max_active = 6
    questions = [_question(f"q{i}", f"Question {i}?") for i in range(7)]
    trajs = loop.run(questions, n=3)
    assert [(t.question_id, t.sample_index) for t in trajs] == [
        (f"q{i}", k) for i in range(7) for k in range(3)
    ]
    for i, t in enumerate(trajs):
        assert t.prediction == str(i // 3)
        assert len(t.tool_calls) == (i // 3) % 3
        _check_invariants(tokenizer, t)


@pytest.mark.parametrize("few_shot", [0, 2])
def test_prompt_has_system_tool_prompt_and_few_shot_turns(tokenizer, few_shot):
    loop, _ = _loop(tokenizer, {"Q?": "<think>a</think><answer>\\boxed{42}</answer>"})
    loop.few_shot = [("Example?", "<think>e</think><answer>\\boxed{1}</answer>")] * few_shot
    (traj,) = loop.run([_question("q", "Q?")])
    assert traj.prompt_text.startswith("<|im_start|>system\n")
    assert "<search>" in traj.prompt_text.split("<|im_end|>")[0]
    assert traj.prompt_text.count("Example?") == few_shot
    assert traj.prompt_text.endswith(ASSISTANT)
