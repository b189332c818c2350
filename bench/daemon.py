"""The bench's own hyperd: its own root and socket, busybox imported, stopped and swept at the end.

Without a network namespace it runs with ``--bridge none``, so that it makes no bridge, tap
or rule in the host's namespace; only in a namespace the bench made itself does it get its
default bridge network.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import host
from measure import BenchError, timed

READY_TIMEOUT = 120.0
"""hyperd probes KVM on its first start on a host (cached afterwards), which takes seconds."""
STOP_TIMEOUT = 60.0


def _venv_tool(name: str) -> str:
    """The tool beside the interpreter running the bench (the project's venv), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found beside {sys.executable} nor on PATH: run 'make install'")
    return found


class Hyperd:
    def __init__(self, workdir: Path, netns: str | None = None) -> None:
        self.workdir = workdir
        self.netns = netns
        """The network namespace hyperd runs in (the bench's own), where its pods' ports are published."""
        self.root = workdir / "root"
        self.socket = workdir / "hyperd.sock"
        self.log = workdir / "hyperd.log"
        self.host = f"unix://{self.socket}"
        self.hyper_binary = _venv_tool("hyper")
        self.process: subprocess.Popen[bytes] | None = None

    def hyper(self, *args: str) -> list[str]:
        """The argv of a ``hyper`` command against this daemon."""
        return [self.hyper_binary, "-H", self.host, *args]

    def argv(self) -> list[str]:
        argv = [_venv_tool("hyperd"), "-H", self.host, "--root", str(self.root)]
        # ``ip netns exec`` execs hyperd in place: our child's pid is hyperd's, for SIGTERM.
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else [*argv, "--bridge", "none"]

    def start(self) -> None:
        self.root.mkdir(parents=True, mode=0o700)
        timed([sys.executable, "-m", "hyperd.image.busybox", "--root", str(self.root)], timeout=300)
        with open(self.log, "ab") as log:
            # A session of its own: a Ctrl-C at the terminal reaches the bench, which stops
            # the daemon in order, not the daemon behind its back.
            self.process = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"hyperd exited with {self.process.returncode} at start-up:\n{self.log_tail()}")
            try:
                timed(self.hyper("version"), timeout=30)
                return
            except BenchError:
                if time.monotonic() > deadline:
                    raise BenchError(f"hyperd did not answer within {READY_TIMEOUT:.0f}s:\n{self.log_tail()}") \
                        from None
            time.sleep(0.1)

    def info(self) -> dict[str, str]:
        """The top-level ``Key: value`` lines of ``hyper info``."""
        _, output = timed(self.hyper("info"))
        facts = {}
        for line in output.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith(" "):
                facts[key] = value.strip()
        return facts

    def inspect(self, ref: str) -> dict[str, Any]:
        _, output = timed(self.hyper("inspect", ref))
        found = json.loads(output)
        if not isinstance(found, list) or len(found) != 1 or not isinstance(found[0], dict):
            raise BenchError(f"hyper inspect {ref} printed {output[:200]!r}")
        return found[0]

    def stop(self) -> None:
        """SIGTERM (hyperd stops its pods first), SIGKILL after a while; then sweep its VMs. Safe twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"[bench] hyperd did not stop within {STOP_TIMEOUT:.0f}s: killing it", file=sys.stderr)
                process.kill()
                process.wait()
        self._sweep_vms()

    def _sweep_vms(self) -> None:
        """QEMU processes our daemon started and left behind (only when it was killed): end them.

        They are found by their argv naming a file under our own root, so nothing else matches.
        """
        marker = str(self.root).encode() + b"/"
        for pid, cmdline in host.qemu_processes():
            if marker in cmdline:
                print(f"[bench] killing QEMU {pid} left behind by hyperd", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no hyperd log)"
