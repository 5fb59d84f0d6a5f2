"""The sandbox's platform event bus: retained events per channel, replay ids, long-poll wake-ups.

Like Salesforce, replay ids only ever increase but are not contiguous (random steps), every
event carries an EventUuid, and a retention floor can be raised to act out the 72 h purge.
"""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from sandbox.salesforce.store import sf_datetime
from shared.sfid import new_id

MAX_STEP = 17  # replay ids advance by 1..MAX_STEP, so clients cannot do arithmetic on them


def _schema_id(channel: str) -> str:
    # Salesforce schema ids are 22 url-safe characters; a stable one per channel will do.
    return uuid.uuid5(uuid.NAMESPACE_URL, channel).hex[:22]


class EventBus:
    """Thread-safe: publishers (admin API, REST) and long-polling readers share it."""

    def __init__(
        self,
        channels: tuple[str, ...] = ("/event/OrderProvisionRequested__e",),
        clock: Callable[[], float] = time.time,
        publisher_id: str | None = None,
    ) -> None:
        self.channels = tuple(channels)
        self.clock = clock
        self._changed = threading.Condition()
        self._random = random.Random()
        self._publisher_id = publisher_id or new_id("User")[:15]  # the events' CreatedById
        self.reset()

    def reset(self) -> None:
        with self._changed:
            self._events: dict[str, list[dict[str, Any]]] = {c: [] for c in self.channels}
            self._floor: dict[str, int] = dict.fromkeys(self.channels, 0)
            # Replay ids keep growing across resets, as they do in a real org.
            self._last_id = getattr(self, "_last_id", self._random.randint(1000, 5000))
            self._version = getattr(self, "_version", 0) + 1
            self._changed.notify_all()

    def publish(
        self, channel: str, payload: dict[str, Any], event_uuid: str | None = None
    ) -> dict[str, Any]:
        """Store and return one event; wakes every long-poll waiting on the bus.

        `event_uuid` forces the header's EventUuid (tests of malformed events; Salesforce always
        sends a UUID)."""
        self._check(channel)
        body = {
            "CreatedDate": sf_datetime(self.clock(), "Z"),
            "CreatedById": self._publisher_id,
            **payload,
        }
        with self._changed:
            self._last_id += self._random.randint(1, MAX_STEP)
            event = {
                "schema": _schema_id(channel),
                "payload": body,
                "event": {"replayId": self._last_id, "EventUuid": event_uuid or str(uuid.uuid4())},
            }
            self._events[channel].append(event)
            self._version += 1
            self._changed.notify_all()
        return copy.deepcopy(event)

    def events(self, channel: str) -> list[dict[str, Any]]:
        """Every event published on `channel` since the last reset, purged ones included."""
        self._check(channel)
        with self._changed:
            return copy.deepcopy(self._events[channel])

    def set_retention_floor(self, channel: str, replay_id: int) -> None:
        """Events at or below `replay_id` are purged: no longer delivered nor replayable."""
        self._check(channel)
        with self._changed:
            self._floor[channel] = max(self._floor[channel], int(replay_id))
            self._version += 1
            self._changed.notify_all()

    # The CometD server's view.

    def has_channel(self, channel: str) -> bool:
        return channel in self._events

    def tip(self, channel: str) -> int:
        """The replay id after which only future events come (what -1 means)."""
        with self._changed:
            events = self._events[channel]
            return events[-1]["event"]["replayId"] if events else self._floor[channel]

    def floor(self, channel: str) -> int:
        with self._changed:
            return self._floor[channel]

    def is_retained(self, channel: str, replay_id: int) -> bool:
        """A replay id a client may resume after: one of a retained event's ids."""
        with self._changed:
            if replay_id <= self._floor[channel]:
                return False
            return any(e["event"]["replayId"] == replay_id for e in self._events[channel])

    def after(self, channel: str, replay_id: int, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` retained events with a replay id above `replay_id`, oldest first."""
        with self._changed:
            start = max(replay_id, self._floor[channel])
            found = [e for e in self._events[channel] if e["event"]["replayId"] > start]
            return copy.deepcopy(found[:limit])

    def version(self) -> int:
        with self._changed:
            return self._version

    def wait_for_change(self, seen_version: int, timeout: float) -> int:
        """Block until the bus changes after `seen_version` (or `timeout`); the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen_version, timeout)
            return self._version

    def wake(self) -> None:
        """Wake every waiting long-poll (a client left, the server is resetting)."""
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def _check(self, channel: str) -> None:
        if channel not in self._events:
            raise KeyError(f"unknown channel {channel}")
