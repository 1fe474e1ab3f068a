"""The ``python`` tool: runs model-written code in a sandbox and returns what it prints.

Model-written code is untrusted. Each call runs in a fresh single-use process inside a bubblewrap
sandbox (no network, no view of the host's files beyond the interpreter and its site-packages, own
pid namespace, resource limits); see docs/sandbox.md for the threat model and its limits. Warm
workers (``pool_size``) keep the per-call cost far below starting ``python -c``.

Behaviour follows docs/method.md 2.3: a trailing bare expression is printed (notebook style); the result is
the stripped stdout on success, the traceback on error, a clear text on timeout or a limit.
``call`` never raises for anything the code does. When the tool itself fails (the sandbox cannot
start, the tool was closed), the model reads only :data:`TOOL_FAILED`; the reason goes to the log,
once per distinct failure.
"""

from __future__ import annotations

import logging
import os
import signal
import weakref
from typing import Literal

from pydantic import Field

from etagent.config import ConfigModel
from etagent.protocol.tags import ToolSpec
from etagent.tools.base import Tool, ToolResult
from etagent.tools.failure_log import FailureLog
from etagent.tools.sandbox.launch import Launcher, SandboxUnavailable, WorkerLimits
from etagent.tools.sandbox.pool import PoolClosed, RunOutcome, SandboxStartError, WorkerPool, run_in_worker
from etagent.tools.sandbox.worker import EXIT_DISK, EXIT_MEMORY, EXIT_PROCESSES

log = logging.getLogger(__name__)

__all__ = ["PythonConfig", "PythonTool", "SandboxUnavailable"]

#: what the model reads when the tool, not the code, failed (the reference's failure marker)
TOOL_FAILED = "Tool execute failed: the code was not run."

_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "std::bad_alloc", "out of memory")


class PythonConfig(ConfigModel):
    """Settings of the sandboxed Python tool (``tools.python`` in a rollout config)."""

    isolation: Literal["bwrap", "rlimits"] = Field(
        "bwrap",
        description="bwrap: bubblewrap sandbox (no network, private file system view, own pid namespace) "
        "plus resource limits. rlimits: a plain child process with resource limits, a scrubbed "
        "environment and a temp working directory - no file system or network isolation; opt-in only.",
    )
    timeout_s: float = Field(10.0, gt=0, description="wall-clock limit of one call, seconds")
    cpu_time_s: float | None = Field(
        None, gt=0, description="CPU-time limit per process (RLIMIT_CPU), seconds; default: timeout_s"
    )
    memory_mb: int = Field(
        1024, ge=64, description="address-space limit per process (RLIMIT_AS), MiB; numpy/sympy need ~300"
    )
    max_processes: int = Field(
        64, ge=1, description="processes + threads the code may have at once (RLIMIT_NPROC)"
    )
    max_output_chars: int | None = Field(
        1000,
        ge=1,
        description="result text longer than this is cut, with a marker saying how much was dropped "
        "(1000 as in the flywheel; None: no cut)",
    )
    max_output_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="stdout+stderr beyond this many bytes stop the program (status 'limit')",
    )
    disk_mb: int = Field(
        64, ge=1, description="size of the sandbox's tmpfs working directory and largest file (RLIMIT_FSIZE)"
    )
    max_open_files: int = Field(256, ge=16, description="open file descriptors per process (RLIMIT_NOFILE)")
    pool_size: int = Field(4, ge=0, description="warm workers kept started; 0 starts one per call")
    start_timeout_s: float = Field(60.0, gt=0, description="longest wait for a worker to start")
    preload: list[str] = Field(
        default_factory=list,
        description="modules each worker imports before it is ready (e.g. [numpy]); faster calls that "
        "use them, more memory and CPU per worker",
    )
    bwrap_path: str = Field("bwrap", description="the bubblewrap executable")
    sandbox_uid_base: int = Field(
        1_600_000_000,
        ge=1000,
        le=2**32 - 2 - 65536,
        description="when run as root, each sandbox gets its own uid from [base, base+65536): "
        "RLIMIT_NPROC is not enforced for root and must count one sandbox only",
    )
    site_packages: list[str] | None = Field(
        None,
        description="directories mounted read-only (at a neutral path) and put on PYTHONPATH; "
        "default: the running virtual environment's site-packages",
    )


class PythonTool(Tool):
    """Runs Python code in a sandbox; thread-safe, calls run concurrently."""

    name = "python"
    config_class = PythonConfig

    spec = ToolSpec("python", "runs Python code and returns what it prints", "print(12 * 34)")

    def __init__(self, cfg: PythonConfig | None = None) -> None:
        self.cfg = cfg = cfg or PythonConfig()
        if cfg.isolation == "rlimits":
            log.warning(
                "python tool: isolation=rlimits gives NO file system or network isolation; model-written "
                "code can read and write whatever this user can%s. Use isolation=bwrap for untrusted code.",
                " and, as root, is not bound by the process limit" if _is_root() else "",
            )
        cpu = cfg.cpu_time_s if cfg.cpu_time_s is not None else cfg.timeout_s
        limits = WorkerLimits(
            memory_bytes=cfg.memory_mb * 2**20,
            file_bytes=cfg.disk_mb * 2**20,
            max_open_files=cfg.max_open_files,
            max_processes=cfg.max_processes,
            cpu_seconds=cpu,
            preload=tuple(cfg.preload),
        )
        self._cpu_s = cpu
        launcher = Launcher(
            isolation=cfg.isolation,
            limits=limits,
            tmpfs_bytes=cfg.disk_mb * 2**20,
            bwrap_path=cfg.bwrap_path,
            uid_base=cfg.sandbox_uid_base,
            site_packages=cfg.site_packages,
        )
        self._pool = WorkerPool(launcher, cfg.pool_size, cfg.start_timeout_s)
        self._failures = FailureLog(log, "python tool failed")
        # closes the pool if the tool is dropped without close() (idle workers are processes)
        self._finalizer = weakref.finalize(self, self._pool.close)
        try:
            # fail at construction, with bwrap's own message, when the sandbox cannot start at all
            # (e.g. user namespaces disabled) instead of returning an error for every call
            if not self._pool.wait_ready(1 if cfg.pool_size else 0, cfg.start_timeout_s):
                raise SandboxUnavailable(f"the python sandbox did not start within {cfg.start_timeout_s:g} s")
        except SandboxStartError as e:
            self.close()
            raise SandboxUnavailable(_start_failure_message(cfg, str(e))) from None
        except BaseException:
            self.close()
            raise
        if cfg.pool_size == 0:
            self._check_cold_start()

    @classmethod
    def from_config(cls, cfg: PythonConfig) -> PythonTool:
        return cls(cfg)

    def _check_cold_start(self) -> None:
        result = self.call("print(1)")
        if result.text != "1":
            self.close()
            if result.text == TOOL_FAILED and self._failures.last is not None:
                raise SandboxUnavailable(self._failures.last)  # the reason, not the model's text
            raise SandboxUnavailable(_start_failure_message(self.cfg, result.text))

    # ------------------------------------------------------------------ calls

    def call(self, content: str) -> ToolResult:
        if not content or not content.strip():
            return ToolResult("Error: no code to run (the python block is empty).", "error")
        code = content.encode("utf-8", "surrogatepass")
        for attempt in range(2):
            try:
                worker = self._pool.acquire(self.cfg.start_timeout_s)
            except PoolClosed:
                self._failures.record("called after the tool was closed")
                return ToolResult(TOOL_FAILED, "error")
            except SandboxStartError as e:
                self._failures.record(_start_failure_message(self.cfg, str(e)))
                return ToolResult(TOOL_FAILED, "error")
            try:
                outcome = run_in_worker(worker, code, self.cfg.timeout_s, self.cfg.max_output_bytes)
            except Exception as e:  # an OS error on our side of the pipes, never the program's doing
                self._failures.record(f"running a worker failed: {type(e).__name__}: {e}", exc_info=e)
                return ToolResult(TOOL_FAILED, "error")
            finally:
                self._pool.discard(worker)
            if outcome.input_failed and not outcome.stdout and attempt == 0:
                continue  # the worker was dead before it got the code: use a fresh one
            return self._result(outcome)
        return self._result(outcome)

    def wait_warm(self, timeout: float = 60.0) -> bool:
        """Block until the pool holds ``pool_size`` ready workers (benchmarks, tests)."""
        return self._pool.wait_ready(self.cfg.pool_size, timeout)

    @property
    def pool(self) -> WorkerPool:
        return self._pool

    def close(self) -> None:
        self._finalizer()

    # ------------------------------------------------------------------ result text

    def _result(self, out: RunOutcome) -> ToolResult:
        cfg = self.cfg
        stdout = out.stdout.decode("utf-8", "replace").strip()
        stderr = out.stderr.decode("utf-8", "replace").strip()
        if out.output_exceeded:
            text = _head(stdout, cfg.max_output_chars)
            msg = (
                f"Output Limit Exceeded: the code printed more than {cfg.max_output_bytes} bytes "
                "and was stopped."
            )
            return ToolResult(f"{text}\n{msg}" if text else msg, "limit")
        if out.timed_out:
            return ToolResult(f"Execution Timeout: the code ran longer than {cfg.timeout_s:g} s", "timeout")
        rc = out.returncode if out.returncode is not None else -signal.SIGKILL
        if rc == 0:
            return ToolResult(_head(stdout, cfg.max_output_chars), "ok")
        sig = 0 if out.reported else -rc if rc < 0 else _bwrap_signal(rc)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and out.elapsed_s >= self._cpu_s):
            return ToolResult(
                f"Execution Timeout: the code used more than {self._cpu_s:g} s of CPU time", "timeout"
            )
        tail = _tail(stderr, cfg.max_output_chars)
        if rc == EXIT_MEMORY or (sig and any(h in stderr for h in _MEMORY_HINTS)):
            return _limit(f"Memory Limit Exceeded: the code tried to use more than {cfg.memory_mb} MB.", tail)
        if rc == EXIT_PROCESSES:
            return _limit(
                f"Process Limit Exceeded: the code tried to run more than {cfg.max_processes} "
                "processes or threads at once.",
                tail,
            )
        if rc == EXIT_DISK:
            return _limit(f"Disk Limit Exceeded: files may not exceed {cfg.disk_mb} MB in total.", tail)
        if sig:
            name = _signal_name(sig)
            return ToolResult(
                f"{tail}\nError: the program was killed by {name}."
                if tail
                else f"Error: the program was killed by {name}.",
                "error",
            )
        if tail:
            return ToolResult(tail, "error")
        head = _head(stdout, cfg.max_output_chars)
        msg = f"Error: the program exited with status {rc}."
        return ToolResult(f"{head}\n{msg}" if head else msg, "error")


def _limit(msg: str, detail: str) -> ToolResult:
    return ToolResult(f"{msg}\n{detail}" if detail else msg, "limit")


def _head(text: str, limit: int | None) -> str:
    """Keep the start of normal output (what the program printed first)."""
    if limit is None or len(text) <= limit:
        return text
    return f"{text[:limit]}\n... [output truncated: {len(text) - limit} more characters]"


def _tail(text: str, limit: int | None) -> str:
    """Keep the end of a traceback (where the exception is named)."""
    if limit is None or len(text) <= limit:
        return text
    return f"[... {len(text) - limit} earlier characters truncated ...]\n{text[-limit:]}"


def _bwrap_signal(rc: int) -> int:
    # bwrap reports a sandbox killed by signal N as exit status 128+N (like a shell does); statuses
    # above 128 that are no signal number are the program's own
    if rc <= 128:
        return 0
    try:
        return int(signal.Signals(rc - 128))
    except ValueError:
        return 0


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _is_root() -> bool:
    return os.geteuid() == 0


def _start_failure_message(cfg: PythonConfig, detail: str) -> str:
    hint = ""
    if cfg.isolation == "bwrap":
        hint = (
            "\nbubblewrap needs user namespaces (non-root: sysctl kernel.unprivileged_userns_clone=1, "
            "and on Ubuntu an AppArmor profile for bwrap) or, as root, CAP_SYS_ADMIN. If the sandbox "
            "cannot work here, `isolation: rlimits` runs code with much weaker isolation."
        )
    return f"the python sandbox ({cfg.isolation}) failed to start: {detail}{hint}"
