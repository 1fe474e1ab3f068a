"""Starting sandboxed worker processes: the bwrap command line, or the weaker rlimits fallback.

See docs/sandbox.md for the threat model. In short, a bwrap worker sees a fresh root file system
holding only ``/usr`` (plus the merged-/usr symlinks), a few files of ``/etc`` the dynamic loader
needs, the base Python install and the virtual environment's site-packages (all read-only), and
empty tmpfs mounts at ``/tmp`` (its working directory) and ``/dev/shm``. It has its own pid, network
(no interfaces but loopback), IPC and UTS namespaces, none of the caller's environment, and a seccomp
filter refusing the system calls model-written code never needs (``seccomp.py``).

Two ways to run bwrap, picked by who we are:

* **non-root**: bwrap creates a user namespace (``--unshare-user``) and blocks nested ones
  (``--disable-userns``). RLIMIT_NPROC is counted per (user namespace, uid), so the process cap
  set inside the worker applies to this one sandbox.
* **root**: RLIMIT_NPROC is never enforced for uid 0, and a user namespace made by root maps the
  sandbox back onto uid 0, which is still exempt. So bwrap runs in its privileged mode keeping only
  CAP_SETUID/CAP_SETGID, and the worker switches to a uid of its own (``uid_base`` + a rotating
  slot) before it reads any code. That uid owns nothing on the host and no other sandbox shares
  it, so the process cap is both enforced and per-sandbox. (An unprivileged bwrap launched as that
  uid would not work: it must reach the interpreter, which often lives under a 0700 ``/root``.)
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from etagent.tools.sandbox import guard as guard_module
from etagent.tools.sandbox import worker as worker_module
from etagent.tools.sandbox.seccomp import UnsupportedArchitecture, build_filter, filter_pipe

#: where each bound site-packages directory appears inside the sandbox (outside the host's layout,
#: so nothing reveals or depends on where the project lives)
SANDBOX_SITE_DIR = "/opt/etagent/site-packages"
SANDBOX_WORKDIR = "/tmp"
#: loader and locale files; the rest of /etc (passwd, shadow, ssh keys, resolver config) stays out
ETC_FILES = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/alternatives",
)
MERGED_USR_DIRS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: start of the marker every sandbox process of one launcher carries in its command line (the worker's
#: settings); the guard finds a pool's sandboxes by it, and so do the tests
MARKER_PREFIX = "etagent-sandbox:"
#: uids handed out round-robin in root mode; a slot is reused only after this many sandboxes,
#: long after any process that ran under it is gone
UID_SLOTS = 65536

# One allocator for every tool in this process (a trainer may hold several), starting at a random
# slot so that separate processes using the same base rarely hand out the same uid at once.
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_uid_slots = itertools.count(random.randrange(UID_SLOTS))


class SandboxUnavailable(RuntimeError):
    """The configured isolation cannot work on this machine (raised at construction, never per call)."""


@dataclass(frozen=True)
class WorkerLimits:
    """Per-worker resource limits, applied with setrlimit inside the worker."""

    memory_bytes: int
    file_bytes: int
    max_open_files: int
    max_processes: int
    cpu_seconds: float
    preload: tuple[str, ...] = ()


@dataclass
class Worker:
    """One started worker process (used for exactly one call).

    The process we start (the outer bwrap, or the worker itself in rlimits mode) leads a process
    group of its own, and that group is what ``signal_kill`` kills. In bwrap mode the group also
    holds the sandbox's pid 1 (bwrap clones it in place), which matters while the sandbox starts:
    until the outer bwrap has set up the sandbox, its child has no parent-death signal and waits for
    the outer one on an eventfd; killing only the outer bwrap then would leave that child waiting
    forever, orphaned to init. The group id is the leader's pid, which stays ours until the leader
    is reaped, so the leader is never reaped before the group has been killed (``alive`` and
    ``wait_exit`` only peek).
    """

    proc: subprocess.Popen
    started: float
    #: read end of the pipe on which the worker reports its exit status once the program is done
    status_fd: int
    uid: int | None = None
    workdir: str | None = None  # rlimits mode: the temp directory to remove afterwards
    _release: Callable[[int | None], None] | None = field(default=None, repr=False)
    _signalled: bool = field(default=False, repr=False)
    _reaped: bool = field(default=False, repr=False)

    def _peek(self) -> int | None:
        """The exit status if the process has ended (as Popen.returncode), without reaping it."""
        if self.proc.returncode is not None:
            return self.proc.returncode
        try:
            info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): ended, status unknown
            return -signal.SIGKILL
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def alive(self) -> bool:
        return self._peek() is None

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s for the process to end; its exit status, None if it has not.

        Does not reap (see the class doc), so it polls; it is used only once the worker's pipes
        have closed, when the end is a few milliseconds away.
        """
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while True:
            status = self._peek()
            if status is not None:
                return status
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)

    def signal_kill(self) -> None:
        """SIGKILL the worker's process group, without waiting (cheap)."""
        if self._signalled:
            return
        self._signalled = True
        if self.proc.returncode is None:  # not reaped: the group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        # bwrap mode: the sandbox's pid 1 dies with the group, and its pid namespace with it, taking
        # every process of the program along (also those that called setsid, which left the group)

    def reap(self) -> None:
        """Wait for the killed worker and free what it held; idempotent."""
        if self._reaped:
            return
        self._reaped = True
        self.signal_kill()
        try:
            with contextlib.suppress(subprocess.TimeoutExpired):  # a SIGKILLed process always exits
                self.proc.wait(timeout=10)
        finally:
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            with contextlib.suppress(OSError):
                os.close(self.status_fd)
            if self.workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            if self._release is not None:
                self._release(self.uid)

    def kill(self) -> None:
        """Kill, wait and clean up; idempotent."""
        self.signal_kill()
        self.reap()


def worker_source() -> str:
    """The worker program, passed with ``python -c`` so no project file is mounted."""
    return Path(worker_module.__file__).read_text(encoding="utf-8")


def guard_source() -> str:
    """The guard program (``guard.py``), passed with ``python -c`` like the worker's."""
    return Path(guard_module.__file__).read_text(encoding="utf-8")


def base_interpreter() -> tuple[str, list[str]]:
    """The real interpreter behind this (possibly virtual) environment and its install roots.

    Returns the executable and the directories that must be visible for it to start: its prefix as
    given and resolved (an absolute RPATH to libpython may use either spelling).
    """
    exe = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    roots = []
    for prefix in (sys.base_prefix, os.path.realpath(sys.base_prefix)):
        if prefix not in roots:
            roots.append(prefix)
    return exe, roots


def venv_site_packages() -> list[str]:
    """site-packages of the running virtual environment (empty when not in one)."""
    if sys.prefix == sys.base_prefix:
        return []
    seen: list[str] = []
    for path in site.getsitepackages():
        real = os.path.realpath(path)
        if os.path.isdir(real) and real not in seen:
            seen.append(real)
    return seen


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bwrap_version(bwrap: str) -> tuple[int, ...]:
    try:
        out = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in m.groups()) if m else ()


class Launcher:
    """Builds and starts worker processes; thread-safe (the pool calls it from one thread anyway)."""

    def __init__(
        self,
        *,
        isolation: str,
        limits: WorkerLimits,
        tmpfs_bytes: int,
        bwrap_path: str = "bwrap",
        uid_base: int = 1_600_000_000,
        site_packages: list[str] | None = None,
    ) -> None:
        if isolation not in ("bwrap", "rlimits"):
            raise ValueError(f"unknown isolation {isolation!r}; use 'bwrap' or 'rlimits'")
        self.isolation = isolation
        self.limits = limits
        self.tmpfs_bytes = tmpfs_bytes
        self.uid_base = uid_base
        self.python, self.prefixes = base_interpreter()
        self.site_packages = (
            [os.path.realpath(p) for p in site_packages]
            if site_packages is not None
            else venv_site_packages()
        )
        for path in self.site_packages:
            if not os.path.isdir(path):
                raise SandboxUnavailable(f"site-packages directory {path} does not exist")
        self.as_root = os.geteuid() == 0
        self._source = worker_source()
        #: in the command line of every process this launcher starts (see MARKER_PREFIX); our pid
        #: in it lets a test tell the sandboxes of one process from those of another
        self.marker = f"{MARKER_PREFIX}{os.getpid()}:{uuid.uuid4().hex[:16]}"
        self.bwrap: str | None = None
        self._disable_userns = False
        self._seccomp = b""
        if isolation == "bwrap":
            try:
                self._seccomp = build_filter()
            except UnsupportedArchitecture as e:
                raise SandboxUnavailable(str(e)) from None
            found = shutil.which(bwrap_path)
            if found is None:
                raise SandboxUnavailable(
                    f"bubblewrap ({bwrap_path!r}) is not installed, so the python tool cannot sandbox code. "
                    "Install it (Debian/Ubuntu: `apt-get install bubblewrap`), or accept much weaker "
                    "isolation (no file system or network isolation) with `isolation: rlimits` in the "
                    "python tool config (--set tools.python.isolation=rlimits)."
                )
            self.bwrap = found
            self._disable_userns = bwrap_version(found) >= (0, 8, 0)
            if not (self.python.startswith("/usr/") or any(_under(self.python, p) for p in self.prefixes)):
                raise SandboxUnavailable(
                    f"the interpreter {self.python} lies outside its prefix {sys.base_prefix}; "
                    "cannot tell what to mount for it"
                )

    # ------------------------------------------------------------------ uids (root mode)

    def _take_uid(self) -> int:
        with _uid_lock:
            for _ in range(UID_SLOTS):
                uid = self.uid_base + next(_uid_slots) % UID_SLOTS
                if uid not in _uids_in_use:
                    _uids_in_use.add(uid)
                    return uid
        raise RuntimeError("no free sandbox uid")  # pragma: no cover - needs 65536 live sandboxes

    @staticmethod
    def _release_uid(uid: int | None) -> None:
        if uid is not None:
            with _uid_lock:
                _uids_in_use.discard(uid)

    # ------------------------------------------------------------------ command lines

    def _worker_config(self, uid: int | None, status_fd: int) -> str:
        lim = self.limits
        return json.dumps(
            {
                "marker": self.marker,
                "uid": uid,
                "status_fd": status_fd,
                "memory_bytes": lim.memory_bytes,
                "file_bytes": lim.file_bytes,
                "max_open_files": lim.max_open_files,
                "max_processes": lim.max_processes,
                "cpu_seconds": lim.cpu_seconds,
                "preload": list(lim.preload),
            }
        )

    def sandbox_env(self, workdir: str, site_dirs: list[str]) -> dict[str, str]:
        """The whole environment of a worker: nothing is inherited from the caller."""
        env = {
            "PATH": f"{self.prefixes[0]}/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "TMPDIR": workdir,
            "USER": "sandbox",
            "LOGNAME": "sandbox",
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            # BLAS/OpenMP pools start one thread per core: that would eat the process cap and,
            # with RLIMIT_AS, the memory cap (each thread reserves a stack and a malloc arena)
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "NUMEXPR_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2",
            "MPLBACKEND": "Agg",
        }
        if site_dirs:
            env["PYTHONPATH"] = os.pathsep.join(site_dirs)
        return env

    def bwrap_argv(self, uid: int | None, status_fd: int, seccomp_fd: int) -> list[str]:
        """The bwrap command line; ``seccomp_fd`` is read to its end by bwrap (see seccomp.py)."""
        assert self.bwrap is not None
        argv = [
            self.bwrap,
            "--die-with-parent",
            "--seccomp",
            str(seccomp_fd),
            "--new-session",
            "--clearenv",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
        ]
        if self.as_root:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            argv += ["--unshare-user"]
            if self._disable_userns:
                argv += ["--disable-userns"]
        argv += ["--ro-bind", "/usr", "/usr"]
        for d in MERGED_USR_DIRS:
            if os.path.islink(d):
                argv += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                argv += ["--ro-bind", d, d]
        made: set[str] = set()

        def mkdirs(path: str) -> list[str]:
            # bwrap would create missing parents 0700 root-owned, which the dropped uid cannot cross
            out = []
            parts = Path(path).parts
            for i in range(2, len(parts)):
                parent = str(Path(*parts[:i]))
                if parent not in made and not _under(parent, "/usr"):
                    made.add(parent)
                    out += ["--perms", "0755", "--dir", parent]
            return out

        for f in ETC_FILES:
            argv += [*mkdirs(f), "--ro-bind-try", f, f]
        for prefix in self.prefixes:
            if not _under(prefix, "/usr"):
                argv += [*mkdirs(prefix), "--ro-bind", prefix, prefix]
        site_dirs = []
        for i, path in enumerate(self.site_packages):
            if any(_under(path, p) for p in self.prefixes) or _under(path, "/usr"):
                continue  # already visible where the interpreter expects it
            dest = SANDBOX_SITE_DIR if i == 0 else f"{SANDBOX_SITE_DIR}-{i}"
            argv += [*mkdirs(dest), "--ro-bind", path, dest]
            site_dirs.append(dest)
        argv += ["--proc", "/proc", "--dev", "/dev"]
        size = str(self.tmpfs_bytes)
        argv += ["--size", size, "--perms", "1777", "--tmpfs", SANDBOX_WORKDIR]
        argv += ["--size", size, "--perms", "1777", "--tmpfs", "/dev/shm"]
        argv += ["--chdir", SANDBOX_WORKDIR]
        for key, value in self.sandbox_env(SANDBOX_WORKDIR, site_dirs).items():
            argv += ["--setenv", key, value]
        argv += ["--", self.python, "-s", "-B", "-c", self._source, self._worker_config(uid, status_fd)]
        return argv

    # ------------------------------------------------------------------ start

    def spawn(self) -> Worker:
        """Start one worker (it then starts up, writes the ready byte and waits for code).

        The process started leads a new session and process group (``Worker.signal_kill``).
        """
        status_r, status_w = os.pipe()
        extra_fds: list[int] = []
        uid = self._take_uid() if self.isolation == "bwrap" and self.as_root else None
        workdir = None
        try:
            if self.isolation == "bwrap":
                seccomp_fd = filter_pipe(self._seccomp)
                extra_fds.append(seccomp_fd)
                argv = self.bwrap_argv(uid, status_w, seccomp_fd)
                env = {"PATH": "/usr/bin:/bin"}
                cwd = "/"
            else:
                workdir = tempfile.mkdtemp(prefix="etagent-python-")
                argv = [self.python, "-s", "-B", "-c", self._source, self._worker_config(None, status_w)]
                env = self.sandbox_env(workdir, self.site_packages)
                cwd = workdir
            proc = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                bufsize=0,
                close_fds=True,
                pass_fds=(status_w, *extra_fds),
                start_new_session=True,
            )
        except BaseException:
            os.close(status_r)
            self._release_uid(uid)
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
            raise
        finally:
            for fd in (status_w, *extra_fds):  # the worker holds the only copies now
                os.close(fd)
        return Worker(
            proc=proc,
            started=time.monotonic(),
            status_fd=status_r,
            uid=uid,
            workdir=workdir,
            _release=self._release_uid,
        )

    # ------------------------------------------------------------------ guard

    def start_guard(self) -> subprocess.Popen:
        """Start the guard of this launcher's sandboxes (``guard.py``): it outlives this process and
        kills whatever still carries ``marker`` when this process ends, or when the pool closing
        writes to its stdin (``WorkerPool.close``)."""
        return subprocess.Popen(
            [self.python, "-I", "-S", "-c", guard_source(), str(os.getpid()), self.marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={"PATH": "/usr/bin:/bin"},
            cwd="/",
            close_fds=True,
            start_new_session=True,  # not in our process group: Ctrl-C and killpg of ours miss it
        )
