"""The canonical trajectory rendering (docs/method.md, Decision 1).

One assistant turn holds the whole trajectory::

    <think>...</think><search>query</search><result>
    ...passages...
    </result><think>...</think><answer>The final answer is \\[ \\boxed{X} \\]</answer>

Everything that knows a tag name lives in this module; nothing else in etagent spells a tag.
Pure text functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

THINK = "think"
ANSWER = "answer"
RESULT = "result"
SEARCH = "search"
PYTHON = "python"
#: Tags a model may use to call a tool. The tool registry may add more names; these are the defaults.
DEFAULT_TOOL_TAGS: tuple[str, ...] = (SEARCH, PYTHON)
#: Every tag the protocol itself defines (tool tags excluded).
STRUCTURE_TAGS: tuple[str, ...] = (THINK, ANSWER, RESULT)


def open_tag(name: str) -> str:
    return f"<{name}>"


def close_tag(name: str) -> str:
    return f"</{name}>"


def stop_strings(tool_tags: tuple[str, ...] | list[str] = DEFAULT_TOOL_TAGS) -> list[str]:
    """Stop strings sent to the generator: one per tool plus the answer's closing tag (EOS is implicit)."""
    return [close_tag(t) for t in tool_tags] + [close_tag(ANSWER)]


def render_result(text: str) -> str:
    """The one rendering of a tool result inserted into a trajectory."""
    return f"{open_tag(RESULT)}\n{text}\n{close_tag(RESULT)}"


def render_answer(answer: str) -> str:
    return f"{open_tag(ANSWER)}The final answer is \\[ \\boxed{{{answer}}} \\]{close_tag(ANSWER)}"


def render_think(text: str) -> str:
    return f"{open_tag(THINK)}{text}{close_tag(THINK)}"


def render_call(tool: str, content: str) -> str:
    return f"{open_tag(tool)}{content}{close_tag(tool)}"


# --------------------------------------------------------------------------------------------
# The system prompt


@dataclass(frozen=True)
class ToolSpec:
    """What the prompt says about one tool."""

    name: str
    description: str
    example: str  # the content of a call, e.g. a query or a line of code


def render_system_prompt(tools: list[ToolSpec]) -> str:
    """The tool prompt (always placed in the system role)."""
    lines = [
        "You are a helpful assistant that solves the user's question step by step.",
        "Think inside <think> </think> before every action.",
    ]
    if tools:
        lines.append(
            "You can call tools; each call's output is inserted for you between <result> and </result>:"
        )
        for spec in tools:
            lines.append(f"- {open_tag(spec.name)} ... {close_tag(spec.name)}: {spec.description}")
        lines.append("Call a tool only when it helps: answer directly when you already know the answer.")
        example_calls = "".join(
            render_think("...") + render_call(s.name, s.example) + render_result("...") for s in tools
        )
    else:
        example_calls = ""
    lines.append(
        "Give the final answer inside <answer> </answer>, with the exact answer in \\boxed{} at the end."
    )
    lines.append("Example: " + example_calls + render_think("...") + render_answer("..."))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Parsing

_TAG_RE = re.compile(r"<(/?)([A-Za-z_][A-Za-z0-9_\-]*)>")


@dataclass
class Block:
    """One tagged span of a trajectory (or untagged text between spans, kind == "text")."""

    kind: str
    content: str
    start: int  # character offsets into the parsed text, [start, end)
    end: int
    closed: bool = True


def parse_blocks(text: str, known_tags: tuple[str, ...] | None = None) -> list[Block]:
    """Split a trajectory into tagged blocks, left to right.

    Only ``known_tags`` (structure tags plus default tools when None) open a block; any other
    ``<x>`` is text. Blocks do not nest: inside a block, only its own closing tag ends it (code may
    contain ``<`` freely). An unclosed block runs to the end and has ``closed=False``.
    """
    known = set(known_tags if known_tags is not None else STRUCTURE_TAGS + DEFAULT_TOOL_TAGS)
    blocks: list[Block] = []
    pos = 0
    text_start = 0
    while pos < len(text):
        m = _TAG_RE.search(text, pos)
        if m is None:
            break
        is_close, name = m.group(1) == "/", m.group(2)
        if is_close or name not in known:
            pos = m.end()
            continue
        if m.start() > text_start:
            blocks.append(Block("text", text[text_start : m.start()], text_start, m.start()))
        end_tag = close_tag(name)
        close_at = text.find(end_tag, m.end())
        if close_at < 0:
            blocks.append(Block(name, text[m.end() :], m.start(), len(text), closed=False))
            return blocks
        blocks.append(Block(name, text[m.end() : close_at], m.start(), close_at + len(end_tag)))
        pos = text_start = close_at + len(end_tag)
    if text_start < len(text):
        blocks.append(Block("text", text[text_start:], text_start, len(text)))
    return blocks


def split_steps(text: str) -> list[str]:
    """Steps as the flywheel sees them (docs/method.md 3.3): text up to and including each ``</result>``,
    then the remainder as the last step. Joining the steps gives back the text."""
    steps: list[str] = []
    end_tag = close_tag(RESULT)
    pos = 0
    while True:
        i = text.find(end_tag, pos)
        if i < 0:
            break
        steps.append(text[pos : i + len(end_tag)])
        pos = i + len(end_tag)
    if pos < len(text):
        steps.append(text[pos:])
    return steps


def count_tool_calls(text: str, tool_tags: tuple[str, ...] = DEFAULT_TOOL_TAGS) -> int:
    """Complete, non-overlapping ``<tool>...</tool>`` pairs (docs/method.md 6.4 ``count_valid_tags``):
    for each tool, scan left to right matching each open tag to the next close tag."""
    total = 0
    for tag in tool_tags:
        o, c = open_tag(tag), close_tag(tag)
        pos = 0
        while True:
            i = text.find(o, pos)
            if i < 0:
                break
            j = text.find(c, i + len(o))
            if j < 0:
                break
            total += 1
            pos = j + len(c)
    return total


def count_calls_by_tool(text: str, tool_tags: tuple[str, ...] = DEFAULT_TOOL_TAGS) -> dict[str, int]:
    return {t: count_tool_calls(text, (t,)) for t in tool_tags}


@dataclass
class PendingCall:
    """A tool call the model just finished writing, to be executed."""

    tool: str
    content: str


def pending_tool_call(segment: str, tool_tags: tuple[str, ...] = DEFAULT_TOOL_TAGS) -> PendingCall | None:
    """The tool call a freshly generated segment asks for, or None.

    The segment stops at the first tool closing tag (a stop string); the call is the text between
    the last matching open tag before it and that closing tag. A closing tag without an open tag
    is a call with empty content (the tool turns it into an error text).
    """
    best: tuple[int, str] | None = None
    for tag in tool_tags:
        j = segment.find(close_tag(tag))
        if j >= 0 and (best is None or j < best[0]):
            best = (j, tag)
    if best is None:
        return None
    j, tag = best
    i = segment.rfind(open_tag(tag), 0, j)
    content = "" if i < 0 else segment[i + len(open_tag(tag)) : j]
    return PendingCall(tool=tag, content=content.strip())


_UNKNOWN_CALL_RE = re.compile(r"<([A-Za-z_][A-Za-z0-9_\-]*)>(.*?)</\1>", re.DOTALL)


def unknown_tool_call(segment: str, tool_tags: tuple[str, ...] = DEFAULT_TOOL_TAGS) -> tuple[str, int] | None:
    """A complete ``<x>...</x>`` pair with a tag that is neither a tool nor a protocol tag.

    Returns (tag name, end offset of the pair) for the first one, so the agent loop can cut the
    segment there and insert an error result instead of silently ignoring the call.
    """
    known = set(STRUCTURE_TAGS) | set(tool_tags)
    for m in _UNKNOWN_CALL_RE.finditer(segment):
        if m.group(1) not in known:
            return m.group(1), m.end()
    return None


def has_final_answer(text: str) -> bool:
    return close_tag(ANSWER) in text


# --------------------------------------------------------------------------------------------
# Answer extraction (docs/method.md 1.5)


def _balanced_group(text: str, brace_open: int) -> str | None:
    """Content of the brace group starting at ``text[brace_open] == '{'``, or None if unbalanced."""
    depth = 0
    for k in range(brace_open, len(text)):
        ch = text[k]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[brace_open + 1 : k]
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last brace-balanced ``\\boxed{...}`` (or ``\\fbox{...}``), or None."""
    best_at, best = -1, None
    for macro in ("\\boxed", "\\fbox"):
        pos = len(text)
        while True:
            i = text.rfind(macro, 0, pos)
            if i < 0:
                break
            k = i + len(macro)
            while k < len(text) and text[k] == " ":
                k += 1
            if k < len(text) and text[k] == "{":
                group = _balanced_group(text, k)
                if group is not None:
                    if i > best_at:
                        best_at, best = i, group
                    break
            pos = i
    return best


def _strip_text_wrapper(s: str) -> str:
    s = s.strip()
    if s.startswith("\\text{") and s.endswith("}"):
        inner = _balanced_group(s, len("\\text"))
        if inner is not None and len(inner) == len(s) - len("\\text{}"):
            return inner.strip()
    return s


def answer_block(text: str) -> str | None:
    """Text between the last ``<answer>`` and the last ``</answer>``, or None."""
    o, c = open_tag(ANSWER), close_tag(ANSWER)
    j = text.rfind(c)
    if j < 0:
        return None
    i = text.rfind(o, 0, j)
    if i < 0:
        return None
    return text[i + len(o) : j]


def extract_answer(text: str) -> str:
    """The prediction of a trajectory (docs/method.md 1.5); "" when there is none."""
    block = answer_block(text)
    if block is not None:
        boxed = last_boxed(block)
        return _strip_text_wrapper(boxed if boxed is not None else block)
    boxed = last_boxed(text)
    return _strip_text_wrapper(boxed) if boxed is not None else ""


# --------------------------------------------------------------------------------------------
# Format checks: the strict one (fine-tuning export, evaluation; docs/method.md 3.4) and the
# reward's (the reference's ``validate_format``, docs/method.md 6.4)


@dataclass
class FormatCheck:
    ok: bool
    problems: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok


def check_format(text: str, tool_tags: tuple[str, ...] = DEFAULT_TOOL_TAGS) -> FormatCheck:
    """The strict format check of the fine-tuning export and of evaluation's ``format_valid``.

    A well-formed trajectory starts with ``<think>``, ends with ``</answer>``, has balanced think
    tags (at least one pair), exactly one answer block holding exactly one ``\\boxed{}`` and no
    think/tool tags, and every tool call is followed by its ``<result>...</result>``.
    The RL reward uses the looser :func:`check_reward_format` (docs/method.md, Decision 2).
    """
    problems: list[str] = []
    body = text.strip()
    if not body.startswith(open_tag(THINK)):
        problems.append("does not start with <think>")
    if not body.endswith(close_tag(ANSWER)):
        problems.append("does not end with </answer>")
    n_open, n_close = body.count(open_tag(THINK)), body.count(close_tag(THINK))
    if n_open == 0 or n_open != n_close:
        problems.append(f"think tags unbalanced ({n_open} open, {n_close} close)")
    n_ans_open, n_ans_close = body.count(open_tag(ANSWER)), body.count(close_tag(ANSWER))
    if n_ans_open != 1 or n_ans_close != 1:
        problems.append(f"needs exactly one answer block ({n_ans_open} open, {n_ans_close} close)")
    else:
        block = answer_block(body) or ""
        n_boxed = block.count("\\boxed{")
        if n_boxed != 1:
            problems.append(f"answer holds {n_boxed} \\boxed{{}} (needs exactly one)")
        for tag in (THINK, RESULT, *tool_tags):
            if open_tag(tag) in block or close_tag(tag) in block:
                problems.append(f"<{tag}> tag inside the answer")
    # every tool call is followed, in order, by its close tag, <result> and </result>
    blocks = parse_blocks(body, STRUCTURE_TAGS + tuple(tool_tags))
    for k, b in enumerate(blocks):
        if b.kind in tool_tags:
            if not b.closed:
                problems.append(f"<{b.kind}> never closed")
                continue
            following = [x for x in blocks[k + 1 :] if not (x.kind == "text" and not x.content.strip())]
            if not following or following[0].kind != RESULT or not following[0].closed:
                problems.append(f"<{b.kind}> call at offset {b.start} has no <result> after it")
        elif b.kind != "text" and not b.closed:
            problems.append(f"<{b.kind}> never closed")
    # thinking: think blocks must be closed before the next one opens (no nesting)
    depth = 0
    for m in re.finditer(r"</?think>", body):
        depth += 1 if m.group(0) == open_tag(THINK) else -1
        if depth not in (0, 1):
            problems.append("think tags nested or closed before opening")
            break
    return FormatCheck(ok=not problems, problems=problems)


def check_reward_format(text: str, tool_tags: tuple[str, ...] = DEFAULT_TOOL_TAGS) -> FormatCheck:
    """The format check of the RL reward: the reference's ``validate_format`` (docs/method.md 6.4).

    Looser than :func:`check_format`; its rules, on the text as it is (nothing stripped):

    1. ``<think>`` and ``</think>`` occur equally often, at least once (nesting and position are
       not checked);
    2. ``<answer>`` and ``</answer>`` occur exactly once each, the open tag first;
    3. every ``<tool>`` found by plain text search (for ``tool_tags``, and always for search and
       python, as in the reference), scanning left to right from the end of the previous call's
       result, is followed in this order by ``</tool>``, ``<result>`` and ``</result>``. Text may
       stand between them, an open tag inside a think block counts, and calls whose open tag lies
       before that result's end are skipped (two calls followed by one result pass). As in the
       reference, the ``<result>`` of a search call is the first one after ``<search>`` (one
       inside the query comes before ``</search>`` and fails), that of any other tool the first
       one after its close tag;
    4. the answer block contains ``\\boxed{`` and a ``}`` (any number of boxes, other text and
       tags allowed).

    Each broken rule adds a problem; ``ok`` is True when there is none.
    """
    problems: list[str] = []
    n_open, n_close = text.count(open_tag(THINK)), text.count(close_tag(THINK))
    if n_open != n_close or n_open == 0:
        problems.append(f"think tags unbalanced or missing ({n_open} open, {n_close} close)")
    ans_open, ans_close = open_tag(ANSWER), close_tag(ANSWER)
    n_ans_open, n_ans_close = text.count(ans_open), text.count(ans_close)
    if n_ans_open != 1 or n_ans_close != 1:
        problems.append(
            f"needs exactly one <answer> and one </answer> ({n_ans_open} open, {n_ans_close} close)"
        )
    else:
        start, end = text.find(ans_open), text.find(ans_close)
        if start > end:
            problems.append("</answer> comes before <answer>")
        else:
            content = text[start + len(ans_open) : end]
            if "\\boxed{" not in content or "}" not in content:
                problems.append("answer has no \\boxed{ and }")
    res_open, res_close = open_tag(RESULT), close_tag(RESULT)
    # the reference checks search and python calls whichever tools a run enables; other tools too
    for tag in dict.fromkeys((*DEFAULT_TOOL_TAGS, *tool_tags)):
        o, c = open_tag(tag), close_tag(tag)
        pos = 0
        while (i := text.find(o, pos)) >= 0:
            j = text.find(c, i)
            r = text.find(res_open, i if tag == SEARCH else max(j, 0))
            k = text.find(res_close, max(r, 0))
            if j < 0 or r < 0 or k < 0:
                problems.append(
                    f"<{tag}> call at offset {i} is not followed by </{tag}>, <result> and </result>"
                )
                break
            if not j < r < k:
                problems.append(f"<{tag}> call at offset {i}: <result> comes before </{tag}>")
                break
            pos = k
    return FormatCheck(ok=not problems, problems=problems)
