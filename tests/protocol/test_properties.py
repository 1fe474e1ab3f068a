"""Properties of the tag parser, the format checks and answer extraction on arbitrary text.

Arbitrary text (tag soup: protocol tags, unknown tags, braces, boxes, stray brackets and any
unicode) never makes a parser raise, and each parser keeps its invariants; canonical renderings
parse back to what was rendered and pass both format checks.
"""

from __future__ import annotations

import itertools
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from etagent.protocol import tags

#: quick and reproducible: the same examples on every run, nothing stored on disk
QUICK = settings(max_examples=150, deadline=None, derandomize=True, database=None)

KNOWN = tags.STRUCTURE_TAGS + tags.DEFAULT_TOOL_TAGS
FRAGMENTS = [
    *(tags.open_tag(t) for t in (*KNOWN, "calculator")),
    *(tags.close_tag(t) for t in (*KNOWN, "calculator")),
    "\\boxed{",
    "\\boxed {",
    "\\fbox{",
    "\\text{",
    "{",
    "}",
    "<",
    ">",
    "</",
    "\n",
    " ",
]
#: text that holds no tag, brace or backslash (safe inside any rendered block)
PLAIN = st.text(alphabet=st.characters(exclude_characters="<>{}\\", exclude_categories=("Cs",)), max_size=12)
SOUP = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=30).map("".join)
TEXT = st.one_of(SOUP, st.text(max_size=60))


@QUICK
@given(TEXT)
def test_parse_blocks_tiles_the_text(text):
    blocks = tags.parse_blocks(text)
    assert "".join(text[b.start : b.end] for b in blocks) == text
    assert all(a.end == b.start for a, b in itertools.pairwise(blocks))
    for k, b in enumerate(blocks):
        assert b.start < b.end
        if b.kind == "text":
            assert b.content == text[b.start : b.end]
            assert not any(tags.open_tag(name) in b.content for name in KNOWN)
        elif b.closed:
            assert text[b.start : b.end] == tags.open_tag(b.kind) + b.content + tags.close_tag(b.kind)
            assert tags.close_tag(b.kind) not in b.content
        else:  # an unclosed block runs to the end
            assert k == len(blocks) - 1 and b.end == len(text)
            assert text[b.start :] == tags.open_tag(b.kind) + b.content
            assert tags.close_tag(b.kind) not in b.content


@QUICK
@given(TEXT)
def test_split_steps_joins_back_and_cuts_after_each_result(text):
    steps = tags.split_steps(text)
    assert "".join(steps) == text
    close = tags.close_tag(tags.RESULT)
    for step in steps[:-1]:
        assert step.endswith(close) and step.count(close) == 1
    if steps:
        assert steps[-1].count(close) == (1 if steps[-1].endswith(close) else 0)
    assert len(steps) == text.count(close) + (0 if not text or text.endswith(close) else 1)


@QUICK
@given(TEXT)
def test_call_counts_and_pending_calls(text):
    by_tool = tags.count_calls_by_tool(text)
    assert sum(by_tool.values()) == tags.count_tool_calls(text)
    for tool, n in by_tool.items():
        assert 0 <= n <= min(text.count(tags.open_tag(tool)), text.count(tags.close_tag(tool)))
    call = tags.pending_tool_call(text)
    if call is None:
        assert not any(tags.close_tag(t) in text for t in tags.DEFAULT_TOOL_TAGS)
    else:
        assert call.tool in tags.DEFAULT_TOOL_TAGS and tags.close_tag(call.tool) in text
        assert call.content == call.content.strip() and call.content in text
    unknown = tags.unknown_tool_call(text)
    if unknown is not None:
        name, end = unknown
        assert name not in KNOWN and text[:end].endswith(tags.close_tag(name))


@QUICK
@given(TEXT)
def test_answer_extraction_never_raises_and_finds_a_real_box(text):
    boxed = tags.last_boxed(text)
    if boxed is not None:
        assert re.search(r"\\(boxed|fbox) *\{" + re.escape(boxed) + r"\}", text)
        assert boxed.count("{") == boxed.count("}")
    answer = tags.extract_answer(text)
    assert isinstance(answer, str)
    if tags.answer_block(text) is None and boxed is None:
        assert answer == ""


@QUICK
@given(TEXT)
def test_format_checks_never_raise_and_explain_every_failure(text):
    for check in (tags.check_format(text), tags.check_reward_format(text)):
        assert check.ok == (not check.problems) == bool(check)
        assert all(isinstance(p, str) and p for p in check.problems)


# --------------------------------------------------------------------------------------------
# canonical renderings

WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8)
ANSWER = st.lists(WORD, min_size=1, max_size=3).map(" ".join)
CALL = st.tuples(st.sampled_from(tags.DEFAULT_TOOL_TAGS), PLAIN, PLAIN, PLAIN)  # tool, think, content, result


@st.composite
def trajectories(draw):
    """(text, calls, answer) of a canonical trajectory."""
    calls = draw(st.lists(CALL, max_size=4))
    text = "".join(
        tags.render_think(think) + tags.render_call(tool, content) + tags.render_result(result)
        for tool, think, content, result in calls
    )
    answer = draw(ANSWER)
    return text + tags.render_think(draw(PLAIN)) + tags.render_answer(answer), calls, answer


@QUICK
@given(trajectories())
def test_canonical_trajectories_parse_back_and_pass_both_checks(case):
    text, calls, answer = case
    assert tags.check_format(text).ok and tags.check_reward_format(text).ok
    assert tags.extract_answer(text) == answer
    assert tags.count_tool_calls(text) == len(calls)
    assert len(tags.split_steps(text)) == len(calls) + 1
    blocks = tags.parse_blocks(text)
    expected: list[tuple[str, str]] = []
    for tool, think, content, result in calls:
        expected += [(tags.THINK, think), (tool, content), (tags.RESULT, f"\n{result}\n")]
    assert [(b.kind, b.content) for b in blocks[:-2]] == expected
    assert [b.kind for b in blocks[-2:]] == [tags.THINK, tags.ANSWER] and all(b.closed for b in blocks)


@QUICK
@given(trajectories(), st.lists(st.tuples(st.integers(min_value=0), PLAIN), max_size=4))
def test_the_reward_check_ignores_untagged_text_between_blocks(case, inserts):
    # docs/method.md 6.4: validate_format checks counts and order only, not what stands between
    # blocks (the strict export check may then fail: text before <think>, between call and result)
    text, _, _ = case
    cuts = sorted({b.end for b in tags.parse_blocks(text)} | {0})
    pieces, last = [], 0
    for at, filler in sorted((cuts[i % len(cuts)], f) for i, f in inserts):
        pieces += [text[last:at], filler]
        last = at
    padded = "".join(pieces) + text[last:]
    assert tags.check_reward_format(padded).ok
    assert tags.count_tool_calls(padded) == tags.count_tool_calls(text)
