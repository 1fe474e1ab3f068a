"""Progress inside long steps: what a rollout or a policy update is doing while it runs.

A :class:`Progress` is updated by the code doing the work (the agent loop and ARPO once per
generate round, RL's update once per micro-batch): a few attribute writes, never per token. A
:class:`ProgressDisplay` shows it:

- on a terminal, in place: the postfix of a stage's own bar, or a bar of its own, refreshed about
  once a second so the elapsed time moves even inside one long generate call, e.g.
  ``rollout: round 3 (generate, 16 rows, 4 s), 5/16 trajectories finished, 812 tokens``;
- elsewhere (a log file, CI, tests): one log line every ``interval_s`` seconds, and a line for each
  announced phase (``update: 16 sequences, 0/4 micro-batches``); nothing is written to the stream.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import IO, Any

log = logging.getLogger("etagent.progress")

#: seconds between two progress log lines when the output is not a terminal
LOG_INTERVAL_S = 30.0
#: seconds between two redraws on a terminal (the elapsed time moves)
REFRESH_S = 1.0

Listener = Callable[["Progress", bool], None]


class Progress:
    """The state of one long step (a rollout, an update); the code doing it updates it.

    ``total``: how many ``unit`` the step finishes (None: unknown); ``detail``: fixed words shown
    after the label (``"16 sequences"``).
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "trajectories", detail: str = ""):
        self.label = label
        self.total = total
        self.unit = unit
        self.detail = detail
        self.round = 0
        self.phase = ""
        self.rows = 0
        self.finished = 0
        self.tokens = 0
        self.started = time.monotonic()
        self.phase_started = self.started
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener(progress, announce)`` on every change (``announce``: a new phase worth a
        log line of its own)."""
        self._listeners.append(listener)

    def _changed(self, announce: bool = False) -> None:
        for listener in self._listeners:
            listener(self, announce)

    def set_phase(self, phase: str, rows: int | None = None, announce: bool = False) -> None:
        """A new phase (``"generate"``, ``"tools"``) over ``rows`` rows starts now."""
        self.phase = phase
        if rows is not None:
            self.rows = rows
        self.phase_started = time.monotonic()
        self._changed(announce)

    def start_round(self, rows: int) -> None:
        """The next generate round starts, over ``rows`` trajectories."""
        self.round += 1
        self.set_phase("generate", rows)

    def add_tokens(self, n: int) -> None:
        """``n`` more tokens generated (shown at the next redraw)."""
        self.tokens += n

    def add_finished(self, n: int = 1) -> None:
        self.finished += n
        self._changed()

    def set_finished(self, n: int) -> None:
        if n != self.finished:
            self.finished = n
            self._changed()

    def status(self, now: float | None = None, count: bool = True) -> str:
        """Everything but the label: ``round 3 (generate, 16 rows, 4 s), 5/16 trajectories
        finished, 812 tokens`` (without the finished count when ``count`` is False: a bar shows it)."""
        now = time.monotonic() if now is None else now
        parts = [self.detail] if self.detail else []
        if self.phase:
            phase = f"{self.phase}, {self.rows} rows" if self.rows else self.phase
            where = f"round {self.round} ({phase}" if self.round else f"({phase}"
            parts.append(f"{where}, {now - self.phase_started:.0f} s)")
        if count:
            of = f"/{self.total}" if self.total is not None else ""
            parts.append(f"{self.finished}{of} {self.unit} finished")
        if self.tokens:
            parts.append(f"{self.tokens} tokens")
        return ", ".join(parts)

    def line(self, now: float | None = None) -> str:
        """The label, the status, and the time since the start."""
        now = time.monotonic() if now is None else now
        return f"{self.label}: {self.status(now)} [{now - self.started:.0f} s]"


def is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class ProgressDisplay:
    """Shows a :class:`Progress` until closed (a context manager).

    ``bar``: a stage's tqdm bar whose postfix shows the status (on a terminal); without one, a
    terminal gets a bar of its own (removed when closed). ``tty`` overrides what ``stream``
    (default stderr) says; ``logger`` receives the periodic lines when it is not a terminal.
    ``enabled=False`` shows nothing (another process shows it).
    """

    def __init__(
        self,
        progress: Progress,
        *,
        bar: Any = None,
        stream: IO[str] | None = None,
        tty: bool | None = None,
        logger: logging.Logger | None = None,
        interval_s: float = LOG_INTERVAL_S,
        refresh_s: float = REFRESH_S,
        enabled: bool = True,
    ):
        if interval_s <= 0 or refresh_s <= 0:
            raise ValueError(f"interval_s and refresh_s must be > 0, got {interval_s}, {refresh_s}")
        self.progress = progress
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream) if tty is None else tty
        self.logger = logger or log
        self.interval_s = interval_s
        self.refresh_s = refresh_s
        self.enabled = enabled
        self.lines_logged = 0
        self._bar = bar
        self._own_bar = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_draw = 0.0
        self._thread: threading.Thread | None = None
        if not enabled:
            return
        if self.tty and bar is None:
            from tqdm import tqdm

            self._bar = tqdm(
                total=progress.total,
                desc=progress.label,
                unit=" " + progress.unit,
                file=self.stream,
                leave=False,
                dynamic_ncols=True,
            )
            self._own_bar = True
        progress.listen(self._on_change)
        self._thread = threading.Thread(target=self._run, name="etagent-progress", daemon=True)
        self._thread.start()

    def __enter__(self) -> ProgressDisplay:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _on_change(self, progress: Progress, announce: bool) -> None:
        if self._stop.is_set():
            return
        if self.tty:
            if time.monotonic() - self._last_draw >= 0.1:
                self._draw()
        elif announce:
            self._log()

    def _draw(self) -> None:
        with self._lock:
            if self._bar is None or self._stop.is_set():
                return
            p = self.progress
            if self._own_bar:
                self._bar.total = p.total
                self._bar.n = p.finished
                self._bar.set_postfix_str(p.status(count=False), refresh=False)
                self._bar.refresh()
            else:
                self._bar.set_postfix_str(p.status(), refresh=True)
            self._last_draw = time.monotonic()

    def announce(self) -> None:
        """Show the progress now: a log line when the output is not a terminal (a phase starts)."""
        if not self.enabled or self._stop.is_set():
            return
        if self.tty:
            self._draw()
        else:
            self._log()

    def _log(self) -> None:
        with self._lock:
            self.logger.info("%s", self.progress.line())
            self.lines_logged += 1

    def _run(self) -> None:
        period = self.refresh_s if self.tty else self.interval_s
        while not self._stop.wait(period):
            if self.tty:
                self._draw()
            else:
                self._log()

    def close(self) -> None:
        """Stop showing; removes its own bar and a stage bar's postfix."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._bar is not None:
                if self._own_bar:
                    self._bar.close()
                else:
                    self._bar.set_postfix_str("", refresh=False)
                self._bar = None
