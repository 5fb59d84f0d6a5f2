"""Proof of fidelity: a third-party Bayeux client (aiocometd-ng from PyPI) talks to our CometD."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from typing import Any

import pytest
from aiocometd_ng import Client
from aiocometd_ng.extensions import AuthExtension, Extension

from sandbox import tls
from sandbox.faults import FaultBook
from sandbox.fixtures import standard_document
from sandbox.http_server import Server
from sandbox.salesforce.cometd_server import CometdServer
from sandbox.salesforce.eventbus import EventBus
from shared.sfauth import TokenProvider

CHANNEL = "/event/OrderProvisionRequested__e"


class BearerAuth(AuthExtension):
    def __init__(self, token: str) -> None:
        self.token = token

    async def outgoing(self, payload: list[Any], headers: dict[str, Any]) -> None:
        headers["Authorization"] = f"Bearer {self.token}"

    async def incoming(self, payload: list[Any], headers: Any = None) -> None:
        pass


class ReplayFrom(Extension):
    """The replay extension as Salesforce clients send it: a map on every subscribe."""

    def __init__(self, replay_id: int) -> None:
        self.replay_id = replay_id

    async def outgoing(self, payload: list[Any], headers: dict[str, Any]) -> None:
        for message in payload:
            if message.get("channel") == "/meta/subscribe":
                message.setdefault("ext", {})["replay"] = {message["subscription"]: self.replay_id}

    async def incoming(self, payload: list[Any], headers: Any = None) -> None:
        pass


async def receive_events(
    url: str, ca_path: str, token: str, replay_id: int, count: int
) -> list[dict[str, Any]]:
    context = ssl.create_default_context(cafile=ca_path)
    received = []
    async with Client(
        url, ssl=context, auth=BearerAuth(token), extensions=[ReplayFrom(replay_id)]
    ) as client:
        await client.subscribe(CHANNEL)
        while len(received) < count:
            received.append(await asyncio.wait_for(client.receive(), timeout=15))
    return received


@pytest.fixture
def cometd(tmp_path) -> Iterator[tuple[EventBus, str, str]]:
    material = tls.generate(tmp_path / "tls")
    bus = EventBus()
    server = CometdServer(bus, FaultBook(), lambda token: token == "t0k3n", timeout=1.0)
    http = Server(server.handle, ssl_context=material.server_context()).start()
    yield bus, http.url + "/cometd/59.0", str(material.ca_path)
    http.stop()


def test_aiocometd_subscribes_with_a_replay_id_and_receives_the_events_after_it(cometd):
    bus, url, ca_path = cometd
    before = bus.publish(CHANNEL, {"OrderId__c": "801000000000001AAA"})
    after = bus.publish(CHANNEL, {"OrderId__c": "801000000000002AAA"})
    [message] = asyncio.run(receive_events(url, ca_path, "t0k3n", before["event"]["replayId"], 1))
    assert message["channel"] == CHANNEL
    assert message["data"]["event"] == after["event"]
    assert message["data"]["payload"]["OrderId__c"] == "801000000000002AAA"


def test_aiocometd_receives_an_approved_orders_event_from_the_sandbox(
    sandbox, sandbox_admin, app_settings, redis_conn
):
    refs = sandbox_admin.load(standard_document(orders=1))["refs"]
    token = TokenProvider(app_settings.salesforce, redis_conn).current()
    url = f"{token.instance_url}/cometd/{app_settings.salesforce.api_version}"
    earlier = sandbox_admin.publish({"OrderId__c": "not-this-one"})
    approved = sandbox_admin.approve("o1")
    [message] = asyncio.run(
        receive_events(
            url,
            str(sandbox.material.ca_path),
            token.access_token,
            earlier["event"]["replayId"],
            1,
        )
    )
    assert message["data"]["payload"]["OrderId__c"] == refs["o1"]
    assert message["data"]["event"]["EventUuid"] == approved["event"]["EventUuid"]
