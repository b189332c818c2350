"""The bench's temporary directory: everything it creates lives here and goes with it."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


class Scratch:
    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="hyper-bench-"))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def remove(self) -> None:
        """Unmount whatever a tool left mounted beneath us (podman's overlay), then delete; safe twice."""
        for mountpoint in sorted(self._mounts(), key=lambda p: len(p.parts), reverse=True):
            subprocess.run(["umount", "-l", str(mountpoint)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(self.path, ignore_errors=True)

    def _mounts(self) -> list[Path]:
        try:
            lines = Path("/proc/self/mountinfo").read_text().splitlines()
        except OSError:
            return []
        found = []
        for line in lines:
            # Field 5 is the mount point, with spaces and the like octal-escaped.
            mountpoint = Path(line.split()[4].encode().decode("unicode_escape"))
            if mountpoint == self.path or self.path in mountpoint.parents:
                found.append(mountpoint)
        return found
