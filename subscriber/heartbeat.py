"""The subscriber's heartbeat hash `sf:pe:heartbeat:<channel>` and its record of replay gaps.

Written by the active subscriber, read by the health app, metrics, `provisioner doctor` and
`provisioner replay show`. Times are epoch seconds as strings. Fields:
state (starting | connecting | connected | backoff | standby | disabled | stopped), holder,
updated_at, last_connect_at, last_event_at, last_replay_id, advised_timeout, replay_fallbacks,
last_fallback_at, events_enqueued, duplicates, dead_letters (events that could not become jobs;
the records are in `sf:pe:dead:<channel>`, see subscriber/intake.py), transport (cometd | pubsub).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis

from shared import keys

STATES = ("starting", "connecting", "connected", "backoff", "standby", "disabled", "stopped")


def _stamp(moment: float) -> str:
    return f"{moment:.3f}"


class Heartbeat:
    def __init__(
        self,
        connection: redis.Redis,
        channel: str,
        holder: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = connection
        self.channel = channel
        self.holder = holder
        self.clock = clock
        self.key = keys.heartbeat_key(channel)
        self.gaps_key = keys.gaps_key(channel)

    def state(self, state: str, **fields: Any) -> None:
        assert state in STATES, state
        self._write({"state": state, **fields})

    def touch(self) -> None:
        self._write({})

    def connected(self, advised_timeout: float) -> None:
        """A successful /meta/connect reply: the proof of life the watchdog and health use."""
        now = _stamp(self.clock())
        self._write(
            {
                "state": "connected",
                "last_connect_at": now,
                "advised_timeout": f"{advised_timeout:g}",
            }
        )

    def record_fallback(
        self, requested: int | str, fallback: int | str, error: str
    ) -> dict[str, Any]:
        """An invalid-replay fallback: count it and keep the record for health and doctor.

        CometD positions are numbers; Pub/Sub's are hex ids and preset names (EARLIEST)."""
        now = self.clock()
        record = {
            "at": _stamp(now),
            "channel": self.channel,
            "requested": requested,
            "fallback": fallback,
            "error": error[:300],
        }
        with self.redis.pipeline() as pipe:
            pipe.hincrby(self.key, "replay_fallbacks", 1)
            pipe.hset(self.key, mapping={"last_fallback_at": _stamp(now)})
            pipe.lpush(self.gaps_key, json.dumps(record))
            pipe.ltrim(self.gaps_key, 0, keys.GAPS_KEEP - 1)
            pipe.execute()
        return record

    def _write(self, fields: dict[str, Any]) -> None:
        mapping = {"holder": self.holder, "updated_at": _stamp(self.clock()), **fields}
        self.redis.hset(self.key, mapping={k: str(v) for k, v in mapping.items()})


def read(connection: redis.Redis, channel: str) -> dict[str, str]:
    raw = connection.hgetall(keys.heartbeat_key(channel))
    return {k.decode(): v.decode() for k, v in raw.items()}


def gaps(connection: redis.Redis, channel: str) -> list[dict[str, Any]]:
    """Recorded invalid-replay fallbacks, newest first."""
    return _records(connection, keys.gaps_key(channel))


def dead_letters(connection: redis.Redis, channel: str, limit: int = -1) -> list[dict[str, Any]]:
    """Events that could not become jobs, newest first (payload, reason, replay id)."""
    return _records(connection, keys.dead_letters_key(channel), limit)


def _records(connection: redis.Redis, key: str, limit: int = -1) -> list[dict[str, Any]]:
    out = []
    for raw in connection.lrange(key, 0, limit if limit < 0 else limit - 1):
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out
