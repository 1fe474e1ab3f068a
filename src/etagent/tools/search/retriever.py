"""The retriever interface shared by the BM25, dense and remote backends, and its errors."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from etagent.tools.search.corpus import Doc


class RetrieverError(RuntimeError):
    """Retrieval failed (server unreachable, bad answer); the message says where and why."""


class RetrieverTimeout(RetrieverError):
    """The retrieval server did not answer in time."""


@runtime_checkable
class Retriever(Protocol):
    """What the search tool and the server need from a backend. Implementations are thread-safe."""

    #: identifies the backend and the exact corpus state; the query cache keys on it
    identity: str

    def search(self, query: str, top_k: int) -> list[Doc]: ...

    def search_batch(self, queries: list[str], top_k: int) -> list[list[Doc]]: ...

    def close(self) -> None: ...
