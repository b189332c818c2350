"""What every command shares: the one-line error report, the client, per-item loops.

Kept to click and the standard library: it is imported on every ``hyper`` invocation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cli.errors import HyperError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from cli.client import Client


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


def split_reference(reference: str) -> tuple[str, str]:
    """``REPOSITORY[:TAG]`` split in two; a colon before the last slash is a registry port."""
    colon = reference.rfind(":")
    if colon > reference.rfind("/"):
        return reference[:colon], reference[colon + 1 :]
    return reference, ""
