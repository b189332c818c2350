"""The peer: ``podman run --rm --network none busybox true`` with the same busybox root filesystem.

Podman gets a store of its own under the bench's scratch directory (``--root``,
``--runroot``, ``--tmpdir``), so the host's images and containers are neither used nor
touched, and nothing is left once the scratch directory goes.  The image is imported
from the very tarball hyper's busybox image is built from: no registry, no network.

Sandboxed hosts (like the one this was written on) break podman's defaults in two ways:
without CAP_SYS_RESOURCE the runtime cannot set the 1M-file rlimits podman asks for, and
crun refuses hybrid cgroups outright.  So the plain command is tried first, then with
modest ``--ulimit``s, then with runc; the first that works is timed, and the report says
which one it was and why the others were passed over.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from measure import BenchError, CommandFailed, Sample, timed

from hyperd.image import ImageError
from hyperd.image.busybox import build_rootfs_tar

IMAGE = "localhost/busybox:bench"
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
FALLBACK_RUNTIME = "runc"


class PeerUnavailable(BenchError):
    """Podman is missing or does not work here: the peer is skipped, the bench goes on."""


class Podman:
    def __init__(self, workdir: Path) -> None:
        self.base = workdir / "podman"
        self.binary = shutil.which("podman")
        self.version = ""
        self.runtime = ""
        self.run_argv: list[str] = []
        self.passed_over: list[str] = []
        """The variants that failed before the one timed, each with its error."""

    def podman(self, *args: str, runtime: str | None = None) -> list[str]:
        assert self.binary is not None
        argv = [self.binary, "--root", str(self.base / "storage"), "--runroot", str(self.base / "run"),
                "--tmpdir", str(self.base / "tmp")]
        return argv + (["--runtime", runtime] if runtime else []) + list(args)

    def setup(self) -> None:
        """Import the image and find a ``podman run`` that works here (it also serves as the warm-up)."""
        if self.binary is None:
            raise PeerUnavailable("podman is not installed (apt-get install podman crun)")
        self.base.mkdir(parents=True)
        try:
            _, version = timed([self.binary, "--version"])
            self.version = version.strip().removeprefix("podman version ")
            tar = build_rootfs_tar(self.base / "busybox.tar")
            timed(self.podman("import", "--quiet", str(tar), IMAGE), timeout=300)
            tar.unlink()
        except (BenchError, ImageError, OSError) as err:
            raise PeerUnavailable(f"podman cannot be set up here: {err}") from err
        runtime = self._choose()
        _, described = timed(self.podman("info", "--format", "{{.Host.OCIRuntime.Version}}", runtime=runtime))
        self.runtime = (described.strip().splitlines() or ["unknown runtime"])[0]

    def _choose(self) -> str | None:
        runtimes: list[str | None] = [None]
        if shutil.which(FALLBACK_RUNTIME):
            runtimes.append(FALLBACK_RUNTIME)
        for runtime in runtimes:
            for extra in ((), ULIMITS):
                argv = self.podman("run", "--rm", "--network", "none", *extra, IMAGE, "true", runtime=runtime)
                try:
                    timed(argv)
                except CommandFailed as err:
                    label = " ".join(filter(None, (f"--runtime {runtime}" if runtime else "default runtime",
                                                   " ".join(extra))))
                    self.passed_over.append(f"{label}: {err.reason}")
                    continue
                self.run_argv = argv
                return runtime
        raise PeerUnavailable("podman run fails here: " + "; ".join(self.passed_over))

    def argv(self, *command: str, detach: bool = False, name: str = "") -> list[str]:
        """The ``podman run`` that works here, for ``command`` instead of ``true`` (``detach``: with -d)."""
        if not self.run_argv:
            raise PeerUnavailable("podman is not set up")
        run = self.run_argv.index("run")
        flags = (["-d"] if detach else []) + (["--name", name] if name else [])
        return [*self.run_argv[:run + 1], *flags, *self.run_argv[run + 1:-1], *command]

    def exec_argv(self, container: str, *command: str) -> list[str]:
        store = self.run_argv[:self.run_argv.index("run")]
        return [*store, "exec", container, *command]

    @property
    def command(self) -> str:
        """The timed command as a reader would type it, without the bench's private store."""
        if not self.run_argv:
            return "podman run --rm --network none busybox true"
        store = self.podman()
        return " ".join(["podman", *self.run_argv[len(store):]]).replace(IMAGE, "busybox")

    def run(self) -> Sample:
        wall, _ = timed(self.run_argv)
        return {"wall": wall}

    def cleanup(self) -> None:
        """Containers an interrupted run left (with their conmon): gone; the store goes with the scratch dir."""
        if self.binary is not None and self.base.exists():
            subprocess.run(self.podman("rm", "--all", "--force", "--time", "0"), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)
