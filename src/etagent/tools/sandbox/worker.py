"""The sandbox worker: one interpreter that runs exactly one piece of model-written code, then exits.

The parent starts this file's *source* with ``python -c`` inside the sandbox (so no file of the
project has to be visible in there) and passes its settings as JSON in ``argv[1]``. The life of a
worker:

1. drop privileges (root mode only) and set resource limits,
2. import the ``preload`` modules, then write one ready byte (``READY``) to stdout,
3. block on stdin until the parent sends the code (a warm worker waits here),
4. apply the notebook-style auto-print rewrite and run the code as ``python -c`` would,
5. report the exit status on the status pipe and exit (see ``finish``); the status tells the
   parent which limit, if any, ended the program.

Only the standard library may be used here: the worker runs with nothing but the interpreter and
the read-only site-packages. The module is importable (the rewrite is tested from the host); it only
acts when run as ``__main__``.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import errno
import json
import os
import resource
import sys
import types
import typing

#: the byte a worker writes once it is ready for code
READY = b"\x06"
#: exit statuses by which the worker reports a resource limit; anything else is the program's own
#: status. A program can fake them with ``sys.exit(90)``: that only mislabels its own result.
EXIT_MEMORY = 90
EXIT_PROCESSES = 91
EXIT_DISK = 92
#: exit status when the worker itself could not set up (never the user's code)
EXIT_SETUP = 93

# bound now: the program may replace os._exit or os.write, and finish() must still work
_exit = os._exit
_write = os.write
_getpid = os.getpid


def add_auto_print(tree: ast.Module) -> ast.Module:
    """Wrap a trailing bare expression in ``print(...)`` like a notebook cell (docs/method.md 2.3).

    A trailing ``print(...)`` call is left alone so nothing prints twice. The rewrite happens on the
    tree rather than the text so line numbers in tracebacks stay those the model wrote.
    """
    if not tree.body:
        return tree
    last = tree.body[-1]
    if not isinstance(last, ast.Expr):
        return tree
    value = last.value
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "print":
        return tree
    call = ast.Call(func=ast.Name(id="print", ctx=ast.Load()), args=[value], keywords=[])
    tree.body[-1] = ast.Expr(value=call)
    ast.copy_location(call, value)
    ast.copy_location(call.func, value)
    ast.copy_location(tree.body[-1], last)
    return tree


def _classify(exc: BaseException) -> int:
    """Exit status for an exception that ended the program: a limit status or 1."""
    if isinstance(exc, MemoryError):
        return EXIT_MEMORY
    if isinstance(exc, OSError):
        # fork/clone/posix_spawn fail with EAGAIN once RLIMIT_NPROC is reached
        if exc.errno == errno.EAGAIN and isinstance(exc, BlockingIOError):
            return EXIT_PROCESSES
        if exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
            return EXIT_DISK
    if isinstance(exc, RuntimeError) and "can't start new thread" in str(exc):
        return EXIT_PROCESSES
    return 1


def _report(exc: BaseException, skip_frames: int) -> None:
    """Print the traceback the way ``python -c`` would, without the worker's own frames."""
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None:
            tb = tb.tb_next
    # the default hook prints the exception's own __traceback__, not the tb argument
    exc.__traceback__ = tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException:  # a broken user-installed hook must not hide the error
        sys.__excepthook__(type(exc), exc, tb)


def run_code(source: bytes) -> int:
    """Run ``source`` in a fresh ``__main__`` module; returns the exit status for ``sys.exit``."""
    main = types.ModuleType("__main__")
    main.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main
    try:
        tree = ast.parse(source, "<string>", "exec")
        code = compile(add_auto_print(tree), "<string>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        # the same message python -c prints; a SyntaxError has no useful traceback of its own
        _report(exc, skip_frames=99)
        return _classify(exc) if isinstance(exc, MemoryError) else 1
    try:
        exec(code, main.__dict__)
    except SystemExit as exc:
        return _system_exit_status(exc)
    except BaseException as exc:
        _report(exc, skip_frames=1)  # frame 0 is the exec() line above
        return _classify(exc)
    return 0


def _system_exit_status(exc: SystemExit) -> int:
    """What the interpreter does with an uncaught SystemExit (sys.exit(...))."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(Exception):
        sys.stderr.write(f"{code}\n")
    return 1


def finish(status: int, status_fd: int | None = None, worker_pid: int | None = None) -> None:
    """End the process the way interpreter shutdown would, minus the slow part.

    Full finalization (tearing down every module) takes 15-30 ms, most of a warm call. What a
    program can observe of it is kept: non-daemon threads are joined, atexit handlers run,
    ``__main__``'s objects are released (so ``__del__`` methods run) and stdio is flushed.
    """
    # every step is shielded: whatever the program broke, the worker must still exit with its status
    threading = sys.modules.get("threading")
    if threading is not None:
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
    with contextlib.suppress(BaseException):
        import atexit

        atexit._run_exitfuncs()
    main = sys.modules.get("__main__")
    if main is not None:
        with contextlib.suppress(BaseException):
            main.__dict__.clear()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            with contextlib.suppress(BaseException):
                stream.flush()
    if "ctypes" in sys.modules:  # C-level stdio buffers (printf from ctypes) are not flushed by _exit
        with contextlib.suppress(BaseException):
            sys.modules["ctypes"].CDLL(None).fflush(None)
    # only the worker itself reports: a child the program forked also ends up here when it runs off
    # the end of the code, and its report would cut off the worker's remaining output
    if status_fd is not None and _getpid() == worker_pid:
        # everything the program wrote is in the pipes now; the parent may stop waiting and need
        # not sit through the process and namespace teardown
        with contextlib.suppress(OSError):
            _write(status_fd, b"%d\n" % status)
    _exit(status)


def read_code(stream: typing.BinaryIO) -> bytes:
    """The code, framed as an 8-byte little-endian length and the bytes.

    A frame, not end-of-file: if the host process forks (a data loader, say), the child holds a
    copy of the pipe's write end and end-of-file would never come.
    """
    header = stream.read(8)
    if len(header) < 8:
        return b""  # the parent went away
    return stream.read(int.from_bytes(header, "little"))


def _prefer_for_oom_kill() -> None:
    # the memory cap is per process; should many sandboxed processes still exhaust host memory, the
    # kernel's OOM killer must pick them, not the trainer holding the model. Raising one's own score
    # needs no privilege; done before the uid switch, after which /proc/self is no longer writable.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")


def _drop_privileges(uid: int) -> None:
    # Root mode: bwrap ran us as root with only CAP_SETUID/CAP_SETGID; switching every uid to a
    # non-zero one clears those too. RLIMIT_NPROC is then counted for this uid alone.
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() == 0 or os.geteuid() == 0:
        raise RuntimeError("could not drop root privileges")


def _set_limits(cfg: dict) -> None:
    def cap(kind: int, value: int) -> None:
        _soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(kind, (value, value))

    cap(resource.RLIMIT_CORE, 0)
    cap(resource.RLIMIT_AS, cfg["memory_bytes"])
    cap(resource.RLIMIT_FSIZE, cfg["file_bytes"])
    cap(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    cap(resource.RLIMIT_NPROC, cfg["max_processes"])


def _set_cpu_limit(seconds: float) -> None:
    # counted from now, so interpreter start-up and preloading are not charged to the program
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(usage.ru_utime + usage.ru_stime + seconds + 0.999)
    # the soft limit sends SIGXCPU; the hard limit one second later is SIGKILL for programs that
    # catch or ignore SIGXCPU
    resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 1))


def main() -> None:
    cfg = json.loads(sys.argv[1])
    status_fd = cfg.get("status_fd")
    try:
        if status_fd is not None:
            os.set_inheritable(status_fd, False)  # the program's own child processes do not get it
        _prefer_for_oom_kill()
        if cfg.get("uid") is not None:
            _drop_privileges(cfg["uid"])
        _set_limits(cfg)
    except Exception as exc:
        sys.stderr.write(f"sandbox worker setup failed: {exc!r}\n")
        sys.stderr.flush()
        os._exit(EXIT_SETUP)
    for name in cfg.get("preload", []):
        with contextlib.suppress(Exception):  # a missing optional module must not break the worker
            __import__(name)
    sys.argv = ["-c"]  # what the program would see under python -c
    os.write(1, READY)
    source = read_code(sys.stdin.buffer)
    # the program gets an empty stdin, as under a notebook
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    _set_cpu_limit(cfg["cpu_seconds"])
    worker_pid = os.getpid()
    finish(run_code(source), status_fd, worker_pid)


if __name__ == "__main__":
    main()
