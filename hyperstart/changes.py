"""A container's changes to its image, read from its overlay upper layer: ``hyper diff`` and
``hyper commit``.

Run by the agent as a process of its own (``python3 -m hyperstart.changes``), so that walking
a big upper layer never holds up the agent's loop, and so that the agent itself never imports
tarfile (the guest pays for every import at boot).

The upper layer records a deletion as a character device 0:0 (a whiteout) and a directory
deleted then made again as one with the ``trusted.overlay.opaque`` xattr; the output turns
them into docker's ``D`` lines, or into OCI whiteouts (``.wh.NAME``, ``.wh..wh..opq``).
"""

from __future__ import annotations

import os
import stat
import sys
import tarfile

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
EXCLUDED = frozenset({"etc/hosts", "etc/hostname", "etc/resolv.conf"})
"""Generated per pod and bound over the image's: never part of a diff or a commit (as in docker)."""
KEPT_XATTRS = ("security.capability",)
"""Extended attributes a committed layer keeps: file capabilities (overlayfs' own never)."""


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, "trusted.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def walk(upper: str) -> list[tuple[str, os.stat_result]]:
    """Every entry of the upper layer, parents before children, by path relative to it."""
    found: list[tuple[str, os.stat_result]] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        directory = os.path.join(upper, relative) if relative else upper
        for name in sorted(os.listdir(directory), reverse=True):
            path = f"{relative}/{name}" if relative else name
            if path in EXCLUDED:
                continue
            info = os.lstat(os.path.join(upper, path))
            found.append((path, info))
            if stat.S_ISDIR(info.st_mode):
                pending.append(path)
    # The stack visits children after their parent but siblings in reverse: order by path parts.
    found.sort(key=lambda item: item[0].split("/"))
    return found


def _deleted(info: os.stat_result) -> bool:
    return stat.S_ISCHR(info.st_mode) and info.st_rdev == 0


def diff(upper: str, lower: list[str]) -> list[str]:
    """docker's ``diff`` lines: ``A /path`` added, ``C /path`` changed, ``D /path`` deleted."""
    lines = []
    for path, info in walk(upper):
        if _deleted(info):
            kind = "D"
        elif any(os.path.lexists(os.path.join(layer, path)) for layer in lower):
            kind = "C"
        else:
            kind = "A"
        lines.append(f"{kind} /{path}")
    return lines


def layer(upper: str, out: tarfile.TarFile) -> None:
    """The upper layer as an OCI layer: its files, and its deletions as whiteouts."""
    for path, info in walk(upper):
        full = os.path.join(upper, path)
        if _deleted(info):
            parent, _, name = path.rpartition("/")
            marker = tarfile.TarInfo(f"{parent}/{WHITEOUT}{name}" if parent else WHITEOUT + name)
            marker.mtime = int(info.st_mtime)
            out.addfile(marker)
            continue
        member = out.gettarinfo(full, path)
        member.uname = member.gname = ""
        xattrs = {}
        for key in KEPT_XATTRS:
            try:
                value = os.getxattr(full, key, follow_symlinks=False)
            except OSError:
                continue
            xattrs[f"SCHILY.xattr.{key}"] = value.decode("utf-8", "surrogateescape")
        if xattrs:
            member.pax_headers = {**member.pax_headers, **xattrs}
        if member.isreg():
            with open(full, "rb") as data:
                out.addfile(member, data)
        else:
            out.addfile(member)
        if stat.S_ISDIR(info.st_mode) and _opaque(full):
            marker = tarfile.TarInfo(f"{path}/{OPAQUE}")
            marker.mtime = int(info.st_mtime)
            out.addfile(marker)


def main(argv: list[str]) -> int:
    """``diff UPPER LOWER...`` prints docker's lines; ``layer UPPER`` writes a tar to stdout."""
    if len(argv) >= 2 and argv[0] == "diff":
        sys.stdout.write("".join(line + "\n" for line in diff(argv[1], argv[2:])))
        return 0
    if len(argv) == 2 and argv[0] == "layer":
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as out:
            layer(argv[1], out)
        return 0
    print("usage: changes diff UPPER LOWER... | changes layer UPPER", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
