"""The expert policy as a Generator, driven by a simulated agent loop with fake tools."""

from __future__ import annotations

import contextlib
import io
from collections import Counter

import pytest

from etagent.backends.base import Generator, SamplingParams
from etagent.protocol.tags import (
    ToolSpec,
    check_format,
    count_calls_by_tool,
    count_tool_calls,
    extract_answer,
    pending_tool_call,
    render_result,
    render_system_prompt,
    stop_strings,
)
from etagent.records import Question
from etagent.tasks.toolworld import (
    ExpertConfig,
    ExpertPolicy,
    ToolWorldTask,
    Variant,
    expert_plan_text,
    generate_world,
    parse_progress,
    redundancy_options,
)
from etagent.tasks.toolworld.task import expert_settings

STOPS = stop_strings()
SYSTEM = render_system_prompt(
    [
        ToolSpec("search", "searches the encyclopedia", "population of X"),
        ToolSpec("python", "runs code", "print(1)"),
    ]
)


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


class FakeTools:
    """BM25 over the world's corpus for search (title + text, top 4) and exec for our own
    arithmetic code; the real tools are tested elsewhere."""

    def __init__(self, world):
        import bm25s
        import Stemmer

        self.bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        self.docs = world.corpus
        self.index = bm25s.BM25()
        texts = [f'"{d.title}"\n{d.text}' for d in self.docs]
        self.index.index(self._tok(texts), show_progress=False)

    def _tok(self, texts):
        return self.bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)

    def __call__(self, tool: str, content: str) -> str:
        if tool == "search":
            rows, _ = self.index.retrieve(self._tok([content]), k=4, show_progress=False)
            return "\n\n".join(f"{self.docs[i].title}\n{self.docs[i].text}" for i in rows[0])
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(content, {"__builtins__": {"print": print}})
        return out.getvalue().strip()


@pytest.fixture(scope="module")
def tools(world):
    return FakeTools(world)


def prompt_text(tokenizer, question: str, shots: list[tuple[str, str]] = ()) -> str:
    messages = [{"role": "system", "content": SYSTEM}]
    for user, assistant in shots:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def rollout(policy, tokenizer, tools, questions, samples=1, params=None, max_turns=8):
    """A batched agent loop: generate, run the call with the fake tools, insert its result, repeat.
    Returns the trajectories (samples per question, question-major) and every completion seen."""
    params = params or SamplingParams(stop=STOPS)
    heads = [prompt_text(tokenizer, q.question) for q in questions for _ in range(samples)]
    trajectories = [""] * len(heads)
    active = list(range(len(heads)))
    completions = []
    for _ in range(max_turns):
        if not active:
            break
        prompts = [tokenizer.encode(heads[i] + trajectories[i], add_special_tokens=False) for i in active]
        outs = policy.generate(prompts, params)
        assert len(outs) == len(prompts)
        still = []
        for i, (c,) in zip(active, outs, strict=True):
            completions.append(c)
            trajectories[i] += c.text
            call = pending_tool_call(c.text)
            if call is not None:
                trajectories[i] += render_result(tools(call.tool, call.content))
                still.append(i)
        active = still
    assert not active, "trajectories did not finish"
    return trajectories, completions


def check_contract(tokenizer, completions, stops=STOPS):
    for c in completions:
        assert tokenizer.decode(c.token_ids) == c.text
        assert c.token_ids == tokenizer.encode(c.text, add_special_tokens=False)
        assert c.logprobs is None
        assert c.finish_reason == "stop" and c.stop in stops and c.text.endswith(c.stop)
        assert sum(c.text.count(s) for s in stops) == 1


@pytest.fixture(scope="module")
def expert(tokenizer):
    return ExpertPolicy(tokenizer)


def test_minimal_trajectories_are_correct_and_minimal(expert, tokenizer, tools, world):
    questions = world.questions("dev") + world.questions("train")[::6]
    trajectories, completions = rollout(expert, tokenizer, tools, questions)
    check_contract(tokenizer, completions)
    for q, t in zip(questions, trajectories, strict=True):
        assert extract_answer(t) == q.answer, t
        assert check_format(t).ok, check_format(t).problems
        assert count_tool_calls(t) == q.meta["min_tool_calls"]
        assert count_calls_by_tool(t) == {"search": q.meta["min_search"], "python": q.meta["min_python"]}
        if q.meta["min_tool_calls"]:
            # grounded: the answer is in what the tools returned, not only in the plan
            results = t.split("<result>")[1:]
            assert any(q.answer in r.split("</result>")[0] for r in results), t


def test_redundant_rate_one_adds_exactly_one_call(tokenizer, tools, world):
    policy = ExpertPolicy(tokenizer, redundant_rate=1.0)
    questions = world.questions("dev")
    trajectories, completions = rollout(policy, tokenizer, tools, questions, samples=2)
    check_contract(tokenizer, completions)
    kinds = Counter()
    for k, t in enumerate(trajectories):
        q = questions[k // 2]
        assert extract_answer(t) == q.answer and check_format(t).ok
        assert count_tool_calls(t) == q.meta["min_tool_calls"] + 1
        kinds["again" if "again" in t else "extra"] += 1
    assert kinds["again"] and kinds["extra"]  # both repeated and unneeded calls occur


def test_missing_rate_one_skips_a_needed_call(tokenizer, tools, world):
    policy = ExpertPolicy(tokenizer, missing_rate=1.0)
    questions = world.questions("dev")
    trajectories, _ = rollout(policy, tokenizer, tools, questions)
    wrong = needing = 0
    for q, t in zip(questions, trajectories, strict=True):
        assert check_format(t).ok
        assert count_tool_calls(t) == max(q.meta["min_tool_calls"] - 1, 0)
        if q.meta["min_tool_calls"]:
            needing += 1
            wrong += extract_answer(t) != q.answer
        else:
            assert extract_answer(t) == q.answer
    assert wrong >= 0.8 * needing


def test_mixed_rates_keep_each_trajectory_consistent_and_are_deterministic(tokenizer, tools, world):
    policy = ExpertPolicy(tokenizer, redundant_rate=0.5, missing_rate=0.3, seed=7)
    questions = [q for q in world.questions("dev") if q.meta["min_tool_calls"] >= 2][:12]
    trajectories, _ = rollout(policy, tokenizer, tools, questions, samples=6)
    again, _ = rollout(policy, tokenizer, tools, questions, samples=6)
    assert trajectories == again
    shapes = Counter()
    for k, t in enumerate(trajectories):
        q = questions[k // 6]
        n, m = count_tool_calls(t), q.meta["min_tool_calls"]
        assert check_format(t).ok
        assert n in (m - 1, m, m + 1)
        if n == m + 1:
            assert extract_answer(t) == q.answer  # redundant but complete
        shapes[n - m] += 1
    assert set(shapes) == {-1, 0, 1}  # samples of one prompt differ
    other_seed, _ = rollout(
        ExpertPolicy(tokenizer, redundant_rate=0.5, missing_rate=0.3, seed=8),
        tokenizer,
        tools,
        questions,
        samples=6,
    )
    assert other_seed != trajectories


def test_n_completions_and_stop_handling(expert, tokenizer, world):
    q = next(q for q in world.questions("dev") if q.meta["qtype"] == "search2_python")
    ids = tokenizer.encode(prompt_text(tokenizer, q.question), add_special_tokens=False)
    (outs,) = expert.generate([ids], SamplingParams(stop=STOPS, n=3))
    assert len(outs) == 3 and len({c.text for c in outs}) == 1
    assert outs[0].text.endswith("</search>") and outs[0].stop == "</search>"
    # no stop strings (an RL-style answer ends with EOS): the segment still ends at its tag, as "eos"
    no_q = next(q for q in world.questions("dev") if q.meta["qtype"] == "no_tool")
    no_ids = tokenizer.encode(prompt_text(tokenizer, no_q.question), add_special_tokens=False)
    ((c,),) = expert.generate([no_ids], SamplingParams(stop=["</search>", "</python>"]))
    assert c.finish_reason == "eos" and c.stop is None and c.text.endswith("</answer>")
    # a stop string earlier in the text cuts there
    ((c,),) = expert.generate([ids], SamplingParams(stop=["</think>"]))
    assert c.text.endswith("</think>") and c.finish_reason == "stop" and "<search>" not in c.text
    # max_new_tokens
    ((c,),) = expert.generate([ids], SamplingParams(stop=STOPS, max_new_tokens=5))
    assert c.finish_reason == "length" and len(c.token_ids) == 5 and tokenizer.decode(c.token_ids) == c.text
    # a finished trajectory gets nothing more
    full = "".join(expert_plan_text(no_q))
    ((c,),) = expert.generate(
        [no_ids + tokenizer.encode(full, add_special_tokens=False)], SamplingParams(stop=STOPS)
    )
    assert c.text == "" and c.token_ids == [] and c.finish_reason == "eos"


def test_chat_messages_and_few_shot_prompts(expert, tokenizer, world):
    shot_q, q = world.questions("train")[0], world.questions("dev")[5]
    shot = "".join(expert_plan_text(shot_q))  # an example turn with another question
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": shot_q.question},
        {"role": "assistant", "content": shot},
        {"role": "user", "content": q.question},
    ]
    ((c,),) = expert.generate([messages], SamplingParams(stop=STOPS))
    assert c.text == expert_plan_text(q)[0]
    text = prompt_text(tokenizer, q.question, [(shot_q.question, shot)])
    ((c2,),) = expert.generate([tokenizer.encode(text, add_special_tokens=False)], SamplingParams(stop=STOPS))
    assert c2.text == c.text


def test_unknown_question_is_a_clear_error(expert, tokenizer):
    ids = tokenizer.encode(prompt_text(tokenizer, "Who painted the Mona Lisa?"), add_special_tokens=False)
    with pytest.raises(ValueError, match="not a tool-world question"):
        expert.generate([ids], SamplingParams(stop=STOPS))
    no_gen = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    with pytest.raises(ValueError, match="no assistant generation prompt"):
        expert.generate([tokenizer.encode(no_gen, add_special_tokens=False)], SamplingParams())


def test_resumes_partial_segments_hints_and_foreign_prefixes(expert, tools, world):
    q = next(q for q in world.questions("dev") if q.meta["qtype"] == "search2")
    first, second, final = expert_plan_text(q)
    # a segment cut by max_new_tokens is continued, not restarted
    assert expert.continuation(q, first[:25]) == first[25:]
    # an injected hint inside an open think is closed, then the plan goes on
    hinted = "<think>Wait, let me check that with a search."
    text = hinted + expert.continuation(q, hinted)
    assert text.count("<think>") == 1 and text.endswith(first[first.index("<search>") :])
    # a prefix that follows no plan variant (another model wrote it) still gets the next plan step
    foreign = "<think>Hmm.</think><search>something else</search>" + render_result("nothing")
    nxt = expert.continuation(q, foreign)
    assert nxt == second and parse_progress(foreign + nxt).calls[0] == ("search", "something else")
    # the whole minimal trajectory, with real-ish results in between
    call1, call2 = (pending_tool_call(s) for s in (first, second))
    traj = first + render_result(tools(call1.tool, call1.content)) + second
    traj += render_result(tools(call2.tool, call2.content)) + final
    assert check_format(traj).ok and extract_answer(traj) == q.answer


def test_plan_text_for_every_variant(world):
    for q in world.questions("dev"):
        assert redundancy_options(q), q.id
        variants = [Variant(), Variant(missing=True)]
        variants += [Variant(redundant=i) for i in range(len(redundancy_options(q)))]
        variants += [
            Variant(missing=True, redundant=i) for i in range(len(redundancy_options(q, missing=True)))
        ]
        for v in variants:
            segments = expert_plan_text(q, v)
            traj = "".join(
                s + (render_result("...") if i < len(segments) - 1 else "") for i, s in enumerate(segments)
            )
            assert check_format(traj).ok, (v, traj)
            expected = (
                q.meta["min_tool_calls"] + (v.redundant is not None) - (v.missing and bool(q.meta["plan"]))
            )
            assert count_tool_calls(traj) == expected
    with pytest.raises(ValueError, match="no redundancy option"):
        expert_plan_text(world.questions("dev")[0], Variant(redundant=99))


def test_oracle_settings_and_question_lookup(world):
    policy = ToolWorldTask().oracle("embedded", {"redundant_rate": 0.25, "missing_rate": 0.1, "seed": 3})
    assert isinstance(policy, ExpertPolicy) and isinstance(policy, Generator)
    assert (policy.redundant_rate, policy.missing_rate, policy.seed) == (0.25, 0.1, 3)
    assert policy.world_seeds == [0, 3]
    assert policy.tokenizer.eos_token == "<|im_end|>"
    q = world.questions("test")[0]
    # a user turn that wraps the question in other words still finds it
    assert policy.find_question(f"Question: {q.question}\nAnswer step by step.").question == q.question
    with pytest.raises(ValueError, match="redundant_rate"):
        ExpertPolicy(policy.tokenizer, redundant_rate=1.5)
    # settings: None (defaults), an ExpertConfig, a mapping; invalid ones name the field
    assert expert_settings(None) == ExpertConfig()
    cfg = ExpertConfig(missing_rate=0.5)
    assert expert_settings(cfg) is cfg and expert_settings({"seed": 2}) == ExpertConfig(seed=2)
    with pytest.raises(ValueError, match=r"expert\.redundant_rate"):
        expert_settings({"redundant_rate": 2})
    with pytest.raises(ValueError, match=r"expert\.temperature"):
        expert_settings({"temperature": 1.0})


def test_extra_questions_from_another_world(tokenizer, tools):
    custom = generate_world(5, train_size=6, dev_size=6, test_size=6)
    policy = ExpertPolicy(tokenizer, world_seeds=[], questions=custom.questions())
    qs = custom.questions("dev")
    trajectories, _ = rollout(policy, tokenizer, FakeTools(custom), qs)
    assert [extract_answer(t) for t in trajectories] == [q.answer for q in qs]
    with pytest.raises(ValueError, match="meta"):
        policy.add_question(Question(id="x", question="What?", answer="y"))
