"""Exactly one active subscriber per channel: a Redis lock with a TTL, renewed while alive.

A second replica stands by, trying the lock every STANDBY_POLL seconds; when the leader dies
(kill -9, node loss) its lock expires after LEADER_TTL and the standby takes over. The lock
value is also the intake's fence: a leader that lost the lock cannot enqueue.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

import redis

from shared import keys

log = logging.getLogger(__name__)

LEADER_TTL = 10.0  # seconds a dead leader blocks the channel
RENEW_EVERY = LEADER_TTL / 4
STANDBY_POLL = 1.0

_RENEW = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
)
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def holder_name() -> str:
    """host:pid, as the heartbeat shows it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_is_lost(now: float, last_renewed: float, ttl: float) -> bool:
    """Whether a lease we could not renew since `last_renewed` may already belong to another."""
    return now - last_renewed >= ttl


class Leadership:
    def __init__(
        self, connection: redis.Redis, channel: str, holder: str, ttl: float = LEADER_TTL
    ) -> None:
        self.redis = connection
        self.key = keys.leader_key(channel)
        # The nonce keeps a restarted process with a recycled pid (pid 1 in a container) from
        # mistaking its dead predecessor's lock for its own.
        self.value = f"{holder}:{secrets.token_hex(4)}"
        self.ttl_ms = int(ttl * 1000)

    def acquire(self) -> bool:
        return bool(self.redis.set(self.key, self.value, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self.redis.eval(_RENEW, 1, self.key, self.value, self.ttl_ms))

    def release(self) -> None:
        self.redis.eval(_RELEASE, 1, self.key, self.value)

    def holder(self) -> str | None:
        raw = self.redis.get(self.key)
        return raw.decode(errors="replace") if raw is not None else None


class Keeper(threading.Thread):
    """Renews the lease and refreshes the heartbeat while the active subscriber works.

    The main loop may sit in a long-poll for up to the advised timeout (110 s), far longer
    than the lease, so renewal cannot wait for it.
    """

    def __init__(
        self,
        leadership: Leadership,
        touch: Callable[[], None],
        lost: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(name="leader-keeper", daemon=True)
        self.leadership = leadership
        self.touch = touch
        self.lost = lost
        self.clock = clock
        self._done = threading.Event()
        self._ttl = leadership.ttl_ms / 1000

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join(timeout=5)

    def run(self) -> None:
        last_renewed = self.clock()
        while not self._done.wait(RENEW_EVERY):
            try:
                if not self.leadership.renew():
                    log.warning("Leader lock lost to another subscriber; standing down")
                    self.lost.set()
                    return
                last_renewed = self.clock()
                self.touch()
            except redis.RedisError as exc:
                log.warning("Cannot renew the leader lock", extra={"error": str(exc)})
                if lease_is_lost(self.clock(), last_renewed, self._ttl):
                    self.lost.set()
                    return
