"""The sandbox's seccomp filter: its numbers, its decisions (by a BPF interpreter, for both
architectures), its effect in the real sandbox (every refused call gets EPERM, from the filter and
not from missing privileges), and that ordinary scientific Python still runs under it."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from etagent.tools.sandbox import seccomp
from etagent.tools.sandbox.launch import Launcher, SandboxUnavailable, WorkerLimits
from etagent.tools.sandbox.seccomp import (
    AUDIT_ARCH,
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    DENIED,
    SECCOMP_RET_ALLOW,
    SECCOMP_RET_ERRNO,
    SECCOMP_RET_KILL_PROCESS,
    SYSCALLS,
    TIOCLINUX,
    TIOCSTI,
    build_filter,
)
from tests.tools.sandbox_helpers import make_tool

CLONE_THREAD = 0x00010000
SIGCHLD = 17
NAMESPACE_FLAGS = {
    "NEWNS": CLONE_NEWNS,
    "NEWCGROUP": CLONE_NEWCGROUP,
    "NEWUTS": CLONE_NEWUTS,
    "NEWIPC": CLONE_NEWIPC,
    "NEWUSER": CLONE_NEWUSER,
    "NEWPID": CLONE_NEWPID,
    "NEWNET": CLONE_NEWNET,
}
EPERM = SECCOMP_RET_ERRNO | errno.EPERM
ENOSYS = SECCOMP_RET_ERRNO | errno.ENOSYS
# calls every program makes; they must pass (numbers per architecture)
ORDINARY = {
    "x86_64": {"read": 0, "write": 1, "mmap": 9, "openat": 257, "getpid": 39, "exit_group": 231, "fork": 57},
    "aarch64": {"read": 63, "write": 64, "mmap": 222, "openat": 56, "getpid": 172, "exit_group": 94},
}


# ---------------------------------------------------------------------------- the numbers


def _libseccomp_numbers(arch: str) -> dict[str, int] | None:
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    resolve = ctypes.CDLL(name).seccomp_syscall_resolve_name_arch
    resolve.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    resolve.restype = ctypes.c_int
    return {n: resolve(AUDIT_ARCH[arch], n.encode()) for n in SYSCALLS[arch]}


def _header_numbers(arch: str) -> dict[str, int] | None:
    header = {
        "x86_64": Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
        "aarch64": Path("/usr/include/asm-generic/unistd.h"),
    }[arch]
    if not header.exists():
        return None
    found = dict(re.findall(r"#define __NR_(\w+)\s+(\d+)\b", header.read_text()))
    return {n: int(found[n]) for n in SYSCALLS[arch] if n in found}


@pytest.mark.parametrize("arch", sorted(SYSCALLS))
def test_syscall_numbers_match_the_kernel_abi(arch):
    """The hand-written tables against libseccomp's (or, without it, the kernel headers')."""
    reference = _libseccomp_numbers(arch) or _header_numbers(arch)
    if reference is None:
        pytest.skip("neither libseccomp nor the kernel headers are installed to check against")
    assert SYSCALLS[arch] == {n: reference[n] for n in SYSCALLS[arch]}
    # everything refused is in the table where the architecture has it
    missing = [n for n in DENIED if n not in SYSCALLS[arch]]
    assert missing == ([] if arch == "x86_64" else ["iopl", "ioperm", "modify_ldt", "uselib", "_sysctl"])


# ---------------------------------------------------------------------------- the program's decisions


class Call(NamedTuple):
    nr: int
    arch: int
    args: tuple[int, ...] = (0, 0, 0, 0, 0, 0)


def run_bpf(program: bytes, call: Call) -> int:
    """A classic-BPF interpreter for what seccomp filters use (loads, jumps, returns)."""
    data = struct.pack("<iIQ6Q", call.nr, call.arch, 0, *(list(call.args) + [0] * 6)[:6])
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == seccomp.BPF_LD_W_ABS:
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code in (seccomp.BPF_JEQ_K, seccomp.BPF_JGE_K, seccomp.BPF_JSET_K):
            taken = {
                seccomp.BPF_JEQ_K: acc == k,
                seccomp.BPF_JGE_K: acc >= k,
                seccomp.BPF_JSET_K: bool(acc & k),
            }[code]
            pc += 1 + (jt if taken else jf)
        elif code == seccomp.BPF_RET_K:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x} at {pc}")


@pytest.mark.parametrize("arch", sorted(SYSCALLS))
def test_filter_decisions(arch):
    prog = build_filter(arch)
    assert len(prog) % 8 == 0 and len(prog) // 8 < 4096
    table, audit = SYSCALLS[arch], AUDIT_ARCH[arch]
    for name in DENIED:
        if name in table:
            assert run_bpf(prog, Call(table[name], audit)) == EPERM, name
    for name, nr in ORDINARY[arch].items():
        assert run_bpf(prog, Call(nr, audit)) == SECCOMP_RET_ALLOW, name
    clone = table["clone"]
    thread_flags = 0x3D0F00  # what glibc's pthread_create passes
    assert run_bpf(prog, Call(clone, audit, (thread_flags,))) == SECCOMP_RET_ALLOW
    assert run_bpf(prog, Call(clone, audit, (SIGCHLD,))) == SECCOMP_RET_ALLOW  # fork()
    for flag_name, flag in NAMESPACE_FLAGS.items():
        assert run_bpf(prog, Call(clone, audit, (flag | SIGCHLD,))) == EPERM, flag_name
    assert run_bpf(prog, Call(table["clone3"], audit)) == ENOSYS
    ioctl = table["ioctl"]
    for cmd in (TIOCSTI, TIOCLINUX, (1 << 32) | TIOCSTI):  # the kernel reads the command as 32 bits
        assert run_bpf(prog, Call(ioctl, audit, (0, cmd))) == EPERM, hex(cmd)
    assert run_bpf(prog, Call(ioctl, audit, (0, 0x5401))) == SECCOMP_RET_ALLOW  # TCGETS
    # a foreign ABI: another architecture's numbers mean other calls
    other = next(a for a in AUDIT_ARCH.values() if a != audit)
    for bad_arch in (other, 0x40000003, 0x40000028):  # the other one, i386, ARM
        assert run_bpf(prog, Call(ORDINARY[arch]["getpid"], bad_arch)) == SECCOMP_RET_KILL_PROCESS
    if arch == "x86_64":  # x32 calls come with the x86_64 arch and bit 30 set
        assert run_bpf(prog, Call(0x40000000 | 39, audit)) == SECCOMP_RET_KILL_PROCESS


class _Uname(NamedTuple):
    machine: str


def test_unknown_architecture_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(seccomp.os, "uname", lambda: _Uname("riscv64"))
    limits = WorkerLimits(2**30, 2**24, 256, 64, 10.0)
    with pytest.raises(SandboxUnavailable, match=r"x86_64 and aarch64.*'riscv64'"):
        Launcher(isolation="bwrap", limits=limits, tmpfs_bytes=2**24)
    Launcher(isolation="rlimits", limits=limits, tmpfs_bytes=2**24)  # no filter there: not affected


# ---------------------------------------------------------------------------- in the sandbox

try:
    ARCH: str | None = seccomp.host_arch()
except seccomp.UnsupportedArchitecture:  # the sandbox tests below then fail with the reason
    ARCH = None
TABLE = SYSCALLS.get(ARCH or "", {})
#: arguments that make each call harmless and, without the filter, mostly end in another errno
#: than EPERM (or succeed): so EPERM shows the filter, not missing privileges
SPECIAL_ARGS = {
    "ptrace": (2, 0, 0, 0),  # PTRACE_PEEKDATA of pid 0: ESRCH
    "unshare": (0,),  # nothing to unshare: success
    "setns": (-1, 0),  # EBADF
    "keyctl": (0xDEAD, 0, 0, 0, 0),  # EOPNOTSUPP
    "kcmp": (0, 0, 0xDEAD, 0, 0),
}
#: the same probes in a plain host process give these results (checked by the control test)
UNFILTERED = {
    "unshare": "ok",
    "setns": errno.EBADF,
    "keyctl": errno.EOPNOTSUPP,
    "mount": errno.EFAULT,
    "umount2": errno.EFAULT,
    "chroot": errno.EFAULT,
    "clone3": errno.EINVAL,
    "ioctl TIOCSTI": errno.ENOTTY,
    **{f"clone {name}": errno.EINVAL for name in NAMESPACE_FLAGS},
}


def _probes(names: list[str]) -> list[tuple[str, int, tuple[int, ...]]]:
    probes = []
    for name in names:
        if name.startswith("clone "):  # with CLONE_THREAD but no CLONE_SIGHAND: EINVAL if let through
            probes.append((name, TABLE["clone"], (NAMESPACE_FLAGS[name.split()[1]] | CLONE_THREAD,)))
        elif name == "ioctl TIOCSTI":
            probes.append((name, TABLE["ioctl"], (0, TIOCSTI, 0)))
        elif name == "ioctl TIOCSTI high bits":
            probes.append((name, TABLE["ioctl"], (0, (1 << 32) | TIOCSTI, 0)))
        else:
            probes.append((name, TABLE[name], SPECIAL_ARGS.get(name, (0, 0, 0, 0, 0, 0))))
    return probes


def _probe_code(probes: list[tuple[str, int, tuple[int, ...]]]) -> str:
    """A program that makes each call through libc's syscall() and prints the outcomes as JSON."""
    return (
        "import ctypes, json\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.syscall.restype = ctypes.c_long\n"
        "out = {}\n"
        f"for name, nr, args in {probes!r}:\n"
        "    ctypes.set_errno(0)\n"
        "    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])\n"
        "    out[name] = 'ok' if r != -1 else ctypes.get_errno()\n"
        "status = open('/proc/self/status').read()\n"
        "out['seccomp'] = [l.split()[1] for l in status.splitlines() if l.startswith('Seccomp:')]\n"
        "print(json.dumps(out))"
    )


@pytest.fixture(scope="module")
def tool():
    t = make_tool(pool_size=1, timeout_s=60, max_output_chars=None)
    yield t
    t.close()


def test_every_refused_call_gets_eperm_in_the_sandbox(tool):
    names = [n for n in DENIED if n in TABLE] + [f"clone {n}" for n in NAMESPACE_FLAGS]
    names += ["ioctl TIOCSTI", "ioctl TIOCSTI high bits", "clone3"]
    r = tool.call(_probe_code(_probes(names)))
    assert r.status == "ok", r.text
    out = json.loads(r.text)
    assert out.pop("seccomp") == ["2"]  # SECCOMP_MODE_FILTER
    assert out.pop("clone3") == errno.ENOSYS  # so that glibc falls back to clone, which is checked
    assert out == {name: errno.EPERM for name in names if name != "clone3"}


def test_the_probes_tell_the_filter_from_missing_privileges():
    """Control: the same probes in a host process without the filter do not end in EPERM."""
    if re.search(r"^Seccomp:\s+2", Path("/proc/self/status").read_text(), re.M):
        pytest.skip("the tests themselves run under a seccomp filter (a container's): no unfiltered control")
    code = _probe_code(_probes(sorted(UNFILTERED)))
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert results.pop("seccomp") == ["0"]
    assert results == UNFILTERED


def test_foreign_abi_calls_kill_the_program(tool):
    if ARCH != "x86_64":
        pytest.skip("the x32 ABI exists on x86_64 only")
    r = tool.call("import ctypes\nctypes.CDLL(None).syscall(0x40000000 | 39)\nprint('survived')")
    assert r.status == "error" and "SIGSYS" in r.text and "survived" not in r.text
    assert tool.call("print(1)").text == "1"


def test_scientific_python_runs_under_the_filter(tool):
    code = """
import multiprocessing, os, subprocess
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import sympy as sp

a = np.array([[3.0, 1.0], [1.0, 2.0]])
x = np.linalg.solve(a, np.array([9.0, 8.0]))
f = np.abs(np.fft.rfft(np.sin(np.linspace(0, 8 * np.pi, 64, endpoint=False)))).argmax()
t = sp.symbols('t')
roots = sp.solve(t**2 - 5 * t + 6, t)
integral = sp.integrate(sp.exp(-t**2), (t, -sp.oo, sp.oo))
with ThreadPoolExecutor(8) as pool:
    squares = sum(pool.map(lambda i: i * i, range(100)))
pid = os.fork()
if pid == 0:
    os._exit(7)
_, status = os.waitpid(pid, 0)
true = subprocess.run(['true']).returncode
with multiprocessing.get_context('fork').Pool(2) as mp:
    absolutes = sum(mp.map(abs, range(-5, 5)))
print(x.tolist(), int(f), roots, integral, squares, os.waitstatus_to_exitcode(status), true, absolutes)
"""
    r = tool.call(code)
    assert (r.status, r.text) == ("ok", "[2.0, 3.0] 4 [2, 3] sqrt(pi) 328350 7 0 25"), r.text
