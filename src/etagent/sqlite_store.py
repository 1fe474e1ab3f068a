"""A SQLite file shared by threads and processes: the base of etagent's persistent caches.

Concurrency: WAL mode lets readers proceed while one process writes; a busy timeout makes
writers wait for each other instead of failing; each thread (and each process after a fork)
uses its own connection, as SQLite requires; multi-row writes take the write lock up front
(``BEGIN IMMEDIATE``), so two writers queue instead of one failing on a lock upgrade.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: SQLite's default limit on host parameters is 999 in old builds; IN (...) lists stay below it
MAX_PARAMS_PER_SELECT = 300


class SQLiteStore:
    """Connection handling for one SQLite file; subclasses give ``SCHEMA`` and the queries."""

    SCHEMA: str = ""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 60.0):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pid = os.getpid()
        # every open connection with the thread that owns it, so close() can close them all and
        # connections of finished threads are closed instead of piling up
        self._connections: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._init_db()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so each statement is its own short transaction
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")  # safe with WAL; a crash loses at most the last commits
        return conn

    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after a fork: SQLite forbids sharing the parent's)."""
        if os.getpid() != self._pid:
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
        conn = self.conn()
        # switching to WAL needs a moment of exclusive access; several processes opening a new
        # file at once can see SQLITE_BUSY here even with a busy timeout, so retry briefly
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(self.SCHEMA)
                return
            except sqlite3.OperationalError as e:
                if ("locked" not in str(e) and "busy" not in str(e)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def write_many(self, statement: str, rows: Iterable[Sequence[Any]]) -> None:
        """``executemany`` in one immediate transaction."""
        conn = self.conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(statement, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def select_in(self, query: str, keys: Sequence[Any], params: Sequence[Any] = ()) -> Iterator[tuple]:
        """Rows of ``query`` (which ends with ``IN ({marks})``) for ``keys``, in chunks."""
        conn = self.conn()
        for start in range(0, len(keys), MAX_PARAMS_PER_SELECT):
            chunk = list(keys[start : start + MAX_PARAMS_PER_SELECT])
            yield from conn.execute(query.format(marks=",".join("?" * len(chunk))), (*params, *chunk))

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for _, conn in conns:
            _close_quietly(conn)
        self._local = threading.local()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _close_quietly(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        conn.close()
