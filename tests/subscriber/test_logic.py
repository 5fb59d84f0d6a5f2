"""The subscriber's pure decisions, by tables: start position, advice, back-off, watchdog, job."""

from __future__ import annotations

import pytest
import requests

from shared.queueing import job_id_for
from subscriber import replay
from subscriber.advice import Next, after_connect, after_handshake, after_subscribe, backoff_delay
from subscriber.cometd import BayeuxClient, Reply
from subscriber.intake import job_description, job_event, job_meta
from subscriber.leader import lease_is_lost
from subscriber.watchdog import is_stalled

CHANNEL = "/event/OrderProvisionRequested__e"
INVALID = (
    "400::The replayId {1553783} you provided was invalid.  Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)


@pytest.mark.parametrize(
    ("mode", "stored", "first", "expected"),
    [
        ("LATEST", None, True, -1),
        ("LATEST", None, False, -1),
        ("LATEST", 4711, True, 4711),
        ("LATEST", 4711, False, 4711),
        ("LATEST", -2, True, -2),  # `provisioner replay set -2`: a backfill without redeploying
        ("ALL", None, True, -2),
        ("ALL", 4711, True, -2),  # the one-time backfill at process start
        ("ALL", 4711, False, 4711),  # re-subscriptions in the same run resume
        ("ALL", None, False, -2),
    ],
)
def test_start_position(mode, stored, first, expected):
    assert replay.start_position(mode, stored, first) == expected


@pytest.mark.parametrize(("mode", "expected"), [("LATEST", -2), ("ALL", -2)])
def test_fallback_position(mode, expected):
    assert replay.fallback_position(mode) == expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (INVALID, True),
        ("400::The replayId {-7} you provided was invalid.", True),
        (
            "400::The replayId for channel {/event/X__e} wasn't found using the provided replay "
            "ID map {{}}.",
            False,
        ),
        ("403::Unknown client", False),
        ("400::The channel you requested to subscribe to doesn't exist {/event/X}", False),
        ("", False),
    ],
)
def test_is_invalid_replay_error(error, expected):
    assert replay.is_invalid_replay_error(error) is expected


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, None), (b"123", 123), (b"-2", -2), (b" 7 ", 7), (b"abc", None)]
)
def test_parse_stored_replay_id(raw, expected):
    assert replay.parse(raw) == expected


def reply(**fields) -> Reply:
    return Reply.parse({"channel": "/meta/connect", **fields})


@pytest.mark.parametrize(
    ("fields", "disconnected", "expected"),
    [
        ({"successful": True}, False, Next.CONTINUE),
        ({"successful": True}, True, Next.REHANDSHAKE),
        (
            {
                "successful": False,
                "error": "403::Unknown client",
                "advice": {"reconnect": "handshake"},
            },
            False,
            Next.REHANDSHAKE,
        ),
        (
            {"successful": False, "error": "403::Unknown client", "advice": {"reconnect": "none"}},
            True,
            Next.REHANDSHAKE,
        ),
        (
            {
                "successful": False,
                "error": "401::Authentication invalid",
                "advice": {"reconnect": "none"},
            },
            False,
            Next.REAUTH,
        ),
        ({"successful": False, "advice": {"reconnect": "none"}}, False, Next.REAUTH),
        ({"successful": False, "advice": {"reconnect": "retry"}}, False, Next.RETRY),
        ({"successful": False, "advice": {"reconnect": "handshake"}}, False, Next.REHANDSHAKE),
        ({"successful": False, "error": "500::oops"}, False, Next.REHANDSHAKE),
        ({}, False, Next.REHANDSHAKE),  # no "successful" at all is not a success
    ],
)
def test_after_connect(fields, disconnected, expected):
    assert after_connect(reply(**fields), disconnected) is expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"successful": True}, Next.CONTINUE),
        (
            {
                "successful": False,
                "error": "403::Handshake denied",
                "ext": {"sfdc": {"failureReason": "401::Authentication invalid"}},
            },
            Next.REAUTH,
        ),
        ({"successful": False, "error": "401::Request requires authentication"}, Next.REAUTH),
        ({"successful": False, "error": "503::Server unavailable"}, Next.REHANDSHAKE),
    ],
)
def test_after_handshake(fields, expected):
    assert after_handshake(reply(**fields)) is expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"successful": True}, Next.CONTINUE),
        ({"successful": False, "error": "401::Authentication invalid"}, Next.REAUTH),
        ({"successful": False, "error": "403::Unknown client"}, Next.REHANDSHAKE),
        ({"successful": False, "error": INVALID}, Next.REHANDSHAKE),
    ],
)
def test_after_subscribe(fields, expected):
    assert after_subscribe(reply(**fields)) is expected


@pytest.mark.parametrize(
    ("error", "code"), [("403::Unknown client", 403), ("401::x", 401), ("", None), ("oops", None)]
)
def test_reply_code(error, code):
    assert reply(error=error).code == code


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [
        (0, 0.0, 0.25),
        (0, 0.999, 0.49975),
        (1, 0.0, 0.5),
        (3, 0.5, 3.0),
        (10, 0.0, 15.0),  # capped at 30 s, half of it fixed
        (10, 1.0, 30.0),
        (500, 0.0, 15.0),
    ],
)
def test_backoff_delay(attempt, rand, expected):
    assert backoff_delay(attempt, rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("now", "last", "timeout", "stalled"),
    [
        (100.0, 100.0, 110.0, False),
        (320.0, 100.0, 110.0, False),
        (320.1, 100.0, 110.0, True),
        (12.5, 10.0, 1.0, True),
        (11.5, 10.0, 1.0, False),
    ],
)
def test_watchdog(now, last, timeout, stalled):
    assert is_stalled(now, last, timeout) is stalled


@pytest.mark.parametrize(
    ("now", "renewed", "ttl", "lost"), [(5.0, 0.0, 10.0, False), (10.0, 0.0, 10.0, True)]
)
def test_lease_is_lost(now, renewed, ttl, lost):
    assert lease_is_lost(now, renewed, ttl) is lost


@pytest.mark.parametrize(("advised", "read_timeout"), [(110.0, 132.0), (1.0, 3.0), (20.0, 24.0)])
def test_long_poll_read_timeout_exceeds_the_advised_timeout(advised, read_timeout):
    client = BayeuxClient(
        "https://x/cometd/59.0", "t", requests.Session(), connect_timeout=1, request_timeout=1
    )
    client.advised_timeout = advised
    assert client.poll_timeout == pytest.approx(read_timeout)
    assert client.poll_timeout > advised


def data(payload: dict, header: dict) -> dict:
    return {"schema": "s", "payload": payload, "event": header}


UUID = "2ec0e371-1395-457f-9275-be1b527a72f7"
CREATED = "2026-04-09T18:31:40.517Z"


@pytest.mark.parametrize(
    ("message", "order_id", "event_uuid", "replay_id"),
    [
        (
            data(
                {"OrderId__c": "8015g00000ABCDEAA1", "CreatedDate": CREATED},
                {"EventUuid": UUID, "replayId": 2112},
            ),
            "8015g00000ABCDEAA1",
            UUID,
            2112,
        ),
        (data({"CreatedDate": CREATED}, {"EventUuid": UUID, "replayId": 1}), None, UUID, 1),
        (data({"OrderId__c": 42}, {"EventUuid": UUID, "replayId": 1}), 42, UUID, 1),
        (data({"OrderId__c": "x" * 500}, {"EventUuid": UUID, "replayId": 1}), "x" * 100, UUID, 1),
        (data({"OrderId__c": "801"}, {"replayId": "7"}), "801", None, None),
        ({}, None, None, None),
        ("not a dict", None, None, None),
    ],
)
def test_job_event_passes_any_order_id_on(message, order_id, event_uuid, replay_id):
    event = job_event(CHANNEL, message)
    assert event["order_id"] == order_id
    assert event["event_uuid"] == event_uuid
    assert event["replay_id"] == replay_id
    assert event["channel"] == CHANNEL
    assert set(event) == {"order_id", "event_uuid", "replay_id", "published_at", "channel"}


def test_job_meta_and_description_name_the_order_and_event():
    event = job_event(
        CHANNEL,
        data(
            {"OrderId__c": "8015g00000ABCDEAA1", "CreatedDate": CREATED},
            {"EventUuid": UUID, "replayId": 9},
        ),
    )
    assert job_meta(event) == {
        "order_id": "8015g00000ABCDEAA1",
        "event_uuid": UUID,
        "replay_id": 9,
        "event_time": CREATED,
        "source": "event",
    }
    text = job_description(event)
    assert "8015g00000ABCDEAA1" in text and UUID in text and "9" in text and CREATED in text
    assert job_id_for(event["event_uuid"], event["replay_id"]) == f"evt-{UUID}"
