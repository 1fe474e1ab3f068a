"""A persistent key -> JSON cache in SQLite for judge verdicts, shared by threads and processes.

A judge call costs a 72B-model generation; the same (question, gold, prediction) comes back on every
re-scoring of a run and across samples of one question, so each verdict is paid once. Keys are
digests of (kind, judge identity, prompt); see :class:`etagent.scoring.judge.LLMJudge`.

Concurrency is :class:`etagent.sqlite_store.SQLiteStore`'s. The first verdict stored for a
key wins (``INSERT OR IGNORE``), so two processes judging the same item at once agree afterwards.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from etagent.sqlite_store import SQLiteStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    judge TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def default_verdict_cache_path() -> Path:
    from etagent.runtime import cache_dir

    return cache_dir() / "judge" / "verdicts.sqlite"


class VerdictCache(SQLiteStore):
    """``get_many``/``put_many`` of JSON values by string key."""

    SCHEMA = _SCHEMA

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = 60.0):
        super().__init__(
            path if path is not None else default_verdict_cache_path(), busy_timeout_s=busy_timeout_s
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(dict.fromkeys(keys))
        rows = self.select_in("SELECT key, value FROM verdicts WHERE key IN ({marks})", keys)
        return {key: json.loads(value) for key, value in rows}

    def put_many(self, kind: str, judge: str, values: dict[str, Any]) -> None:
        if not values:
            return
        now = time.time()
        rows = [(k, kind, judge, json.dumps(v, ensure_ascii=False), now) for k, v in values.items()]
        self.write_many("INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return int(self.conn().execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])
