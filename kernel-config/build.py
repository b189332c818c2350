#!/usr/bin/env python3
"""Build the guest kernel from Debian's linux-source-6.1 and the fragments in this folder.

The fragments are merged onto ``tinyconfig``; the build fails when any option a
fragment asks for is not in the final ``.config`` (Kconfig silently drops options
whose dependencies are unmet, which is how guest kernels lose features unnoticed).

The result is cached under ``$HYPER_CACHE/kernel/<key>/vmlinux`` where the key hashes
the fragments, this script and the source package version, so CI on the same
machine and every later ``make kernel`` reuse it.  Prints the path of the vmlinux.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE_PACKAGE = "linux-source-6.1"
SOURCE_TARBALL = Path("/usr/src/linux-source-6.1.tar.xz")
OPTION = re.compile(r"^(CONFIG_\w+)=(.*)$")
UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


def log(message: str, started: float) -> None:
    print(f"[kernel {time.monotonic() - started:6.0f}s] {message}", flush=True)


def fragments() -> list[Path]:
    return sorted(HERE.glob("*.config"))


def requested(paths: list[Path]) -> dict[str, str | None]:
    """Options asked for by the fragments; None means 'must not be set'."""
    wanted: dict[str, str | None] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if match := OPTION.match(line):
                wanted[match[1]] = match[2]
            elif match := UNSET.match(line):
                wanted[match[1]] = None
    return wanted


def source_version() -> str:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", SOURCE_PACKAGE],
        capture_output=True, text=True, check=False,
    )
    if out.returncode != 0 or not SOURCE_TARBALL.exists():
        sys.exit(f"kernel: {SOURCE_TARBALL} is missing: apt-get install {SOURCE_PACKAGE}")
    return out.stdout.strip()


def cache_key(version: str, paths: list[Path]) -> str:
    digest = hashlib.sha256(version.encode())
    for path in [*paths, Path(__file__).resolve()]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def missing_options(config: Path, wanted: dict[str, str | None]) -> list[str]:
    final: dict[str, str] = {}
    for line in config.read_text().splitlines():
        if match := OPTION.match(line):
            final[match[1]] = match[2]
    problems = []
    for name, value in wanted.items():
        if value is None and name in final:
            problems.append(f"{name} should be unset but is {final[name]}")
        elif value is not None and final.get(name) != value:
            problems.append(f"{name}={value} requested, final config has {final.get(name, 'nothing')}")
    return problems


def make(src: Path, build: Path, *targets: str, started: float) -> None:
    argv = ["make", "-C", str(src), f"O={build}", "ARCH=x86_64", f"-j{os.cpu_count() or 1}", *targets]
    logfile = build / "build.log"
    compiled = 0
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc, \
            logfile.open("a") as out:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.lstrip().startswith(("CC ", "AS ")):
                compiled += 1
                if compiled % 250 == 0:
                    log(f"{' '.join(targets)}: {compiled} objects compiled", started)
    if proc.returncode != 0:
        tail = "".join(logfile.read_text().splitlines(keepends=True)[-30:])
        sys.exit(f"{tail}\nkernel: make {' '.join(targets)} failed (full log: {logfile})")


def build(cache: Path) -> Path:
    started = time.monotonic()
    version = source_version()
    paths = fragments()
    key = cache_key(version, paths)
    result = cache / "kernel" / key / "vmlinux"
    if result.exists():
        return result

    src = cache / "kernel" / f"src-{version}"
    if not (src / "Makefile").exists():
        log(f"unpacking {SOURCE_TARBALL}", started)
        partial = src.with_name(src.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        with tarfile.open(SOURCE_TARBALL) as tar:
            # Debian's own tarball; the extraction filter where this Python has it (3.11.4 and later,
            # not Debian 12's first 3.11.2 builds).
            if hasattr(tarfile, "tar_filter"):
                tar.extractall(partial, filter="tar")
            else:
                tar.extractall(partial)
        (top,) = partial.iterdir()
        top.rename(src)
        partial.rmdir()

    for stale in (cache / "kernel").glob("build-*"):  # left by an interrupted or failed build
        shutil.rmtree(stale, ignore_errors=True)
    work = cache / "kernel" / f"build-{key}"
    work.mkdir(parents=True)
    log(f"configuring linux {version} (tinyconfig + {', '.join(p.name for p in paths)})", started)
    make(src, work, "tinyconfig", started=started)
    subprocess.run(
        [str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(work), str(work / ".config"),
         *map(str, paths)],
        check=True, stdout=subprocess.DEVNULL,
    )
    make(src, work, "olddefconfig", started=started)
    if problems := missing_options(work / ".config", requested(paths)):
        sys.exit("kernel: the final config lacks requested options:\n  " + "\n  ".join(problems))
    log("building vmlinux (about 5 minutes on 2 cores)", started)
    make(src, work, "vmlinux", started=started)

    result.parent.mkdir(parents=True, exist_ok=True)
    staged = result.with_name("vmlinux.partial")
    subprocess.run(["objcopy", "--strip-debug", str(work / "vmlinux"), str(staged)], check=True)
    shutil.copy(work / ".config", result.with_name("config"))
    staged.rename(result)
    shutil.rmtree(work)
    log(f"done: {result}", started)
    return result


def main() -> None:
    cache = Path(os.environ.get("HYPER_CACHE", "/var/cache/hyper"))
    print(build(cache))


if __name__ == "__main__":
    main()
