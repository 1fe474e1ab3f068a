import pytest

from etagent.protocol import tags

GOOD = (
    "<think>I need the city.</think><search>Zorvik Talun birth city</search><result>\nZorvik Talun was born in Quenmara.\n</result>"
    "<think>Now compute.</think><python>print(48213 * 37)</python><result>\n1783881\n</result>"
    "<think>Done.</think><answer>The final answer is \\[ \\boxed{1783881} \\]</answer>"
)


def test_render_helpers_compose_a_well_formed_trajectory():
    text = (
        tags.render_think("a")
        + tags.render_call("search", "q")
        + tags.render_result("r")
        + tags.render_think("b")
        + tags.render_answer("42")
    )
    assert tags.check_format(text).ok
    assert tags.extract_answer(text) == "42"
    assert tags.count_tool_calls(text) == 1


def test_check_format_accepts_good_and_names_problems():
    assert tags.check_format(GOOD).ok
    missing_result = GOOD.replace("<result>\n1783881\n</result>", "")
    check = tags.check_format(missing_result)
    assert not check.ok and any("no <result>" in p for p in check.problems)
    two_boxes = GOOD.replace("\\boxed{1783881}", "\\boxed{1} \\boxed{2}")
    assert any("2 \\boxed" in p for p in tags.check_format(two_boxes).problems)
    assert not tags.check_format(GOOD[len("<think>") :]).ok
    assert not tags.check_format(GOOD.replace("</answer>", "")).ok
    unbalanced = GOOD.replace("</think><python>", "<python>")
    assert any("think" in p for p in tags.check_format(unbalanced).problems)
    tag_in_answer = GOOD.replace("The final answer", "<search>x</search> The final answer")
    assert not tags.check_format(tag_in_answer).ok


def test_count_tool_calls_counts_complete_pairs_only():
    assert tags.count_tool_calls(GOOD) == 2
    assert tags.count_calls_by_tool(GOOD) == {"search": 1, "python": 1}
    assert tags.count_tool_calls("<search>a</search><search>b") == 1
    assert tags.count_tool_calls("</search><search>") == 0
    # nested opens: each open matched to the next close, non-overlapping
    assert tags.count_tool_calls("<search><search>x</search></search>") == 1


def test_extract_answer_rules():
    assert tags.extract_answer(GOOD) == "1783881"
    assert tags.extract_answer("<answer>\\boxed{\\frac{1}{2}}</answer>") == "\\frac{1}{2}"
    assert tags.extract_answer("<answer>\\boxed{\\text{Paris}}</answer>") == "Paris"
    assert tags.extract_answer("<answer>Paris</answer>") == "Paris"
    # no answer tags: last box anywhere
    assert tags.extract_answer("so \\boxed{3} then \\boxed{4}") == "4"
    # last answer block wins; fbox counts
    assert tags.extract_answer("<answer>\\boxed{1}</answer><answer>\\fbox{2}</answer>") == "2"
    assert tags.extract_answer("nothing here") == ""
    assert tags.last_boxed("\\boxed{a{b}c}") == "a{b}c"
    assert tags.last_boxed("\\boxed{unbalanced") is None


def test_pending_tool_call_and_unknown_tags():
    call = tags.pending_tool_call("<think>x</think><search> capital of Peru </search>")
    assert call == tags.PendingCall("search", "capital of Peru")
    assert tags.pending_tool_call("<think>x</think>") is None
    assert tags.pending_tool_call("oops</python>") == tags.PendingCall("python", "")
    code = "<python>print(1 < 2 and 3 > 2)</python>"
    assert tags.pending_tool_call(code).content == "print(1 < 2 and 3 > 2)"
    seg = "<think>a</think><calculator>2+2</calculator> more"
    assert tags.unknown_tool_call(seg) == ("calculator", seg.index(" more"))
    assert tags.unknown_tool_call(GOOD) is None


def test_split_steps_and_parse_blocks_roundtrip():
    steps = tags.split_steps(GOOD)
    assert len(steps) == 3 and "".join(steps) == GOOD
    assert steps[0].endswith("</result>")
    blocks = tags.parse_blocks(GOOD)
    assert [b.kind for b in blocks] == [
        "think",
        "search",
        "result",
        "think",
        "python",
        "result",
        "think",
        "answer",
    ]
    assert "".join(GOOD[b.start : b.end] for b in blocks) == GOOD
    code_with_tags = "<python>x = '<think>'\nprint(x)</python>"
    (block,) = tags.parse_blocks(code_with_tags)
    assert block.kind == "python" and "<think>" in block.content


def test_system_prompt_lists_tools_and_format():
    prompt = tags.render_system_prompt(
        [tags.ToolSpec("search", "searches", "q"), tags.ToolSpec("python", "runs code", "print(1)")]
    )
    for needle in ("<search>", "<python>", "<result>", "<answer>", "\\boxed{}", "<think>"):
        assert needle in prompt
    assert "{{" not in prompt  # the reference's doubled-brace quirk is not reproduced
    assert tags.stop_strings() == ["</search>", "</python>", "</answer>"]


# ---------------------------------------------------------------------------------------------
# The reward's format check: the reference's validate_format (docs/method.md 6.4), rule by rule,
# on the cases where it and the strict export check disagree

ANSWER = "<answer>The final answer is \\[ \\boxed{1783881} \\]</answer>"


def _both(text: str, tool_tags: tuple[str, ...] = tags.DEFAULT_TOOL_TAGS) -> tuple[bool, bool]:
    """(reward check ok, strict check ok)."""
    return tags.check_reward_format(text, tool_tags).ok, tags.check_format(text, tool_tags).ok


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Sure, let me work on it. " + GOOD, id="text-before-the-first-think"),
        pytest.param(GOOD + "\nI hope this helps.", id="text-after-the-answer"),
        pytest.param(GOOD.replace("\\boxed{1783881}", "\\boxed{1} or \\boxed{2}"), id="two-boxes"),
        pytest.param(
            GOOD.replace("The final answer", "<think>sure</think>The final answer"), id="think-in-answer"
        ),
        pytest.param(
            GOOD.replace("The final answer", "<result>x</result> The final answer"), id="result-in-answer"
        ),
        pytest.param(
            GOOD.replace("<think>Now compute.</think>", "<think>Now <think>co</think>mpute.</think>"),
            id="nested-think",
        ),
        pytest.param(
            GOOD.replace("</search><result>", "</search> wait for it <result>"),
            id="text-between-call-and-result",
        ),
        pytest.param(
            GOOD.replace("<search>Zorvik", "<search>first try</search><search>Zorvik"),
            id="two-calls-one-result",
        ),
    ],
)
def test_reward_check_accepts_what_only_the_strict_check_rejects(text):
    assert _both(text) == (True, False), (
        tags.check_reward_format(text).problems,
        tags.check_format(text).problems,
    )


def test_reward_check_rejects_what_the_strict_check_accepts():
    # rule 4: the answer must hold "\boxed{" and a "}"; the strict check only counts "\boxed{"
    unclosed_box = GOOD.replace("\\boxed{1783881} \\]", "\\boxed{1783881 \\]")
    assert _both(unclosed_box) == (False, True)
    assert tags.check_reward_format(unclosed_box).problems == ["answer has no \\boxed{ and }"]
    # rule 3, the reference's search quirk: the search call's <result> is the first one after
    # <search>, so a "<result>" inside the query comes before </search> and fails
    in_query = GOOD.replace("<search>Zorvik", "<search><result> Zorvik")
    assert _both(in_query) == (False, True)
    assert any("comes before </search>" in p for p in tags.check_reward_format(in_query).problems)
    # rule 3 finds calls by plain text search: a call written inside a think block counts (the
    # strict check parses blocks, and a think block's content is not a call)
    mentioned = GOOD.replace("<think>Done.</think>", "<think>No need for <search>more</search>.</think>")
    assert _both(mentioned) == (False, True)
    # ... while for python the <result> is the first after </python>: code may print "<result>"
    in_code = GOOD.replace("<python>print(48213 * 37)", "<python>print('<result>')")
    assert _both(in_code) == (True, True)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # rule 1: as many <think> as </think>, at least one
        (GOOD.replace("<think>Done.</think>", "<think>Done."), "think tags unbalanced"),
        (GOOD.replace("<think>Done.</think>", "Done.</think>"), "think tags unbalanced"),
        ("<answer>\\boxed{1}</answer>", "think tags unbalanced or missing (0 open, 0 close)"),
        # rule 2: exactly one <answer> and one </answer>, in that order
        (GOOD + "<answer>\\boxed{2}</answer>", "exactly one <answer>"),
        (GOOD.replace("</answer>", ""), "exactly one <answer>"),
        (GOOD.replace("<answer>", ""), "exactly one <answer>"),
        ("<think>a</think></answer>\\boxed{1}<answer>", "</answer> comes before <answer>"),
        # rule 3: every call followed, in order, by its close tag, <result> and </result>
        (GOOD.replace("<result>\n1783881\n</result>", ""), "<python> call at offset"),
        (GOOD.replace("</search>", ""), "<search> call at offset"),
        (GOOD.replace("\n1783881\n</result>", "\n1783881\n"), "<python> call at offset"),
        (GOOD.replace("<think>Done.</think>", "<think>Done.</think><search>again</search>"), "<search> call"),
        # rule 4: the answer holds "\boxed{" and "}"
        (GOOD.replace("\\boxed{1783881}", "1783881"), "answer has no \\boxed{ and }"),
        (GOOD.replace("\\boxed{1783881}", "\\boxed 1783881"), "answer has no \\boxed{ and }"),
    ],
)
def test_reward_check_rules_each_fail_alone(text, problem):
    check = tags.check_reward_format(text)
    assert not check.ok and len(check.problems) == 1 and problem in check.problems[0], check.problems
    assert not tags.check_format(text).ok  # these the strict check rejects as well


def test_reward_check_accepts_the_canonical_rendering_and_checks_search_and_python_always():
    assert tags.check_reward_format(GOOD).ok
    assert tags.check_reward_format(GOOD, ("search", "python", "calculator")).ok
    # a run with only the search tool still fails a python call without a result (the reference
    # checks both tags), and a registered extra tool's calls are checked too
    stray = GOOD.replace("<think>Done.</think>", "<think>Done.</think><python>1</python>")
    assert not tags.check_reward_format(stray, ("search",)).ok
    extra = GOOD.replace("<think>Done.</think>", "<think>Done.</think><calculator>2+2</calculator>")
    assert tags.check_reward_format(extra).ok  # not a tool of this run: plain text
    assert not tags.check_reward_format(extra, ("search", "python", "calculator")).ok
