"""The session loop both transports share: run sessions one after another, back off between.

A transport (`stream.Stream` for CometD, `pubsub.PubSubStream` for the Pub/Sub API) writes one
session in `_session()`; this loop stands down when the leader lock is lost, turns every server
or network fault into a back-off with jitter (from the bottom again after a healthy session),
and returns when asked to stop.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from shared.errors import IntegrationError
from shared.sfauth import Token, TokenProvider
from subscriber.advice import backoff_delay
from subscriber.heartbeat import Heartbeat
from subscriber.intake import Intake, NotLeader

log = logging.getLogger(__name__)


class Restart(Exception):
    """The session is over; start a new one (after a new token if `reauth`, at once if `now`)."""

    def __init__(self, reason: str, *, reauth: bool = False, now: bool = False) -> None:
        super().__init__(reason)
        self.reauth = reauth
        self.now = now


class SessionLoop:
    """The parts both transports take; a transport adds its own and writes `_session()`."""

    transport: str  # the heartbeat's `transport` field

    def __init__(
        self,
        *,
        channel: str,
        mode: str,
        tokens: TokenProvider,
        intake: Intake,
        replay_store: Any,
        heartbeat: Heartbeat,
        stop: threading.Event,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.channel = channel
        self.mode = mode
        self.tokens = tokens
        self.intake = intake
        self.replay = replay_store
        self.heartbeat = heartbeat
        self.stop = stop
        self.clock = clock
        self.rand = rand
        self.lost = threading.Event()
        self._subscribed_before = False  # ALL backfills once per process, not per session
        self._token: Token | None = None
        self._reauth = False
        self._healthy = False

    def _session(self) -> None:
        raise NotImplementedError

    def run(self, lost: threading.Event) -> None:
        """Sessions until `stop` or `lost` is set; never raises for a server or network fault."""
        self.lost = lost
        attempt = 0
        while not self._done():
            self._healthy = False
            try:
                self._session()
                return
            except NotLeader as exc:
                log.warning("Leader lock lost; standing down", extra={"reason": str(exc)})
                lost.set()
                return
            except Restart as exc:
                reason, self._reauth = str(exc), self._reauth or exc.reauth
                if exc.now:
                    self._log_restart(reason, 0.0)
                    continue
            except (IntegrationError, redis.RedisError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # an unforeseen reply shape must not kill the subscriber
                log.exception("Unexpected error in the streaming session")
                reason = f"{type(exc).__name__}: {exc}"
            attempt = 0 if self._healthy else attempt + 1
            self._back_off(reason, attempt)

    def _done(self) -> bool:
        return self.stop.is_set() or self.lost.is_set()

    def _log_restart(self, reason: str, delay: float) -> None:
        log.warning(
            "Streaming session ended; reconnecting",
            extra={"reason": reason, "retry_in": round(delay, 2), "channel": self.channel},
        )

    def _back_off(self, reason: str, attempt: int) -> None:
        delay = backoff_delay(attempt, self.rand())
        self._log_restart(reason, delay)
        with contextlib.suppress(redis.RedisError):
            self.heartbeat.state("backoff")
        self.stop.wait(delay)
