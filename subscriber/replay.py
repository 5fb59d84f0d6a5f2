"""The stored replay position `sf:pe:replay:<channel>` and where a subscription starts from.

The key holds the replay id of the last event whose job is safely in Redis (the intake writes
it in the same transaction as the job). Special values an operator may store with
`provisioner replay set`: -1 (from the tip) and -2 (every retained event).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import redis

from shared import keys

log = logging.getLogger(__name__)

TIP = -1  # only events published after the subscription
EARLIEST = -2  # every event Salesforce still retains (72 h)

_INVALID_REPLAY = re.compile(r"replay\s*id.*(invalid|not valid)", re.IGNORECASE)


def start_position(mode: str, stored: int | None, first_subscription: bool) -> int:
    """Where to subscribe from.

    ALL: -2 at process start even when an id is stored (the runbook's one-time backfill; the
    dedupe and the worker's guard make it safe); later re-subscriptions in the same run resume
    from the stored id. LATEST: the stored id, else the tip.
    """
    if mode == "ALL" and first_subscription:
        return EARLIEST
    if stored is not None:
        return stored
    return EARLIEST if mode == "ALL" else TIP


def fallback_position(mode: str) -> int:
    """Where to go when Salesforce refuses the stored id as outside its retention: every event
    it still retains, whatever the mode. Events after the stored id may be among them; from the
    tip they would be skipped for good. The EventUuid dedupe and the worker's guard make the
    replay of events already handled safe."""
    return EARLIEST


def is_invalid_replay_error(error: str) -> bool:
    """The subscribe refusal "400::The replayId {N} you provided was invalid. ..."."""
    return error.startswith("400") and bool(_INVALID_REPLAY.search(error))


def parse(raw: bytes | str | None) -> int | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return int(text.strip())
    except ValueError:
        return None


class ReplayStore:
    """The CometD position; the Pub/Sub one (pubsub_replay.py) keeps its own key and parse."""

    parse = staticmethod(parse)

    def __init__(self, connection: redis.Redis, channel: str, key: str | None = None) -> None:
        self.redis = connection
        self.channel = channel
        self.key = key or keys.replay_key(channel)

    def get(self) -> Any:  # int | None here; bytes | None for the Pub/Sub transport
        raw = self.redis.get(self.key)
        value = self.parse(raw)
        if raw is not None and value is None:
            log.warning(
                "Stored replay id is not a number; ignoring it",
                extra={"key": self.key, "stored": raw[:40].decode(errors="replace")},
            )
        return value

    def set(self, replay_id: int) -> None:
        self.redis.set(self.key, str(int(replay_id)))

    def reset(self) -> bool:
        return bool(self.redis.delete(self.key))
