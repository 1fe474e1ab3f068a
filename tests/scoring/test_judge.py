import multiprocessing
import threading
import time

import pytest

from etagent.backends.base import Completion, Generator, SamplingParams
from etagent.config import load_config
from etagent.scoring.judge import (
    CorrectnessItem,
    JudgeConfig,
    LLMJudge,
    majority_concise,
    parse_verdict,
    parse_vote,
)
from etagent.scoring.judge_cache import VerdictCache
from etagent.scoring.metrics import score_run
from tests.scoring.helpers import make_traj
from tests.scoring.test_metrics import write_run


class CharTokenizer:
    """One token per character: enough for raw-completion prompts, no model files."""

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(map(chr, ids))


class ScriptedJudgeGenerator(Generator):
    """Replies ``reply(prompt text, params, call number)`` (a list of n texts) to every prompt;
    records each generate() call."""

    name = "scripted-judge"

    def __init__(self, reply):
        self.tokenizer = CharTokenizer()
        self.reply = reply
        self.calls: list[tuple[list[str], SamplingParams]] = []
        self.chat_prompts = 0

    def generate(self, prompts, params):
        texts = []
        for p in prompts:
            if p and isinstance(p[0], dict):
                self.chat_prompts += 1
                texts.append(p[-1]["content"])
            else:
                texts.append(self.tokenizer.decode(p))
        self.calls.append((texts, params))
        out = []
        for text in texts:
            replies = self.reply(text, params, len(self.calls))
            assert len(replies) == params.n
            out.append([Completion(r, self.tokenizer.encode(r), "stop") for r in replies])
        return out


def _items():
    return [
        CorrectnessItem("What is 1/2?", ["\\frac{1}{2}"], "0.5"),  # equal by rule: never asked
        CorrectnessItem("Capital of France?", ["Paris"], ""),  # no answer: never asked
        CorrectnessItem("What is 2+2?", ["4"], "four"),
        CorrectnessItem("Largest planet?", ["Jupiter"], "Saturn", task="qa"),
        CorrectnessItem("What is 2+2?", ["4"], "four"),  # a duplicate: asked once
    ]


def _by_content(text, params, call):
    if "four" in text:
        return ["Correct"]
    return ["<judgment>Incorrect</judgment>"]


def _judge(tmp_path, reply, **cfg):
    gen = ScriptedJudgeGenerator(reply)
    cfg.setdefault("name", "judge-A")
    return LLMJudge(gen, JudgeConfig(**cfg), VerdictCache(tmp_path / "verdicts.sqlite")), gen


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Correct", True),
        ("correct.", True),
        ("Incorrect", False),
        ("The prediction is not correct", False),
        ("WRONG", False),
        ("Thinking: is it wrong? <judgment>Correct</judgment>", True),
        ("I cannot tell.", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) is verdict


def test_parse_vote_and_majority():
    assert parse_vote("<answer>yes</answer>") is True
    assert parse_vote("<answer>no</answer>") is False
    assert parse_vote("Let me see. <answer> Yes, the second search repeats the first") is True
    assert parse_vote("no.") is False
    assert parse_vote("nothing to add") is None
    assert parse_vote("maybe") is None
    assert majority_concise([True, True, False]) is False
    assert majority_concise([True, False]) is True  # concise unless "yes" strictly wins
    assert majority_concise([True, None, None]) is False
    assert majority_concise([None, None]) is None


def test_correctness_verdicts_are_batched_and_cached(tmp_path):
    judge, gen = _judge(tmp_path, _by_content)
    assert judge.judge_correctness(_items()) == [True, False, True, False, True]
    assert len(gen.calls) == 1 and len(gen.calls[0][0]) == 2  # one batched call, two distinct prompts
    assert gen.chat_prompts == 2 and gen.calls[0][1].temperature == 0.0
    assert "Jupiter" in gen.calls[0][0][1] and "Saturn" in gen.calls[0][0][1]
    assert judge.stats.rule == 1
    # asked again: served from the cache, no generation
    assert judge.judge_correctness(_items()) == [True, False, True, False, True]
    assert len(gen.calls) == 1
    judge.close()
    # the cache survives reopening, and is per judge identity
    again, gen2 = _judge(tmp_path, lambda *a: pytest.fail("must not be asked"))
    assert again.judge_correctness(_items()) == [True, False, True, False, True]
    assert again.stats.cached == 3 and gen2.calls == []
    other, gen3 = _judge(tmp_path, _by_content, name="judge-B")
    other.judge_correctness(_items())
    assert len(gen3.calls) == 1


def test_unparseable_replies_are_retried_then_fall_back(tmp_path):
    def reply(text, params, call):
        if "Saturn" in text:
            return ["hmm"]  # never parseable
        return ["..."] if call < 3 else ["Correct"]  # parseable on the third attempt

    judge, gen = _judge(tmp_path, reply)
    assert judge.judge_correctness(_items()) == [True, False, True, False, True]
    assert [len(prompts) for prompts, _ in gen.calls] == [2, 2, 2]  # only the unanswered are re-asked
    assert [p.temperature for _, p in gen.calls] == [0.0, 0.7, 0.7]
    assert judge.stats.fallback == 1  # "Saturn": the rule-based check decided (not equal)
    # the fallback verdict is not cached: a later judge still asks
    later, gen2 = _judge(tmp_path, _by_content)
    later.judge_correctness(_items())
    assert len(gen2.calls) == 1 and len(gen2.calls[0][0]) == 1


def test_a_failing_backend_falls_back_without_caching(tmp_path):
    def broken(*args):
        raise ConnectionError("judge server down")

    judge, gen = _judge(tmp_path, broken, max_attempts=2)
    assert judge.judge_correctness(_items()) == [True, False, False, False, False]
    assert len(gen.calls) == 2 and len(judge.stats.errors) == 2 and judge.stats.fallback == 3
    assert len(judge.cache) == 0


def test_chunks_bound_each_generate_call(tmp_path):
    items = [CorrectnessItem(f"q{k}", ["4"], f"answer {k}") for k in range(5)]
    judge, gen = _judge(tmp_path, lambda *a: ["Incorrect"], chunk_size=2)
    assert judge.judge_correctness(items) == [False] * 5
    assert [len(prompts) for prompts, _ in gen.calls] == [2, 2, 1]


def _votes(pattern):
    def reply(text, params, call):
        assert params.stop == ["</answer>"] and params.temperature == 0.6 and params.top_p == 0.95
        key = "Q-redundant" if "Q-redundant" in text else ("Q-garbled" if "Q-garbled" in text else "Q-fine")
        return pattern[key][: params.n]

    return reply


VOTES = {
    "Q-redundant": ["yes</answer>"] * 6 + ["no</answer>"] * 4,
    "Q-fine": ["no</answer>"] * 5 + ["yes</answer>"] * 5,  # a tie is concise
    "Q-garbled": ["hmm"] * 10,
}


def test_conciseness_majority_vote(tmp_path):
    trajs = [
        make_traj("42", 2, question="Q-redundant", qid="a"),
        make_traj("42", 1, question="Q-fine", qid="b"),
        make_traj("42", 1, question="Q-garbled", qid="c"),
    ]
    judge, gen = _judge(tmp_path, _votes(VOTES))
    assert judge.judge_conciseness(trajs, votes=10) == [False, True, None]
    assert len(gen.calls) == 1 and gen.calls[0][1].n == 10
    prompt = gen.calls[0][0][0]
    # a raw completion prompt (no chat template) holding the question, the gold and the trajectory
    assert gen.chat_prompts == 0 and prompt.startswith("Below are a question")
    assert "Golden answer: 42" in prompt and trajs[0].response_text in prompt
    # cached: only the unreadable one is asked again
    assert judge.judge_conciseness(trajs, votes=10) == [False, True, None]
    assert len(gen.calls) == 2 and len(gen.calls[1][0]) == 1
    # a different number of votes is a different question
    assert judge.judge_conciseness(trajs[:1], votes=3) == [False]
    assert gen.calls[-1][1].n == 3
    with pytest.raises(ValueError, match="votes"):
        judge.judge_conciseness(trajs, votes=0)


def test_score_run_with_a_judge(tmp_path):
    run = tmp_path / "run"
    maths = [
        make_traj("four", 1, gold="4", task="math", qid="m0", question="Q-redundant", tool="python"),
        make_traj("5", 0, gold="4", task="math", qid="m1", question="Q-fine"),
    ]
    qa = [make_traj("42", 0, qid="q0", question="Q-fine"), make_traj("41", 1, qid="q1", question="Q-fine")]
    write_run(run, {"aime": maths, "hotpot": qa})

    def reply(text, params, call):
        if params.n == 10:
            return _votes(VOTES)(text, params, call)
        return ["Correct"] if "four" in text else ["Incorrect"]

    judge, gen = _judge(tmp_path, reply)
    metrics = score_run(run, judge=judge, conciseness_votes=10)
    assert metrics["judge"] == "judge-A"
    aime, hotpot = metrics["datasets"]["aime"], metrics["datasets"]["hotpot"]
    assert aime["correctness_metric"] == "judge" and aime["correctness"] == 0.5
    assert hotpot["correctness_metric"] == "f1" and hotpot["correctness"] == 0.5
    # the two trajectories with a call were judged (m0 redundant, q1 fine); the others are concise
    assert aime["conciseness"] == 0.5 and hotpot["conciseness"] == 1.0
    assert metrics["overall"]["conciseness"] == 0.75
    # one batched call per judge: the two math answers (neither equal by rule), the two trajectories
    # with a tool call
    assert [len(prompts) for prompts, _ in gen.calls] == [2, 2]
    again = score_run(run, judge=judge, conciseness_votes=10)
    assert again["datasets"] == metrics["datasets"] and len(gen.calls) == 2  # all from the cache


def test_judge_config_and_a_real_backend_that_is_down(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text(
        "backend:\n  kind: openai\n  model: tiny\n"
        "  openai: {base_url: 'http://127.0.0.1:9/v1', served_model: qwen72b, max_retries: 0, timeout_s: 5}\n"
        f"cache_path: {tmp_path / 'c.sqlite'}\n"
        "max_attempts: 1\n"
    )
    cfg = load_config(JudgeConfig, path)
    assert cfg.identity() == "openai:qwen72b"
    assert JudgeConfig(name="x").identity() == "x"
    assert JudgeConfig().identity() == "openai:embedded"
    with LLMJudge.from_config(cfg) as judge:
        assert judge.model == "openai:qwen72b"
        t0 = time.monotonic()
        assert judge.judge_correctness(_items()) == [True, False, False, False, False]
        assert time.monotonic() - t0 < 30
        assert judge.stats.errors and judge.stats.fallback == 3


def _write_keys(path, start, n):
    cache = VerdictCache(path)
    for k in range(start, start + n, 10):
        cache.put_many("k", "j", {f"key{i}": {"verdict": i % 2 == 0} for i in range(k, k + 10)})
    cache.close()


def test_cache_is_safe_under_concurrent_writers(tmp_path):
    path = tmp_path / "v.sqlite"
    threads = [threading.Thread(target=_write_keys, args=(path, s, 100)) for s in (0, 50, 100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_write_keys, args=(path, s, 100)) for s in (200, 250)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    with VerdictCache(path) as cache:
        assert len(cache) == 350
        got = cache.get_many([f"key{i}" for i in range(400)])
        assert len(got) == 350 and got["key7"] == {"verdict": False} and got["key348"] == {"verdict": True}
        # the first verdict stored for a key wins
        cache.put_many("k", "j", {"key0": {"verdict": False}})
        assert cache.get_many(["key0"])["key0"] == {"verdict": True}


def test_judge_runs_on_the_hf_backend(tiny_model_path):
    # plumbing with a real Generator: chat prompts for correctness, raw token ids with n votes for
    # conciseness; the random model's replies are unreadable, so the asked verdict falls back
    from etagent.backends.config import BackendConfig

    cfg = JudgeConfig(
        backend=BackendConfig(kind="hf", model=str(tiny_model_path)),
        cache=False,
        max_attempts=2,
        max_new_tokens=4,
        concise_max_new_tokens=4,
        seed=0,
    )
    with LLMJudge.from_config(cfg) as judge:
        assert judge.cache is None
        items = [CorrectnessItem("q", ["4"], "five"), CorrectnessItem("q2", ["4"], "4.0")]
        assert judge.judge_correctness(items) == [False, True]
        assert judge.judge_conciseness([make_traj("42", 1)], votes=3) == [None]
        assert judge.stats.errors == [] and judge.stats.generate_calls == 3
