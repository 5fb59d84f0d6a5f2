"""Each worker's clock offset from Redis server time, published for the reaper.

RQ stamps a job's started_at with its worker host's clock, and the reaper judges a job that never
took its lease by that stamp. So every `python -m worker` measures how far its clock is ahead of
Redis's TIME and publishes it in `prov:clock:offsets` (worker name -> "offset:measured_at", both
in seconds); the reaper moves the stamp back onto the server's clock before comparing it with
server time. A dead worker's entry is pruned a day after its last measurement.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from shared import keys
from shared.servertime import offset, server_now

log = logging.getLogger(__name__)

PUBLISH_EVERY = 60.0  # clocks drift slowly; NTP steps are rare
SKEW_WARNING = 2.0  # seconds: worth an operator's look (the reaper copes either way)
KEEP_FOR = 24 * 3600.0


def measure(connection: redis.Redis, clock: Callable[[], float] = time.time) -> tuple[float, float]:
    """(how far this host's clock is ahead of the server's, the server's time)."""
    before = clock()
    server = server_now(connection)
    return offset(before, server, clock()), server


def publish(connection: redis.Redis, worker: str, ahead: float, server: float) -> None:
    connection.hset(keys.CLOCK_OFFSETS, worker, f"{ahead:.3f}:{server:.0f}")


def offset_of(connection: redis.Redis, worker: str) -> float:
    """The worker's published offset; 0 when it published none (a worker of older code)."""
    return _parse(connection.hget(keys.CLOCK_OFFSETS, worker))[0]


def prune(connection: redis.Redis, now: float) -> None:
    for worker, raw in connection.hgetall(keys.CLOCK_OFFSETS).items():
        if now - _parse(raw)[1] > KEEP_FOR:
            connection.hdel(keys.CLOCK_OFFSETS, worker)


def _parse(raw: bytes | str | None) -> tuple[float, float]:
    if raw is None:
        return 0.0, 0.0
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        ahead, _, at = text.partition(":")
        return float(ahead), float(at or 0)
    except ValueError:
        return 0.0, 0.0


class Publisher(threading.Thread):
    """Measures and publishes this worker's offset now and every PUBLISH_EVERY seconds."""

    def __init__(self, connection: redis.Redis, worker: str) -> None:
        super().__init__(name="clock-offset", daemon=True)
        self.redis = connection
        self.worker = worker
        self._stop = threading.Event()
        self._warned = False

    def run(self) -> None:
        while True:
            try:
                self.publish_once()
            except redis.RedisError as exc:
                log.warning("Cannot publish the clock offset", extra={"error": type(exc).__name__})
            if self._stop.wait(PUBLISH_EVERY):
                return

    def publish_once(self) -> float:
        ahead, server = measure(self.redis)
        publish(self.redis, self.worker, ahead, server)
        prune(self.redis, server)
        if abs(ahead) >= SKEW_WARNING and not self._warned:
            self._warned = True
            log.warning(
                "Host clock differs from Redis server time",
                extra={"worker": self.worker, "ahead_seconds": round(ahead, 3)},
            )
        return ahead

    def stop(self) -> None:
        self._stop.set()
        try:
            self.redis.hdel(keys.CLOCK_OFFSETS, self.worker)
        except redis.RedisError:
            pass  # pruned a day later
