"""``hyper events``: the daemon's event stream, as ``docker events`` prints it."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import click

from cli.common import connect
from cli.errors import HyperError

DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")


def moment(text: str, now: float | None = None) -> float:
    """docker's ``--since``/``--until``: Unix seconds, a duration before now (``10m``, ``1h30m``), or
    an RFC 3339 time or date; as Unix seconds."""
    now = time.time() if now is None else now
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    duration = DURATION.match(text)
    if text and duration and any(duration.groups()):
        hours, minutes, seconds = (float(g or 0) for g in duration.groups())
        return now - (hours * 3600 + minutes * 60 + seconds)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise HyperError(f"invalid time {text!r}: use Unix seconds, a duration like 10m, or RFC 3339") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def line(event: dict[str, Any]) -> str:
    """``2026-11-22T10:40:28.123456789Z container start 3f2a… (image=busybox, name=web)``."""
    nanos = int(event.get("timeNano") or 0)
    stamp = datetime.fromtimestamp(nanos // 10**9, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos % 10**9:09d}Z"
    actor = event.get("Actor") or {}
    attributes = ", ".join(f"{k}={v}" for k, v in sorted((actor.get("Attributes") or {}).items()))
    return f"{stamp} {event.get('Type')} {event.get('Action')} {actor.get('ID')}" + \
        (f" ({attributes})" if attributes else "")


@click.command()
@click.option("--since", metavar="TIME", help="Show events since TIME (Unix seconds, 10m, RFC 3339).")
@click.option("--until", metavar="TIME", help="Stop at TIME.")
@click.option("-f", "--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="type=, event=, container=, network=, image=, label= (repeatable).")
@click.option("--format", "fmt", metavar="TEMPLATE", help="Go template for each event, or 'json'.")
@click.pass_obj
def events(host: str, since: str | None, until: str | None, filters: tuple[str, ...], fmt: str | None) -> None:
    """Stream what happens to containers and networks."""
    from cli import template

    wanted: dict[str, list[str]] = {}
    for item in filters:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise HyperError(f"invalid filter {item!r}: expected KEY=VALUE")
        wanted.setdefault(key, []).append(value)
    with connect(host).events(moment(since) if since else None, moment(until) if until else None,
                              wanted) as stream:
        for raw in stream.lines():
            try:
                event = json.loads(raw)
            except ValueError as err:
                raise HyperError(f"hyperd sent a malformed event: {err}") from None
            if fmt is None:
                click.echo(line(event))
            else:
                for text in template.render(fmt, [event]):
                    click.echo(text)
