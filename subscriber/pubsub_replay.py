"""The Pub/Sub transport's stored position `sf:pe:pubsub:replay:<channel>` and its decisions.

Pub/Sub replay ids are opaque bytes (never computed with); they are stored as hex under their
own key, beside the CometD one, so switching transports never resumes from the other's id.
The intake writes the key in the same transaction as the job; a keepalive's `latest_replay_id`
is written too (fenced by the leader lock), as Salesforce recommends, so a resubscription does
not start far back.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

from shared import keys
from subscriber.replay import ReplayStore

LATEST, EARLIEST, CUSTOM = "LATEST", "EARLIEST", "CUSTOM"  # the API's ReplayPreset names

# Salesforce's `error-code` trailers (its handling-errors page and Java sample).
REPLAY_ERROR_CODES = (
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted",
    "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.validation.failed",
)

_FENCED_SET = """
if ARGV[2] ~= '' and redis.call('get', KEYS[2]) ~= ARGV[2] then return 0 end
redis.call('set', KEYS[1], ARGV[1])
return 1
"""


@dataclass(frozen=True)
class Position:
    preset: str  # LATEST | EARLIEST | CUSTOM
    replay_id: bytes = b""

    def describe(self) -> str:
        return self.replay_id.hex() if self.preset == CUSTOM else self.preset


def start_position(mode: str, stored: bytes | None, first_subscription: bool) -> Position:
    """Where a Subscribe starts: as the CometD path decides (subscriber/replay.py), in presets.

    ALL: EARLIEST at process start (the one-time backfill), then the stored id. LATEST: the
    stored id, else the tip."""
    if mode == "ALL" and first_subscription:
        return Position(EARLIEST)
    if stored:
        return Position(CUSTOM, stored)
    return Position(EARLIEST if mode == "ALL" else LATEST)


def fallback_position() -> Position:
    """A refused (corrupted or expired) id: every retained event, never the tip, which could
    lose events; the dedupe and the worker's guard make the replay safe."""
    return Position(EARLIEST)


def is_invalid_replay(code: str, trailers: dict[str, str]) -> bool:
    """INVALID_ARGUMENT with one of the replay-id error codes."""
    return code == "INVALID_ARGUMENT" and trailers.get("error-code", "") in REPLAY_ERROR_CODES


def as_int(replay_id: bytes) -> int | None:
    """The number an 8-byte id carries (what the job's `replay_id` holds), else None."""
    return int.from_bytes(replay_id, "big") if len(replay_id) == 8 else None


def parse(raw: bytes | str | None) -> bytes | None:
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        return bytes.fromhex(text.strip()) or None
    except ValueError:
        return None


class PubSubReplayStore(ReplayStore):
    parse = staticmethod(parse)

    def __init__(
        self, connection: redis.Redis, channel: str, fence: tuple[str, str] | None = None
    ) -> None:
        super().__init__(connection, channel, keys.pubsub_replay_key(channel))
        self.fence = fence
        self._fenced_set = connection.register_script(_FENCED_SET)

    def set(self, replay_id: bytes) -> bool:
        """Store `replay_id`; False (nothing written) when the leader lock is no longer ours."""
        fence_key, fence_value = self.fence or (self.key, "")
        return bool(
            self._fenced_set(keys=[self.key, fence_key], args=[replay_id.hex(), fence_value])
        )
