"""Restart policies decide as docker's do."""

from __future__ import annotations

import pytest

from hyperd.errors import InvalidArgument
from hyperd.restart import MAX_DELAY, Policy, RestartPolicy, next_delay


@pytest.mark.parametrize(("text", "policy", "retries"), [
    ("no", Policy.NO, 0), ("", Policy.NO, 0), ("always", Policy.ALWAYS, 0),
    ("unless-stopped", Policy.UNLESS_STOPPED, 0), ("on-failure", Policy.ON_FAILURE, 0),
    ("on-failure:3", Policy.ON_FAILURE, 3),
])
def test_parse(text: str, policy: Policy, retries: int) -> None:
    parsed = RestartPolicy.parse(text)
    assert (parsed.policy, parsed.max_retries) == (policy, retries)


@pytest.mark.parametrize(("text", "message"), [
    ("sometimes", "invalid restart policy"), ("always:3", "only on-failure"), ("on-failure:x", "must be a number"),
    ("on-failure:-1", "must be a number"),
])
def test_parse_refuses(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        RestartPolicy.parse(text)


def test_on_failure_counts_and_ignores_success() -> None:
    policy = RestartPolicy.parse("on-failure:2")
    assert policy.restarts(1, 0, False) and policy.restarts(137, 1, False)
    assert not policy.restarts(1, 2, False)
    assert not policy.restarts(0, 0, False)
    assert RestartPolicy.parse("on-failure").restarts(1, 10_000, False)


def test_a_stop_by_the_user_is_respected_until_the_daemon_starts() -> None:
    for text in ("always", "unless-stopped", "on-failure"):
        assert not RestartPolicy.parse(text).restarts(1, 0, stopped_by_user=True)
    assert RestartPolicy.parse("always").at_daemon_start(stopped_by_user=True, ran_into_shutdown=False)
    assert not RestartPolicy.parse("unless-stopped").at_daemon_start(stopped_by_user=True, ran_into_shutdown=False)
    assert RestartPolicy.parse("unless-stopped").at_daemon_start(stopped_by_user=False, ran_into_shutdown=False)
    assert RestartPolicy.parse("on-failure").at_daemon_start(stopped_by_user=False, ran_into_shutdown=True)
    assert not RestartPolicy.parse("on-failure").at_daemon_start(stopped_by_user=False, ran_into_shutdown=False)
    assert not RestartPolicy.parse("no").at_daemon_start(stopped_by_user=False, ran_into_shutdown=True)


def test_back_off_doubles_caps_and_resets_after_a_steady_run() -> None:
    delays = [0.0]
    for _ in range(12):
        delays.append(next_delay(delays[-1], last_run=1.0))
    assert delays[1:4] == [0.1, 0.2, 0.4]
    assert delays[-1] == MAX_DELAY
    assert next_delay(MAX_DELAY, last_run=30.0) == 0.1
