"""`python -m subscriber`: the composition root of the platform event subscriber.

Wires settings, logging, Redis, the token provider, the intake and the stream; takes the
channel's leader lock (or stands by); SIGTERM finishes the batch in hand, disconnects and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

import redis

from shared.config import Settings, load_settings
from shared.connections import redis_client
from shared.errors import ConfigError
from shared.http import TimeoutSession
from shared.queueing import provisioning_queue
from shared.servertime import server_now
from shared.sfauth import Token, TokenProvider
from shared.startup import start
from subscriber.cometd import BayeuxClient
from subscriber.heartbeat import Heartbeat
from subscriber.intake import Intake
from subscriber.leader import STANDBY_POLL, Keeper, Leadership, holder_name
from subscriber.pubsub import PubSubStream
from subscriber.pubsub_replay import PubSubReplayStore
from subscriber.replay import ReplayStore
from subscriber.session import SessionLoop
from subscriber.stream import Stream

log = logging.getLogger("subscriber")

IDLE_TOUCH = 10.0  # heartbeat refresh while disabled, so health sees a live process


class ShutdownRequested(BaseException):
    """Raised by the signal handler only while a long-poll is in flight, to cut it short.

    A BaseException, so no `except Exception` on the way up swallows it.
    """


class Shutdown:
    """SIGTERM/SIGINT: set `stop`; if the main thread sits in a long-poll, interrupt it too."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._interruptible = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stop.set()
        if self._interruptible:
            raise ShutdownRequested()

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block that holds no event yet: dropping it loses nothing (it is redelivered)."""
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="python -m subscriber",
        description=(
            "Subscribe to SF_PROVISION_EVENT_CHANNEL over CometD or the Pub/Sub API "
            "(SF_EVENTS_TRANSPORT) and enqueue one RQ job per "
            "platform event on PROVISION_QUEUE. One replica is active per channel (leader lock "
            "in Redis); others stand by. Configured by environment variables only: REDIS_URL, "
            "SF_LOGIN_URL, SF_CLIENT_ID, SF_USERNAME, SF_PRIVATE_KEY_PATH, SF_API_VERSION, "
            "SF_EVENTS_ENABLED, SF_EVENTS_REPLAY (LATEST | ALL), JOB_TIMEOUT (see the README)."
        ),
    )


def load(environ: Mapping[str, str]) -> Settings:
    """Settings; Salesforce credentials are needed only when events are enabled."""
    try:
        probe = load_settings(environ, {"events"})
    except ConfigError:
        probe = None  # start() below reports every problem at once
    disabled = probe is not None and not probe.events.enabled
    return start("subscriber", {"events"} if disabled else {"salesforce", "events"}, environ)


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    build_parser().parse_args(argv)
    # The mapping is only handed to shared.config, the one reader of variables.
    settings = load(os.environ if environ is None else environ)
    shutdown = Shutdown()
    shutdown.install()
    connection = redis_client(settings.redis)
    # Stamped by Redis's clock: health and doctor on other hosts judge its age.
    heartbeat = Heartbeat(
        connection, settings.events.channel, holder_name(), clock=lambda: server_now(connection)
    )
    try:
        if not settings.events.enabled:
            idle(heartbeat, shutdown.stop)
        else:
            serve(settings, connection, heartbeat, shutdown)
    except ShutdownRequested:
        pass
    log.info("Subscriber stopped", extra={"channel": settings.events.channel})
    return 0


def idle(heartbeat: Heartbeat, stop: threading.Event) -> None:
    log.info(
        "Platform event subscriber disabled (SF_EVENTS_ENABLED=false): idling, not connecting",
        extra={"channel": heartbeat.channel},
    )
    while not stop.is_set():
        try:
            heartbeat.state("disabled")
        except redis.RedisError as exc:
            log.warning("Cannot write the subscriber heartbeat", extra={"error": str(exc)})
        stop.wait(IDLE_TOUCH)
    with contextlib.suppress(redis.RedisError):
        heartbeat.state("stopped")


def serve(
    settings: Settings, connection: redis.Redis, heartbeat: Heartbeat, shutdown: Shutdown
) -> None:
    """Lead the channel when the lock is free, stand by while another replica holds it."""
    channel = settings.events.channel
    leadership = Leadership(connection, channel, heartbeat.holder)
    stream = build_stream(settings, connection, heartbeat, leadership, shutdown)
    standing_by = False
    while not shutdown.stop.is_set():
        if not _acquire(leadership):
            if not standing_by:
                log.info(
                    "Standing by: another subscriber is active on the channel",
                    extra={"channel": channel, "leader": _holder(leadership)},
                )
                standing_by = True
            shutdown.stop.wait(STANDBY_POLL)
            continue
        standing_by = False
        log.info("Active subscriber for the channel", extra={"channel": channel})
        lead(stream, leadership, heartbeat, shutdown.stop)


def lead(
    stream: SessionLoop,
    leadership: Leadership,
    heartbeat: Heartbeat,
    stop: threading.Event,
) -> None:
    lost = threading.Event()
    keeper = Keeper(leadership, heartbeat.touch, lost)
    keeper.start()
    try:
        heartbeat.state("starting", transport=stream.transport)
        stream.run(lost)
    finally:
        keeper.stop()
        if stop.is_set():
            with contextlib.suppress(redis.RedisError):
                heartbeat.state("stopped")
            with contextlib.suppress(redis.RedisError):
                leadership.release()  # the standby takes over now, not after the TTL


def build_intake(
    settings: Settings, connection: redis.Redis, leadership: Leadership, **options: Any
) -> Intake:
    """The intake both transports feed, fenced by the leader lock, stamping times by Redis's
    clock (health and doctor on other hosts judge the heartbeat's and dead letters' ages)."""
    queue = provisioning_queue(connection, settings.queue_name, settings.job_timeout)
    return Intake(
        connection,
        queue,
        settings.events.channel,
        job_timeout=settings.job_timeout,
        fence=(leadership.key, leadership.value),
        clock=lambda: server_now(connection),
        **options,
    )


def build_stream(
    settings: Settings,
    connection: redis.Redis,
    heartbeat: Heartbeat,
    leadership: Leadership,
    shutdown: Shutdown,
) -> SessionLoop:
    if settings.events.transport == "pubsub":
        return build_pubsub_stream(settings, connection, heartbeat, leadership, shutdown)
    sf, events = settings.salesforce, settings.events

    def open_client(token: Token) -> BayeuxClient:
        return BayeuxClient.for_org(token, sf, TimeoutSession(sf.connect_timeout, sf.timeout))

    intake = build_intake(settings, connection, leadership)
    return Stream(
        channel=events.channel,
        mode=events.replay,
        tokens=TokenProvider(sf, connection),
        open_client=open_client,
        intake=intake,
        replay_store=ReplayStore(connection, events.channel),
        heartbeat=heartbeat,
        stop=shutdown.stop,
        interruptible=shutdown.interruptible,
    )


def build_pubsub_stream(
    settings: Settings,
    connection: redis.Redis,
    heartbeat: Heartbeat,
    leadership: Leadership,
    shutdown: Shutdown,
) -> PubSubStream:
    """The same intake, lock and heartbeat as CometD; only the transport and its key differ."""
    events = settings.events
    replay_store = PubSubReplayStore(connection, events.channel, (leadership.key, leadership.value))
    intake = build_intake(settings, connection, leadership, replay_key=replay_store.key)
    return PubSubStream(
        channel=events.channel,
        mode=events.replay,
        tokens=TokenProvider(settings.salesforce, connection),
        endpoint=events.pubsub_endpoint,
        intake=intake,
        replay_store=replay_store,
        heartbeat=heartbeat,
        stop=shutdown.stop,
        stall_timeout=events.pubsub_stall_timeout,
        call_timeout=settings.salesforce.timeout,
    )


def _acquire(leadership: Leadership) -> bool:
    try:
        return leadership.acquire()
    except redis.RedisError as exc:
        log.warning("Cannot reach Redis for the leader lock", extra={"error": str(exc)})
        return False


def _holder(leadership: Leadership) -> str | None:
    try:
        return leadership.holder()
    except redis.RedisError:
        return None
