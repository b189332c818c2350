"""Build the guest's root disk: Debian's python3.11 and busybox plus hyperstart, as erofs.

Run on the host as root (``make guest``).  Reproducible: the packages are fetched with
``apt-get download`` at the versions the host's apt knows, only the files hyperstart
actually loads are kept (found by importing it inside the unpacked tree), every Python
module is shipped as its compiled ``.pyc`` alone, and the image is written with fixed
timestamps, owners and UUID.  The result is cached under
``$HYPER_CACHE/guest/<key>/rootfs.erofs``; prints its path.

The guest boots from this read-only disk rather than an initramfs: ``pivot_root`` into
a container root is refused when the current root is the initramfs, nothing has to be
unpacked into guest memory at boot, and only the pages actually read are loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGES = (
    "busybox-static", "libc6", "libffi8", "libexpat1", "zlib1g",
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
)
PYTHON = "/usr/bin/python3.11"
GUEST_MODULES = ("agent", "cgroup", "changes", "container", "devcg", "network", "proc", "protocol", "seccomp",
                 "syscalls", "volumes")
UUID = "8e1d7f0c-5c2b-4b9a-9d34-68797065722e"
# Directories the agent mounts over or writes into at boot.
MOUNT_POINTS = ("proc", "sys", "dev", "run", "tmp")

PROBE = """
import json, sys, importlib.util
sys.path.insert(0, "/usr/lib/hyperstart")
import hyperstart.agent
import hyperstart.changes  # run as a process of its own (diff, commit): its imports stay out of the agent's
files = sorted({m.__file__ for m in list(sys.modules.values()) if getattr(m, "__file__", None)})
print(json.dumps(files))
"""

INIT = """#!/usr/bin/python3.11 -SsB
import time
started = time.clock_gettime(time.CLOCK_BOOTTIME)  # first: time is built in, nothing imported yet
import sys
sys.path.insert(0, "/usr/lib/hyperstart")
from hyperstart.agent import main
main(started)
"""


PROBE_INIT = """#!/bin/sh
echo HYPER-PROBE-OK
exec reboot -f
"""
"""A trivial init: the KVM probe and the benchmark's plain-QEMU floor boot to it."""


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, text=True, **kwargs)  # type: ignore[call-overload, no-any-return]


def download(packages: tuple[str, ...], into: Path) -> list[Path]:
    into.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["apt-get", "download", *packages], cwd=into, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"guest: apt-get download failed (run apt-get update?):\n{result.stderr.strip()}")
    debs = []
    for package in packages:
        matches = sorted(into.glob(f"{package}_*.deb"), key=os.path.getmtime)
        debs.append(matches[-1])
    return debs


def cache_key(debs: list[Path]) -> str:
    digest = hashlib.sha256()
    for deb in debs:
        digest.update(deb.name.encode() + b"\0")
    for path in [Path(__file__), *(HERE / f"{name}.py" for name in GUEST_MODULES)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def shared_libraries(staging: Path, binaries: list[str]) -> set[str]:
    """Paths (inside staging) of the libraries the binaries load, and the loader itself."""
    needed = {"/lib64/ld-linux-x86-64.so.2"}
    for binary in binaries:
        out = run(["chroot", str(staging), "/lib64/ld-linux-x86-64.so.2", "--list", binary], capture_output=True)
        for line in out.stdout.splitlines():
            if "=>" in line:
                needed.add(line.split("=>")[1].split()[0])
    resolved = set()
    for lib in needed:
        resolved.add(lib)
        target = staging / lib.lstrip("/")
        if target.is_symlink():
            resolved.add(str(Path(lib).parent / os.readlink(target)))
    return resolved


def assemble(staging: Path, tree: Path) -> None:
    guest_pkg = staging / "usr/lib/hyperstart/hyperstart"
    guest_pkg.mkdir(parents=True)
    (guest_pkg / "__init__.py").write_text("")
    for name in GUEST_MODULES:
        shutil.copy(HERE / f"{name}.py", guest_pkg / f"{name}.py")

    out = run(["chroot", str(staging), PYTHON, "-SI", "-c", PROBE], capture_output=True)
    sources = [f for f in json.loads(out.stdout) if f.endswith(".py")]
    extensions = [f for f in json.loads(out.stdout) if f.endswith(".so")]

    # Sourceless, hash-checked-never .pyc files in place of the sources: smaller, and
    # nothing to stat or compile at start-up.
    compile_script = (
        "import py_compile, sys\n"
        "for src in sys.argv[1:]:\n"
        "    py_compile.compile(src, cfile=src + 'c', doraise=True,\n"
        "                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n"
    )
    run(["chroot", str(staging), PYTHON, "-SI", "-c", compile_script, *sources])

    keep = {PYTHON, "/bin/busybox", *extensions}
    keep |= shared_libraries(staging, [PYTHON, *extensions])
    keep |= {src + "c" for src in sources}
    keep.add("/usr/lib/python3.11/os.pyc")  # the landmark Python looks for to find its prefix
    for path in sorted(keep):
        source = staging / path.lstrip("/")
        target = tree / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    (tree / "usr/lib/python3.11/lib-dynload").mkdir(parents=True, exist_ok=True)
    applets = run(["chroot", str(staging), "/bin/busybox", "--list-full"], capture_output=True).stdout.split()
    for applet in applets:  # a shell and tools in the guest, for the probe and for debugging
        link = tree / applet
        if not link.exists() and not link.is_symlink():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for name in MOUNT_POINTS:
        (tree / name).mkdir(exist_ok=True)
    for name, text in (("init", INIT), ("probe", PROBE_INIT)):
        (tree / name).write_text(text)
        (tree / name).chmod(0o755)


def build(cache: Path) -> Path:
    debs = download(PACKAGES, cache / "guest" / "debs")
    key = cache_key(debs)
    result = cache / "guest" / key / "rootfs.erofs"
    if result.exists():
        return result
    print(f"[guest] building the guest root disk from {', '.join(d.name for d in debs)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="hyper-guest-") as scratch:
        staging, tree = Path(scratch, "staging"), Path(scratch, "tree")
        for deb in debs:
            run(["dpkg-deb", "-x", str(deb), str(staging)])
        tree.mkdir()
        assemble(staging, tree)
        result.parent.mkdir(parents=True, exist_ok=True)
        partial = result.with_name("rootfs.erofs.partial")
        run(["mkfs.erofs", "--quiet", "--all-root", "-T0", f"-U{UUID}", str(partial), str(tree)])
    partial.rename(result)
    print(f"[guest] done: {result} ({result.stat().st_size >> 10} KiB)", flush=True)
    return result


def main() -> None:
    print(build(Path(os.environ.get("HYPER_CACHE", "/var/cache/hyper"))))


if __name__ == "__main__":
    main()
