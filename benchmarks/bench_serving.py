"""Generated tokens/s of the openai backend against ``etagent serve-model`` as the client's
concurrency grows, and with the same requests spread over two servers, each ratio against one
request at a time to one server, measured in the same run.

Every request is one tool-world question (chat prompt, greedy, ``--tokens`` new tokens); the
servers batch the requests in flight (the hf backend decodes them together).

    .venv/bin/python benchmarks/bench_serving.py [--model embedded] [--questions 16] [--tokens 48]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx

from etagent.runtime import free_port


@contextlib.contextmanager
def model_server(model: str, threads: int) -> Iterator[str]:
    """``etagent serve-model`` in a subprocess; yields its ``/v1`` URL once healthy."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "etagent.cli", "serve-model", "--model", model, "--port", str(port),
         "--set", f"hf.threads={threads}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve-model exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("serve-model did not become healthy in 300 s")
            time.sleep(0.5)
        yield base + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def tokens_per_s(urls: list[str], model: str, prompts: list, concurrency: int, tokens: int) -> float:
    from etagent.backends.base import SamplingParams
    from etagent.backends.model_store import load_tokenizer
    from etagent.backends.openai_backend import OpenAIGenerator

    gen = OpenAIGenerator(urls, load_tokenizer(model), concurrency=concurrency, send_token_ids=True)
    params = SamplingParams(max_new_tokens=tokens, temperature=0.0)
    try:
        gen.generate(prompts[:1], params)  # connections and the model list, outside the timing
        t0 = time.perf_counter()
        outs = gen.generate(prompts, params)
        elapsed = time.perf_counter() - t0
    finally:
        gen.close()
    return sum(len(o[0].token_ids) for o in outs) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = ap.parse_args()

    from etagent.backends.base import render_chat_ids
    from etagent.backends.model_store import load_tokenizer
    from etagent.tasks import load_questions

    tok = load_tokenizer(args.model)
    questions = load_questions("toolworld:dev", limit=args.questions)
    prompts = [render_chat_ids(tok, [{"role": "user", "content": q.question}]) for q in questions]
    cores = os.cpu_count() or 1
    with model_server(args.model, cores) as one:
        rates = {c: tokens_per_s([one], args.model, prompts, c, args.tokens) for c in args.concurrency}
    base = rates[args.concurrency[0]]
    print(
        f"{args.questions} requests x {args.tokens} tokens, model {args.model}, one server ({cores} threads)"
    )
    for c, rate in rates.items():
        print(f"  concurrency {c:3d}: {rate:7.1f} tokens/s  {rate / base:5.2f}x")
    # the same cores split between two servers: load balancing, not more hardware
    half = max(cores // 2, 1)
    with model_server(args.model, half) as a, model_server(args.model, half) as b:
        best = max(args.concurrency)
        two = tokens_per_s([a, b], args.model, prompts, best // 2 or 1, args.tokens)
    print(f"two servers ({half} threads each), concurrency {best // 2 or 1} each: {two:7.1f} tokens/s  "
          f"{two / base:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
