"""Any OpenAI-compatible completions server as a Generator: vLLM, SGLang, llama.cpp, ``etagent serve-model``.

We call the raw **completions** endpoint, not chat completions: the chat template is applied here,
client-side, with the model's own tokenizer, so a partial trajectory (prompt, assistant text, a
tool's observation, ...) can be continued exactly where it stops. Chat endpoints would close the
assistant turn and re-render it.

Requests go out concurrently (one per prompt, each asking for ``n`` samples), at most
``concurrency`` at a time. The openai client retries connection errors, 408/429 and 5xx answers
with exponential backoff (``max_retries``); what still fails is raised as one short error that
names the server, not a traceback per retry.

``generate()`` is synchronous. It runs the requests on a private event loop in a daemon thread
that the generator owns, so it works the same from plain scripts, from worker threads and from
code that is itself inside a running event loop (a notebook, a FastAPI handler) where
``asyncio.run`` would refuse. Async callers can ``await agenerate(...)`` instead.

Servers differ; the answers are normalised to the contract in ``base.py``:
- the stop string is asked to stay in the text (vLLM's ``include_stop_str_in_output``). A server
  with OpenAI semantics drops it; we put it back, knowing which one from vLLM's ``stop_reason``
  or, when a server gives no such field, from the text: the stop ``</x>`` whose ``<x>`` is still
  open at the end (of the completion, else of prompt + completion: a prefilled ``<search>``). A "stop" with no recognisable stop string is an end-of-sequence ("eos").
- token ids come from the server when it returns them (vLLM's ``return_token_ids`` or
  ``return_tokens_as_token_ids``), trimmed at the stop string; otherwise ``tokenizer.encode(text)``,
  with the server's per-token log-probs attached where its tokens line up with ours.
- vLLM-only fields go in ``extra_body``; a server that rejects them is asked again without them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import Field

from etagent.backends.base import (
    Completion,
    Generator,
    Prompt,
    SamplingParams,
    render_chat_text,
    trim_at_stop,
)
from etagent.config import ConfigModel

if TYPE_CHECKING:
    from etagent.backends.config import BackendConfig

T = TypeVar("T")
log = logging.getLogger(__name__)


class OpenAIConfig(ConfigModel):
    """Any OpenAI-compatible completions server (vLLM, SGLang, llama.cpp, etagent serve-model)."""

    base_url: str | list[str] = Field(
        "http://127.0.0.1:8000/v1",
        description="the server, or several serving the same model: each request goes to the one with "
        "the fewest requests in flight",
    )
    api_key: str = "EMPTY"
    served_model: str | None = Field(None, description="model name to request; None = first of /v1/models")
    concurrency: int = Field(
        32, ge=1, description="requests in flight at once per server; more wait (back-pressure)"
    )
    timeout_s: float = Field(300.0, gt=0)
    max_retries: int = Field(3, ge=0, description="retries with exponential backoff on connection errors/5xx")
    send_token_ids: bool = Field(False, description="send prompts as token ids (vLLM/SGLang) instead of text")
    context_tokens: int | None = Field(
        None,
        ge=1,
        description="the served model's context window; None = the server's max_model_len from /v1/models "
        "(vLLM), else unknown. Requests are capped to fit it; a prompt that fills it ends its trajectory "
        "with finish reason 'context'",
    )


#: vLLM extensions we ask for; other servers ignore unknown fields or reject them (then we retry
#: without). return_tokens_as_token_ids turns logprob tokens into "token_id:123" strings.
_VLLM_EXTRAS = (
    "include_stop_str_in_output",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "top_k",
    "repetition_penalty",
)


class BackendUnavailableError(ConnectionError):
    """The server could not be reached (or kept failing) after the configured retries."""


class BackendResponseError(RuntimeError):
    """The server answered, but with an error or something we cannot use."""


@dataclass
class _Server:
    """One server as seen from one event loop: its client, its request slots, what is in flight."""

    url: str
    client: Any
    semaphore: asyncio.Semaphore
    in_flight: int = 0


@dataclass
class _LoopState:
    servers: list[_Server]
    turn: int = 0  # round-robin among equally busy servers


class OpenAIGenerator(Generator):
    """A client of an OpenAI-compatible ``/v1/completions`` server."""

    name = "openai"
    config_class = OpenAIConfig

    def __init__(
        self,
        base_url: str | list[str],
        tokenizer: Any,
        *,
        api_key: str = "EMPTY",
        served_model: str | None = None,
        concurrency: int = 32,
        timeout_s: float = 300.0,
        max_retries: int = 3,
        send_token_ids: bool = False,
        context_tokens: int | None = None,
        name: str | None = None,
    ) -> None:
        urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not urls:
            raise ValueError("base_url: give at least one server")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.base_url = self.base_urls[0]  # the one asked for the model list
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.served_model = served_model
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.send_token_ids = send_token_ids
        self.context_tokens = context_tokens
        self._fixed_name = name
        self.weights_version: str | None = None  # set by RL after each weight push to the servers
        self.name = name or self._default_name()
        eos = tokenizer.eos_token_id
        self.eos_ids: set[int] = {eos} if isinstance(eos, int) else set(eos or [])
        self.send_extras = True  # cleared when the server rejects the vLLM fields
        self._listed = False  # GET /models asked once
        self._states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, cfg: BackendConfig) -> OpenAIGenerator:
        """Client for ``cfg.openai.base_url``; the tokenizer comes from ``cfg.tokenizer or cfg.model``
        (a local directory, ``embedded`` or ``tiny``; never downloaded)."""
        from etagent.backends.model_store import load_tokenizer

        o = cfg.openai
        return cls(
            o.base_url,
            load_tokenizer(cfg.tokenizer or cfg.model),
            api_key=o.api_key,
            served_model=o.served_model,
            concurrency=o.concurrency,
            timeout_s=o.timeout_s,
            max_retries=o.max_retries,
            send_token_ids=o.send_token_ids,
            context_tokens=o.context_tokens,
        )

    # ----------------------------------------------------------------------------- event loop
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=self._loop.run_forever, name="etagent-openai", daemon=True
                )
                self._thread.start()
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except BaseException:  # e.g. KeyboardInterrupt: stop the requests too
            future.cancel()
            raise

    def _state(self) -> _LoopState:
        """The servers' clients and slots for the running loop (httpx connections belong to one loop)."""
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            from openai import AsyncOpenAI

            servers = [
                _Server(
                    url,
                    AsyncOpenAI(
                        base_url=url,
                        api_key=self.api_key,
                        timeout=self.timeout_s,
                        max_retries=self.max_retries,
                    ),
                    asyncio.Semaphore(self.concurrency),
                )
                for url in self.base_urls
            ]
            state = _LoopState(servers)
            self._states[loop] = state
        return state

    @staticmethod
    def _pick(state: _LoopState, first_only: bool = False) -> _Server:
        """The server with the fewest requests in flight (ties in turn)."""
        if first_only or len(state.servers) == 1:
            return state.servers[0]
        n = len(state.servers)
        order = [state.servers[(state.turn + k) % n] for k in range(n)]
        state.turn = (state.turn + 1) % n
        return min(order, key=lambda s: s.in_flight)

    def close(self) -> None:
        """Close the HTTP connections and stop the private event loop."""
        loop, self._loop = self._loop, None
        if loop is None:
            return
        state = self._states.pop(loop, None)
        if state is not None:
            for server in state.servers:
                asyncio.run_coroutine_threadsafe(server.client.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        loop.close()

    # ----------------------------------------------------------------------------- requests
    def generate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        return self._run(self.agenerate(prompts, params))

    async def agenerate(self, prompts: list[Prompt], params: SamplingParams) -> list[list[Completion]]:
        """The async form of :meth:`generate`, for callers already in an event loop."""
        if not prompts:
            return []
        model = await self.model_name()
        tasks = [asyncio.ensure_future(self._complete(model, p, params)) for p in prompts]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # fail fast: do not leave the others hammering a broken server
                t.cancel()
            raise

    async def model_name(self) -> str:
        """``served_model``, or the first model the server lists (looked up once, with its context
        window where the server says it: vLLM's ``max_model_len``)."""
        if self.served_model is None or (self.context_tokens is None and not self._listed):
            page = await self._call(lambda client: client.models.list(), first_only=True)
            self._listed = True
            if not page.data:
                raise BackendResponseError(f"the server at {self.base_url} lists no models (GET /models)")
            served = self.served_model or page.data[0].id
            card = next((m for m in page.data if m.id == served), page.data[0])
            self.served_model = served
            self.name = self._fixed_name or self._default_name()
            if self.context_tokens is None and isinstance(getattr(card, "max_model_len", None), int):
                self.context_tokens = card.max_model_len
        return self.served_model

    async def _call(self, make: Any, first_only: bool = False) -> Any:
        import openai

        server = self._pick(self._state(), first_only)
        server.in_flight += 1  # counted while waiting for a slot too: the queue is the load
        try:
            async with server.semaphore:
                return await make(server.client)
        except openai.APITimeoutError:
            raise BackendUnavailableError(
                f"the OpenAI-compatible server at {server.url} did not answer within "
                f"{self.timeout_s:g} s ({self.max_retries} retries); raise backend.openai.timeout_s "
                "or lower backend.openai.concurrency"
            ) from None
        except openai.APIConnectionError as e:
            raise BackendUnavailableError(
                f"the OpenAI-compatible server at {server.url} is unreachable after "
                f"{self.max_retries} retries ({_short(e.__cause__ or e, 120)}); is it running? "
                "(backend.openai.base_url)"
            ) from None
        except openai.APIStatusError as e:
            raise BackendResponseError(
                f"the server at {server.url} answered HTTP {e.status_code}: {_short(_error_text(e))}"
            ) from None
        finally:
            server.in_flight -= 1

    async def _complete(self, model: str, prompt: Prompt, params: SamplingParams) -> list[Completion]:
        if prompt and isinstance(prompt[0], dict):
            if self.send_token_ids:
                payload: Any = self.prompt_ids(prompt)
            else:
                payload = render_chat_text(self.tokenizer, prompt)  # type: ignore[arg-type]
        elif self.send_token_ids:
            payload = list(prompt)
        else:
            payload = self.tokenizer.decode(list(prompt), skip_special_tokens=False)
        # the prompt's end, for inferring a dropped stop string whose opening tag was prefilled
        tail = payload if isinstance(payload, str) else self.tokenizer.decode(payload[-256:])
        tail = tail[-2000:]
        room = self._room(prompt)
        if room is not None and room <= 0:  # the server would answer 400: nothing more fits
            return [Completion("", [], "context") for _ in range(params.n)]
        capped = room is not None and room < params.max_new_tokens
        if capped:
            params = dataclasses.replace(params, max_new_tokens=room)
        out: list[Completion] = []
        while len(out) < params.n:  # servers without n support (llama.cpp) answer with one choice
            choices = await self._request(model, payload, params, params.n - len(out))
            if not choices:
                raise BackendResponseError(f"the server at {self.base_url} returned no choices")
            out.extend(normalise_choice(self.tokenizer, c, params, self.eos_ids, tail) for c in choices)
        if capped:  # cut by the context window, not by the caller's limit
            out = [
                dataclasses.replace(c, finish_reason="context") if c.finish_reason == "length" else c
                for c in out
            ]
        return out[: params.n]

    def set_weights_version(self, version: str) -> None:
        """The servers now serve weights ``version`` (RL's weight sync); names later trajectories."""
        self.weights_version = version
        self.name = self._fixed_name or self._default_name()

    def _default_name(self) -> str:
        """``openai:<served model>@<url>[#<weights version>]`` (the trajectories' ``model``); the model
        part once known."""
        where = self.base_url + (f"+{len(self.base_urls) - 1}" if len(self.base_urls) > 1 else "")
        name = f"openai:{self.served_model}@{where}" if self.served_model else f"openai:{where}"
        return f"{name}#{self.weights_version}" if self.weights_version else name

    def _room(self, prompt: Prompt) -> int | None:
        """Tokens the context window leaves after ``prompt`` (None: the window is unknown)."""
        if self.context_tokens is None:
            return None
        return self.context_tokens - len(self.prompt_ids(prompt))

    async def _request(self, model: str, payload: Any, params: SamplingParams, n: int) -> list[dict]:
        kwargs: dict[str, Any] = {
            "model": model,
            "prompt": payload,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": n,
            "logprobs": params.logprobs,
        }
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.seed is not None:
            kwargs["seed"] = params.seed
        extras: dict[str, Any] = {
            "include_stop_str_in_output": True,
            "skip_special_tokens": False,
            "spaces_between_special_tokens": False,
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
        }
        if params.top_k > 0:
            extras["top_k"] = params.top_k
        if params.repetition_penalty != 1.0:
            extras["repetition_penalty"] = params.repetition_penalty
        with_extras = self.send_extras
        try:
            resp = await self._call(
                lambda c: c.completions.create(**kwargs, extra_body=extras if with_extras else None)
            )
        except BackendResponseError as e:
            # a strict server (OpenAI proper) rejects unknown fields with 400/422; ask again plainly
            if not with_extras or "HTTP 4" not in str(e) or not any(k in str(e) for k in _VLLM_EXTRAS):
                raise
            if self.send_extras:
                self.send_extras = False
                log.warning(
                    "%s rejects vLLM request fields (%s); sending plain OpenAI requests from now on "
                    "(top_k and repetition_penalty are not applied)",
                    self.base_url,
                    _short(e, 120),
                )
            resp = await self._call(lambda c: c.completions.create(**kwargs))
        choices = [c.model_dump() for c in resp.choices]
        return sorted(choices, key=lambda c: c.get("index") or 0)


def _error_text(e: Any) -> str:
    """The message of an error answer: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or
    the raw body."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            found = inner.get("message") or inner.get("detail")
            if found:
                return str(found)
        elif inner:
            return str(inner)
    response = getattr(e, "response", None)
    return (response.text if response is not None else "") or str(e)


def _short(text: Any, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ------------------------------------------------------------------------------- normalisation
def infer_excluded_stop(text: str, stops: list[str]) -> str | None:
    """The stop string a server with OpenAI semantics cut off the end of ``text``, if we can tell:
    a closing tag ``</x>`` whose opening ``<x>`` is still open at the end of the text (the
    innermost one when several are)."""
    best: tuple[int, str] | None = None
    for s in stops:
        if not (s.startswith("</") and s.endswith(">")):
            continue
        opening = "<" + s[2:]
        at = text.rfind(opening)
        if at >= 0 and text.rfind(s) < at and (best is None or at > best[0]):
            best = (at, s)
    return best[1] if best else None


def _token_id(key: Any, tokenizer: Any) -> int | None:
    """A logprob token as an id: vLLM's "token_id:123", or a text piece that is one token."""
    if isinstance(key, int):
        return key
    if isinstance(key, str) and key.startswith("token_id:"):
        try:
            return int(key[len("token_id:") :])
        except ValueError:
            return None
    if isinstance(key, str) and key:
        ids = tokenizer.encode(key, add_special_tokens=False)
        if len(ids) == 1:
            return ids[0]
    return None


def normalise_choice(
    tokenizer: Any, choice: dict, params: SamplingParams, eos_ids: set[int], prompt_text: str = ""
) -> Completion:
    """One completions-API choice (a dict) as a contract-abiding :class:`Completion`.

    ``prompt_text`` (its end is enough) lets a dropped stop string be inferred when the opening
    tag was in the prompt, e.g. an assistant turn prefilled with ``<search>``.
    """
    text: str = choice.get("text") or ""
    stops = list(params.stop)
    lp_block = choice.get("logprobs") or {}
    lp_tokens: list[Any] = list(lp_block.get("tokens") or [])
    lp_values: list[float | None] = list(lp_block.get("token_logprobs") or [])
    lp_tops: list[dict | None] = list(lp_block.get("top_logprobs") or [])

    server_ids: list[int] | None = choice.get("token_ids")
    if server_ids is None and lp_tokens and all(str(t).startswith("token_id:") for t in lp_tokens):
        server_ids = [_token_id(t, tokenizer) for t in lp_tokens]  # type: ignore[misc]

    # Which stop string (if any) ended it, and put it back when the server left it out.
    stop: str | None = None
    if choice.get("finish_reason") != "length":
        reason = choice.get("stop_reason")
        if isinstance(reason, str) and reason in stops:
            stop = reason
        elif "stop_reason" not in choice:  # no vLLM field: infer from the text
            stop = (
                next((s for s in stops if text.endswith(s)), None)
                or infer_excluded_stop(text, stops)
                or infer_excluded_stop(prompt_text + text, stops)
            )
        if stop is not None and not text.endswith(stop):
            text += stop
        eos_text = tokenizer.eos_token
        if stop is None and eos_text and text.endswith(eos_text):
            text = text[: -len(eos_text)]
    finish = "length" if choice.get("finish_reason") == "length" else "stop" if stop else "eos"

    ids: list[int]
    logprobs: list[float | None] | None
    tops: list[dict[int, float]] | None = None
    if server_ids is not None and all(isinstance(i, int) for i in server_ids):
        n_tok = len(server_ids)
        while n_tok and server_ids[n_tok - 1] in eos_ids and finish != "length":
            n_tok -= 1
        cut_text, ids, _, kept = trim_at_stop(tokenizer, server_ids[:n_tok], [stop] if stop else [])
        if cut_text != text:  # the server's ids disagree with its text: trust the text
            ids, kept = tokenizer.encode(text, add_special_tokens=False), 0
    else:
        ids = tokenizer.encode(text, add_special_tokens=False)
        # attach the server's log-probs for as long as its tokens are ours
        kept = 0
        while (
            kept < min(len(ids), len(lp_tokens))
            and tokenizer.decode([ids[kept]], skip_special_tokens=False) == lp_tokens[kept]
        ):
            kept += 1
    if lp_values:
        logprobs = [*lp_values[:kept], *([None] * (len(ids) - kept))]
        if params.logprobs > 0 and lp_tops:
            tops = []
            for j in range(len(ids)):
                entry = lp_tops[j] if j < kept and j < len(lp_tops) else None
                alt: dict[int, float] = {}
                for key, value in (entry or {}).items():
                    tid = _token_id(key, tokenizer)
                    if tid is not None and value is not None:
                        alt[tid] = float(value)
                # vLLM adds the sampled token to the alternatives; keep the k best, as hf does
                best = sorted(alt.items(), key=lambda kv: -kv[1])[: params.logprobs]
                tops.append(dict(best))
    else:
        logprobs = None
    return Completion(
        text=text,
        token_ids=list(ids),
        finish_reason=finish,  # type: ignore[arg-type]
        stop=stop,
        logprobs=logprobs,
        top_logprobs=tops,
    )
