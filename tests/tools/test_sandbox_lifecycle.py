"""Every sandbox ends with its call or its pool, on every path: a worker killed while it starts, a
pool closed right after it started, one-shot CLI calls, a timeout, Ctrl-C, and the owner killed.

Sandbox processes are found by the marker every one of them carries in its command line (the
worker's settings; the cloned pid 1 of a bwrap sandbox has the outer bwrap's command line). Before
the fix, killing the outer bwrap while it was still setting the sandbox up left its child (the
sandbox's pid 1) blocked on an eventfd for ever, orphaned to init: about one start in six killed at
0-20 ms did so.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from etagent.tools.sandbox.launch import Launcher, SandboxUnavailable, WorkerLimits
from etagent.tools.sandbox.pool import WorkerPool
from tests.tools.sandbox_helpers import (
    assert_none_left,
    make_tool,
    owner_fragment,
    sandbox_processes,
    sandbox_unavailable,
)

REPO = Path(__file__).resolve().parents[2]
LIMITS = WorkerLimits(
    memory_bytes=1024 * 2**20, file_bytes=16 * 2**20, max_open_files=256, max_processes=64, cpu_seconds=30
)
# a daemon the rlimits fallback cannot stop by killing the worker's process group: it leaves the
# group with setsid, and keeps the worker's command line (fork without exec), so the guard finds it
DAEMON = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(300)\n    os._exit(0)\nprint('forked')"


def _launcher(isolation: str = "bwrap") -> Launcher:
    try:
        return Launcher(isolation=isolation, limits=LIMITS, tmpfs_bytes=16 * 2**20)
    except SandboxUnavailable as e:
        sandbox_unavailable(e)
        raise


def test_workers_killed_while_they_start_leave_nothing():
    launcher = _launcher()
    for i in range(30):
        worker = launcher.spawn()
        time.sleep(i * 0.001)  # 0-29 ms: before, during and after bwrap's set-up
        worker.kill()
    assert_none_left(launcher.marker)


@pytest.mark.parametrize("isolation", ["bwrap", "rlimits"])
def test_pools_closed_right_after_start_leave_nothing(isolation):
    launcher = _launcher(isolation)
    for delay in (0.0, 0.0, 0.003, 0.01, 0.03, 0.1):
        pool = WorkerPool(launcher, size=3, start_timeout_s=60)
        time.sleep(delay)
        pool.close()
        # close() returns only when nothing of the pool is left, the guard included
        assert sandbox_processes(launcher.marker) == []


def test_a_timed_out_call_leaves_nothing():
    tool = make_tool(pool_size=1, timeout_s=1)
    try:
        r = tool.call("import os, time\nos.fork()\nos.fork()\ntime.sleep(60)")
        assert r.status == "timeout"
        # only the refilled idle worker (an outer bwrap, its pid 1 and the interpreter) remains
        assert tool.wait_warm(60)
        deadline = time.monotonic() + 10
        while len(sandbox_processes(tool.pool.marker)) > 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sandbox_processes(tool.pool.marker)) <= 4  # 3 per worker + the guard
    finally:
        tool.close()
    assert sandbox_processes(tool.pool.marker) == []


def test_ctrl_c_that_reaches_a_pool_thread_still_interrupts_a_call_at_once():
    """The kernel gives a process's SIGINT to any of its threads; Python acts on it in the main
    thread only when that thread runs Python code, so a call blocked for its whole timeout would
    hold Ctrl-C that long. The caller's waits look up every SIGNAL_CHECK_S."""
    import threading

    # a test run started in the background of a non-interactive shell inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    tool = make_tool(pool_size=1, timeout_s=30)
    try:
        assert tool.wait_warm(60)
        spawner = tool.pool._thread.ident
        threading.Timer(1.0, signal.pthread_kill, (spawner, signal.SIGINT)).start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            tool.call("import time\ntime.sleep(25)")
        assert time.monotonic() - t0 < 5
    finally:
        tool.close()
        signal.signal(signal.SIGINT, previous)
    assert sandbox_processes(tool.pool.marker) == []


def test_rlimits_daemons_end_with_the_pool():
    tool = make_tool(isolation="rlimits", pool_size=1)
    try:
        assert tool.call(DAEMON).text == "forked"
        assert any("python" in p for p in sandbox_processes(tool.pool.marker))  # the daemon lives on
    finally:
        tool.close()
    assert sandbox_processes(tool.pool.marker) == []


def test_one_shot_cli_calls_leave_nothing(tmp_path):
    codes = ["print(6 * 7)", "1 / 0", "while True:\n    pass", "import numpy\nnumpy.arange(3).sum()"]
    procs = []
    for i, code in enumerate(codes):
        f = tmp_path / f"code{i}.py"
        f.write_text(code)
        argv = [
            sys.executable,
            "-m",
            "etagent.cli",
            "tool",
            "python",
            "--code-file",
            str(f),
            "--set",
            "timeout_s=2",
        ]
        procs.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        )
    outputs = [(p.pid, *p.communicate(timeout=120), p.returncode) for p in procs]
    for pid, out, err, rc in outputs:
        if "failed to start" in err:
            sandbox_unavailable(RuntimeError(err))
        assert rc in (0, 1) and "Traceback" not in err, (out, err)
        assert sandbox_processes(owner_fragment(pid)) == [], (out, err)
    texts = [o[1].strip() for o in outputs]
    assert texts[0] == "42" and texts[3] == "3", texts
    assert texts[1].endswith("ZeroDivisionError: division by zero") and texts[2].startswith(
        "Execution Timeout"
    )


OWNER = textwrap.dedent(
    """
    import sys, time
    from etagent.tools.python_tool import PythonConfig, PythonTool
    from etagent.tools.sandbox.launch import Launcher, SandboxUnavailable, WorkerLimits
    from etagent.tools.sandbox.pool import WorkerPool

    mode, isolation = sys.argv[1], sys.argv[2]

    def wait():
        # short sleeps, as a busy owner would: SIGINT may reach one of the pool's threads, and
        # Python raises it in the main thread only when that thread runs Python code again
        for _ in range(600):
            time.sleep(0.1)

    try:
        if mode == "starting":  # workers still starting when the signal comes
            limits = WorkerLimits(2**30, 2**24, 256, 64, 30.0)
            pool = WorkerPool(Launcher(isolation=isolation, limits=limits, tmpfs_bytes=2**24), size=4)
            print("ready", flush=True)
            wait()
        tool = PythonTool(PythonConfig(isolation=isolation, pool_size=3, timeout_s=60))
    except SandboxUnavailable as e:
        print("unavailable", e, flush=True)
        sys.exit(3)
    if mode == "warm":
        tool.wait_warm(60)
        print("ready", flush=True)
        wait()
    elif mode == "calling":
        print("ready", flush=True)
        tool.call("import time\\ntime.sleep(60)")
    elif mode == "daemon":
        print(tool.call(DAEMON_CODE).text, flush=True)
        print("ready", flush=True)
        wait()
    """
).replace("DAEMON_CODE", repr(DAEMON))


@pytest.mark.parametrize(
    ("mode", "isolation", "sig", "delay"),
    [
        ("starting", "bwrap", signal.SIGKILL, 0.0),
        ("starting", "bwrap", signal.SIGKILL, 0.01),
        ("warm", "bwrap", signal.SIGKILL, 0.0),
        ("calling", "bwrap", signal.SIGKILL, 0.3),
        ("calling", "bwrap", signal.SIGINT, 0.3),
        ("daemon", "rlimits", signal.SIGKILL, 0.0),
        ("daemon", "rlimits", signal.SIGINT, 0.0),
    ],
)
def test_sandboxes_end_with_their_owner(tmp_path, mode, isolation, sig, delay):
    script = tmp_path / "owner.py"
    script.write_text(OWNER)
    proc = subprocess.Popen(
        [sys.executable, str(script), mode, isolation],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
        # SIGINT as in a terminal, even when the tests run in the background of a shell (ignored there)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = proc.stdout.readline().decode()
        if mode == "daemon":
            assert line.strip() == "forked", line + proc.stderr.read().decode()
            line = proc.stdout.readline().decode()
        if line.startswith("unavailable"):
            sandbox_unavailable(RuntimeError(line))
        assert line.strip() == "ready", line + proc.stderr.read().decode()
        if mode in ("warm", "calling"):  # there are sandboxes to end
            assert any(p.endswith("bwrap") for p in sandbox_processes(owner_fragment(proc.pid)))
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(timeout=120)  # generous: the pool's shutdown on loaded cores
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode != 0
    assert_none_left(owner_fragment(proc.pid))
