"""Restart policies, as docker has them since 1.2: ``--restart no|on-failure[:N]|always|unless-stopped``.

A policy decides; the daemon acts.  Docker's rules, kept here in one place:

- ``on-failure[:N]`` restarts after a non-zero exit, at most N times when N is given;
- ``always`` and ``unless-stopped`` restart after any exit;
- a container the user stopped (``stop``, ``kill``) is not restarted after that exit;
- when the daemon starts, ``always`` containers are started again even if the user had
  stopped them, ``unless-stopped`` ones only if the user had not, and ``on-failure`` ones
  if they were running when the daemon went (their exit was the daemon's doing);
- the delay before a restart doubles from 100 ms up to a minute, and starts over once a
  run has lasted 10 seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hyperd.errors import InvalidArgument

FIRST_DELAY = 0.1
MAX_DELAY = 60.0
STEADY = 10.0
"""Seconds a run must last for the back-off to start over."""


class Policy(enum.StrEnum):
    NO = "no"
    ON_FAILURE = "on-failure"
    ALWAYS = "always"
    UNLESS_STOPPED = "unless-stopped"


@dataclass(frozen=True)
class RestartPolicy:
    policy: Policy = Policy.NO
    max_retries: int = 0
    """For ``on-failure``: the most restarts in a row; 0 for no limit."""

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        name, colon, count = text.partition(":")
        try:
            policy = Policy(name or "no")
        except ValueError:
            raise InvalidArgument(f"invalid restart policy {text!r}: use no, on-failure[:N], always or "
                                  "unless-stopped") from None
        if not colon:
            return cls(policy)
        if policy is not Policy.ON_FAILURE:
            raise InvalidArgument(f"invalid restart policy {text!r}: only on-failure takes a maximum retry count")
        if not count.isdigit() or int(count) > 1_000_000:
            raise InvalidArgument(f"invalid restart policy {text!r}: the maximum retry count must be a number")
        return cls(policy, int(count))

    def __str__(self) -> str:
        return f"{self.policy}:{self.max_retries}" if self.max_retries else str(self.policy)

    @property
    def enabled(self) -> bool:
        return self.policy is not Policy.NO

    def restarts(self, exit_code: int, restart_count: int, stopped_by_user: bool) -> bool:
        """Whether a container that just exited with ``exit_code`` is started again."""
        if stopped_by_user or self.policy is Policy.NO:
            return False
        if self.policy is Policy.ON_FAILURE:
            return exit_code != 0 and (not self.max_retries or restart_count < self.max_retries)
        return True

    def at_daemon_start(self, stopped_by_user: bool, ran_into_shutdown: bool) -> bool:
        """Whether an exited container is started when the daemon starts."""
        if self.policy is Policy.ALWAYS:
            return True
        if self.policy is Policy.UNLESS_STOPPED:
            return not stopped_by_user
        return self.policy is Policy.ON_FAILURE and ran_into_shutdown and not stopped_by_user


def next_delay(previous: float, last_run: float) -> float:
    """Seconds to wait before the next restart: doubling, capped, reset after a steady run."""
    if previous <= 0 or last_run >= STEADY:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)
