"""Seccomp profiles: docker's format checked, compiled by libseccomp, and the filters run on this
host's kernel (x86_64, as the guest's) in a child process, as the guest agent installs them."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from hyperd import seccomp
from hyperd.errors import InvalidArgument
from hyperd.isolation import Security

GETPPID, GETPGID, GETPRIORITY, GETSID, UNSHARE = 110, 121, 140, 124, 272
"""x86_64 system call numbers the child makes."""
CHILD = """
import ctypes, json, os, sys
from hyperstart import seccomp
libc = ctypes.CDLL(None, use_errno=True)
calls = json.loads(sys.argv[1])
libc.prctl(38, 1, 0, 0, 0)  # no_new_privs: installing needs no privilege then
seccomp.install(sys.stdin.buffer.read())
results = []
for number, *args in calls:
    ctypes.set_errno(0)
    failed = libc.syscall(number, *(ctypes.c_long(a) for a in args)) == -1
    results.append(ctypes.get_errno() if failed else 0)
os.write(1, json.dumps(results).encode())
os._exit(0)
"""


def run_filtered(program: bytes, *calls: tuple[int, ...]) -> list[int]:
    """The errno of each call (0 for success), made by a process under the filter."""
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(calls)], input=program, capture_output=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    result: list[int] = json.loads(done.stdout)
    return result


def compiled(profile: dict[str, Any], *capabilities: str) -> bytes:
    return seccomp.compile_filter(seccomp.Profile.parse(json.dumps(profile)), frozenset(capabilities))


def test_docker_default_refuses_unshare_unless_sys_admin() -> None:
    default = Security.parse().seccomp_filter()
    admin = Security.parse(cap_add=("CAP_SYS_ADMIN",)).seccomp_filter()
    assert default is not None and admin is not None
    assert run_filtered(default, (UNSHARE, 0), (GETPPID,)) == [1, 0]  # EPERM from the filter
    assert run_filtered(admin, (UNSHARE, 0)) == [0]
    assert Security.parse(privileged=True).seccomp_filter() is None
    assert Security.parse(security_opt=("seccomp=unconfined",)).seccomp_filter() is None


def test_rules_actions_and_argument_conditions() -> None:
    program = compiled({
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99},
            # two conditions on one argument are alternatives; a 64-bit value compares in full
            {"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 98,
             "args": [{"index": 0, "value": 2, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": (1 << 32) + 1, "op": "SCMP_CMP_EQ"}]},
            {"names": ["getpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 97,
             "args": [{"index": 1, "value": 0xFF00, "valueTwo": 0x0100, "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["getsid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 96, "includes": {"caps": ["CAP_SYS_NICE"]}},
            {"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95, "includes": {"minKernel": "99.0"}},
            {"names": ["socketcall", "no_such_call"], "action": "SCMP_ACT_KILL"},  # not calls of x86_64
        ],
    })
    got = run_filtered(program, (GETPPID,), (GETPGID, 2), (GETPGID, (1 << 32) + 1), (GETPGID, 1), (GETPGID, 0),
                       (GETPRIORITY, 0, 0x1FF), (GETPRIORITY, 0, 0), (GETSID, 0), (UNSHARE, 0))
    assert got == [99, 98, 98, 0, 0, 97, 0, 0, 0]
    nice = compiled({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["getsid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 96, "includes": {"caps": ["CAP_SYS_NICE"]}},
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["SYS_NICE"]}},
    ]}, "SYS_NICE")
    assert run_filtered(nice, (GETSID, 0), (GETPPID,)) == [96, 0]


def test_default_action_and_its_errno() -> None:
    allowed = ["write", "exit_group", "brk", "mmap", "munmap", "mremap", "madvise", "getppid"]
    program = compiled({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 94,
                        "syscalls": [{"names": allowed, "action": "SCMP_ACT_ALLOW"}]})
    assert run_filtered(program, (GETPPID,), (GETPGID, 0), (UNSHARE, 0)) == [0, 94, 94]


@pytest.mark.parametrize(("profile", "message"), [
    ("{", "not JSON"),
    ("[]", "the profile must be an object"),
    ('{"syscalls": []}', "defaultAction is missing"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "defaultaction": 1}', "unknown field 'defaultaction'"),
    ('{"defaultAction": "ALLOW"}', "defaultAction 'ALLOW' is not one of"),
    ('{"defaultAction": "SCMP_ACT_NOTIFY"}', "listener on the host"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}', "from 0 to 4095"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/l.sock"}', "listenerPath is not supported"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_KILL"}]}', "syscalls\\[0\\] names no"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL", '
     '"args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}', "args\\[0\\].index must be"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL", '
     '"args": [{"index": 0, "value": 1, "op": "EQ"}]}]}', "op 'EQ' is not one of"),
    ('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_KILL", '
     '"includes": {"minKernel": "new"}}]}', "not a kernel version"),
])
def test_profiles_that_do_not_parse(profile: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        Security.parse(security_opt=(f"seccomp={profile}",))


def test_a_profile_too_long_for_the_kernel_is_refused() -> None:
    rules = [{"names": ["getpgid"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": n, "op": "SCMP_CMP_EQ"}]}
             for n in range(5000)]
    with pytest.raises(InvalidArgument, match="more than the kernel's 4096"):
        Security.parse(security_opt=("seccomp=" + json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": rules}),))


def test_inspect_shows_the_options_given() -> None:
    profile = '{"defaultAction": "SCMP_ACT_ALLOW"}'
    assert Security.parse(security_opt=(f"seccomp={profile}", "no-new-privileges")).security_opt() == [
        "no-new-privileges", f"seccomp={profile}"]
    assert Security.parse(security_opt=("seccomp=unconfined",)).security_opt() == ["seccomp=unconfined"]
    assert Security.parse(security_opt=("seccomp=builtin",)).security_opt() == []
