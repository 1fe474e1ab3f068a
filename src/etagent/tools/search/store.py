"""On-disk index caches: one directory per (corpus version, settings), built once under a file lock.

Layout: ``<root>/<kind>/<corpus stem>-<path hash>-<version hash>/`` where the version hash covers
the corpus size and mtime plus every setting that changes the index (tokeniser, model, format
version). A directory is complete once ``meta.json`` exists inside it: it is built in a temporary
sibling and renamed into place, so a reader never sees half an index, and the lock makes
concurrent processes build it once instead of racing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from etagent.io import build_dir_atomically
from etagent.tools.search.corpus import CorpusVersion, Doc

log = logging.getLogger(__name__)

META_FILE = "meta.json"
DOCS_FILE = "docs.json"


def default_root() -> Path:
    from etagent.runtime import cache_dir

    return cache_dir() / "search"


def _hash(text: str, n: int) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def index_dir(
    kind: str, version: CorpusVersion, settings: dict[str, Any], root: str | Path | None = None
) -> Path:
    """The cache directory for ``kind`` ("bm25", "dense") built from ``version`` with ``settings``."""
    base = Path(root) if root is not None else default_root()
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", version.path.stem)[:40] or "corpus"
    version_key = json.dumps({"corpus": version.key, **settings}, sort_keys=True)
    return base / kind / f"{stem}-{_hash(str(version.path), 10)}-{_hash(version_key, 12)}"


def is_complete(target: Path) -> bool:
    return (target / META_FILE).is_file()


def build_atomically(target: Path, build: Callable[[Path], dict[str, Any]]) -> bool:
    """Make sure ``target`` holds a complete index; returns True when this call built it.

    ``build(tmp_dir)`` writes the index files into ``tmp_dir`` and returns extra metadata; the
    directory is renamed to ``target`` only after ``meta.json`` is written into it.
    """

    def build_with_meta(tmp: Path) -> None:
        t0 = time.perf_counter()
        meta = dict(build(tmp) or {})
        meta["build_s"] = round(time.perf_counter() - t0, 3)
        # meta.json marks the directory complete, so it is written last
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    built = build_dir_atomically(target, build_with_meta, is_complete)
    if built:
        _prune_stale_versions(target)
    return built


def _prune_stale_versions(target: Path) -> None:
    """Delete the indexes of older versions of the same corpus file (they can never be hit again
    once the file changed, and a 40k-passage index is tens of MB)."""
    prefix = target.name.rsplit("-", 1)[0] + "-"
    for sibling in target.parent.iterdir():
        if sibling.name != target.name and sibling.name.startswith(prefix) and sibling.is_dir():
            log.info("removing stale search index %s", sibling)
            shutil.rmtree(sibling, ignore_errors=True)


def read_meta(target: Path) -> dict[str, Any]:
    return json.loads((target / META_FILE).read_text(encoding="utf-8"))


def save_docs(directory: Path, docs: list[Doc]) -> None:
    """A snapshot of the corpus next to the index, so index rows and documents always agree even
    if the corpus file is edited while a process is loading it."""
    payload = {
        "ids": [d.id for d in docs],
        "titles": [d.title for d in docs],
        "texts": [d.text for d in docs],
    }
    (directory / DOCS_FILE).write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")


def load_docs(directory: Path) -> list[Doc]:
    payload = json.loads((directory / DOCS_FILE).read_text(encoding="utf-8"))
    return [Doc(i, t, x) for i, t, x in zip(payload["ids"], payload["titles"], payload["texts"], strict=True)]
