"""The guard of one pool's sandboxes: kills them all when the process that owns them ends.

Each sandbox normally ends with its call or its pool: the pool kills it, and bwrap's
``--die-with-parent`` kills it when the owner dies. That leaves one gap: a sandbox whose outer bwrap
is killed (by the owner's death, or anyone) while it is still setting the sandbox up. Its child,
the sandbox's future pid 1, then has no parent-death signal yet and waits on an eventfd for a parent
that is gone, forever, orphaned to init. The pool closes the gap for the deaths it causes by killing
whole process groups; this process closes it for the owner's own death (SIGKILL, a crash,
``os._exit``), and for any other process of the pool's that somehow survived its call.

The owner starts it (``Launcher.start_guard``) with ``python -I -S -c <this file's source> OWNER_PID
MARKER``, in a session of its own so that signals meant for the owner's process group miss it. It
waits until the owner has ended (a pidfd, or its parent changing where pidfds are missing) or writes
to or closes its stdin (``WorkerPool.close``), then SIGKILLs every process whose command line
contains MARKER (each sandbox carries it in its settings) until none is left, and exits.
Standard library only; the module is importable for the tests and only acts as ``__main__``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import time

#: how long to keep finding and killing (a sandbox's pid 1 may be forking its child as the first
#: round runs; a killed process stays visible until it has exited)
SWEEP_S = 5.0
POLL_S = 0.5


def find(marker: bytes, skip: int) -> list[int]:
    """Pids whose command line contains ``marker``, other than ``skip``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == skip:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if marker in cmdline:
            found.append(int(name))
    return found


def sweep(marker: bytes, skip: int) -> int:
    """SIGKILL every process carrying ``marker`` until none is left; how many were found."""
    killed: set[int] = set()
    refused: set[int] = set()  # not ours to kill (cannot happen for a pool's own processes)
    deadline = time.monotonic() + SWEEP_S
    while time.monotonic() < deadline:
        pids = [pid for pid in find(marker, skip) if pid not in refused]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except PermissionError:
                refused.add(pid)
            except OSError:  # gone meanwhile
                continue
            else:
                killed.add(pid)
        time.sleep(0.01)
    return len(killed)


def wait_for_owner(owner: int) -> None:
    """Return once ``owner`` has ended, or has written to or closed our stdin."""
    pidfd = None
    # Python < 3.9, Linux < 5.3, or the owner already gone: the parent check below still works
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(owner)
    # checked after pidfd_open: a pidfd opened while the owner was still our parent is the owner's
    if os.getppid() != owner:
        return
    fds = [0] if pidfd is None else [0, pidfd]
    while True:
        ready, _, _ = select.select(fds, [], [], None if pidfd is not None else POLL_S)
        if ready or os.getppid() != owner:
            return


def main() -> None:
    owner = int(sys.argv[1])
    marker = sys.argv[2].encode()
    wait_for_owner(owner)
    sweep(marker, os.getpid())


if __name__ == "__main__":
    main()
