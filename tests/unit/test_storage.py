"""``--storage-opt``: sizes as docker users write them, and refusals as one line each."""

from __future__ import annotations

import pytest

from hyperd import storage
from hyperd.errors import InvalidArgument


@pytest.mark.parametrize(("text", "size"), [
    ("64M", 64 << 20), ("64m", 64 << 20), ("2G", 2 << 30), ("2GiB", 2 << 30), ("1.5g", 3 << 29),
    ("33554432", 32 << 20), ("1T", 1 << 40),
])
def test_sizes(text: str, size: int) -> None:
    assert storage.parse_options({"size": text}) == size


def test_no_option_is_a_tmpfs() -> None:
    assert storage.parse_options({}) == 0


@pytest.mark.parametrize(("options", "message"), [
    ({"size": "1K"}, "out of range"), ({"size": "17T"}, "out of range"), ({"size": "lots"}, "invalid storage size"),
    ({"size": ""}, "invalid storage size"), ({"size": "-1G"}, "invalid storage size"),
    ({"quota": "1G"}, "unknown storage option 'quota'"),
])
def test_refusals(options: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        storage.parse_options(options)
