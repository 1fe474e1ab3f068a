"""Shared by the sandbox tests: making a tool (fail, not skip, when the sandbox cannot start) and
finding sandbox processes by the marker in their command line."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from etagent.tools.python_tool import PythonConfig, PythonTool, SandboxUnavailable
from etagent.tools.sandbox.launch import MARKER_PREFIX

#: the only way to skip the sandbox tests: say so. CI and the dev image have bwrap, and a sandbox
#: that cannot start there (or starts too slowly) is a failure, never a silent skip.
ALLOW_NO_SANDBOX = "ETAGENT_ALLOW_NO_SANDBOX"


def sandbox_unavailable(error: Exception) -> None:
    """Skip if the user allowed it, else fail with the sandbox's own message and the way out."""
    if os.environ.get(ALLOW_NO_SANDBOX) == "1":
        pytest.skip(f"bwrap sandbox unavailable here ({ALLOW_NO_SANDBOX}=1): {error}")
    pytest.fail(
        f"the bwrap sandbox could not start: {error}\nOn a machine that truly lacks bubblewrap or user "
        f"namespaces, set {ALLOW_NO_SANDBOX}=1 to skip the sandbox tests.",
        pytrace=False,
    )


def make_tool(**kw) -> PythonTool:
    try:
        return PythonTool(PythonConfig(**kw))
    except SandboxUnavailable as e:
        sandbox_unavailable(e)
        raise  # unreachable: skip and fail raise


def sandbox_processes(fragment: str) -> list[str]:
    """``pid:command`` of every process whose command line contains ``fragment`` (a pool's marker,
    or ``MARKER_PREFIX + str(pid)`` for all sandboxes a process started)."""
    needle = fragment.encode()
    me = os.getpid()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            program = cmdline.split(b"\0", 1)[0].decode(errors="replace")
            found.append(f"{name}:{program}")
    return found


def owner_fragment(pid: int) -> str:
    """The marker fragment of every sandbox started by process ``pid``."""
    return f"{MARKER_PREFIX}{pid}:"


def assert_none_left(fragment: str, timeout: float = 15.0) -> None:
    """Wait (a killed sandbox takes a moment to go) until no process carries ``fragment``."""
    deadline = time.monotonic() + timeout
    while True:
        left = sandbox_processes(fragment)
        if not left:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"sandbox processes still alive {timeout:g} s later: {left}")
        time.sleep(0.1)
