"""Infrastructure failures of tools: the model reads a short neutral text, the operator the log.

When a tool fails for a reason of ours (the retrieval server is down, the sandbox cannot start),
the full message names internal URLs, paths and advice for the operator. None of that belongs in a
trajectory: the model cannot act on it and learns from it. The tool puts a short neutral text into
the context and hands the full message to :class:`FailureLog`, which logs each distinct failure
once (a dead server fails every call of a rollout; the log should say so once, not thousands of
times) and counts the rest.
"""

from __future__ import annotations

import logging
import threading


class FailureLog:
    """Logs each distinct failure message once at WARNING level; repeats go to DEBUG and are counted.

    ``max_distinct`` bounds the memory: past it the oldest messages are forgotten (and would be
    logged again if they recur). Thread-safe.
    """

    def __init__(self, logger: logging.Logger, what: str, max_distinct: int = 256) -> None:
        if max_distinct < 1:
            raise ValueError(f"max_distinct must be >= 1, got {max_distinct}")
        self.logger = logger
        self.what = what
        self.max_distinct = max_distinct
        self.counts: dict[str, int] = {}
        #: the latest failure message recorded
        self.last: str | None = None
        self._lock = threading.Lock()

    def record(self, message: str, *, exc_info: BaseException | None = None) -> bool:
        """Log ``message`` unless it was logged already; True when it was logged now."""
        with self._lock:
            self.last = message
            seen = self.counts.get(message, 0)
            if seen:
                self.counts[message] = seen + 1
            else:
                if len(self.counts) >= self.max_distinct:
                    del self.counts[next(iter(self.counts))]
                self.counts[message] = 1
        if seen:
            self.logger.debug("%s (again, %d times so far): %s", self.what, seen + 1, message)
            return False
        self.logger.warning(
            "%s: %s (further identical failures are logged at DEBUG level only)",
            self.what,
            message,
            exc_info=exc_info,
        )
        return True
