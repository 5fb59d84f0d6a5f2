"""The active subscriber's loop over the Pub/Sub API (gRPC): Subscribe streams one after another.

A stream opens with one FetchRequest (topic, replay preset or stored id, 100 requested) and the
per-call metadata `accesstoken`, `instanceurl`, `tenantid` from the shared token cache. Each
response: top up first when `pending_num_requested` reaches 0 (Salesforce closes a stream left
at 0 for about a minute, so no slow work comes before it), then each event to the same intake
as CometD, or for an empty keepalive, store its `latest_replay_id`. A stream ends on any gRPC
error, the server closing it, or the watchdog (no event and no keepalive for
SF_PUBSUB_STALL_TIMEOUT); the loop then backs off with jitter and opens a new one. After
UNAUTHENTICATED it gets a new token and retries at once, once; a second in a row backs off. A
corrupted or expired stored id (INVALID_ARGUMENT, replay-id error code) falls back to EARLIEST,
loudly, recorded as a possible gap exactly as the CometD path does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from shared import pubsub_api_pb2 as pb
from shared import pubsub_api_pb2_grpc as pb_grpc
from shared.sfauth import Token
from subscriber import avro_events, pubsub_replay
from subscriber.intake import NotLeader
from subscriber.pubsub_replay import Position, PubSubReplayStore
from subscriber.session import Restart, SessionLoop
from subscriber.watchdog import STALL_FACTOR

log = logging.getLogger(__name__)

BATCH = 100  # Salesforce's cap on outstanding num_requested per stream
MONITOR_STEP = 0.2  # how often stop, leadership and the watchdog are looked at


def open_channel(endpoint: str) -> grpc.Channel:
    """TLS to the endpoint; roots from grpc's bundle or GRPC_DEFAULT_SSL_ROOTS_FILE_PATH.

    gRPC's own keepalive pings stay off: servers answer frequent pings with GOAWAY, and the
    watchdog covers a dead stream."""
    return grpc.secure_channel(endpoint, grpc.ssl_channel_credentials())


def metadata(token: Token) -> tuple[tuple[str, str], ...]:
    return (
        ("accesstoken", token.access_token),
        ("instanceurl", token.instance_url),
        ("tenantid", token.org_id),
    )


def trailers(exc: grpc.RpcError) -> dict[str, str]:
    found = {}
    with contextlib.suppress(Exception):  # a locally cancelled call may have none
        for key, value in exc.trailing_metadata() or ():
            found[key] = value if isinstance(value, str) else value.decode(errors="replace")
    return found


def status_name(exc: grpc.RpcError) -> str:
    code = exc.code() if hasattr(exc, "code") else None
    return code.name if code is not None else "UNKNOWN"


def _requests(pending: queue.Queue[pb.FetchRequest | None]) -> Iterator[pb.FetchRequest]:
    """The request side of the stream: stays open until the session puts None."""
    while (request := pending.get()) is not None:
        yield request


class _Monitor(threading.Thread):
    """Cancels the call when asked to stop, when leadership is lost, or when it has gone deaf."""

    def __init__(self, stream: PubSubStream, call: Any) -> None:
        super().__init__(daemon=True, name="pubsub-monitor")
        self.stream = stream
        self.call = call
        self.reason: str | None = None
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.wait(MONITOR_STEP):
            if self.stream._done():
                self.reason = "stopping"
            elif self.stream._stalled():
                self.reason = (
                    "watchdog: no event or keepalive within "
                    f"{self.stream.stall_timeout:g}s (SF_PUBSUB_STALL_TIMEOUT)"
                )
            else:
                continue
            self.call.cancel()
            return


class PubSubStream(SessionLoop):
    replay: PubSubReplayStore  # narrowed from SessionLoop's
    transport = "pubsub"

    def __init__(
        self,
        *,
        endpoint: str,
        stall_timeout: float,
        call_timeout: float,
        open_channel: Callable[[str], grpc.Channel] = open_channel,
        **common: Any,  # SessionLoop's: channel, mode, tokens, intake, replay_store, ...
    ) -> None:
        super().__init__(**common)
        self.endpoint = endpoint
        self.stall_timeout = stall_timeout
        self.call_timeout = call_timeout
        self.open_channel = open_channel
        self.schemas = avro_events.Schemas(self._get_schema)
        self._stub: pb_grpc.PubSubStub | None = None
        self._override: Position | None = None  # the fallback after a refused id, used once
        self._reauth_tried = False
        self._last_seen = 0.0

    def _stalled(self) -> bool:
        return self.clock() - self._last_seen > self.stall_timeout

    # --- one stream ---------------------------------------------------------------------------

    def _session(self) -> None:
        self.heartbeat.state("connecting")
        self._token = self._fresh_token()
        channel = self.open_channel(self.endpoint)
        try:
            self._stub = pb_grpc.PubSubStub(channel)
            self._subscribe(self._position())
        finally:
            self._stub = None
            channel.close()

    def _fresh_token(self) -> Token:
        if self._reauth:
            self._reauth = False
            token = self.tokens.refresh(self._token)
        else:
            token = self.tokens.current()
        if not token.org_id:  # cached by a release that did not keep the org id
            token = self.tokens.refresh(token)
        return token

    def _position(self) -> Position:
        if self._override is not None:
            position, self._override = self._override, None
            return position
        return pubsub_replay.start_position(
            self.mode, self.replay.get(), not self._subscribed_before
        )

    def _subscribe(self, position: Position) -> None:
        assert self._stub is not None and self._token is not None
        pending: queue.Queue[pb.FetchRequest | None] = queue.Queue()
        pending.put(
            pb.FetchRequest(
                topic_name=self.channel,
                replay_preset=pb.ReplayPreset.Value(position.preset),
                replay_id=position.replay_id,
                num_requested=BATCH,
            )
        )
        self._last_seen = self.clock()
        call = self._stub.Subscribe(_requests(pending), metadata=metadata(self._token))
        monitor = _Monitor(self, call)
        monitor.start()
        subscribed = False
        try:
            for response in call:
                if not subscribed:
                    self._subscribed(position)
                    subscribed = True
                self._take(response, pending)
        except grpc.RpcError as exc:
            if monitor.reason == "stopping" or self._done():
                return
            raise monitor_or(monitor.reason, self._refused(exc, position)) from exc
        finally:
            monitor.finished.set()
            pending.put(None)
            call.cancel()  # the old stream is closed before a new one opens: no duplicates
        if not self._done():
            raise Restart("the server closed the stream")

    def _subscribed(self, position: Position) -> None:
        self._subscribed_before = True
        self._reauth_tried = False
        stored = self.replay.get()
        log.info(
            "Subscribed to platform event channel",
            extra={
                "channel": self.channel,
                "transport": "pubsub",
                "replay_from": position.describe(),
                "stored_replay_id": stored.hex() if stored else None,
                "replay_mode": self.mode,
            },
        )

    def _take(self, response: pb.FetchResponse, pending: queue.Queue[Any]) -> None:
        """One response: top up before anything slow, then the events or the keepalive."""
        self._last_seen = self.clock()
        if response.pending_num_requested <= 0:
            pending.put(pb.FetchRequest(num_requested=BATCH))
        self.heartbeat.connected(self.stall_timeout / STALL_FACTOR)
        self._healthy = True
        for consumed in response.events:
            self._accept(consumed)
        # Salesforce's advice: keep a keepalive's id so a resubscription does not start far
        # back. Every event before it was taken in above, in order.
        keepalive = not response.events and response.latest_replay_id
        if keepalive and not self.replay.set(response.latest_replay_id):
            raise NotLeader("the leader lock is no longer ours")

    def _accept(self, consumed: pb.ConsumerEvent) -> None:
        event = consumed.event
        # A failed GetSchema raises out of the stream: it restarts and the event comes again.
        parsed = self.schemas.get(event.schema_id)
        try:
            record = avro_events.decode(event.payload, parsed)
        except avro_events.UNDECODABLE as exc:
            # Passed on without a payload, as a malformed CometD event is: the worker refuses
            # it, and the stream does not stall on it.
            log.error(
                "Platform event payload could not be decoded",
                extra={"event_uuid": event.id, "schema_id": event.schema_id, "error": str(exc)},
            )
            record = {}
        replay_id = pubsub_replay.as_int(consumed.replay_id)
        data = avro_events.event_data(event.id, replay_id, record)
        self.intake.accept(data, position=consumed.replay_id.hex())

    def _get_schema(self, schema_id: str) -> str:
        assert self._stub is not None and self._token is not None
        info = self._stub.GetSchema(
            pb.SchemaRequest(schema_id=schema_id),
            metadata=metadata(self._token),
            timeout=self.call_timeout,
        )
        return str(info.schema_json)

    # --- refusals -----------------------------------------------------------------------------

    def _refused(self, exc: grpc.RpcError, position: Position) -> Restart:
        code, found = status_name(exc), trailers(exc)
        details = exc.details() if hasattr(exc, "details") else ""
        reason = f"{code}: {details} {found.get('error-code', '')}".strip()
        if pubsub_replay.is_invalid_replay(code, found) and position.preset == "CUSTOM":
            self._fall_back(position, reason)
            return Restart(reason, now=True)
        if code == "UNAUTHENTICATED":
            once = not self._reauth_tried
            self._reauth_tried = True
            return Restart(reason, reauth=True, now=once)
        return Restart(reason)

    def _fall_back(self, position: Position, error: str) -> None:
        fallback = pubsub_replay.fallback_position()
        log.error(
            "Replay id refused as outside retention: possible gap, events published "
            "meanwhile may never be delivered; check orders approved in that period",
            extra={
                "channel": self.channel,
                "transport": "pubsub",
                "requested_replay_id": position.describe(),
                "fallback": fallback.describe(),
                "error": error,
            },
        )
        self.heartbeat.record_fallback(position.describe(), fallback.describe(), error)
        self._override = fallback


def monitor_or(reason: str | None, refusal: Restart) -> Restart:
    """The monitor's reason when it cancelled the call (the RpcError is then only CANCELLED)."""
    return Restart(reason) if reason else refusal
