"""What every command shares: the one-line error report, the client, per-item loops.

Kept to click and the standard library: it is imported on every ``hyper`` invocation.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import click

from cli.errors import HyperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cli.client import Client, Stream


def say(message: str) -> None:
    click.echo(f"hyper: {message}", err=True)


def connect(host: str) -> Client:
    from cli.client import Client

    return Client(host)


def config_dir() -> Path:
    """The client configuration directory chosen by ``--config`` or ``$HYPER_CONFIG``."""
    from cli import config

    ctx = click.get_current_context()
    return config.directory(ctx.find_root().params.get("config"))


def each(items: Iterable[str], action: Callable[[str], object]) -> None:
    """Apply ``action`` to every item, reporting each failure as it happens; fail at the end if any did."""
    failed: HyperError | None = None
    for item in items:
        try:
            action(item)
        except HyperError as err:
            say(err.message)
            failed = err
    if failed is not None:
        sys.exit(failed.exit_code)


def then_echo(action: Callable[[str], object]) -> Callable[[str], None]:
    """``action``, then the item's name on stdout, as docker confirms stop, kill and rm."""
    def run(item: str) -> None:
        action(item)
        click.echo(item)

    return run


def inspect_each(names: Iterable[str], fetch: Callable[[str], dict[str, Any]], fmt: str | None) -> None:
    """``inspect``: fetch each object (reporting failures one by one), then print them all as
    docker does, a JSON list or ``fmt`` per object, even when some failed."""
    found: list[dict[str, Any]] = []
    try:
        each(names, lambda name: found.append(fetch(name)))
    finally:
        if fmt is None:
            import json

            click.echo(json.dumps(found, indent=4))
        else:
            from cli import template

            for line in template.render(fmt, found):
                click.echo(line)


def refuse_terminal(path: str | None) -> None:
    """An archive goes to a file or a pipe, never to a terminal (docker's wording)."""
    if path is None and sys.stdout.isatty():
        raise HyperError("cowardly refusing to save to a terminal. Use the -o flag or redirect")


def write_archive(stream: Stream, path: str | None) -> None:
    """Copy a streamed archive to ``path``, or to standard output when None.

    A file is written next to its target and renamed, so a failure leaves no half archive.
    """
    if path is None:
        _copy(stream, sys.stdout.buffer)
        return
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "wb") as out:
            _copy(stream, out)
        os.replace(temporary, path)
    except OSError as err:
        raise HyperError(f"write {path}: {(err.strerror or str(err)).lower()}") from err
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _copy(stream: Stream, out: IO[bytes]) -> None:
    while chunk := stream.read(1 << 20):
        out.write(chunk)
    out.flush()


def split_reference(reference: str) -> tuple[str, str]:
    """``REPOSITORY[:TAG]`` split in two; a colon before the last slash is a registry port."""
    colon = reference.rfind(":")
    if colon > reference.rfind("/"):
        return reference[:colon], reference[colon + 1 :]
    return reference, ""
