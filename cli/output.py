"""Docker-looking text output: aligned tables, "5 seconds ago", "4.26MB"."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence

GAP = 3
"""Spaces between table columns, as in docker's tabwriter."""

SIZE_UNITS = ("B", "kB", "MB", "GB", "TB", "PB", "EB")


def table(rows: Iterable[Sequence[str]]) -> str:
    """Rows laid out in left-aligned columns; the last column is not padded."""
    rows = list(rows)
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) + GAP for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """A rounded, human length of time, the way docker words it."""
    secs = int(seconds)
    if secs < 1:
        return "Less than a second"
    if secs == 1:
        return "1 second"
    if secs < 60:
        return f"{secs} seconds"
    minutes = secs // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds / 3600) // (24 * 365)} years"


def ago(timestamp: float, now: float) -> str:
    """``timestamp`` (unix seconds) relative to ``now``: "5 seconds ago"."""
    return f"{duration(max(0.0, now - timestamp))} ago"


def size(count: float) -> str:
    """A byte count in decimal units to three significant digits: 4.26MB."""
    unit = 0
    while count >= 1000 and unit < len(SIZE_UNITS) - 1:
        count /= 1000
        unit += 1
    return f"{count:.3g}{SIZE_UNITS[unit]}"


def ellipsis(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, the last one an ellipsis if anything was cut."""
    if len(text) <= width:
        return text
    return text[: width - 1] + "…"


def quoted(text: str) -> str:
    """``text`` in double quotes with quotes, backslashes and control characters escaped."""
    return json.dumps(text, ensure_ascii=False)


def scalar(value: object) -> str:
    """A JSON scalar as docker prints it: true/false, an empty string for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def tree(obj: Mapping[str, object], indent: int = 0, align: bool = False) -> list[str]:
    """``Key: value`` lines for a JSON object; nested objects and lists are indented one space per level."""
    pad = " " * indent
    width = max((len(key) for key in obj), default=0) + 1 if align else 0
    lines = []
    for key, value in obj.items():
        label = f"{key}:"
        if isinstance(value, dict):
            lines.append(pad + label)
            lines.extend(tree(value, indent + 1, align))
        elif isinstance(value, list):
            lines.append(pad + label)
            for item in value:
                if isinstance(item, dict):
                    lines.extend(tree(item, indent + 1, align))
                else:
                    lines.append(f"{pad} {scalar(item)}")
        else:
            lines.append(f"{pad}{label.ljust(width)} {scalar(value)}".rstrip())
    return lines
