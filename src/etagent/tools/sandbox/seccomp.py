"""The sandbox's system-call filter: a classic-BPF seccomp program handed to ``bwrap --seccomp FD``.

Model-written code needs files, memory, processes, threads, pipes and sockets (the network
namespace leaves only loopback). It never needs to debug other processes, mount file systems, make
namespaces, load kernel modules or BPF programs, use the kernel keyring, reboot, or set the clock,
and each of those is kernel attack surface that a kernel bug would turn into a way out of the
sandbox. The filter refuses them with ``EPERM`` (the caller sees an ordinary ``PermissionError``),
refuses ``clone`` with any namespace flag and the terminal-injection ioctls, answers ``clone3``
with ``ENOSYS`` (its flags sit in memory a filter cannot read; glibc then falls back to ``clone``,
which is checked), and kills the process on a foreign system-call ABI (i386 ``int 0x80`` or x32 on
x86_64, AArch32 on aarch64), whose numbers the filter does not know.

The program is assembled here rather than with libseccomp: the filter is a short list, its
numbers are fixed by the kernel ABI, and nothing beyond the standard library has to be installed
where bwrap runs. ``tests/tools/test_seccomp.py`` checks the numbers against libseccomp's own
tables and the program's decisions with a BPF interpreter, and then in the real sandbox.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
from collections.abc import Iterable

#: refused with EPERM on every architecture where they exist (docs/sandbox.md lists why)
DENIED: tuple[str, ...] = (
    # other processes' memory and descriptors
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "process_madvise",
    "pidfd_getfd",
    "kcmp",
    # mounts and namespaces
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "unshare",
    "setns",
    "open_by_handle_at",
    "name_to_handle_at",
    # kernel keyring, BPF, perf, userfaultfd, io_uring, fanotify
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "fanotify_init",
    "lookup_dcookie",
    # modules, kexec, reboot, swap, accounting, quotas
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "nfsservctl",
    # clock, host name, kernel log, terminal
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "syslog",
    "vhangup",
    # x86 only: port I/O, LDT, legacy calls
    "iopl",
    "ioperm",
    "modify_ldt",
    "uselib",
    "_sysctl",
)

#: system-call numbers of the calls the filter names, per architecture (from the kernel's
#: arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h)
SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "ioctl": 16,
        "clone": 56,
        "uselib": 134,
        "vhangup": 153,
        "modify_ldt": 154,
        "pivot_root": 155,
        "_sysctl": 156,
        "adjtimex": 159,
        "chroot": 161,
        "acct": 163,
        "settimeofday": 164,
        "mount": 165,
        "umount2": 166,
        "swapon": 167,
        "swapoff": 168,
        "reboot": 169,
        "sethostname": 170,
        "setdomainname": 171,
        "iopl": 172,
        "ioperm": 173,
        "init_module": 175,
        "delete_module": 176,
        "quotactl": 179,
        "nfsservctl": 180,
        "ptrace": 101,
        "syslog": 103,
        "lookup_dcookie": 212,
        "clock_settime": 227,
        "kexec_load": 246,
        "add_key": 248,
        "request_key": 249,
        "keyctl": 250,
        "unshare": 272,
        "perf_event_open": 298,
        "fanotify_init": 300,
        "name_to_handle_at": 303,
        "open_by_handle_at": 304,
        "clock_adjtime": 305,
        "setns": 308,
        "process_vm_readv": 310,
        "process_vm_writev": 311,
        "kcmp": 312,
        "finit_module": 313,
        "kexec_file_load": 320,
        "bpf": 321,
        "userfaultfd": 323,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "open_tree": 428,
        "move_mount": 429,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "clone3": 435,
        "pidfd_getfd": 438,
        "process_madvise": 440,
        "mount_setattr": 442,
        "quotactl_fd": 443,
    },
    "aarch64": {
        "lookup_dcookie": 18,
        "ioctl": 29,
        "umount2": 39,
        "mount": 40,
        "pivot_root": 41,
        "nfsservctl": 42,
        "chroot": 51,
        "vhangup": 58,
        "quotactl": 60,
        "acct": 89,
        "unshare": 97,
        "kexec_load": 104,
        "init_module": 105,
        "delete_module": 106,
        "clock_settime": 112,
        "syslog": 116,
        "ptrace": 117,
        "reboot": 142,
        "sethostname": 161,
        "setdomainname": 162,
        "settimeofday": 170,
        "adjtimex": 171,
        "add_key": 217,
        "request_key": 218,
        "keyctl": 219,
        "clone": 220,
        "swapon": 224,
        "swapoff": 225,
        "perf_event_open": 241,
        "fanotify_init": 262,
        "name_to_handle_at": 264,
        "open_by_handle_at": 265,
        "clock_adjtime": 266,
        "setns": 268,
        "process_vm_readv": 270,
        "process_vm_writev": 271,
        "kcmp": 272,
        "finit_module": 273,
        "bpf": 280,
        "userfaultfd": 282,
        "kexec_file_load": 294,
        "io_uring_setup": 425,
        "io_uring_enter": 426,
        "io_uring_register": 427,
        "open_tree": 428,
        "move_mount": 429,
        "fsopen": 430,
        "fsconfig": 431,
        "fsmount": 432,
        "fspick": 433,
        "clone3": 435,
        "pidfd_getfd": 438,
        "process_madvise": 440,
        "mount_setattr": 442,
        "quotactl_fd": 443,
    },
}

#: AUDIT_ARCH_* values the kernel puts in seccomp_data.arch
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
#: on x86_64, system-call numbers with this bit set are the x32 ABI
X32_SYSCALL_BIT = 0x40000000

#: namespace flags refused in clone()'s flags (CLONE_NEWTIME, 0x80, is only valid for clone3 and
#: unshare, both refused; in clone() those bits are the exit signal)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACES = (
    CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
)
#: ioctls that push input into a terminal (the kernel compares the command as 32 bits)
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# classic BPF opcodes (linux/filter.h)
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
_NR_OFFSET = 0
_ARCH_OFFSET = 4
_ARGS_OFFSET = 16


class UnsupportedArchitecture(RuntimeError):
    """No filter is defined for this machine's system-call ABI."""


def host_arch() -> str:
    """The system-call ABI of this interpreter: ``x86_64`` or ``aarch64``; anything else raises."""
    machine = os.uname().machine.lower()
    bits = struct.calcsize("P") * 8
    arch = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}.get(machine)
    if arch is None or bits != 64 or sys.byteorder != "little":
        raise UnsupportedArchitecture(
            f"the python sandbox's seccomp filter supports x86_64 and aarch64 (64-bit, little-endian); "
            f"this is {machine!r} with a {bits}-bit {sys.byteorder}-endian interpreter"
        )
    return arch


def _arg_low(index: int) -> int:
    """Offset of the low 32 bits of argument ``index`` (little-endian only, see host_arch)."""
    return _ARGS_OFFSET + 8 * index


class _Assembler:
    """Forward jumps to named labels; classic BPF has no backward jumps and 8-bit offsets."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: int | str = 0, jf: int | str = 0) -> None:
        self.code.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = bytearray()
        for pc, (code, jt, jf, k) in enumerate(self.code):
            offsets = []
            for target in (jt, jf):
                off = self.labels[target] - pc - 1 if isinstance(target, str) else target
                if not 0 <= off <= 255:
                    raise ValueError(f"seccomp filter: jump of {off} at instruction {pc}")
                offsets.append(off)
            out += struct.pack("<HBBI", code, offsets[0], offsets[1], k & 0xFFFFFFFF)
        return bytes(out)


def build_filter(arch: str | None = None, denied: Iterable[str] = DENIED) -> bytes:
    """The filter for ``arch`` (default: this machine's) as ``struct sock_filter`` records."""
    arch = arch or host_arch()
    if arch not in SYSCALLS:
        raise UnsupportedArchitecture(f"no seccomp filter for architecture {arch!r}")
    table = SYSCALLS[arch]
    numbers = sorted({table[name] for name in denied if name in table})
    a = _Assembler()
    a.op(BPF_LD_W_ABS, _ARCH_OFFSET)
    a.op(BPF_JEQ_K, AUDIT_ARCH[arch], 0, "kill")
    a.op(BPF_LD_W_ABS, _NR_OFFSET)
    if arch == "x86_64":
        a.op(BPF_JGE_K, X32_SYSCALL_BIT, "kill", 0)
    for nr in numbers:
        a.op(BPF_JEQ_K, nr, "eperm", 0)
    a.op(BPF_JEQ_K, table["clone3"], "enosys", 0)
    a.op(BPF_JEQ_K, table["clone"], "clone", 0)
    a.op(BPF_JEQ_K, table["ioctl"], "ioctl", 0)
    a.op(BPF_RET_K, SECCOMP_RET_ALLOW)
    a.label("clone")  # clone(flags, ...) on both architectures
    a.op(BPF_LD_W_ABS, _arg_low(0))
    a.op(BPF_JSET_K, CLONE_NAMESPACES, "eperm", "allow")
    a.label("ioctl")  # ioctl(fd, cmd, ...)
    a.op(BPF_LD_W_ABS, _arg_low(1))
    a.op(BPF_JEQ_K, TIOCSTI, "eperm", 0)
    a.op(BPF_JEQ_K, TIOCLINUX, "eperm", "allow")
    a.label("allow")
    a.op(BPF_RET_K, SECCOMP_RET_ALLOW)
    a.label("eperm")
    a.op(BPF_RET_K, SECCOMP_RET_ERRNO | errno.EPERM)
    a.label("enosys")
    a.op(BPF_RET_K, SECCOMP_RET_ERRNO | errno.ENOSYS)
    a.label("kill")
    a.op(BPF_RET_K, SECCOMP_RET_KILL_PROCESS)
    return a.assemble()


def filter_pipe(program: bytes) -> int:
    """A pipe's read end holding ``program`` and then end-of-file, for ``bwrap --seccomp FD``.

    bwrap reads the fd to its end, so each sandbox needs its own; the program (a few hundred bytes)
    fits in the pipe's buffer, so the write never blocks.
    """
    if len(program) > 4096:
        raise ValueError(f"seccomp filter of {len(program)} bytes does not fit a pipe buffer")
    r, w = os.pipe()
    try:
        os.write(w, program)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r
