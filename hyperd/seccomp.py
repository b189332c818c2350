"""Seccomp profiles in docker's format, compiled into the BPF filter the guest agent installs.

A profile (the shape of docker's ``default.json``: a default action, then rules naming system
calls, with argument conditions and ``includes``/``excludes`` on capabilities, architectures and
kernel versions) is checked when a container is created, and compiled through libseccomp (by
ctypes: its C library is all that is needed) for the container's capabilities.  The guest gets
finished BPF: it has no libseccomp, and x86_64 is the only ABI its kernel has (no IA32
emulation, no x32), so that is the architecture every filter is for; anything else is killed.

Without a profile of the user's, ``DEFAULT`` applies: the calls docker's default profile refuses,
less those a capability the container keeps allows, fail with EPERM.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from dataclasses import dataclass
from typing import Any

from hyperd.errors import InvalidArgument

GUEST_KERNEL = (6, 1)
"""The guest kernel's version, for the rules' ``minKernel``."""
GUEST_ARCHES = ("amd64", "x86_64", "SCMP_ARCH_X86_64")
"""How profiles name the guest's architecture in ``includes``/``excludes`` (docker uses Go's names)."""
MAX_INSTRUCTIONS = 4096
"""The kernel's limit on a filter's length (BPF_MAXINSNS)."""
MAX_ERRNO = 4095
ARCH_X86_64 = 0xC000003E
ATTR_ACT_BADARCH = 2
ACT_KILL_PROCESS = 0x80000000
ACT_ERRNO = 0x00050000
ACT_TRACE = 0x7FF00000
ACTIONS = {
    "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": ACT_ERRNO, "SCMP_ACT_TRACE": ACT_TRACE,
    "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000,
}
"""libseccomp's actions; ERRNO and TRACE carry a 16-bit value (``errnoRet``) in their low bits."""
COMPARISONS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
               "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
PROFILE_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls", "flags",
                "listenerPath", "listenerMetadata"}
RULE_KEYS = {"name", "names", "action", "errnoRet", "args", "comment", "includes", "excludes"}
ARG_KEYS = {"index", "value", "valueTwo", "op"}
FILTER_KEYS = {"caps", "arches", "minKernel"}
DENIED = {
    "acct": "SYS_PACCT", "add_key": None, "keyctl": None, "request_key": None, "bpf": "SYS_ADMIN",
    "clock_adjtime": "SYS_TIME", "clock_settime": "SYS_TIME", "settimeofday": "SYS_TIME",
    "create_module": "SYS_MODULE", "delete_module": "SYS_MODULE", "finit_module": "SYS_MODULE",
    "init_module": "SYS_MODULE", "get_kernel_syms": "SYS_MODULE", "query_module": "SYS_MODULE",
    "fanotify_init": "SYS_ADMIN", "ioperm": "SYS_RAWIO", "iopl": "SYS_RAWIO", "kcmp": "SYS_PTRACE",
    "kexec_file_load": "SYS_BOOT", "kexec_load": "SYS_BOOT", "lookup_dcookie": "SYS_ADMIN", "mount": "SYS_ADMIN",
    "umount2": "SYS_ADMIN", "pivot_root": "SYS_ADMIN", "setns": "SYS_ADMIN", "unshare": "SYS_ADMIN",
    "open_tree": "SYS_ADMIN", "move_mount": "SYS_ADMIN", "fsopen": "SYS_ADMIN", "fsconfig": "SYS_ADMIN",
    "fsmount": "SYS_ADMIN", "fspick": "SYS_ADMIN", "name_to_handle_at": "SYS_ADMIN",
    "open_by_handle_at": "DAC_READ_SEARCH", "nfsservctl": None, "perf_event_open": "PERFMON",
    "quotactl": "SYS_ADMIN", "reboot": "SYS_BOOT", "swapon": "SYS_ADMIN", "swapoff": "SYS_ADMIN", "sysfs": None,
    "_sysctl": None, "syslog": "SYSLOG", "uselib": None, "ustat": None, "userfaultfd": "SYS_PTRACE",
}
"""The system calls docker's default profile refuses, and the capability under which it allows
each (None: never)."""


class ProfileError(InvalidArgument):
    """A profile that does not parse, or that libseccomp or the kernel cannot take."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"invalid seccomp profile: {detail}")


def _kernel(text: Any, where: str) -> tuple[int, ...]:
    parts = text.split(".") if isinstance(text, str) else []
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ProfileError(f"{where}.minKernel {text!r} is not a kernel version such as 5.8")
    return tuple(int(p) for p in parts)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProfileError(f"{where} must be a list of strings")
    return tuple(value)


def _object(value: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError(f"{where} must be an object")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ProfileError(f"{where} has an unknown field {unknown[0]!r}")
    return value


def _integer(value: Any, where: str, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= high:
        raise ProfileError(f"{where} must be an integer from 0 to {high}")
    return value


def _action(name: Any, errno: Any, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise ProfileError(f"{where}: SCMP_ACT_NOTIFY needs a listener on the host, which a VM's processes "
                           "cannot reach")
    if name is None:
        raise ProfileError(f"{where} is missing")
    if name not in ACTIONS:
        raise ProfileError(f"{where} {name!r} is not one of {', '.join(ACTIONS)}")
    action = ACTIONS[name]
    if action in (ACT_ERRNO, ACT_TRACE):
        default = 1 if action == ACT_ERRNO else 0  # EPERM, as docker
        action |= default if errno is None else _integer(errno, f"{where} errnoRet", MAX_ERRNO)
    return action


@dataclass(frozen=True)
class Condition:
    """``args[i]``: the call's argument ``index`` compared with ``value`` (for MASKED_EQ: the mask,
    and ``value_two`` the value the masked argument must equal)."""

    index: int
    op: int
    value: int
    value_two: int


@dataclass(frozen=True)
class Rule:
    names: tuple[str, ...]
    action: int
    conditions: tuple[Condition, ...] = ()
    caps: tuple[str, ...] = ()
    """Capabilities the container must all keep for the rule to apply."""
    not_caps: tuple[str, ...] = ()
    """Capabilities any of which, kept, drops the rule."""

    def applies(self, capabilities: frozenset[str]) -> bool:
        return set(self.caps) <= capabilities and not set(self.not_caps) & capabilities

    def condition_sets(self) -> list[tuple[Condition, ...]]:
        """Conditions on distinct arguments must all hold (one rule); several on the same argument are
        alternatives (one rule each), as runc reads docker's profiles."""
        indexes = [c.index for c in self.conditions]
        if len(set(indexes)) == len(indexes):
            return [self.conditions]
        return [(condition,) for condition in self.conditions]


def _filter(spec: dict[str, Any], include: bool, where: str) -> tuple[str, ...] | None:
    """``includes`` (or ``excludes``): None when its architectures or kernel version keep the rule
    out of a filter for the guest, else its capabilities (names without ``CAP_``), which are
    weighed against each container's when compiling."""
    spec = _object(spec, FILTER_KEYS, where)
    caps = _strings(spec.get("caps", []), f"{where}.caps")
    arches = _strings(spec.get("arches", []), f"{where}.arches")
    if arches and bool(set(arches) & set(GUEST_ARCHES)) != include:
        return None
    minimum = spec.get("minKernel")
    if minimum and (_kernel(minimum, where) <= GUEST_KERNEL) != include:
        return None
    return tuple(c.upper().removeprefix("CAP_") for c in caps)


def _rule(entry: Any, where: str) -> Rule | None:
    entry = _object(entry, RULE_KEYS, where)
    names = _strings(entry.get("names") or [], f"{where}.names")
    if "name" in entry:
        if not isinstance(entry["name"], str):
            raise ProfileError(f"{where}.name must be a string")
        names += (entry["name"],)
    if not names:
        raise ProfileError(f"{where} names no system call")
    action = _action(entry.get("action"), entry.get("errnoRet"), f"{where}.action")
    conditions = []
    args = entry.get("args") or []
    if not isinstance(args, list) or len(args) > 6:
        raise ProfileError(f"{where}.args must be a list of at most 6 conditions")
    for number, arg in enumerate(args):
        at = f"{where}.args[{number}]"
        arg = _object(arg, ARG_KEYS, at)
        if arg.get("op") not in COMPARISONS:
            raise ProfileError(f"{at}.op {arg.get('op')!r} is not one of {', '.join(COMPARISONS)}")
        conditions.append(Condition(_integer(arg.get("index"), f"{at}.index", 5), COMPARISONS[arg["op"]],
                                    _integer(arg.get("value", 0), f"{at}.value", (1 << 64) - 1),
                                    _integer(arg.get("valueTwo", 0), f"{at}.valueTwo", (1 << 64) - 1)))
    caps = _filter(entry.get("includes") or {}, True, f"{where}.includes")
    not_caps = None if caps is None else _filter(entry.get("excludes") or {}, False, f"{where}.excludes")
    if caps is None or not_caps is None:
        return None
    return Rule(names, action, tuple(conditions), caps, not_caps)


@dataclass(frozen=True)
class Profile:
    default_action: int
    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, text: str) -> Profile:
        """A profile's JSON, checked field by field; rules for another architecture or a newer kernel
        than the guest's are left out here."""
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, RecursionError) as err:
            raise ProfileError(f"not JSON ({err})") from None
        document = _object(document, PROFILE_KEYS, "the profile")
        if document.get("flags"):
            raise ProfileError("flags are not supported (the guest installs the filter without them)")
        if document.get("listenerPath"):
            raise ProfileError("listenerPath is not supported: a VM's processes cannot reach a listener on the host")
        _strings(document.get("architectures") or [], "architectures")
        for number, entry in enumerate(document.get("archMap") or []):
            entry = _object(entry, {"architecture", "subArchitectures"}, f"archMap[{number}]")
            _strings([entry.get("architecture", "")], f"archMap[{number}].architecture")
            _strings(entry.get("subArchitectures") or [], f"archMap[{number}].subArchitectures")
        default = _action(document.get("defaultAction"), document.get("defaultErrnoRet"), "defaultAction")
        entries = document.get("syscalls") or []
        if not isinstance(entries, list):
            raise ProfileError("syscalls must be a list")
        rules = (_rule(entry, f"syscalls[{number}]") for number, entry in enumerate(entries))
        return cls(default, tuple(rule for rule in rules if rule is not None))


parse = functools.lru_cache(maxsize=16)(Profile.parse)
"""A profile from its JSON, parsed once for all the starts and execs of its containers."""
DEFAULT = Profile(ACTIONS["SCMP_ACT_ALLOW"], tuple(
    Rule((name,), ACT_ERRNO | 1, not_caps=(capability,) if capability else ()) for name, capability in DENIED.items()))


class _ArgCmp(ctypes.Structure):
    _fields_ = (("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64))


@functools.cache
def _libseccomp() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        raise InvalidArgument("seccomp filters are compiled with libseccomp, which this host lacks: install "
                              "the libseccomp2 package, or run with --security-opt seccomp=unconfined") from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = (ctypes.c_uint32,)
    lib.seccomp_release.argtypes = (ctypes.c_void_p,)
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_arch_add.argtypes = lib.seccomp_arch_remove.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.seccomp_attr_set.argtypes = (ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32)
    lib.seccomp_syscall_resolve_name_arch.argtypes = (ctypes.c_uint32, ctypes.c_char_p)
    lib.seccomp_rule_add_array.argtypes = (ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp))
    lib.seccomp_export_bpf.argtypes = (ctypes.c_void_p, ctypes.c_int)
    return lib


def _check(result: int, what: str) -> None:
    if result < 0:
        raise ProfileError(f"{what}: {os.strerror(-result).lower()}")


@functools.lru_cache(maxsize=64)
def compile_filter(profile: Profile, capabilities: frozenset[str]) -> bytes:
    """The profile as the kernel's ``struct sock_filter`` array, for a container keeping
    ``capabilities`` (names without ``CAP_``)."""
    lib = _libseccomp()
    context = lib.seccomp_init(profile.default_action)
    if not context:
        raise ProfileError("libseccomp refused its default action")
    try:
        native = lib.seccomp_arch_native()
        if native != ARCH_X86_64:
            _check(lib.seccomp_arch_add(context, ARCH_X86_64), "adding x86_64")
            _check(lib.seccomp_arch_remove(context, native), "removing the host's architecture")
        _check(lib.seccomp_attr_set(context, ATTR_ACT_BADARCH, ACT_KILL_PROCESS), "the bad-architecture action")
        for rule in profile.rules:
            if rule.action == profile.default_action or not rule.applies(capabilities):
                continue  # libseccomp refuses a rule that changes nothing
            for name in rule.names:
                number = lib.seccomp_syscall_resolve_name_arch(ARCH_X86_64, name.encode())
                if number < 0:
                    continue  # not a call of x86_64: profiles name every architecture's
                for conditions in rule.condition_sets():
                    array = (_ArgCmp * max(1, len(conditions)))(
                        *(_ArgCmp(c.index, c.op, c.value, c.value_two) for c in conditions))
                    _check(lib.seccomp_rule_add_array(context, rule.action, number, len(conditions), array),
                           f"the rule for {name}")
        with open(os.memfd_create("seccomp"), "w+b") as output:
            _check(lib.seccomp_export_bpf(context, output.fileno()), "exporting the filter")
            output.seek(0)
            program = output.read()
    finally:
        lib.seccomp_release(context)
    if len(program) // 8 > MAX_INSTRUCTIONS:
        raise ProfileError(f"it compiles to {len(program) // 8} BPF instructions, more than the kernel's "
                           f"{MAX_INSTRUCTIONS}")
    return program
