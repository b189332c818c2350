"""``--format``: the Go text/template subset, checked against what Go and docker print."""

from __future__ import annotations

from typing import Any

import pytest

from cli.errors import HyperError
from cli.template import Template, TemplateError, render

CONTAINER: dict[str, Any] = {
    "Id": "4f9a",
    "State": {"Status": "running", "Running": True, "Pid": 42},
    "Tags": ["busybox:latest", "localhost:5000/bb:1"],
    "Labels": {"team": "infra", "tier": "web"},
    "Empty": [],
}


def one(fmt: str, data: dict[str, Any] = CONTAINER) -> str:
    [line] = render(fmt, [data])
    return line


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("{{.Id}}", "4f9a"),
        ("id={{ .Id }}!", "id=4f9a!"),
        ("{{.State.Status}} {{.State.Pid}}", "running 42"),
        ("{{.State.Running}}", "true"),
        ("{{.Tags}}", "[busybox:latest localhost:5000/bb:1]"),
        ("{{.Labels}}", "map[team:infra tier:web]"),
    ],
)
def test_fields_print_as_go_prints_them(fmt: str, expected: str) -> None:
    assert one(fmt) == expected


@pytest.mark.parametrize("fmt", ["{{.Nope}}", "{{.State.Nope}}", "{{.Id.Deeper}}", "{{index .Labels \"nope\"}}"])
def test_missing_key_is_no_value(fmt: str) -> None:
    assert one(fmt) == "<no value>"


def test_json_function() -> None:
    # Compact, as Go's encoder writes it: scripts compare this text.
    assert one("{{json .State}}") == '{"Status":"running","Running":true,"Pid":42}'
    assert one("{{json .Tags}}") == '["busybox:latest","localhost:5000/bb:1"]'
    assert one("{{json .Id}}") == '"4f9a"'


def test_join_and_index() -> None:
    assert one('{{join .Tags ", "}}') == "busybox:latest, localhost:5000/bb:1"
    assert one("{{join .Empty \",\"}}") == ""
    assert one('{{index .Labels "team"}}') == "infra"
    assert one("{{index .Tags 1}}") == "localhost:5000/bb:1"


def test_range_sets_dot_to_each_item() -> None:
    assert one("{{range .Tags}}<{{.}}>{{end}}") == "<busybox:latest><localhost:5000/bb:1>"
    assert one("{{range .Empty}}never{{end}}done") == "done"
    # Over a map, Go ranges over the values in key order.
    assert one("{{range .Labels}}{{.}};{{end}}") == "infra;web;"


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
        ("{{if .Empty}}some{{else}}none{{end}}", "none"),
        ("{{if .Nope}}yes{{else}}no{{end}}", "no"),
        ("{{if .Id}}[{{.Id}}]{{end}}", "[4f9a]"),
        ("{{range .Tags}}{{if .}}x{{end}}{{end}}", "xx"),
    ],
)
def test_if_else(fmt: str, expected: str) -> None:
    assert one(fmt) == expected


def test_literal_tab_escape() -> None:
    assert one(r"{{.Id}}\t{{.State.Status}}") == "4f9a\trunning"


def test_table_has_a_header_and_aligned_columns() -> None:
    rows = [
        {"ID": "ab12ab12ab12", "Repository": "busybox", "CreatedSince": "2 hours ago"},
        {"ID": "cd", "Repository": "localhost:5000/bb", "CreatedSince": "3 days ago"},
    ]
    lines = render(r"table {{.Repository}}\t{{.ID}}\t{{.CreatedSince}}", rows, {"ID": "IMAGE ID"})
    assert lines == [
        "REPOSITORY          IMAGE ID       CREATED SINCE",
        "busybox             ab12ab12ab12   2 hours ago",
        "localhost:5000/bb   cd             3 days ago",
    ]


def test_table_without_rows_is_just_the_header() -> None:
    assert render(r"table {{.Repository}}\t{{.Tag}}", []) == ["REPOSITORY   TAG"]


def test_json_alone_prints_each_object_as_one_line() -> None:
    items = [{"Id": "a", "Tags": ["x"]}, {"Id": "b", "Tags": []}]
    lines = render("json", items)
    assert lines == ['{"Id":"a","Tags":["x"]}', '{"Id":"b","Tags":[]}']


def test_template_renders_many_objects() -> None:
    template = Template("{{.Id}}")
    assert [template.render({"Id": n}) for n in ("a", "b")] == ["a", "b"]


@pytest.mark.parametrize(
    ("fmt", "reason"),
    [
        ("{{range .Tags}}x", "{{range}} has no {{end}}"),
        ("{{if .Id}}x", "{{if}} has no {{end}}"),
        ("{{nosuch .Id}}", 'function "nosuch" not defined'),
        ("x{{end}}", "unexpected {{end}}"),
        ("{{else}}", "unexpected {{else}}"),
        ("{{join .Tags}}", "wrong arguments for join"),
    ],
)
def test_parse_errors_are_one_line_hyper_errors(fmt: str, reason: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(fmt, [CONTAINER])
    assert isinstance(caught.value, HyperError)
    assert caught.value.exit_code == 125
    assert reason in caught.value.message
    assert "\n" not in caught.value.message
