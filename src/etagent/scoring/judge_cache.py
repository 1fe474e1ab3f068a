"""A persistent key -> JSON cache in SQLite for judge verdicts, shared by threads and processes.

A judge call costs a 72B-model generation; the same (question, gold, prediction) comes back on every
re-scoring of a run and across samples of one question, so each verdict is paid once. Keys are
digests of (kind, judge identity, prompt); see :class:`etagent.scoring.judge.LLMJudge`.

Concurrency follows :mod:`etagent.tools.search.cache`: WAL mode so readers proceed while one
process writes, a busy timeout so writers queue instead of failing, one connection per thread (and
per process after a fork), ``BEGIN IMMEDIATE`` for batched writes. The first verdict stored for a
key wins (``INSERT OR IGNORE``), so two processes judging the same item at once agree afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    judge TEXT NOT NULL,
    value TEXT NOT NULL,
    created REAL NOT NULL
)
"""
# SQLite's default limit on host parameters is 999 in old builds; stay below it.
_MAX_PARAMS_PER_SELECT = 300


def default_verdict_cache_path() -> Path:
    from etagent.backends.model_store import cache_dir

    return cache_dir() / "judge" / "verdicts.sqlite"


class VerdictCache:
    """``get_many``/``put_many`` of JSON values by string key."""

    def __init__(self, path: str | Path | None = None, *, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser() if path is not None else default_verdict_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._init_db()

    # ------------------------------------------------------------------ connections

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _conn(self) -> sqlite3.Connection:
        if os.getpid() != self._pid:  # a forked child must not use the parent's connections
            self._pid = os.getpid()
            self._local = threading.local()
            self._connections = []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
            with self._lock:
                dead = [c for t, c in self._connections if not t.is_alive()]
                self._connections = [(t, c) for t, c in self._connections if t.is_alive()]
                self._connections.append((threading.current_thread(), conn))
            for c in dead:
                _close_quietly(c)
        return conn

    def _init_db(self) -> None:
        conn = self._conn()
        # switching to WAL needs a moment of exclusive access: retry briefly when several processes
        # open a new file at once
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(_SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    # ------------------------------------------------------------------ API

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        keys = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        conn = self._conn()
        for start in range(0, len(keys), _MAX_PARAMS_PER_SELECT):
            chunk = keys[start : start + _MAX_PARAMS_PER_SELECT]
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(f"SELECT key, value FROM verdicts WHERE key IN ({marks})", chunk).fetchall()
            for key, value in rows:
                found[key] = json.loads(value)
        return found

    def put_many(self, kind: str, judge: str, values: dict[str, Any]) -> None:
        if not values:
            return
        now = time.time()
        rows = [(k, kind, judge, json.dumps(v, ensure_ascii=False), now) for k, v in values.items()]
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?, ?, ?)", rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM verdicts").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for _, conn in conns:
            _close_quietly(conn)
        self._local = threading.local()

    def __enter__(self) -> VerdictCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()
