"""Run a command under the system-call confinement deploy/securemail.service asks systemd for.

    python tests/unit_sandbox.py SYSCALLS_FILE -- COMMAND [ARG...]

No systemd runs where the tests run, so this launcher builds the same seccomp filters that
systemd would load for the unit, with libseccomp (the library systemd itself uses, here
through ctypes: no package beyond Debian's libseccomp2), then execs the command:

- ``SystemCallFilter=@system-service`` + ``SystemCallErrorNumber=EPERM``: every system call
  not named in SYSCALLS_FILE (the expansion of @system-service by ``systemd-analyze
  syscall-filter``) fails with EPERM;
- ``RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6``: socket() of any other family fails
  with EAFNOSUPPORT;
- ``MemoryDenyWriteExecute=yes``: the rules of systemd's seccomp_memory_deny_write_execute():
  mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect adding PROT_EXEC, shmat with
  SHM_EXEC fail with EPERM;
- ``NoNewPrivileges=yes`` (libseccomp sets it), ``UMask=0077``, ``LimitCORE=0``.

Like systemd, each restriction is its own filter; the kernel applies the strictest answer.
Exit status 77 when libseccomp cannot be loaded (the caller skips).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import mmap
import os
import resource
import socket
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
SHM_EXEC = 0o100000
ALLOWED_FAMILIES = {socket.AF_UNIX, socket.AF_INET, socket.AF_INET6}
AF_MAX = 46  # linux/socket.h


def act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class ArgCmp(ctypes.Structure):
    _fields_ = [  # struct scmp_arg_cmp
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def load_libseccomp() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        sys.exit(77)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(ArgCmp)
    ]  # fmt: skip
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


class Filter:
    def __init__(self, lib: ctypes.CDLL, default: int) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(default)
        if not self.ctx:
            raise OSError("seccomp_init failed")

    def add(self, action: int, name: str, *cmps: tuple[int, int, int, int]) -> None:
        nr = self.lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            return  # not a system call of this architecture
        arr = (ArgCmp * max(len(cmps), 1))(*(ArgCmp(*c) for c in cmps))
        rc = self.lib.seccomp_rule_add_array(self.ctx, action, nr, len(cmps), arr)
        if rc not in (0, -errno.EEXIST):
            raise OSError(-rc, f"seccomp_rule_add {name}")

    def load(self) -> None:
        rc = self.lib.seccomp_load(self.ctx)
        self.lib.seccomp_release(self.ctx)
        if rc != 0:
            raise OSError(-rc, "seccomp_load")


def main(argv: list[str]) -> None:
    syscalls_file, sep, *command = argv
    assert sep == "--" and command, __doc__
    with open(syscalls_file, encoding="ascii") as f:
        allowed = [line.strip() for line in f if line.strip()]
    lib = load_libseccomp()
    os.umask(0o077)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    calls = Filter(lib, act_errno(errno.EPERM))
    for name in allowed:
        calls.add(SCMP_ACT_ALLOW, name)

    families = Filter(lib, SCMP_ACT_ALLOW)
    for family in range(AF_MAX):
        if family not in ALLOWED_FAMILIES:
            families.add(act_errno(errno.EAFNOSUPPORT), "socket", (0, SCMP_CMP_EQ, family, 0))

    wx = mmap.PROT_WRITE | mmap.PROT_EXEC
    mdwe = Filter(lib, SCMP_ACT_ALLOW)
    eperm = act_errno(errno.EPERM)
    mdwe.add(eperm, "mmap", (2, SCMP_CMP_MASKED_EQ, wx, wx))
    mdwe.add(eperm, "mprotect", (2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
    mdwe.add(eperm, "pkey_mprotect", (2, SCMP_CMP_MASKED_EQ, mmap.PROT_EXEC, mmap.PROT_EXEC))
    mdwe.add(eperm, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))

    # The allow-list goes last: loading a filter is itself a system call (seccomp).
    families.load()
    mdwe.load()
    calls.load()
    os.execv(command[0], command)  # noqa: S606 (the command line the test built)


if __name__ == "__main__":
    main(sys.argv[1:])
