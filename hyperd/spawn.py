"""The one way hyperd starts a child process.

argv lists only (never a shell), a minimal explicit environment, stdin from /dev/null,
output to a log file, pre-opened descriptors passed by number, and always reaped:
``Child.wait()`` is safe to call any number of times and ``Child.kill()`` on an exited
child does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from pathlib import Path

MINIMAL_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


class Child:
    def __init__(self, process: asyncio.subprocess.Process, argv: list[str]) -> None:
        self.process = process
        self.argv = argv
        self.pid = process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def signal(self, sig: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    async def terminate(self, timeout: float) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(self.wait()), timeout)
        except TimeoutError:
            self.signal(signal.SIGKILL)
            return await self.wait()


async def spawn(argv: Sequence[str], *, log: Path | None = None, capture: bool = False,
                pass_fds: Sequence[int] = (), env: dict[str, str] | None = None, feed: bool = False) -> Child:
    """Start ``argv`` with stdin from /dev/null (a pipe with ``feed``) and stdout/stderr appended
    to ``log``, or readable from ``child.process.stdout`` with ``capture``, or else discarded."""
    argv = [str(a) for a in argv]
    out = open(log, "ab") if log else None  # noqa: SIM115 - handed to the child, closed below
    stdout = out if out else asyncio.subprocess.PIPE if capture else asyncio.subprocess.DEVNULL
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE if feed else asyncio.subprocess.DEVNULL,
            stdout=stdout,
            stderr=asyncio.subprocess.STDOUT,  # wherever stdout goes, /dev/null included
            env={**MINIMAL_ENV, **(env or {})},
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )
    finally:
        if out:
            out.close()
    return Child(process, argv)


async def run(argv: Sequence[str], *, timeout: float = 60, input: bytes | None = None) -> tuple[int, str]:
    """Run a short command to completion, ``input`` on its stdin; returns its status and combined output."""
    child = await spawn(argv, capture=True, feed=input is not None)
    try:
        out, _ = await asyncio.wait_for(child.process.communicate(input), timeout)
    except TimeoutError:
        child.signal(signal.SIGKILL)
        await child.wait()
        return -1, f"timed out after {timeout:.0f}s"
    return child.process.returncode or 0, out.decode(errors="replace")
