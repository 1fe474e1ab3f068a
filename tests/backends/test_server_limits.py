"""serve-model's request limits: oversized and malformed requests get clear 4xx answers before they
join a batch, so that they cannot fail the requests merged with them."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from etagent.backends.server import ModelServerLimits, create_app, model_context_length, serve_in_thread
from tests.raw_http import read_response

LIMITS = ModelServerLimits(max_body_bytes=8192, max_sequences=4, max_logprobs=2, max_model_len=64)


@pytest.fixture(scope="module")
def url(tiny_gen):
    with serve_in_thread(create_app(tiny_gen, "tiny", limits=LIMITS)) as base:
        yield base


def post(url: str, **body) -> httpx.Response:
    return httpx.post(f"{url}/completions", json={"model": "tiny", "temperature": 0, **body}, timeout=60)


def detail(response: httpx.Response) -> str:
    return str(response.json()["detail"])


def test_models_lists_the_context_window(url, tiny_gen):
    (card,) = httpx.get(f"{url}/models").json()["data"]
    assert card["max_model_len"] == 64  # vLLM's field: OpenAI-backend clients cap requests to it
    assert model_context_length(tiny_gen) == tiny_gen.model.config.max_position_embeddings == 4096


def test_body_over_the_limit_gets_413(url):
    response = post(url, prompt="word " * 3000)
    assert response.status_code == 413
    assert "at most 8192 bytes" in detail(response) and "serve-model --max-body-mb" in detail(response)


def test_too_many_sequences_get_422(url):
    assert post(url, prompt=["a", "b"], n=2, max_tokens=1).status_code == 200  # 4: at the limit
    response = post(url, prompt=["a", "b", "c"], n=2, max_tokens=1)
    assert response.status_code == 422
    assert "3 prompt(s) x n=2 = 6" in detail(response) and "--max-sequences" in detail(response)
    assert post(url, prompt=[[1, 2]] * 5, max_tokens=1).status_code == 422


def test_too_many_logprobs_get_422(url):
    assert post(url, prompt="a", max_tokens=1, logprobs=2).status_code == 200
    response = post(url, prompt="a", max_tokens=1, logprobs=3)
    assert response.status_code == 422 and "--max-logprobs" in detail(response)


def test_context_window_as_vllm(url, tiny_gen):
    ids = tiny_gen.tokenizer.encode("hello there", add_special_tokens=False)
    prompt = (ids * 64)[:60]
    assert post(url, prompt=prompt, max_tokens=4).status_code == 200  # 64: exactly the window
    response = post(url, prompt=prompt, max_tokens=5)
    assert response.status_code == 400
    assert "maximum context length is 64 tokens" in detail(response)
    assert "65 tokens (60 in the prompt, 5 in the completion)" in detail(response)


def test_empty_prompts_get_400(url):
    for prompt in ("", [], [[]], [""], ["a", ""]):
        response = post(url, prompt=prompt, max_tokens=1)
        assert response.status_code == 400, (prompt, response.text)


def test_bad_seed_gets_422(url):
    assert post(url, prompt="a", max_tokens=1, seed=2**64).status_code == 422
    assert post(url, prompt="a", max_tokens=1, seed=-(2**63)).status_code == 200


def test_a_bad_token_id_does_not_fail_the_requests_merged_with_it(tiny_gen):
    """Before: an id outside the vocabulary raised inside generate(), failing every request of the
    batch it was merged into (HTTP 500 for all of them)."""
    vocab = tiny_gen.model.config.vocab_size
    app = create_app(tiny_gen, "tiny", batch_window_s=0.3, limits=LIMITS)
    with serve_in_thread(app) as base, ThreadPoolExecutor(3) as pool:
        # sent together, so that the batcher's window would merge them
        futures = [
            pool.submit(post, base, prompt=[1, 2, 3], max_tokens=2),
            pool.submit(post, base, prompt=[1, vocab], max_tokens=2),
            pool.submit(post, base, prompt=[-1], max_tokens=2),
        ]
        good, too_big, negative = (f.result() for f in futures)
    assert good.status_code == 200 and len(good.json()["choices"][0]["token_ids"]) == 2
    assert too_big.status_code == 400 and f"token id {vocab}, outside the vocabulary" in detail(too_big)
    assert negative.status_code == 400 and "token id -1" in detail(negative)


def test_limits_are_validated():
    with pytest.raises(ValueError, match="max_sequences"):
        ModelServerLimits(max_sequences=0)
    with pytest.raises(ValueError, match="max_model_len"):
        ModelServerLimits(max_model_len=0)


def test_keep_alive_is_configurable(tiny_gen):
    """An idle connection is closed after keep_alive_s (serve-model --keep-alive-s), not before."""
    with serve_in_thread(create_app(tiny_gen, "tiny"), keep_alive_s=0.3) as base:
        host, port = base.removeprefix("http://").removesuffix("/v1").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.settimeout(5)
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert read_response(s).startswith(b"HTTP/1.1 200")
            time.sleep(0.1)
            s.sendall(f"GET /health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert read_response(s).startswith(b"HTTP/1.1 200")  # still open within the keep-alive
            time.sleep(0.8)
            assert read_response(s) == b""  # closed by the server once idle past it
