"""The search tool and its retrieval backends.

Importing this package registers the ``search`` tool. The backends load lazily (attribute access
imports them), so registering the tool does not pay for bm25s, httpx, fastapi or torch.

* :class:`SearchTool` / :class:`SearchConfig` - the registered tool and its config section
* :class:`BM25Index` - bm25s index, cached on disk per corpus version
* :class:`DenseIndex` - sentence-transformers + faiss (``pip install etagent[dense]``)
* :func:`make_client` (:class:`FlashRAGClient`, :class:`SearchR1Client`) - retrieval servers over HTTP
* :class:`WebSearch` (:class:`SerperSearch`, :class:`BingSearch`, :class:`SearxngSearch`,
  :class:`DdgsSearch`) - web search backends (docs/web-search.md)
* :class:`PageReader` - reads the pages behind web hits; :class:`Summariser` - condenses results
* :func:`create_app` / :func:`serve` - ``etagent serve-retriever``
* :class:`QueryCache`, :class:`PageCache` - persistent SQLite caches of results and pages
"""

from __future__ import annotations

import importlib
from typing import Any

from etagent.tools.search.backends import build_retriever, resolve_corpus
from etagent.tools.search.cache import PageCache, QueryCache
from etagent.tools.search.config import DEFAULT_PORT, WEB_BACKENDS, SearchConfig
from etagent.tools.search.corpus import Doc, load_corpus, make_contents, parse_contents
from etagent.tools.search.retriever import Retriever, RetrieverError, RetrieverTimeout
from etagent.tools.search.tool import SearchResult, SearchTool, format_docs, format_pages

_LAZY = {
    "BM25Index": "etagent.tools.search.bm25",
    "DenseIndex": "etagent.tools.search.dense",
    "resolve_embedding_model": "etagent.tools.search.dense",
    "make_client": "etagent.tools.search.remote",
    "FlashRAGClient": "etagent.tools.search.remote",
    "SearchR1Client": "etagent.tools.search.remote",
    "RemoteRetriever": "etagent.tools.search.remote",
    "create_app": "etagent.tools.search.server",
    "serve": "etagent.tools.search.server",
    "BackgroundServer": "etagent.tools.search.server",
    "WebSearch": "etagent.tools.search.web",
    "SerperSearch": "etagent.tools.search.web",
    "BingSearch": "etagent.tools.search.web",
    "SearxngSearch": "etagent.tools.search.web",
    "DdgsSearch": "etagent.tools.search.web",
    "PageReader": "etagent.tools.search.pages",
    "Summariser": "etagent.tools.search.summariser",
}

__all__ = [
    "DEFAULT_PORT",
    "WEB_BACKENDS",
    "BM25Index",
    "BackgroundServer",
    "BingSearch",
    "DdgsSearch",
    "DenseIndex",
    "Doc",
    "FlashRAGClient",
    "PageCache",
    "PageReader",
    "QueryCache",
    "RemoteRetriever",
    "Retriever",
    "RetrieverError",
    "RetrieverTimeout",
    "SearchConfig",
    "SearchR1Client",
    "SearchResult",
    "SearchTool",
    "SearxngSearch",
    "SerperSearch",
    "Summariser",
    "WebSearch",
    "build_retriever",
    "create_app",
    "format_docs",
    "format_pages",
    "load_corpus",
    "make_client",
    "make_contents",
    "parse_contents",
    "resolve_corpus",
    "resolve_embedding_model",
    "serve",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
