"""The daemon's event stream, as ``docker events`` shows it: what happened to which object, when.

Events are kept in memory, the last ``BACKLOG`` of them, for ``--since``; subscribers get
each new one as it happens.  A subscriber that falls ``QUEUE`` events behind is cut off
(its stream ends) rather than slowing the daemon down or growing its memory.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

BACKLOG = 1024
QUEUE = 256

Subscription = asyncio.Queue["Event | None"]


@dataclass(frozen=True)
class Event:
    type: str
    """container, network or image."""
    action: str
    id: str
    attributes: dict[str, str] = field(default_factory=dict)
    time_ns: int = field(default_factory=time.time_ns)

    def docker(self) -> dict[str, Any]:
        """The event in Docker's JSON shape (with the old top-level fields docker still sends)."""
        shape: dict[str, Any] = {"Type": self.type, "Action": self.action,
                                 "Actor": {"ID": self.id, "Attributes": dict(self.attributes)},
                                 "scope": "local", "time": self.time_ns // 10**9, "timeNano": self.time_ns}
        if self.type == "container":
            shape.update(status=self.action, id=self.id, **{"from": self.attributes.get("image", "")})
        return shape

    def matches(self, filters: dict[str, list[str]]) -> bool:
        """docker's event filters: type, event (action), container/network/image (id or name), label."""
        names = {self.id, self.attributes.get("name", "")}
        checks: dict[str, Callable[[str], bool]] = {
            "type": lambda v: v == self.type,
            "event": lambda v: v == self.action or self.action.startswith(f"{v}:"),
            "container": lambda v: self.type == "container" and (v in names or self.id.startswith(v)),
            "network": lambda v: self.type == "network" and (v in names or self.id.startswith(v)),
            "image": lambda v: v in (self.attributes.get("image"), self.id),
            "label": lambda v: v.partition("=")[0] in self.attributes and (
                "=" not in v or self.attributes[v.partition("=")[0]] == v.partition("=")[2]),
        }
        return all(any(checks[key](value) for value in values) for key, values in filters.items())


FILTERS = ("type", "event", "container", "network", "image", "label")


class Events:
    def __init__(self) -> None:
        self._past: collections.deque[Event] = collections.deque(maxlen=BACKLOG)
        self._subscribers: set[Subscription] = set()

    def emit(self, type_: str, action: str, object_id: str, **attributes: str) -> None:
        event = Event(type_, action, object_id, {k: v for k, v in attributes.items() if v})
        self._past.append(event)
        for queue in list(self._subscribers):
            try:
                queue.put_nowait(event)
            except asyncio.QueueFull:
                self._drop(queue)

    def subscribe(self) -> tuple[list[Event], Subscription]:
        """The events kept so far, and a queue of those to come (None when cut off)."""
        queue: Subscription = asyncio.Queue(QUEUE)
        self._subscribers.add(queue)
        return list(self._past), queue

    def unsubscribe(self, queue: Subscription) -> None:
        self._subscribers.discard(queue)

    def _drop(self, queue: Subscription) -> None:
        self._subscribers.discard(queue)
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)
