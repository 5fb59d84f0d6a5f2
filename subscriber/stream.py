"""The active subscriber's loop: Bayeux sessions one after another, each event to the intake.

A session is handshake, first connect, subscribe (from the stored replay id), then long-polls.
It ends on advice (`handshake`, `none`), 401, `403::Unknown client`, any transport error, or
the watchdog; the loop then backs off with jitter and starts a fresh session (with a new token
first after an auth failure). It returns when asked to stop or when the leader lock is lost.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from shared.sfauth import Token
from subscriber import replay
from subscriber.advice import Next, after_connect, after_handshake, after_subscribe
from subscriber.cometd import BayeuxClient, Delivery
from subscriber.session import Restart, SessionLoop
from subscriber.watchdog import is_stalled

log = logging.getLogger(__name__)

DISCONNECT_TIMEOUT = 2.0
RETRY_PAUSE = 0.5  # seconds before retrying a refused connect whose advice says "retry"


class Stream(SessionLoop):
    replay: replay.ReplayStore  # narrowed from SessionLoop's
    transport = "cometd"

    def __init__(
        self,
        *,
        open_client: Callable[[Token], BayeuxClient],
        interruptible: Callable[
            [], contextlib.AbstractContextManager[Any]
        ] = contextlib.nullcontext,
        **common: Any,  # SessionLoop's: channel, mode, tokens, intake, replay_store, ...
    ) -> None:
        super().__init__(**common)
        self.open_client = open_client
        self.interruptible = interruptible
        self._last_success = 0.0

    def _session(self) -> None:
        self.heartbeat.state("connecting")
        if self._reauth:
            self._token = self.tokens.refresh(self._token)
            self._reauth = False
        else:
            self._token = self.tokens.current()
        client = self.open_client(self._token)
        try:
            self._open(client)
            self._poll(client)
        finally:
            if self.stop.is_set():
                client.disconnect(DISCONNECT_TIMEOUT)
            client.close()

    def _open(self, client: BayeuxClient) -> None:
        reply = client.handshake()
        if after_handshake(reply) is not Next.CONTINUE:
            raise Restart(
                f"handshake refused: {reply.error} {reply.failure_reason}".strip(),
                reauth=after_handshake(reply) is Next.REAUTH,
            )
        self._follow(client, client.connect())
        self._subscribe(client)
        self._alive(client)

    def _subscribe(self, client: BayeuxClient) -> None:
        stored = self.replay.get()
        position = replay.start_position(self.mode, stored, not self._subscribed_before)
        reply = client.subscribe(self.channel, position)
        if not reply.successful and replay.is_invalid_replay_error(reply.error):
            fallback = replay.fallback_position(self.mode)
            log.error(
                "Replay id refused as outside retention: possible gap, events published "
                "meanwhile may never be delivered; check orders approved in that period",
                extra={
                    "channel": self.channel,
                    "requested_replay_id": position,
                    "fallback": fallback,
                    "error": reply.error,
                },
            )
            self.heartbeat.record_fallback(position, fallback, reply.error)
            position = fallback
            reply = client.subscribe(self.channel, position)
        if after_subscribe(reply) is not Next.CONTINUE:
            raise Restart(
                f"subscribe refused: {reply.error}",
                reauth=after_subscribe(reply) is Next.REAUTH,
            )
        self._subscribed_before = True
        log.info(
            "Subscribed to platform event channel",
            extra={
                "channel": self.channel,
                "replay_from": position,
                "stored_replay_id": stored,
                "replay_mode": self.mode,
            },
        )

    def _poll(self, client: BayeuxClient) -> None:
        while not self._done():
            if is_stalled(self.clock(), self._last_success, client.advised_timeout):
                raise Restart("watchdog: no successful connect reply within twice the timeout")
            with self.interruptible():
                delivery = client.connect()
            if self._follow(client, delivery):
                self._alive(client)
                self._healthy = True  # a later failure starts its back-off from the bottom
                pause = client.interval
            else:  # refused with "retry": not in a hot loop, and the watchdog keeps count
                pause = max(client.interval, RETRY_PAUSE)
            if pause:
                self.stop.wait(pause)

    def _follow(self, client: BayeuxClient, delivery: Delivery) -> bool:
        """Take in the events, then act on the connect reply's advice; True when successful."""
        for message in delivery.events:
            if message.get("channel") == self.channel:
                self.intake.accept(message.get("data"))
        step = after_connect(delivery.reply, delivery.server_disconnected)
        if step not in (Next.CONTINUE, Next.RETRY):
            error = delivery.reply.error or "server disconnected the session"
            raise Restart(f"connect refused: {error}", reauth=step is Next.REAUTH)
        return step is Next.CONTINUE

    def _alive(self, client: BayeuxClient) -> None:
        self._last_success = self.clock()
        self.heartbeat.connected(client.advised_timeout)
