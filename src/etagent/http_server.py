"""What etagent's HTTP servers (``serve-retriever``, ``serve-model``) share: a request-body limit and
the connection settings they run uvicorn with.

**Body limit.** Neither Starlette nor uvicorn bounds a request body: a 10 MiB query was read,
parsed and searched. :class:`BodySizeLimit` answers HTTP 413 before the app sees a body over its
limit: at once when ``Content-Length`` says so, else (chunked upload) as soon as the bytes read
pass it. Bodies are read here in full (the apps would read them whole anyway) and handed on. The
rest of a refused body is read and dropped before the answer goes out (nginx's "lingering close"):
a server that closes a connection with unread data makes the kernel reset it, and the client,
still uploading, gets a connection error instead of the 413. Past :data:`DRAIN_MAX_BYTES` the
server stops reading and closes.

**Keep-alive.** A client's connection pool reuses an idle connection until *its* keep-alive expiry
(httpx: 5 s, aiohttp: 15 s); uvicorn closes an idle connection after *its* ``timeout_keep_alive``
(default 5 s). When the two are equal, a request sent on a connection in the instant the server
closes it is lost: the server's event loop runs the idle timer in the same pass as it receives the
request, closes the socket with the request unread, the kernel answers with a reset, and the client
gets ``ReadError`` (or "server disconnected") for a request that never ran; the server logs nothing.
Under load the pass is long enough for this to happen (3 of 15,700 requests, 64 clients, 30 s). The
servers therefore keep idle connections :data:`DEFAULT_KEEP_ALIVE_S` seconds, longer than the
clients' pools, so the client always gives up an idle connection first.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: how long the servers keep an idle connection open; longer than common client pools' expiry
#: (httpx 5 s, aiohttp 15 s, the openai client's httpx 5 s) so that the client closes it first
DEFAULT_KEEP_ALIVE_S = 75

MIB = 2**20

#: the most of a refused body that is read (and dropped) so that the client gets the 413
DRAIN_MAX_BYTES = 64 * MIB


def format_bytes(n: int) -> str:
    """``4194304`` -> ``4 MiB``; ``1500`` -> ``1500 bytes``."""
    return f"{n / MIB:g} MiB" if n >= MIB and n % (MIB // 16) == 0 else f"{n} bytes"


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets HTTP 413 and never reaches the app.

    ``option`` names the setting that raises the limit (shown in the answer), e.g.
    ``serve-retriever --max-body-mb``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, option: str = "") -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        self.app = app
        self.max_bytes = max_bytes
        self.option = option

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_bytes:
            # a client waiting for "100 Continue" has sent no body: answer at once, read nothing
            if length <= DRAIN_MAX_BYTES and not _expects_continue(scope):
                await _drain(receive, length)
            await self._reject(send, length)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see that
                await self.app(scope, _replay(b"".join(chunks), receive, message), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                if message.get("more_body", False):
                    await _drain(receive, DRAIN_MAX_BYTES - size)
                await self._reject(send, None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)

    async def _reject(self, send: Send, length: int | None) -> None:
        got = f" ({format_bytes(length)})" if length is not None else ""
        hint = f"; raise it with {self.option}" if self.option else ""
        limit = format_bytes(self.max_bytes)
        detail = f"request body too large{got}: this server accepts at most {limit}{hint}"
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    # a refused body may be partly unread: the connection carries no further request
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def _drain(receive: Receive, most: int) -> None:
    """Read and drop the rest of a request body, at most ``most`` bytes of it."""
    read = 0
    while read < most:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server's HTTP parser rejects it; nothing to decide here
    return None


def _expects_continue(scope: Scope) -> bool:
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope["headers"])


def _replay(body: bytes, receive: Receive, pending: Message | None = None) -> Receive:
    """A ``receive`` that hands out ``body`` once, then whatever the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent, pending
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending is not None:
            message, pending = pending, None
            return message
        return await receive()

    return replay


def uvicorn_config(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S,
    log_level: str = "info",
    **options: Any,
) -> uvicorn.Config:
    """The uvicorn settings etagent's servers run with (see the module docstring on keep-alive)."""
    import uvicorn

    if keep_alive_s <= 0:
        raise ValueError(f"keep_alive_s must be > 0, got {keep_alive_s}")
    # uvicorn types it int but only hands it to loop.call_later: fractions work (tests use them)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
        **options,
    )
