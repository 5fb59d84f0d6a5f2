"""The per-order lease in Redis, and the in-flight registry the reaper watches.

`prov:lock:order:<id>` holds a random token with an expiry of ORDER_LOCK_TTL; a thread renews it
every third of that while the job runs, so it lapses only when its process is gone (kill -9, OOM,
node loss) or cannot reach Redis. `prov:inflight` maps OrderId -> the running job: an entry whose
lease has lapsed is an abandoned job (see worker/reaper.py).

What a job calls here turns a Redis outage into RedisUnavailable (EREDIS); the reaper's scans
(`entries`, `lease_exists`) let redis errors through to its loop, which logs and tries again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import redis

from shared import keys, servertime
from shared.connections import redis_unavailable
from shared.errors import RedisUnavailable

log = logging.getLogger(__name__)

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
_UNREGISTER = (
    "if redis.call('hget', KEYS[1], ARGV[1]) == ARGV[2] then "
    "return redis.call('hdel', KEYS[1], ARGV[1]) end return 0"
)


class Lease:
    """A token-checked lock on one order; only its holder can renew or release it."""

    def __init__(self, connection: redis.Redis, order_id: str, ttl_seconds: float) -> None:
        self.redis = connection
        self.order_id = order_id
        self.key = keys.order_lock_key(order_id)
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.token = secrets.token_hex(16)
        self.lost = threading.Event()  # set once a renewal finds the lease gone or taken

    def acquire(self) -> bool:
        with redis_unavailable("order lease"):
            return bool(self.redis.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        with redis_unavailable("order lease"):
            ok = bool(self.redis.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))
        if not ok:
            self.lost.set()
        return ok

    def held(self) -> bool:
        """Ask Redis now (before an irreversible write), not just the renewer's last result."""
        if self.lost.is_set():
            return False
        with redis_unavailable("order lease"):
            current = self.redis.get(self.key)
        if current != self.token.encode():
            self.lost.set()
        return not self.lost.is_set()

    def release(self) -> bool:
        with redis_unavailable("order lease"):
            return bool(self.redis.eval(_RELEASE, 1, self.key, self.token))

    @contextlib.contextmanager
    def kept_alive(self) -> Iterator[Lease]:
        """Renew every ttl/3 in a daemon thread for the duration of the block."""
        stop = threading.Event()
        thread = threading.Thread(
            target=self._renew_until, args=(stop,), name=f"lease-{self.order_id}", daemon=True
        )
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(timeout=5)

    def _renew_until(self, stop: threading.Event) -> None:
        interval = self.ttl_ms / 3000
        while not stop.wait(interval):
            try:
                if not self.renew():
                    log.error("Order lease lost; another process may own the order now")
                    return
            except (RedisUnavailable, redis.RedisError) as exc:
                # Keep trying: the lease survives a blip shorter than its TTL.
                log.warning("Order lease renewal failed", extra={"error": type(exc).__name__})


@dataclass(frozen=True)
class InflightEntry:
    """What `prov:inflight` holds for a running job (JSON)."""

    job_id: str
    token: str
    started_at: float  # epoch seconds, by Redis's clock (shared/servertime.py)
    worker: str

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def loads(cls, raw: bytes | str) -> InflightEntry | None:
        try:
            data = json.loads(raw)
            return cls(
                job_id=str(data["job_id"]),
                token=str(data["token"]),
                started_at=float(data["started_at"]),
                worker=str(data.get("worker", "")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def server_now(connection: redis.Redis) -> float:
    """Redis's clock (what `started_at` is stamped with), an outage as RedisUnavailable."""
    with redis_unavailable("server time"):
        return servertime.server_now(connection)


def register(connection: redis.Redis, order_id: str, entry: InflightEntry) -> str:
    raw = entry.dumps()
    with redis_unavailable("in-flight registry"):
        connection.hset(keys.INFLIGHT, order_id, raw)
    return raw


def unregister(connection: redis.Redis, order_id: str, raw: str | bytes) -> bool:
    """Remove the entry only if it is still the one we wrote (a newer job may have replaced it)."""
    with redis_unavailable("in-flight registry"):
        return bool(connection.eval(_UNREGISTER, 1, keys.INFLIGHT, order_id, raw))


def entries(connection: redis.Redis) -> dict[str, bytes]:
    """OrderId -> raw entry (the connection returns bytes: decode_responses is off)."""
    raw: dict[bytes, bytes] = connection.hgetall(keys.INFLIGHT)  # type: ignore[assignment]
    return {k.decode(): v for k, v in raw.items()}


def lease_exists(connection: redis.Redis, order_id: str) -> bool:
    return bool(connection.exists(keys.order_lock_key(order_id)))
