"""The Pub/Sub transport: its pure decisions, the sandbox's gRPC endpoint seen by a real gRPC
client over TLS, and the subscriber process on the situations only Pub/Sub has (schemas, a
refused token, flow control). The situations both transports share are in
tests/subscriber/test_process.py, parametrized."""

from __future__ import annotations

import json
import queue
from collections.abc import Iterator
from io import BytesIO

import fastavro
import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox.http_server import wait_until
from sandbox.salesforce.pubsub_server import event_schema
from shared import keys
from shared import pubsub_api_pb2 as pb
from shared import pubsub_api_pb2_grpc as pb_grpc
from shared.config import DEFAULT_CHANNEL
from shared.sfauth import Token, TokenProvider, org_id_of
from subscriber import pubsub_replay
from subscriber.avro_events import UNDECODABLE, iso_datetime
from subscriber.avro_events import decode as decode_payload
from subscriber.pubsub import metadata
from subscriber.pubsub_replay import Position
from tests.subscriber.test_process import (
    ENQUEUED,
    RESTARTING,
    SUBSCRIBED,
    messages,
    publish,
    queued,
    start,
    wait_for_jobs,
)

DEADLINE = 20  # seconds: no call in these tests may hang the suite


# --- pure decisions ----------------------------------------------------------------------------

STORED = bytes.fromhex("0000000000001267")


@pytest.mark.parametrize(
    ("mode", "stored", "first", "expected"),
    [
        ("LATEST", None, True, Position("LATEST")),
        ("LATEST", STORED, True, Position("CUSTOM", STORED)),
        ("LATEST", STORED, False, Position("CUSTOM", STORED)),
        ("ALL", STORED, True, Position("EARLIEST")),
        ("ALL", STORED, False, Position("CUSTOM", STORED)),
        ("ALL", None, False, Position("EARLIEST")),
    ],
)
def test_start_position(mode, stored, first, expected):
    assert pubsub_replay.start_position(mode, stored, first) == expected


@pytest.mark.parametrize(
    ("code", "error_code", "invalid"),
    [
        ("INVALID_ARGUMENT", pubsub_replay.REPLAY_ERROR_CODES[0], True),
        ("INVALID_ARGUMENT", pubsub_replay.REPLAY_ERROR_CODES[1], True),
        ("INVALID_ARGUMENT", "sfdc.platform.eventbus.grpc.topic.invalid", False),
        ("INTERNAL", pubsub_replay.REPLAY_ERROR_CODES[0], False),
        ("INVALID_ARGUMENT", "", False),
    ],
)
def test_only_the_replay_id_error_codes_mean_a_refused_id(code, error_code, invalid):
    assert pubsub_replay.is_invalid_replay(code, {"error-code": error_code}) is invalid


def test_the_fallback_replays_everything_retained():
    assert pubsub_replay.fallback_position() == Position("EARLIEST")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"\x00" * 7 + b"\x2a", 42), (b"\x01\x02", None), (b"", None)],
)
def test_replay_id_as_the_number_it_carries(raw, expected):
    assert pubsub_replay.as_int(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("0000000000001267", STORED), ("", None), ("xyz", None), (None, None), (b"2a", b"\x2a")],
)
def test_stored_hex_parses(raw, expected):
    assert pubsub_replay.parse(raw) == expected


def test_created_date_reads_as_cometd_writes_it():
    assert iso_datetime(1_767_225_600_007) == "2026-01-01T00:00:00.007Z"
    assert iso_datetime("already text") == "already text"


@pytest.mark.parametrize(
    ("url", "org"),
    [
        (
            "https://login.salesforce.com/id/00D5g000004ABCDEAA/0055g00000XYZ12AAA",
            "00D5g000004ABCDEAA",
        ),
        ("", ""),
        ("https://x/elsewhere", ""),
    ],
)
def test_the_tenant_id_comes_from_the_identity_url(url, org):
    assert org_id_of(url) == org


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.binary(max_size=80))
def test_arbitrary_bytes_decode_or_fail_as_undecodable(payload):
    parsed = fastavro.parse_schema(event_schema(DEFAULT_CHANNEL))
    try:
        record = decode_payload(payload, parsed)
    except UNDECODABLE:
        return
    assert isinstance(record, dict)


# --- the sandbox's endpoint, through a real gRPC client ----------------------------------------


@pytest.fixture
def token(app_settings, redis_conn) -> Token:
    return TokenProvider(app_settings.salesforce, redis_conn).current()


@pytest.fixture
def stub(sandbox) -> Iterator[pb_grpc.PubSubStub]:
    roots = sandbox.material.ca_path.read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    with grpc.secure_channel(sandbox.env["SF_PUBSUB_ENDPOINT"], credentials) as channel:
        yield pb_grpc.PubSubStub(channel)


class Subscription:
    """One Subscribe call fed from a queue, so the test decides when to top up."""

    def __init__(self, stub, token: Token, first: pb.FetchRequest) -> None:
        self.pending: queue.Queue[pb.FetchRequest | None] = queue.Queue()
        self.pending.put(first)
        self.call = stub.Subscribe(self._requests(), metadata=metadata(token), timeout=DEADLINE)

    def _requests(self) -> Iterator[pb.FetchRequest]:
        while (request := self.pending.get()) is not None:
            yield request

    def next(self) -> pb.FetchResponse:
        return next(self.call)

    def next_events(self) -> pb.FetchResponse:
        while not (response := self.next()).events:
            pass
        return response

    def close(self) -> None:
        self.pending.put(None)
        self.call.cancel()


def first_request(preset: str = "LATEST", replay_id: bytes = b"", n: int = 100):
    return pb.FetchRequest(
        topic_name=DEFAULT_CHANNEL,
        replay_preset=pb.ReplayPreset.Value(preset),
        replay_id=replay_id,
        num_requested=n,
    )


def decode(stub, token: Token, event: pb.ProducerEvent) -> dict:
    info = stub.GetSchema(
        pb.SchemaRequest(schema_id=event.schema_id), metadata=metadata(token), timeout=DEADLINE
    )
    parsed = fastavro.parse_schema(json.loads(info.schema_json))
    return fastavro.schemaless_reader(BytesIO(event.payload), parsed, None)


def test_no_valid_metadata_is_unauthenticated_with_the_auth_error_code(stub, token, sandbox):
    wrong = Token(token.access_token, token.instance_url, "00D000000000000AAA")
    for bad in (Token("nope", token.instance_url, token.org_id), wrong):
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetTopic(
                pb.TopicRequest(topic_name=DEFAULT_CHANNEL), metadata=metadata(bad), timeout=5
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        trailers = dict(caught.value.trailing_metadata())
        assert trailers["error-code"] == "sfdc.platform.eventbus.grpc.service.auth.error"


def test_an_approval_is_delivered_on_both_endpoints_alike(stub, token, sandbox, sandbox_admin):
    from sandbox.fixtures import standard_document

    sandbox_admin.load(standard_document(orders=1))
    subscription = Subscription(stub, token, first_request())
    try:
        subscription.next()  # the subscription is set up
        approved = sandbox_admin.approve("o1")
        response = subscription.next_events()
    finally:
        subscription.close()
    [consumed] = response.events
    assert consumed.event.id == approved["event"]["EventUuid"]
    assert pubsub_replay.as_int(consumed.replay_id) == approved["event"]["replayId"]
    record = decode(stub, token, consumed.event)
    assert record["OrderId__c"] == approved["payload"]["OrderId__c"]
    assert iso_datetime(record["CreatedDate"]) == approved["payload"]["CreatedDate"]
    assert [e["event"]["EventUuid"] for e in sandbox_admin.events()] == [consumed.event.id]


def test_flow_control_delivers_only_what_was_requested(stub, token, sandbox, sandbox_admin):
    published = [publish(sandbox_admin, f"80100000000{n:04d}AAA") for n in range(150)]
    subscription = Subscription(stub, token, first_request("EARLIEST", n=500))  # capped at 100
    try:
        first = subscription.next_events()
        assert len(first.events) == 100 and first.pending_num_requested == 0
        subscription.pending.put(pb.FetchRequest(num_requested=100))
        second = subscription.next_events()
    finally:
        subscription.close()
    assert len(second.events) == 50 and second.pending_num_requested == 50
    got = [pubsub_replay.as_int(e.replay_id) for e in (*first.events, *second.events)]
    assert got == [e["event"]["replayId"] for e in published]


def test_a_keepalive_carries_the_latest_replay_id(stub, token, sandbox, sandbox_admin):
    last = publish(sandbox_admin)
    subscription = Subscription(stub, token, first_request())
    try:
        response = subscription.next()
    finally:
        subscription.close()
    assert not response.events
    assert pubsub_replay.as_int(response.latest_replay_id) == last["event"]["replayId"]


@pytest.mark.parametrize("replay_id", [(1).to_bytes(8, "big"), b"garbage"])
def test_an_unknown_replay_id_is_refused_as_corrupted(stub, token, sandbox, replay_id):
    subscription = Subscription(stub, token, first_request("CUSTOM", replay_id))
    with pytest.raises(grpc.RpcError) as caught:
        subscription.next()
    subscription.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trailers = dict(caught.value.trailing_metadata())
    assert pubsub_replay.is_invalid_replay("INVALID_ARGUMENT", trailers)


def test_a_new_field_is_a_new_schema_id(stub, token, sandbox, sandbox_admin):
    before = stub.GetTopic(
        pb.TopicRequest(topic_name=DEFAULT_CHANNEL), metadata=metadata(token), timeout=5
    ).schema_id
    after = sandbox_admin.add_event_field("Note__c")
    assert after != before and len(after) == 22
    info = stub.GetSchema(pb.SchemaRequest(schema_id=after), metadata=metadata(token), timeout=5)
    assert "Note__c" in info.schema_json


# --- the subscriber process --------------------------------------------------------------------

pubsub_only = pytest.mark.slow


@pytest.fixture
def env(app_env) -> dict[str, str]:
    return {**app_env, "SF_EVENTS_TRANSPORT": "pubsub", "SF_PUBSUB_STALL_TIMEOUT": "3"}


@pubsub_only
def test_a_schema_change_decodes_without_a_restart(env, sandbox_admin, redis_conn, services):
    subscriber = start(services, env)
    publish(sandbox_admin, "8010000000000AAAAA")
    wait_for_jobs(redis_conn, 1, subscriber)
    sandbox_admin.add_event_field("Note__c")
    publish(sandbox_admin, "8010000000001AAAAA")
    wait_for_jobs(redis_conn, 2, subscriber)
    assert [job["order_id"] for job in queued(redis_conn)] == [
        "8010000000000AAAAA",
        "8010000000001AAAAA",
    ]
    schemas = [
        line for line in subscriber.lines() if line.get("message") == "Platform event schema loaded"
    ]
    assert len({line["schema_id"] for line in schemas}) == 2
    assert len(messages(subscriber, SUBSCRIBED)) == 1  # one stream throughout
    assert sandbox_admin.sf_counters()["pubsub"]["get_schema"] == 2  # each schema fetched once


@pubsub_only
def test_unauthenticated_gets_a_new_token_once_then_backs_off(
    env, sandbox_admin, redis_conn, services
):
    subscriber = start(services, env)
    logins = sandbox_admin.sf_counters()["logins"]
    sandbox_admin.add_fault("pubsub.subscribe", "unauthenticated", count=2)
    sandbox_admin.add_fault("pubsub.fetch", "close")
    assert wait_until(lambda: len(messages(subscriber, SUBSCRIBED)) == 2, timeout=30)
    restarts = messages(subscriber, RESTARTING)
    assert "RST_STREAM" in restarts[0]["reason"]
    assert ["UNAUTHENTICATED" in r["reason"] for r in restarts[1:]] == [True, True]
    assert restarts[1]["retry_in"] == 0  # the first refusal: a new token and at once
    assert restarts[2]["retry_in"] > 0  # the second in a row: back off
    assert sandbox_admin.sf_counters()["logins"] == logins + 2
    publish(sandbox_admin)
    wait_for_jobs(redis_conn, 1, subscriber)


@pubsub_only
def test_more_events_than_one_request_all_arrive_in_order(env, sandbox_admin, redis_conn, services):
    subscriber = start(services, env)
    published = [publish(sandbox_admin, f"80100000000{n:04d}AAA") for n in range(250)]
    wait_for_jobs(redis_conn, 250, subscriber, timeout=90)
    assert [job["event_uuid"] for job in queued(redis_conn)] == [
        e["event"]["EventUuid"] for e in published
    ]
    assert len(messages(subscriber, ENQUEUED)) == 250
    assert len(messages(subscriber, SUBSCRIBED)) == 1
    stored = redis_conn.get(keys.pubsub_replay_key(DEFAULT_CHANNEL))
    assert int(stored, 16) == published[-1]["event"]["replayId"]
