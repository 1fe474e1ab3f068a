"""A pool of warm, single-use sandbox workers, and running one program in a worker.

Starting bwrap and an interpreter costs tens of milliseconds; a warm worker has paid that before
the call arrives. Every worker still runs exactly one program, so nothing a program does (files,
modules, monkey-patching, leftover processes) can reach a later call.

All workers are started by one long-lived spawner thread. That is not only tidiness: bwrap's
``--die-with-parent`` uses PR_SET_PDEATHSIG, which fires when the *thread* that forked bwrap exits.
Workers forked from short-lived caller threads (a ThreadPoolExecutor shrinking) would be killed
mid-call.

Every sandbox ends with its call or its pool: a used or unneeded worker's whole process group is
killed (``Worker.signal_kill``), and a guard process (``guard.py``) kills whatever of the pool is
left when the pool closes or when this process dies without closing it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import queue
import selectors
import subprocess
import threading
import time
from dataclasses import dataclass

from etagent.tools.sandbox.launch import Launcher, Worker
from etagent.tools.sandbox.worker import READY

#: the longest a caller's blocking wait (for a worker, for a run's output) lasts before it looks up:
#: the kernel may deliver Ctrl-C's SIGINT to one of the pool's threads, and Python acts on it only
#: when the main thread runs Python code again (a 60 s wait would hide it for 60 s)
SIGNAL_CHECK_S = 0.5

log = logging.getLogger(__name__)

#: consecutive failed starts after which callers get an error instead of waiting
FAILURE_LIMIT = 3
#: most workers started in one round of the spawner
MAX_BATCH = 16
READ_CHUNK = 65536


class PoolClosed(RuntimeError):
    """The pool was closed."""


class SandboxStartError(RuntimeError):
    """No worker could be started; the message carries the sandbox's own error output."""


class WorkerPool:
    """Keeps ``size`` workers started and ready; ``acquire`` hands one out for a single run."""

    def __init__(self, launcher: Launcher, size: int, start_timeout_s: float = 60.0) -> None:
        self.launcher = launcher
        self.size = size
        self.start_timeout_s = start_timeout_s
        self._cond = threading.Condition()
        self._idle: collections.deque[Worker] = collections.deque()
        self._waiters = 0
        self._closed = False
        self._failures = 0
        self._last_error = ""
        self._backoff_until = 0.0
        self._starts = 0
        self._ready_total = 0
        # started first: from here on, whatever this pool starts dies with this process
        self._guard = launcher.start_guard()
        self._owner_pid = os.getpid()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        # waiting for a killed sandbox to be torn down takes milliseconds; callers hand that off
        self._graveyard: queue.SimpleQueue[Worker | None] = queue.SimpleQueue()
        self._reaper = threading.Thread(target=self._reap_loop, name="python-sandbox-reaper", daemon=True)
        self._reaper.start()
        self._thread = threading.Thread(target=self._run, name="python-sandbox-spawner", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public

    @property
    def idle_count(self) -> int:
        with self._cond:
            return len(self._idle)

    @property
    def started_count(self) -> int:
        """Workers started so far (ready or not); tests use it to see that workers are not reused."""
        with self._cond:
            return self._starts

    def wait_ready(self, count: int, timeout: float) -> bool:
        """Block until ``count`` workers are idle and ready (False on timeout)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._idle) < count:
                if self._closed:
                    raise PoolClosed("the sandbox pool is closed")
                # before any worker ever came up, the first failure is a set-up problem: say so now
                if self._failures >= FAILURE_LIMIT or (self._failures and not self._ready_total):
                    raise SandboxStartError(self._last_error)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, SIGNAL_CHECK_S))
        return True

    def acquire(self, timeout: float) -> Worker:
        """A ready worker, removed from the pool; the caller hands it to ``discard()`` when done."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                raise PoolClosed("the sandbox pool is closed")
            self._waiters += 1
            self._wake()
            try:
                while True:
                    while self._idle:
                        worker = self._idle.popleft()
                        if worker.alive():
                            self._wake()  # replenish
                            return worker
                        worker.kill()  # died while idle (e.g. the OOM killer); just clean up
                    if self._closed:
                        raise PoolClosed("the sandbox pool is closed")
                    if self._failures >= FAILURE_LIMIT:
                        raise SandboxStartError(self._last_error)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise SandboxStartError(
                            f"no sandbox worker became ready within {timeout:g} s"
                            + (f"; last error: {self._last_error}" if self._last_error else "")
                        )
                    self._cond.wait(min(remaining, SIGNAL_CHECK_S))
            finally:
                self._waiters -= 1

    def discard(self, worker: Worker) -> None:
        """Kill a used worker now; waiting for it and cleaning up happen in the background."""
        worker.signal_kill()
        with self._cond:
            # under the lock: close() sets _closed before it queues the reaper's stop marker, so a
            # worker queued here is always ahead of that marker
            if not self._closed:
                self._graveyard.put(worker)
                return
        worker.reap()

    @property
    def marker(self) -> str:
        """In the command line of every process of this pool's sandboxes (tests look for it)."""
        return self.launcher.marker

    def close(self) -> None:
        """Stop the spawner and kill idle workers. Runs in progress end too (see module doc); when
        this returns, no process of the pool's sandboxes is left."""
        if os.getpid() != self._owner_pid:
            return  # a forked copy (a data loader exiting): the workers and the guard are the parent's
        with self._cond:
            if self._closed:
                return
            self._closed = True
            idle = list(self._idle)
            self._idle.clear()
            self._cond.notify_all()
        self._wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        for worker in idle:
            worker.kill()
        self._graveyard.put(None)
        if self._reaper is not threading.current_thread():
            self._reaper.join(timeout=30)
        self._stop_guard()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _stop_guard(self) -> None:
        """Have the guard kill whatever of the pool is left (runs still in progress) and exit."""
        guard = self._guard
        try:
            with contextlib.suppress(OSError):
                guard.stdin.write(b"x")
                guard.stdin.close()
            guard.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a sweep takes milliseconds
            log.warning("python sandbox: the guard did not finish its sweep within 10 s")
            guard.kill()
            guard.wait()
        if guard.returncode != 0:
            err = guard.stderr.read().decode("utf-8", "replace").strip() if guard.stderr else ""
            log.warning("python sandbox: the guard exited with status %s: %s", guard.returncode, err)
        if guard.stderr is not None:
            guard.stderr.close()

    # ------------------------------------------------------------------ spawner thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full pipe: a wake-up is already pending; closed: shutting down
            os.write(self._wake_w, b"x")

    def _reap_loop(self) -> None:
        while True:
            worker = self._graveyard.get()
            if worker is None:
                return
            try:
                worker.reap()
            except Exception:  # pragma: no cover - never let one bad worker stop the reaping
                log.exception("python sandbox: reaping a worker failed")

    def _record_failure(self, text: str) -> None:
        with self._cond:
            self._failures += 1
            self._last_error = text.strip() or "the sandbox exited before it was ready"
            self._backoff_until = time.monotonic() + min(5.0, 0.1 * 2**self._failures)
            self._cond.notify_all()
        log.warning("python sandbox worker failed to start: %s", self._last_error)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._wake_r, selectors.EVENT_READ, None)
        starting: dict[int, Worker] = {}
        try:
            while True:
                with self._cond:
                    if self._closed:
                        return
                    need = self.size + self._waiters - len(self._idle) - len(starting)
                    backoff_until = self._backoff_until
                now = time.monotonic()
                if need > 0 and now >= backoff_until:
                    for _ in range(min(need, MAX_BATCH)):
                        try:
                            worker = self.launcher.spawn()
                        except OSError as e:
                            self._record_failure(f"could not start the sandbox: {e}")
                            break
                        with self._cond:
                            self._starts += 1
                        fd = worker.proc.stdout.fileno()
                        starting[fd] = worker
                        sel.register(fd, selectors.EVENT_READ, worker)
                if starting:
                    timeout: float | None = 0.5
                elif need > 0:
                    timeout = max(0.01, backoff_until - time.monotonic())
                else:
                    timeout = None
                for key, _ in sel.select(timeout):
                    if key.data is None:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                        continue
                    worker = key.data
                    sel.unregister(key.fd)
                    del starting[key.fd]
                    self._finish_start(worker)
                now = time.monotonic()
                for fd, worker in list(starting.items()):
                    if now - worker.started > self.start_timeout_s:
                        sel.unregister(fd)
                        del starting[fd]
                        worker.kill()
                        self._record_failure(f"the sandbox did not start within {self.start_timeout_s:g} s")
        except Exception as e:  # pragma: no cover - a bug here must not leave callers waiting forever
            log.exception("python sandbox spawner crashed")
            self._record_failure(f"spawner crashed: {e!r}")
            with self._cond:
                self._failures = max(self._failures, FAILURE_LIMIT)
                self._cond.notify_all()
        finally:
            for worker in starting.values():
                worker.kill()
            sel.close()

    def _finish_start(self, worker: Worker) -> None:
        try:
            first = os.read(worker.proc.stdout.fileno(), 1)
        except OSError:
            first = b""
        if first == READY:
            with self._cond:
                if not self._closed:
                    self._idle.append(worker)
                    self._ready_total += 1
                    self._failures = 0
                    self._cond.notify_all()
                    return
            worker.kill()
            return
        # it died (or wrote junk) before being ready: its stderr says why (bwrap's or the worker's)
        err = b""
        worker.wait_exit(5)  # its message is complete once it has exited
        with contextlib.suppress(OSError):
            os.set_blocking(worker.proc.stderr.fileno(), False)
            err = worker.proc.stderr.read(READ_CHUNK) or b""
        worker.kill()
        self._record_failure(err.decode("utf-8", "replace"))


# ---------------------------------------------------------------------- running one program


@dataclass
class RunOutcome:
    stdout: bytes
    stderr: bytes
    returncode: int | None  # None when we killed it (timeout, output limit)
    timed_out: bool = False
    output_exceeded: bool = False
    input_failed: bool = False  # the worker was gone before it took the code
    #: the status came from the worker's report (an exit status), not from the sandbox's end (where
    #: 128+N can mean signal N)
    reported: bool = False
    elapsed_s: float = 0.0


def run_in_worker(worker: Worker, code: bytes, timeout_s: float, max_output_bytes: int) -> RunOutcome:
    """Send ``code`` to a ready worker, collect its output under a wall-clock and a size limit.

    The run is over when the worker reports its exit status on the status pipe (it has flushed
    everything by then), or, if it dies without reporting (a signal, a crash), when its pipes close
    and the sandbox exits. The worker is killed on timeout or when stdout+stderr exceed
    ``max_output_bytes``; the caller discards it in any case afterwards (its pid namespace then
    takes every descendant with it).
    """
    proc = worker.proc
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    in_fd, out_fd, err_fd = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    for fd in (in_fd, out_fd, err_fd, worker.status_fd):
        os.set_blocking(fd, False)
    out = bytearray()
    err = bytearray()
    status = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(out_fd, selectors.EVENT_READ, out)
    sel.register(err_fd, selectors.EVENT_READ, err)
    sel.register(worker.status_fd, selectors.EVENT_READ, status)
    stdin_open = True
    sel.register(in_fd, selectors.EVENT_WRITE, None)
    view = memoryview(len(code).to_bytes(8, "little") + code)  # framed: see worker.read_code
    sent = 0
    start = time.monotonic()
    deadline = start + timeout_s
    outcome = RunOutcome(b"", b"", None)
    open_streams = {out_fd, err_fd}
    reported: int | None = None

    def drain(fd: int, buf: bytearray) -> bool:
        """Read what is there now; False at EOF."""
        while True:
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if not chunk:
                return False
            buf.extend(chunk)
            if len(out) + len(err) > max_output_bytes:
                outcome.output_exceeded = True
                return True

    try:
        while open_streams and reported is None and not outcome.output_exceeded:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.timed_out = True
                break
            for key, _ in sel.select(min(remaining, SIGNAL_CHECK_S)):
                if key.fd == in_fd:
                    try:
                        sent += os.write(in_fd, view[sent : sent + READ_CHUNK])
                    except BlockingIOError:
                        continue
                    except OSError:  # EPIPE: the worker is gone
                        outcome.input_failed = sent == 0
                        sent = len(view)
                    if sent >= len(view):
                        sel.unregister(in_fd)
                        proc.stdin.close()
                        stdin_open = False
                    continue
                if not drain(key.fd, key.data):
                    sel.unregister(key.fd)
                    open_streams.discard(key.fd)
                if key.fd == worker.status_fd and status.endswith(b"\n"):
                    try:
                        reported = int(status.strip())
                    except ValueError:
                        status.clear()  # junk the program wrote there; wait for the real end
                if outcome.output_exceeded:
                    break
        if reported is not None and not outcome.output_exceeded:
            # the worker flushed before reporting: whatever it wrote is already in the pipes
            for fd, buf in ((out_fd, out), (err_fd, err)):
                if fd in open_streams:
                    drain(fd, buf)
            outcome.returncode = reported
            outcome.reported = True
        elif not (outcome.timed_out or outcome.output_exceeded):
            # no report (killed by a signal, crashed, or it closed its own fds): the sandbox's exit
            # status tells what happened
            outcome.returncode = worker.wait_exit(max(0.0, deadline - time.monotonic()))
            outcome.timed_out = outcome.returncode is None
    finally:
        sel.close()
        if stdin_open:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        worker.signal_kill()
    outcome.elapsed_s = time.monotonic() - start
    outcome.stdout = bytes(out[:max_output_bytes])
    outcome.stderr = bytes(err[:max_output_bytes])
    return outcome
