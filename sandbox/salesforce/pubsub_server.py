"""The sandbox's Pub/Sub API endpoint (gRPC `eventbus.v1.PubSub`), serving the same event bus as
its CometD endpoint: an approval is delivered on both.

As Salesforce does: auth by the metadata `accesstoken`, `instanceurl`, `tenantid` (UNAUTHENTICATED
with the auth `error-code` trailer otherwise, also mid-stream once the token is revoked); Avro
payloads with the schema fetched by `GetSchema` (id = MD5 fingerprint, so adding a field makes a
new id); replay ids as 8 opaque big-endian bytes (the bus's integer, so both transports name the
same event alike); flow control (at most 100 outstanding, delivery only against `num_requested`);
an unknown or purged CUSTOM id refused with INVALID_ARGUMENT and the `replayid.corrupted` code;
empty keepalives carrying `latest_replay_id` every `keepalive` seconds. One liberty: when there is
nothing to deliver at once, the first keepalive goes out as soon as the subscription is set up,
so clients learn promptly that it is.

Faults from the shared FaultBook: target `pubsub.subscribe` (when a stream opens), kinds
`unauthenticated`, `unavailable` (INTERNAL "The service is unavailable"), `invalid_replay`; target
`pubsub.fetch` (before each response), kinds `unavailable`, `close` (UNAVAILABLE "RST_STREAM
closed stream", a stream closed mid-flight), `silence` (`seconds`: no events, no keepalive),
`unauthenticated` (the session expired under the open stream) and `duplicate` (the last batch is
delivered again).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from io import BytesIO
from typing import Any

import fastavro
import grpc

from sandbox.faults import FaultBook
from sandbox.salesforce.eventbus import EventBus
from sandbox.salesforce.oauth import Tokens
from shared import pubsub_api_pb2 as pb
from shared import pubsub_api_pb2_grpc as pb_grpc

MAX_REQUESTED = 100
AUTH_ERROR = "sfdc.platform.eventbus.grpc.service.auth.error"
UNAVAILABLE_ERROR = "sfdc.platform.eventbus.grpc.service.unavailable"
REPLAY_CORRUPTED = "sfdc.platform.eventbus.grpc.subscription.fetch.replayid.corrupted"
AUTH_MESSAGE = (
    "An authentication exception occurred. Provide valid authentication via metadata headers."
)
UNAVAILABLE_MESSAGE = "The service is unavailable. Try again later."
WORKERS = 32  # one per open stream or unary call


def replay_bytes(replay_id: int) -> bytes:
    return int(replay_id).to_bytes(8, "big")


def replay_int(raw: bytes) -> int | None:
    return int.from_bytes(raw, "big") if len(raw) == 8 else None


def event_schema(topic: str, extra_fields: tuple[str, ...] = ()) -> dict[str, Any]:
    """A platform event's Avro schema as Salesforce shapes it (custom fields nullable)."""
    name = topic.rsplit("/", 1)[-1]
    fields: list[dict[str, Any]] = [
        {"name": "CreatedDate", "type": "long", "doc": "CreatedDate:DateTime"},
        {"name": "CreatedById", "type": "string", "doc": "CreatedBy:EntityId"},
    ]
    for field in ("OrderId__c", *extra_fields):
        fields.append(
            {"name": field, "type": ["null", "string"], "doc": "Data:Text", "default": None}
        )
    return {"name": name, "namespace": "com.sforce.eventbus", "type": "record", "fields": fields}


def schema_id(schema: dict[str, Any]) -> str:
    """Base64url MD5 of the canonical form, 22 characters, as Salesforce's ids are."""
    canonical = fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(schema))
    digest = hashlib.md5(canonical.encode()).digest()  # a fingerprint, not security
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _epoch_ms(created: Any) -> int:
    if isinstance(created, int | float):
        return int(created)
    try:
        moment = datetime.strptime(str(created), "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return int(time.time() * 1000)
    return int(moment.astimezone(UTC).timestamp() * 1000)


class _Stream:
    """One Subscribe call's flow-control state, fed by the thread reading its requests."""

    def __init__(self) -> None:
        self.requested = 0
        self.changed = threading.Condition()
        self.closed = False

    def add(self, count: int) -> None:
        with self.changed:
            self.requested = min(MAX_REQUESTED, self.requested + max(0, count))
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()


@dataclass(eq=False)
class PubSubServer(pb_grpc.PubSubServicer):
    bus: EventBus
    faults: FaultBook
    tokens: Tokens
    _: KW_ONLY
    keepalive: float = 270.0
    port: int = 0  # once started

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._extra_fields: dict[str, tuple[str, ...]] = {c: () for c in self.bus.channels}
            self._schemas: dict[str, str] = {}
            self._counters = dict.fromkeys(
                ("subscribe", "delivered", "keepalives", "get_schema", "refused"), 0
            )
            for channel in self.bus.channels:
                self._register(channel)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def add_field(self, channel: str, name: str) -> str:
        """A new custom field on the event (a schema change); the new schema id."""
        with self._lock:
            if name not in self._extra_fields[channel]:
                self._extra_fields[channel] += (name,)
            return self._register(channel)

    # --- serving ------------------------------------------------------------------------------

    def start(self, host: str, port: int, certificate: bytes, key: bytes) -> int:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS))
        pb_grpc.add_PubSubServicer_to_server(self, server)
        credentials = grpc.ssl_server_credentials([(key, certificate)])
        self.port = server.add_secure_port(f"{host}:{port}", credentials)
        server.start()
        self._server = server
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None
        self.bus.wake()

    # --- the RPCs -----------------------------------------------------------------------------

    def GetSchema(self, request: pb.SchemaRequest, context: grpc.ServicerContext) -> pb.SchemaInfo:
        self._authenticate(context)
        self._count("get_schema")
        with self._lock:
            found = self._schemas.get(request.schema_id)
        if found is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no schema {request.schema_id}")
        return pb.SchemaInfo(schema_json=found, schema_id=request.schema_id, rpc_id=_rpc_id())

    def GetTopic(self, request: pb.TopicRequest, context: grpc.ServicerContext) -> pb.TopicInfo:
        self._authenticate(context)
        if not self.bus.has_channel(request.topic_name):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no topic {request.topic_name}")
        return pb.TopicInfo(
            topic_name=request.topic_name,
            tenant_guid=self.tokens.org_id,
            can_publish=True,
            can_subscribe=True,
            schema_id=self._current_schema(request.topic_name)[0],
            rpc_id=_rpc_id(),
        )

    def Subscribe(
        self, requests: Iterator[pb.FetchRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.FetchResponse]:
        token = self._authenticate(context)
        first = next(requests, None)
        if first is None:
            return
        topic = first.topic_name
        if not self.bus.has_channel(topic):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown topic {topic}")
        self._open_faults(context)
        cursor = self._start(first, topic, context)
        self._count("subscribe")
        stream = _Stream()
        stream.add(first.num_requested)
        reader = threading.Thread(target=self._read, args=(requests, stream, topic), daemon=True)
        reader.start()
        context.add_callback(stream.close)
        try:
            yield from self._deliver(topic, cursor, stream, token, context)
        finally:
            stream.close()

    # --- helpers ------------------------------------------------------------------------------

    def _authenticate(self, context: grpc.ServicerContext) -> str:
        metadata = dict(context.invocation_metadata())
        token = metadata.get("accesstoken", "")
        if (
            not self.tokens.is_valid(token)
            or metadata.get("tenantid") != self.tokens.org_id
            or not metadata.get("instanceurl")
        ):
            self._refuse_auth(context)
        return str(token)

    def _refuse_auth(self, context: grpc.ServicerContext) -> None:
        self._count("refused")
        context.set_trailing_metadata((("error-code", AUTH_ERROR), ("rpc-id", _rpc_id())))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{AUTH_MESSAGE} rpcId: {_rpc_id()}")

    def _open_faults(self, context: grpc.ServicerContext) -> None:
        fault = self.faults.take("pubsub.subscribe")
        if fault is None or fault.kind == "invalid_replay":
            if fault is not None:
                self._refuse_replay(context)
            return
        if fault.kind == "unauthenticated":
            self._refuse_auth(context)
        self._unavailable(context)

    def _unavailable(self, context: grpc.ServicerContext) -> None:
        context.set_trailing_metadata(
            (("error-code", UNAVAILABLE_ERROR), ("rpc-id", _rpc_id()), ("type", "UNAVAILABLE"))
        )
        context.abort(grpc.StatusCode.INTERNAL, UNAVAILABLE_MESSAGE)

    def _refuse_replay(self, context: grpc.ServicerContext) -> None:
        context.set_trailing_metadata((("error-code", REPLAY_CORRUPTED), ("rpc-id", _rpc_id())))
        context.abort(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"The Replay ID validation failed. rpcId: {_rpc_id()}",
        )

    def _start(self, first: pb.FetchRequest, topic: str, context: grpc.ServicerContext) -> int:
        """The replay id after which delivery starts."""
        if first.replay_preset == pb.ReplayPreset.EARLIEST:
            return self.bus.floor(topic)
        if first.replay_preset == pb.ReplayPreset.CUSTOM:
            after = replay_int(first.replay_id)
            if after is None or not self._resumable(topic, after):
                self._refuse_replay(context)
            return int(after or 0)
        return self.bus.tip(topic)

    def _resumable(self, topic: str, after: int) -> bool:
        """A retained event's id, or the tip a keepalive handed out (unless since purged)."""
        if self.bus.is_retained(topic, after):
            return True
        floor = self.bus.floor(topic)
        return after == self.bus.tip(topic) and (after > floor or floor == 0)

    def _read(self, requests: Iterator[pb.FetchRequest], stream: _Stream, topic: str) -> None:
        try:
            for request in requests:
                if request.topic_name and request.topic_name != topic:
                    break  # Salesforce answers INVALID_ARGUMENT; the sandbox just stops reading
                stream.add(request.num_requested)
        except grpc.RpcError:
            pass
        finally:
            stream.close()

    def _deliver(
        self,
        topic: str,
        cursor: int,
        stream: _Stream,
        token: str,
        context: grpc.ServicerContext,
    ) -> Iterator[pb.FetchResponse]:
        last_sent = float("-inf")  # the first keepalive at once (module docstring)
        last_batch: list[dict[str, Any]] = []
        while context.is_active() and not stream.closed:
            if not self.tokens.is_valid(token):
                self._refuse_auth(context)
            version = self.bus.version()
            with stream.changed:
                wanted = stream.requested
            found = self.bus.after(topic, cursor, wanted) if wanted else []
            # Keepalives only while requested events are pending, as at Salesforce.
            if found or (wanted and time.monotonic() - last_sent >= self.keepalive):
                if self._fetch_faults(context) == "duplicate":
                    found = last_batch + found  # delivered again, as at-least-once allows
                if found:
                    cursor = max(cursor, found[-1]["event"]["replayId"])
                    last_batch = found
                    yield self._batch(topic, found, stream)
                else:
                    yield self._keepalive(topic, stream)
                last_sent = time.monotonic()
                continue
            self._wait(stream, version, wanted, min(self.keepalive, 0.5))

    def _wait(self, stream: _Stream, version: int, wanted: int, timeout: float) -> None:
        if wanted:
            self.bus.wait_for_change(version, timeout)
            return
        with stream.changed:
            stream.changed.wait_for(lambda: stream.requested or stream.closed, timeout)

    def _fetch_faults(self, context: grpc.ServicerContext) -> str | None:
        fault = self.faults.take("pubsub.fetch")
        if fault is None or fault.kind == "duplicate":
            return fault.kind if fault else None
        if fault.kind == "silence":
            deadline = time.monotonic() + float(fault.params.get("seconds", 30))
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.05)
            return fault.kind
        if fault.kind == "close":
            context.abort(grpc.StatusCode.UNAVAILABLE, "RST_STREAM closed stream. HTTP/2 error")
        if fault.kind == "unauthenticated":  # the session expired under an open stream
            self._refuse_auth(context)
        self._unavailable(context)

    def _batch(self, topic: str, events: list[dict[str, Any]], stream: _Stream) -> pb.FetchResponse:
        sid, parsed = self._current_schema(topic)
        consumed = [self._consumer_event(e, sid, parsed) for e in events]
        with stream.changed:
            stream.requested -= len(events)
            pending = stream.requested
        self._count("delivered", len(events))
        return pb.FetchResponse(
            events=consumed,
            latest_replay_id=consumed[-1].replay_id,
            rpc_id=_rpc_id(),
            pending_num_requested=pending,
        )

    def _keepalive(self, topic: str, stream: _Stream) -> pb.FetchResponse:
        self._count("keepalives")
        with stream.changed:
            pending = stream.requested
        return pb.FetchResponse(
            latest_replay_id=replay_bytes(self.bus.tip(topic)),
            rpc_id=_rpc_id(),
            pending_num_requested=pending,
        )

    def _consumer_event(self, event: dict[str, Any], sid: str, parsed: Any) -> pb.ConsumerEvent:
        record = {}
        for field in parsed["fields"]:
            value = event["payload"].get(field["name"])
            if field["name"] == "CreatedDate":
                value = _epoch_ms(value)
            elif value is not None:  # lone surrogates (bad-input tests) cannot be UTF-8
                value = str(value).encode("utf-8", "replace").decode()
            record[field["name"]] = "" if value is None and field["type"] == "string" else value
        out = BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        return pb.ConsumerEvent(
            event=pb.ProducerEvent(
                id=event["event"]["EventUuid"], schema_id=sid, payload=out.getvalue()
            ),
            replay_id=replay_bytes(event["event"]["replayId"]),
        )

    def _register(self, channel: str) -> str:
        """Record the channel's current schema (caller holds the lock); its id."""
        schema = event_schema(channel, self._extra_fields[channel])
        sid = schema_id(schema)
        self._schemas[sid] = json.dumps(schema)
        return sid

    def _current_schema(self, channel: str) -> tuple[str, Any]:
        with self._lock:
            schema = event_schema(channel, self._extra_fields[channel])
        return schema_id(schema), fastavro.parse_schema(schema)

    def _count(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counters[name] += by


def _rpc_id() -> str:
    return str(uuid.uuid4())
