"""OpenAIGenerator against serve-model, an OpenAI-semantics mock, and no server at all."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from fastapi import FastAPI, HTTPException, Request

from etagent.backends.base import SamplingParams
from etagent.backends.openai_backend import (
    BackendUnavailableError,
    OpenAIGenerator,
    infer_excluded_stop,
    normalise_choice,
)
from etagent.backends.server import serve_in_thread
from tests.backends.scripted import SCRIPTS


def greedy(max_new_tokens: int = 20, **kw) -> SamplingParams:
    return SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, **kw)


def assert_contract(tokenizer, c) -> None:
    assert tokenizer.decode(c.token_ids, skip_special_tokens=False) == c.text
    if c.finish_reason == "stop":
        assert c.stop and c.text.endswith(c.stop)
    if c.logprobs is not None:
        assert len(c.logprobs) == len(c.token_ids)


@pytest.fixture
def client(server_url, scripted_gen):
    gen = OpenAIGenerator(server_url, scripted_gen.tokenizer, max_retries=0, timeout_s=60, concurrency=4)
    yield gen
    gen.close()


def test_matches_the_hf_backend(client, scripted_gen):
    prompts = [
        scripted_gen.tokenizer.encode(SCRIPTS[k][0], add_special_tokens=False)
        for k in ("search", "answer", "eos")
    ]
    prompts.append([{"role": "user", "content": "hi"}])
    params = greedy(12, stop=["</search>", "</answer>"], logprobs=2)
    got = client.generate(prompts, params)
    ref = scripted_gen.generate(prompts, params)
    assert client.served_model == "tiny"  # looked up from /v1/models
    assert [g[0].text for g in got[:3]] == [" a</search>", "x </answer>", " done"]
    assert [g[0].finish_reason for g in got] == [r[0].finish_reason for r in ref]
    for g, r in zip(got, ref, strict=True):
        c, e = g[0], r[0]
        assert_contract(client.tokenizer, c)
        assert (c.text, c.token_ids, c.stop) == (e.text, e.token_ids, e.stop)
        assert (
            c.logprobs == pytest.approx(e.logprobs, abs=1e-5)
            if None not in e.logprobs
            else c.logprobs == e.logprobs
        )
        assert len(c.top_logprobs) == len(c.token_ids)
        for alt, ealt in zip(c.top_logprobs, e.top_logprobs, strict=True):
            assert alt.keys() == ealt.keys()


def test_n_samples_and_many_concurrent_prompts(client, scripted_gen):
    tok = scripted_gen.tokenizer
    out = client.generate(
        [[{"role": "user", "content": "tell me"}]], SamplingParams(max_new_tokens=5, n=3, seed=1)
    )
    assert len(out) == 1 and len(out[0]) == 3
    prompts = [tok.encode(f"Prompt {i}:", add_special_tokens=False) for i in range(24)]
    t0 = time.time()
    got = client.generate(prompts, greedy(4))  # 24 requests, at most 4 in flight
    elapsed = time.time() - t0
    ref = scripted_gen.generate(prompts, greedy(4))
    assert [g[0].token_ids for g in got] == [r[0].token_ids for r in ref]  # in prompt order
    assert elapsed < 30


def test_server_that_drops_the_stop_string_is_normalised(client, scripted_gen):
    """A server that honours OpenAI semantics (stop string cut) but still names it in stop_reason."""
    client.send_extras = False
    prompt = scripted_gen.tokenizer.encode(SCRIPTS["answer"][0], add_special_tokens=False)
    c = client.generate([prompt], greedy(stop=["</answer>"]))[0][0]
    assert c.text == "x </answer>" and c.stop == "</answer>" and c.finish_reason == "stop"
    assert_contract(client.tokenizer, c)


def openai_semantics_app(generator) -> FastAPI:
    """A strict, llama.cpp-like server: stop strings excluded, no stop_reason, no token ids,
    log-prob tokens as text pieces, one choice per request, unknown fields rejected."""
    app = FastAPI()
    allowed = {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "logprobs", "stop", "seed"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "mock-model", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        extra = sorted(set(body) - allowed)
        if extra:
            raise HTTPException(400, f"Unrecognized request argument supplied: {extra[0]}")
        tok = generator.tokenizer
        params = SamplingParams(
            max_new_tokens=body["max_tokens"],
            temperature=body["temperature"],
            stop=body.get("stop") or [],
            logprobs=body.get("logprobs") or 0,
        )
        c = generator.generate([tok.encode(body["prompt"], add_special_tokens=False)], params)[0][0]
        text = c.text[: len(c.text) - len(c.stop)] if c.stop else c.text
        pieces = [tok.decode([t]) for t in c.token_ids]
        return {
            "choices": [
                {
                    "index": 0,
                    "text": text,
                    "finish_reason": "length" if c.finish_reason == "length" else "stop",
                    "logprobs": {
                        "tokens": pieces,
                        "token_logprobs": c.logprobs,
                        "top_logprobs": [
                            {tok.decode([k]): v for k, v in t.items()} for t in c.top_logprobs or []
                        ],
                    },
                }
            ]
        }

    return app


def test_openai_semantics_server_is_normalised(scripted_gen):
    tok = scripted_gen.tokenizer
    with serve_in_thread(openai_semantics_app(scripted_gen)) as url:
        gen = OpenAIGenerator(url, tok, max_retries=0, timeout_s=60)
        try:
            prompts = [
                tok.encode(SCRIPTS[k][0], add_special_tokens=False) for k in ("search", "answer", "eos")
            ]
            out = gen.generate(prompts, greedy(stop=["</search>", "</answer>"], logprobs=1, n=2))
        finally:
            gen.close()
    assert gen.served_model == "mock-model" and gen.send_extras is False  # retried without vLLM fields
    assert [len(g) for g in out] == [2, 2, 2]  # n filled by repeated requests
    search, answer, eos = (g[0] for g in out)
    assert (search.text, search.stop, search.finish_reason) == (" a</search>", "</search>", "stop")
    # no stop_reason and no open tag anywhere: a dropped stop cannot be told from eos (documented)
    assert (answer.text, answer.stop, answer.finish_reason) == ("x ", None, "eos")
    assert (eos.text, eos.finish_reason) == (" done", "eos")
    for c in (search, answer, eos):
        assert_contract(tok, c)
        assert c.logprobs[0] is not None  # aligned with the server's text pieces


def test_normalise_choice_cases(tokenizer):
    p = SamplingParams(stop=["</search>", "</answer>"], logprobs=1)
    eos = {tokenizer.eos_token_id}
    # vLLM: ids run to the end of the token holding the stop (">."), text includes the stop
    ids = tokenizer.encode("x </answer>.", add_special_tokens=False)
    c = normalise_choice(
        tokenizer,
        {
            "text": "x </answer>",
            "finish_reason": "stop",
            "stop_reason": "</answer>",
            "token_ids": ids,
            "logprobs": {
                "tokens": [f"token_id:{i}" for i in ids],
                "token_logprobs": [-0.5] * len(ids),
                "top_logprobs": [{f"token_id:{i}": -0.5} for i in ids],
            },
        },
        p,
        eos,
    )
    assert c.text == "x </answer>" and tokenizer.decode(c.token_ids) == c.text
    assert c.logprobs[0] == -0.5 and c.logprobs[-1] is None and c.top_logprobs[0] == {ids[0]: -0.5}
    # eos: vLLM puts the eos id in token_ids; stop_reason None
    ids = [*tokenizer.encode(" ok", add_special_tokens=False), tokenizer.eos_token_id]
    c = normalise_choice(
        tokenizer, {"text": " ok", "finish_reason": "stop", "stop_reason": None, "token_ids": ids}, p, eos
    )
    assert (c.text, c.finish_reason, c.token_ids, c.logprobs) == (" ok", "eos", ids[:-1], None)
    # no stop_reason, the stop excluded: inferred from the unclosed tag
    c = normalise_choice(tokenizer, {"text": "<search>paris", "finish_reason": "stop"}, p, eos)
    assert (c.text, c.stop, c.finish_reason) == ("<search>paris</search>", "</search>", "stop")
    c = normalise_choice(tokenizer, {"text": " q", "finish_reason": "stop"}, p, eos, prompt_text="<search>")
    assert (c.text, c.stop) == (" q</search>", "</search>")
    c = normalise_choice(tokenizer, {"text": "all done<|im_end|>", "finish_reason": "stop"}, p, eos)
    assert (c.text, c.finish_reason) == ("all done", "eos")
    c = normalise_choice(tokenizer, {"text": "abc", "finish_reason": "length"}, p, eos)
    assert (c.text, c.finish_reason, tokenizer.decode(c.token_ids)) == ("abc", "length", "abc")


def test_infer_excluded_stop():
    stops = ["</search>", "</answer>", "\n\n"]
    assert infer_excluded_stop("<answer>x <search>q", stops) == "</search>"
    assert infer_excluded_stop("<search>q</search> <answer>4", stops) == "</answer>"
    assert infer_excluded_stop("<search>q</search> done", stops) is None
    assert infer_excluded_stop("plain", stops) is None


def test_unreachable_server_fails_fast_with_a_clear_error(tokenizer):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    gen = OpenAIGenerator(url, tokenizer, max_retries=0, timeout_s=2)
    t0 = time.time()
    with pytest.raises(BackendUnavailableError) as err:
        gen.generate([[1, 2, 3]], greedy(4))
    gen.close()
    assert time.time() - t0 < 5
    msg = str(err.value)
    assert url in msg and "\n" not in msg
    gen = OpenAIGenerator(url, tokenizer, served_model="m", max_retries=0, timeout_s=2)
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        gen.generate([[1, 2, 3]] * 5, greedy(4))
    gen.close()


def test_works_inside_a_running_event_loop(server_url, scripted_gen):
    gen = OpenAIGenerator(server_url, scripted_gen.tokenizer, max_retries=0)
    prompt = scripted_gen.tokenizer.encode(SCRIPTS["eos"][0], add_special_tokens=False)

    async def main() -> tuple[str, str]:
        sync = gen.generate([prompt], greedy())[0][0].text  # blocking call from inside a loop
        native = (await gen.agenerate([prompt], greedy()))[0][0].text
        return sync, native

    try:
        assert asyncio.run(main()) == (" done", " done")
    finally:
        gen.close()


def small_context_app(tokenizer, context: int, asked: list[int]) -> FastAPI:
    """A vLLM-like server with a ``context``-token window: it lists ``max_model_len``, answers 400
    when prompt + max_tokens exceed the window, and otherwise writes ``max_tokens`` tokens."""
    app = FastAPI()

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "small", "object": "model", "max_model_len": context}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        body = await request.json()
        prompt = body["prompt"]
        n_prompt = (
            len(prompt)
            if isinstance(prompt, list)
            else len(tokenizer.encode(prompt, add_special_tokens=False))
        )
        if n_prompt + body["max_tokens"] > context:
            raise HTTPException(400, f"maximum context length is {context} tokens")
        asked.append(body["max_tokens"])
        ids = tokenizer.encode(" a" * body["max_tokens"], add_special_tokens=False)[: body["max_tokens"]]
        return {
            "choices": [
                {
                    "index": 0,
                    "text": tokenizer.decode(ids),
                    "finish_reason": "length",
                    "token_ids": ids,
                    "stop_reason": None,
                }
            ]
        }

    return app


def test_requests_fit_the_servers_context_window(tokenizer):
    """A request never asks for more than the window leaves (the server would answer 400); what
    the window cuts, or a prompt that already fills it, ends with finish reason 'context'."""
    from etagent.loop.agent_loop import AgentLoop, BudgetConfig
    from etagent.records import Question

    asked: list[int] = []
    with serve_in_thread(small_context_app(tokenizer, 200, asked)) as url:
        gen = OpenAIGenerator(url, tokenizer, max_retries=0, send_token_ids=True)
        try:
            prompt = tokenizer.encode("word " * 40, add_special_tokens=False)
            (c,) = gen.generate([prompt], greedy(max_new_tokens=500))[0]
            assert gen.context_tokens == 200 and asked == [200 - len(prompt)]
            assert c.finish_reason == "context" and len(c.token_ids) == 200 - len(prompt)
            full = tokenizer.encode("word " * 250, add_special_tokens=False)
            (c,) = gen.generate([full], greedy(max_new_tokens=10))[0]
            assert c.finish_reason == "context" and c.token_ids == [] and len(asked) == 1  # not sent
            # in the agent loop the trajectory ends with that reason instead of failing the rollout
            loop = AgentLoop(
                gen, {}, budget=BudgetConfig(max_new_tokens_per_call=512, max_response_tokens=4096)
            )
            try:
                (traj,) = loop.run([Question(id="q", question="Say a lot.", answer="a")])
            finally:
                loop.close()
            assert traj.finish_reason == "context"
            assert traj.model == f"openai:small@{url}"  # the served model, not only the URL
            assert len(traj.prompt_ids) + len(traj.response_ids) == 200
        finally:
            gen.close()


def counting_app(tokenizer, seen: dict) -> FastAPI:
    """A slow server that records how many requests it had in flight at most, and how many in all."""
    app = FastAPI()
    seen.update(now=0, most=0, total=0)

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": "m", "object": "model"}]}

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        await request.json()
        seen["now"] += 1
        seen["total"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        await asyncio.sleep(0.05)
        seen["now"] -= 1
        ids = tokenizer.encode(" ok", add_special_tokens=False)
        return {"choices": [{"index": 0, "text": " ok", "finish_reason": "length", "token_ids": ids}]}

    return app


def test_several_servers_share_the_load_within_their_slots(tokenizer):
    """Requests go to the least busy of several servers; each server never has more than
    ``concurrency`` in flight (the others wait: back-pressure)."""
    a, b = {}, {}
    with (
        serve_in_thread(counting_app(tokenizer, a)) as url_a,
        serve_in_thread(counting_app(tokenizer, b)) as url_b,
    ):
        gen = OpenAIGenerator([url_a, url_b], tokenizer, max_retries=0, concurrency=2, send_token_ids=True)
        try:
            prompts = [tokenizer.encode(f"prompt {i}", add_special_tokens=False) for i in range(24)]
            outs = gen.generate(prompts, greedy(max_new_tokens=2))
        finally:
            gen.close()
    assert len(outs) == 24 and all(o[0].text == " ok" for o in outs)
    assert a["total"] + b["total"] == 24 and min(a["total"], b["total"]) >= 8  # both used, about evenly
    assert a["most"] <= 2 and b["most"] <= 2
    assert gen.name.endswith("+1")
