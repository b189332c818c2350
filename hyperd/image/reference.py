"""Which registry an image reference lives on, by Docker's rules; light enough for the CLI to import.

``busybox`` and ``team/app`` are on Docker Hub (``docker.io``, where official images live
under ``library/``); a first path component with a dot, a colon or ``localhost`` names a
registry (``127.0.0.1:5000/app``, ``ghcr.io/org/app``).
"""

from __future__ import annotations

DOCKER_HUB = "docker.io"
HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


def split_domain(name: str) -> tuple[str, str]:
    """``(registry host[:port], repository path)`` of a repository name: ``busybox`` is ``library/busybox`` on Hub."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost" or first.startswith("[")):
        if first not in HUB_ALIASES:
            return first, rest
        name = rest  # docker.io/busybox is busybox
    return DOCKER_HUB, name if "/" in name else f"library/{name}"


def registry_of(reference: str) -> str:
    """The registry of ``name[:tag][@digest]``."""
    return split_domain(reference.partition("@")[0])[0]


def server_host(server: str) -> str:
    """A registry as ``login`` names it (``https://index.docker.io/v1/``, ``host:port``) as ``host[:port]``."""
    host = server.strip().partition("://")[2] if "://" in server else server.strip()
    host = host.split("/")[0]
    return DOCKER_HUB if not host or host in HUB_ALIASES else host
