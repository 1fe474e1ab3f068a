"""Build the retrieval backend a :class:`SearchConfig` names (local indexes are loaded or built here;
a web search backend reads its API keys from the environment here)."""

from __future__ import annotations

from pathlib import Path

from etagent.tools.search.config import SearchConfig
from etagent.tools.search.retriever import Retriever, RetrieverError


def resolve_corpus(corpus: str | None) -> Path:
    """A corpus setting -> a JSONL path. None (use the task's corpus) must have been filled in by
    whoever knows the task (:func:`etagent.agent.build_agent`)."""
    if corpus is None:
        raise RetrieverError(
            "search.corpus is not set and the task has no corpus; set tools.search.corpus to a JSONL "
            "file of {id, title, text} (or FlashRAG's {id, contents}), or use a web search backend"
        )
    return Path(corpus).expanduser()


def build_retriever(cfg: SearchConfig) -> Retriever:
    """Build the backend a :class:`SearchConfig` names (local indexes are loaded or built here)."""
    root = Path(cfg.index_dir).expanduser() if cfg.index_dir else None
    if cfg.backend == "bm25":
        from etagent.tools.search.bm25 import BM25Index

        return BM25Index.from_corpus(resolve_corpus(cfg.corpus), cache_root=root, threads=cfg.threads)
    if cfg.backend == "dense":
        from etagent.tools.search.dense import DenseIndex

        return DenseIndex.from_corpus(
            resolve_corpus(cfg.corpus),
            model=cfg.dense_model,
            cache_root=root,
            batch_size=cfg.dense_batch_size,
            device=cfg.dense_device,
            query_prefix=cfg.dense_query_prefix,
            passage_prefix=cfg.dense_passage_prefix,
        )
    if cfg.backend == "remote":
        from etagent.tools.search.remote import make_client

        return make_client(
            cfg.url, api=cfg.api, timeout_s=cfg.timeout_s, retries=cfg.retries, backoff_s=cfg.retry_backoff_s
        )
    if cfg.is_web:
        from etagent.tools.search.web import web_backend_class

        return web_backend_class(cfg.backend).from_config(cfg.web_section())  # type: ignore[no-any-return]
    raise ValueError(f"unknown search backend {cfg.backend!r}")
