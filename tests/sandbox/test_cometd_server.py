"""The sandbox's CometD endpoint on the wire: TLS on loopback, requests as the client."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox import tls
from sandbox.faults import FaultBook
from sandbox.http_server import Server, wait_until
from sandbox.salesforce.cometd_server import CometdServer
from sandbox.salesforce.eventbus import EventBus

CHANNEL = "/event/OrderProvisionRequested__e"
INVALID_TEXT = (
    "400::The replayId {{{}}} you provided was invalid.  Please provide a valid ID, "
    "-2 to replay all events, or -1 to replay only new events."
)


class Tokens:
    """The token validity the server observes; tests revoke at will."""

    def __init__(self) -> None:
        self.valid = {"good-token"}

    def __call__(self, token: str) -> bool:
        return token in self.valid


class Wire:
    """A bare Bayeux client: one requests.Session (its cookie jar), arrays on the wire."""

    def __init__(self, url: str, ca: Path, token: str | None = "good-token") -> None:
        self.url = url + "/cometd/59.0"
        self.session = requests.Session()
        self.session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
        self.session.verify = str(ca)
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.client_id: str | None = None
        self.next_id = 0

    def post(self, *messages: dict[str, Any], timeout: float = 10.0) -> list[dict[str, Any]]:
        for message in messages:
            self.next_id += 1
            message.setdefault("id", self.next_id)
            if self.client_id and message["channel"] != "/meta/handshake":
                message.setdefault("clientId", self.client_id)
        reply = self.session.post(self.url, json=list(messages), timeout=timeout)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def handshake(self) -> dict[str, Any]:
        [reply] = self.post(
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
                "ext": {"replay": True},
            }
        )
        self.client_id = reply.get("clientId")
        return reply

    def connect(self, timeout: float = 10.0) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        messages = self.post(
            {"channel": "/meta/connect", "connectionType": "long-polling"}, timeout=timeout
        )
        return messages[:-1], messages[-1]

    def subscribe(self, replay: Any = None, channel: str = CHANNEL) -> dict[str, Any]:
        message: dict[str, Any] = {"channel": "/meta/subscribe", "subscription": channel}
        if replay is not None:
            message["ext"] = {"replay": {channel: replay}}
        [reply] = self.post(message)
        return reply

    def start(self, replay: Any = -1) -> None:
        assert self.handshake()["successful"]
        _, first = self.connect()
        assert first["successful"]
        assert self.subscribe(replay)["successful"]


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> tls.Material:
    return tls.generate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tokens() -> Tokens:
    return Tokens()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def faults() -> FaultBook:
    return FaultBook()


@pytest.fixture
def server(bus, faults, tokens) -> CometdServer:
    return CometdServer(bus, faults, tokens, timeout=0.5, reconnect_timeout=30.0, max_batch=3)


@pytest.fixture
def url(server, material) -> Iterator[str]:
    http = Server(server.handle, ssl_context=material.server_context()).start()
    yield http.url
    http.stop()


@pytest.fixture
def wire(url, material) -> Wire:
    return Wire(url, material.ca_path)


def publish(bus: EventBus, order_id: str = "801000000000001AAA") -> dict[str, Any]:
    return bus.publish(CHANNEL, {"OrderId__c": order_id})


def delivered(messages: list[dict[str, Any]]) -> list[int]:
    return [m["data"]["event"]["replayId"] for m in messages if m.get("channel") == CHANNEL]


# Transport rules.


def test_handshake_sets_the_browser_cookie_and_offers_replay(wire):
    reply = wire.handshake()
    assert reply["successful"] is True
    assert reply["id"] == "1"  # echoed as a string
    assert reply["ext"] == {"replay": True, "payload.format": True}
    assert reply["supportedConnectionTypes"] == ["long-polling"]
    assert len(reply["clientId"]) >= 20
    assert "BAYEUX_BROWSER" in wire.session.cookies.get_dict()


def test_bare_object_body_is_http_400(wire):
    reply = wire.session.post(wire.url, json={"channel": "/meta/handshake", "version": "1.0"})
    assert reply.status_code == 400


@pytest.mark.parametrize("path", ["/cometd/36.0", "/cometd/v59.0", "/cometd/", "/cometd/59"])
def test_unsupported_path_versions_are_refused(wire, url, path):
    reply = wire.session.post(url + path, json=[{"channel": "/meta/handshake"}])
    assert reply.status_code == 400


def test_oversized_request_is_413(wire):
    padding = "x" * 33_000
    reply = wire.session.post(wire.url, json=[{"channel": "/meta/handshake", "pad": padding}])
    assert reply.status_code == 413


def test_form_encoded_message_is_accepted(wire):
    body = json.dumps(
        [
            {
                "channel": "/meta/handshake",
                "version": "1.0",
                "supportedConnectionTypes": ["long-polling"],
            }
        ]
    )
    reply = wire.session.post(wire.url, data={"message": body})
    assert reply.json()[0]["successful"] is True


def test_handshake_without_token_requires_authentication(url, material):
    anonymous = Wire(url, material.ca_path, token=None)
    reply = anonymous.handshake()
    assert reply["successful"] is False
    assert reply["error"] == "401::Request requires authentication"


def test_handshake_with_revoked_token_is_denied_with_reason(wire, tokens):
    tokens.valid.clear()
    reply = wire.handshake()
    assert reply["error"] == "403::Handshake denied"
    assert reply["ext"]["sfdc"]["failureReason"] == "401::Authentication invalid"
    assert reply["advice"]["reconnect"] == "none"


def test_oauth_scheme_is_accepted(url, material):
    wire = Wire(url, material.ca_path, token=None)
    wire.session.headers["Authorization"] = "OAuth good-token"
    assert wire.handshake()["successful"] is True


# Connect and advice.


def test_first_connect_returns_at_once_with_advice_then_connects_are_held(wire):
    wire.handshake()
    events, first = wire.connect()
    assert events == []
    assert first["successful"] is True
    assert first["advice"] == {"interval": 0, "timeout": 500, "reconnect": "retry"}
    events, held = wire.connect()
    assert events == [] and held["successful"] is True and "advice" not in held


def test_connect_without_cookie_is_refused(wire):
    wire.handshake()
    wire.session.cookies.clear()
    _, reply = wire.connect()
    assert reply["error"] == (
        f"400::Client {wire.client_id} has established a session, "
        "but no BAYEUX_BROWSER cookie present"
    )


def test_unknown_client_is_403_with_handshake_advice(wire):
    wire.handshake()
    wire.client_id = "nobody"
    _, reply = wire.connect()
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"] == {"reconnect": "handshake", "interval": 0}


def test_client_is_forgotten_after_the_reconnect_timeout(bus, faults, tokens, material):
    quick = CometdServer(bus, faults, tokens, timeout=0.2, reconnect_timeout=0.05)
    http = Server(quick.handle, ssl_context=material.server_context()).start()
    try:
        wire = Wire(http.url, material.ca_path)
        wire.handshake()
        wire.connect()
        wire.connect()  # held 0.2 s, longer than the reconnect timeout: it does not count
        assert quick.counters()["clients"] == 1
        time.sleep(0.2)
        _, reply = wire.connect()
        assert reply["error"] == "403::Unknown client"
        assert quick.counters()["clients"] == 0
    finally:
        http.stop()


def test_revoked_token_gets_401_on_connect_with_advice_none(wire, tokens):
    wire.start()
    tokens.valid.clear()
    _, reply = wire.connect()
    assert reply["error"] == "401::Authentication invalid"
    assert reply["advice"]["reconnect"] == "none"


def test_disconnect_forgets_the_client(wire, server):
    wire.start()
    [reply] = wire.post({"channel": "/meta/disconnect"})
    assert reply["successful"] is True
    _, after = wire.connect()
    assert after["error"] == "403::Unknown client"
    assert server.counters()["disconnect"] == 1


# Events and replay.


def test_event_shape_and_delivery_after_subscribe(wire, bus):
    publish(bus)  # before the subscription: -1 does not see it
    wire.start(-1)
    event = publish(bus, "801000000000002AAA")
    messages, reply = wire.connect()
    assert reply["successful"] is True
    [message] = messages
    assert message["channel"] == CHANNEL
    data = message["data"]
    assert set(data) == {"schema", "payload", "event"}
    assert data["payload"]["OrderId__c"] == "801000000000002AAA"
    assert data["payload"]["CreatedDate"].endswith("Z")
    assert data["payload"]["CreatedById"].startswith("005")
    assert data["event"] == event["event"]
    assert isinstance(data["event"]["replayId"], int)


def test_replay_minus_two_delivers_every_retained_event_in_batches(wire, bus):
    ids = [publish(bus)["event"]["replayId"] for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    wire.start(-2)
    first, _ = wire.connect()
    second, _ = wire.connect()
    assert delivered(first) == ids[:3]  # max_batch=3
    assert delivered(second) == ids[3:]


def test_replay_n_means_after_n(wire, bus):
    ids = [publish(bus)["event"]["replayId"] for _ in range(3)]
    wire.start(ids[0])
    messages, _ = wire.connect()
    assert delivered(messages) == ids[1:]


def test_no_replay_extension_means_new_events_only(wire, bus):
    publish(bus)
    wire.handshake()
    wire.connect()
    assert wire.subscribe(None)["successful"] is True
    later = publish(bus)
    messages, _ = wire.connect()
    assert delivered(messages) == [later["event"]["replayId"]]


def test_purged_replay_id_is_refused_with_the_exact_text(wire, bus):
    ids = [publish(bus)["event"]["replayId"] for _ in range(3)]
    bus.set_retention_floor(CHANNEL, ids[1])
    wire.handshake()
    wire.connect()
    reply = wire.subscribe(ids[0])
    assert reply["successful"] is False
    assert reply["error"] == INVALID_TEXT.format(ids[0])
    assert reply["subscription"] == CHANNEL
    assert wire.subscribe(ids[2])["successful"] is True


def test_unknown_replay_id_is_invalid(wire):
    wire.handshake()
    wire.connect()
    assert wire.subscribe(999_999_999)["error"] == INVALID_TEXT.format(999_999_999)


def test_minus_two_after_purge_skips_purged_events(wire, bus):
    ids = [publish(bus)["event"]["replayId"] for _ in range(3)]
    bus.set_retention_floor(CHANNEL, ids[0])
    wire.start(-2)
    messages, _ = wire.connect()
    assert delivered(messages) == ids[1:]


def test_replay_map_without_the_channel(wire):
    wire.handshake()
    wire.connect()
    [reply] = wire.post(
        {"channel": "/meta/subscribe", "subscription": CHANNEL, "ext": {"replay": {}}}
    )
    assert reply["error"] == (
        f"400::The replayId for channel {{{CHANNEL}}} wasn't found using the provided replay "
        "ID map {{}}. Ensure that the channel name you provided in the replay map is valid and "
        "matches the channel name used for subscribing."
    )


@pytest.mark.parametrize(
    ("channel", "error"),
    [
        (
            "/event/Nope__e",
            "400::The channel you requested to subscribe to doesn't exist {/event/Nope__e}",
        ),
        ("event/Nope__e", "400::Channel subscriptions must start with a leading '/'"),
    ],
)
def test_bad_subscription_channels(wire, channel, error):
    wire.handshake()
    wire.connect()
    assert wire.subscribe(-1, channel=channel)["error"] == error


def test_held_connect_wakes_when_an_event_is_published(wire, bus, server):
    wire.start(-1)
    timer = threading.Timer(0.1, publish, args=(bus,))
    timer.start()
    messages, _ = wire.connect()
    timer.join()
    # Either the held connect or the next one carries it, never none.
    if not messages:
        messages, _ = wire.connect()
    assert len(delivered(messages)) == 1
    assert server.counters()["delivered"] == 1


def test_batched_messages_are_each_answered(wire, bus):
    wire.handshake()
    replies = wire.post(
        {"channel": "/meta/connect", "connectionType": "long-polling"},
        {
            "channel": "/meta/subscribe",
            "subscription": CHANNEL,
            "ext": {"replay": {CHANNEL: -2}},
        },
    )
    assert [r["channel"] for r in replies] == ["/meta/connect", "/meta/subscribe"]
    assert all(r["successful"] for r in replies)


# Faults.


def test_fault_unknown_client_on_connect(wire, faults):
    wire.start()
    faults.add("cometd.connect", "unknown_client")
    _, reply = wire.connect()
    assert reply["error"] == "403::Unknown client"
    assert reply["advice"]["reconnect"] == "handshake"
    _, again = wire.connect()
    assert again["error"] == "403::Unknown client"  # the session is really gone


def test_fault_unknown_client_variant_with_server_disconnect(wire, faults):
    wire.start()
    faults.add("cometd.connect", "unknown_client", reconnect="none")
    messages = wire.post({"channel": "/meta/connect", "connectionType": "long-polling"})
    assert messages[0] == {"channel": "/meta/disconnect"}
    assert messages[1]["advice"]["reconnect"] == "none"


def test_fault_auth_invalid_on_connect(wire, faults):
    wire.start()
    faults.add("cometd.connect", "auth_invalid")
    _, reply = wire.connect()
    assert reply["error"] == "401::Authentication invalid"
    assert reply["advice"]["reconnect"] == "none"


def test_fault_invalid_replay_on_subscribe(wire, faults):
    wire.handshake()
    wire.connect()
    faults.add("cometd.subscribe", "invalid_replay")
    assert wire.subscribe(-1)["error"] == INVALID_TEXT.format(-1)
    assert wire.subscribe(-1)["successful"] is True


def test_fault_lost_batch_marks_events_delivered_and_drops(wire, bus, faults, server):
    wire.start(-1)
    faults.add("cometd.connect", "lost_batch")
    lost = publish(bus)
    with pytest.raises(requests.ConnectionError):
        wire.connect()
    later = publish(bus)
    messages, _ = wire.connect()
    # The same session never sees the lost event again: only a new subscription replays it.
    assert delivered(messages) == [later["event"]["replayId"]]
    assert server.counters()["delivered"] == 2
    wire.handshake()
    wire.connect()
    wire.subscribe(-2)
    messages, _ = wire.connect()
    assert lost["event"]["replayId"] in delivered(messages)


def test_fault_lost_batch_waits_for_events_when_none_are_ready(wire, bus, faults):
    wire.start(-1)
    faults.add("cometd.connect", "lost_batch")
    messages, reply = wire.connect()  # nothing to lose yet: the fault stays armed
    assert messages == [] and reply["successful"]
    publish(bus)
    with pytest.raises(requests.ConnectionError):
        wire.connect()


def test_fault_duplicate_resends_the_last_batch(wire, bus, faults):
    wire.start(-1)
    event = publish(bus)
    first, _ = wire.connect()
    faults.add("cometd.connect", "duplicate")
    again, _ = wire.connect()
    assert delivered(first) == delivered(again) == [event["event"]["replayId"]]
    assert again[0]["data"]["event"]["EventUuid"] == event["event"]["EventUuid"]


def test_fault_status_and_reset_and_hang(wire, faults):
    wire.handshake()
    faults.add("cometd.connect", "status", status=503)
    reply = wire.session.post(
        wire.url,
        json=[
            {
                "channel": "/meta/connect",
                "clientId": wire.client_id,
                "connectionType": "long-polling",
            }
        ],
    )
    assert reply.status_code == 503
    faults.add("cometd.connect", "reset")
    with pytest.raises(requests.ConnectionError):
        wire.connect()
    faults.add("cometd.connect", "hang", seconds=2)
    with pytest.raises(requests.ReadTimeout):
        wire.connect(timeout=0.3)


def test_fault_error_is_any_other_refusal(wire, faults):
    wire.start()
    faults.add(
        "cometd.connect",
        "error",
        error="503::Server unavailable",
        reconnect="retry",
        interval=250,
        failure_reason="SERVER_UNAVAILABLE",
    )
    _, reply = wire.connect()
    assert reply["successful"] is False
    assert reply["error"] == "503::Server unavailable"
    assert reply["advice"] == {"reconnect": "retry", "interval": 250}
    assert reply["ext"]["sfdc"]["failureReason"] == "SERVER_UNAVAILABLE"
    _, after = wire.connect()
    assert after["successful"] is True  # the session survived


def test_fault_on_handshake(wire, faults):
    faults.add("cometd.handshake", "auth_invalid")
    assert wire.handshake()["error"] == "403::Handshake denied"
    assert wire.handshake()["successful"] is True


def test_multiple_clients_on_one_browser_get_interval_advice(bus, faults, tokens, material):
    slow = CometdServer(bus, faults, tokens, timeout=5.0)
    http = Server(slow.handle, ssl_context=material.server_context()).start()
    try:
        wire = Wire(http.url, material.ca_path)
        wire.start()
        holder = threading.Thread(target=wire.connect)
        holder.start()
        assert wait_until(lambda: slow.counters()["holding"] == 1, timeout=5)
        other = Wire(http.url, material.ca_path)
        other.session.cookies.update(wire.session.cookies)  # the same browser
        other.handshake()
        other.connect()
        _, reply = other.connect()
        assert reply["successful"] is True
        assert reply["advice"]["multiple-clients"] is True
        assert reply["advice"]["interval"] == 2000
        slow.reset()  # releases the held connect
        holder.join()
    finally:
        http.stop()


def test_counters_and_reset(wire, bus, server):
    wire.start(-1)
    publish(bus)
    wire.connect()
    counts = server.counters()
    assert counts["handshake"] == 1
    assert counts["subscribe"] == 1
    assert counts["connect"] == 2
    assert counts["delivered"] == 1
    assert counts["clients"] == 1
    server.reset()
    assert server.counters()["clients"] == 0
    _, reply = wire.connect()
    assert reply["error"] == "403::Unknown client"
