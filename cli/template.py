"""``--format``: the subset of Go's text/template that docker users write.

Supported: field paths (``{{.Id}}``, ``{{.State.Status}}``, ``{{.}}``), the functions ``json``,
``join LIST SEP``, ``index MAP KEY``, ``len``, ``lower``, ``upper``, ``title`` and
``println``, and the actions ``{{range ...}}``, ``{{if ...}}``/``{{else}}`` and ``{{end}}``.
As in docker, a format starting with ``table`` prints a header row and aligns its columns
on tabs, ``\\t`` and ``\\n`` written literally are a tab and a newline, and ``json`` alone
(``--format json``) prints each object as one line of JSON.

Values print as Go prints them from decoded JSON: ``true``/``false``, ``<no value>`` for a
missing key, ``[a b]`` for lists and ``map[k:v]`` for objects.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cli import output
from cli.errors import HyperError

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_ARGUMENT = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\S+)')
MISSING = "<no value>"


class TemplateError(HyperError):
    def __init__(self, template: str, reason: str) -> None:
        super().__init__(f"template parsing error: {reason} in {template!r}")


def _go(value: Any) -> str:
    """How Go's template prints a value decoded from JSON."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + " ".join(_go(item) for item in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{key}:{_go(value[key])}" for key in sorted(value)) + "]"
    return str(value)


def _truthy(value: Any) -> bool:
    return value is not None and value is not _Missing and bool(value)


class _Missing:
    """A key the data does not have: prints as Go's ``<no value>``."""


def _index(container: Any, *keys: Any) -> Any:
    for item in keys:
        if isinstance(container, Mapping):
            container = container.get(item, _Missing)
        elif isinstance(container, Sequence) and isinstance(item, int) and -len(container) <= item < len(container):
            container = container[item]
        else:
            return _Missing
    return container


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "json": lambda value: json.dumps(value, ensure_ascii=False, separators=(",", ":")),
    "join": lambda items, sep: sep.join(_go(item) for item in items or ()),
    "index": _index,
    "len": lambda value: len(value) if isinstance(value, (str, list, dict)) else 0,
    "lower": lambda value: _go(value).lower(),
    "upper": lambda value: _go(value).upper(),
    "title": lambda value: _go(value).title(),
    "println": lambda *values: " ".join(_go(value) for value in values) + "\n",
}


@dataclass
class _Node:
    kind: str                                  # text, expr, range, if
    text: str = ""
    args: list[str] = field(default_factory=list)
    body: list[_Node] = field(default_factory=list)
    orelse: list[_Node] = field(default_factory=list)


class Template:
    """A parsed format; ``render(data)`` gives its text for one object."""

    def __init__(self, source: str) -> None:
        self.source = source
        nodes: list[_Node] = []
        stack: list[tuple[_Node, list[_Node]]] = []
        current = nodes
        position = 0
        for match in _ACTION.finditer(source):
            if match.start() > position:
                current.append(_Node("text", source[position:match.start()]))
            position = match.end()
            words = self._words(match.group(1))
            if not words:
                raise TemplateError(source, "missing value for command")
            head = words[0]
            if head in ("range", "if"):
                node = _Node(head, args=words[1:])
                if not node.args:
                    raise TemplateError(source, f"missing value for {head}")
                current.append(node)
                stack.append((node, current))
                current = node.body
            elif head == "else":
                if not stack or current is stack[-1][0].orelse:
                    raise TemplateError(source, "unexpected {{else}}")
                current = stack[-1][0].orelse
            elif head == "end":
                if not stack:
                    raise TemplateError(source, "unexpected {{end}}")
                current = stack.pop()[1]
            else:
                if not head.startswith((".", '"')) and head not in FUNCTIONS:
                    raise TemplateError(source, f'function "{head}" not defined')
                current.append(_Node("expr", args=words))
        if stack:
            raise TemplateError(source, f"unexpected EOF: {{{{{stack[-1][0].kind}}}}} has no {{{{end}}}}")
        if "{{" in source[position:]:
            raise TemplateError(source, "unclosed action")
        if position < len(source):
            current.append(_Node("text", source[position:]))
        self.nodes = nodes

    def _words(self, action: str) -> list[str]:
        words = []
        position = 0
        while position < len(action):
            match = _ARGUMENT.match(action, position)
            if match is None or not match.group(1):
                break
            words.append(match.group(1))
            position = match.end()
        if "|" in words:
            raise TemplateError(self.source, "pipelines (|) are not supported")
        return words

    def render(self, data: Any) -> str:
        return "".join(self._run(self.nodes, data))

    def _run(self, nodes: list[_Node], dot: Any) -> list[str]:
        out: list[str] = []
        for node in nodes:
            if node.kind == "text":
                out.append(node.text)
            elif node.kind == "expr":
                value = self._call(node.args, dot)
                out.append(MISSING if value is _Missing else value if isinstance(value, str) else _go(value))
            elif node.kind == "if":
                out.extend(self._run(node.body if _truthy(self._call(node.args, dot)) else node.orelse, dot))
            else:  # range
                items = self._call(node.args, dot)
                if isinstance(items, Mapping):
                    items = [items[key] for key in sorted(items)]
                items = items if isinstance(items, list) else []
                for item in items:
                    out.extend(self._run(node.body, item))
                if not items:
                    out.extend(self._run(node.orelse, dot))
        return out

    def _call(self, words: list[str], dot: Any) -> Any:
        # Functions get Go's nil for a missing key, as Go hands them.
        head, args = words[0], [None if (v := self._value(word, dot)) is _Missing else v for word in words[1:]]
        if head in FUNCTIONS:
            try:
                return FUNCTIONS[head](*args)
            except TypeError as err:
                raise TemplateError(self.source, f"wrong arguments for {head}: {err}") from err
        if args:
            raise TemplateError(self.source, f"{head} is not a function")
        return self._value(head, dot)

    def _value(self, word: str, dot: Any) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if word.startswith("`"):
            return word[1:-1]
        if re.fullmatch(r"-?\d+", word):
            return int(word)
        if not word.startswith("."):
            raise TemplateError(self.source, f"unexpected {word!r}")
        value = dot
        for name in filter(None, word[1:].split(".")):
            value = value.get(name, _Missing) if isinstance(value, Mapping) else _Missing
        return value


def _unescape(text: str) -> str:
    return text.replace("\\t", "\t").replace("\\n", "\n")


def render(fmt: str, items: Sequence[Mapping[str, Any]], headers: Mapping[str, str] | None = None) -> list[str]:
    """The lines ``fmt`` gives for ``items``: docker's ``--format`` for a listing or an inspect."""
    if fmt.strip() == "json":
        return [json.dumps(item, ensure_ascii=False, separators=(",", ":")) for item in items]
    table = fmt.startswith("table")
    template = Template(_unescape(fmt.removeprefix("table").lstrip() if table else fmt))
    lines = [template.render(item) for item in items]
    if not table:
        return lines
    header = template.render({name: headers.get(name, _header(name)) if headers else _header(name)
                              for name in re.findall(r"\{\{[^}]*?\.(\w+)", template.source)})
    rows = [line.split("\t") for line in [header, *lines]]
    width = max(len(row) for row in rows)
    return output.table([row + [""] * (width - len(row)) for row in rows]).split("\n")


def _header(name: str) -> str:
    """``CreatedSince`` -> ``CREATED SINCE``: docker's header for a field without its own."""
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).upper()
