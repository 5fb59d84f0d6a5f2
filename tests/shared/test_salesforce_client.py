"""shared/salesforce.py against the Salesforce emulator: calls, token refresh, error mapping."""

from __future__ import annotations

import dataclasses
import time

import pytest

from sandbox import tls
from sandbox.fixtures import standard_document
from sandbox.http_server import Request, Response, Server
from shared import keys
from shared.config import SalesforceSettings
from shared.errors import AuthError, BadResponse, ConnectionFailed, HttpStatusError, UpstreamTimeout
from shared.salesforce import SalesforceClient
from shared.sfauth import TokenProvider


@pytest.fixture
def world(sandbox_admin):
    return sandbox_admin.load(standard_document(orders=2))


@pytest.fixture
def sf(app_settings, redis_conn):
    settings = dataclasses.replace(app_settings.salesforce, timeout=1.0)
    client = SalesforceClient(settings, TokenProvider(settings, redis_conn))
    yield client
    client.close()


def order_id(world, ref="o1"):
    return world["refs"][ref]


def test_query_update_and_describe(sf, world, sandbox_admin):
    oid = order_id(world)
    records = sf.query(
        "SELECT Id, OrderNumber, Activation_Status__c, Account.WHMCS_Client_ID__c, "
        f"(SELECT Id, Quantity FROM OrderItems) FROM Order WHERE Id = '{oid}'"
    )
    assert len(records) == 1 and records[0]["Id"] == oid
    assert records[0]["Account"]["WHMCS_Client_ID__c"] == "1"
    assert isinstance(records[0], dict) and not type(records[0]).__name__.startswith("Ordered")
    sandbox_admin.approve(oid)
    sf.update(
        "Order",
        oid,
        {"Activation_Status__c": "Failed", "Activation_Error_Code__c": "503"},
    )
    sf.update("Order", oid, {"Activation_Error_Code__c": None})
    stored = sandbox_admin.order(oid)
    assert stored["Activation_Status__c"] == "Failed"
    assert stored["Activation_Error_Code__c"] in (None, "")
    names = {f["name"] for f in sf.describe("Order")["fields"]}
    assert {"Activation_Status__c", "WHMCS_Order_ID__c"} <= names
    calls = sandbox_admin.sf_counters()
    assert calls["logins"] == 1
    assert calls["api_calls"]["query"] == 1 and calls["api_calls"]["patch"] == 2


def test_the_token_is_shared_through_redis(app_settings, redis_conn, world, sandbox_admin):
    for _ in range(3):
        client = SalesforceClient(
            app_settings.salesforce, TokenProvider(app_settings.salesforce, redis_conn)
        )
        client.query("SELECT Id FROM Order")
        client.close()
    assert sandbox_admin.sf_counters()["logins"] == 1
    assert redis_conn.hget(keys.SF_TOKEN, "access_token")


@pytest.mark.parametrize("kind", ["invalid_session", "invalid_session_body"])
def test_an_expired_token_is_refreshed_once(sf, world, sandbox_admin, kind):
    sf.query("SELECT Id FROM Order")
    sandbox_admin.add_fault("sf.query", kind, count=1)
    assert len(sf.query("SELECT Id FROM Order")) == 2
    assert sandbox_admin.sf_counters()["logins"] == 2


@pytest.mark.parametrize("kind", ["invalid_session", "invalid_session_body"])
def test_a_token_rejected_after_refresh_is_a_clean_401(sf, world, sandbox_admin, kind):
    sandbox_admin.add_fault("sf.query", kind, count=2)
    with pytest.raises(AuthError) as caught:
        sf.query("SELECT Id FROM Order")
    assert caught.value.code == "401"
    assert sandbox_admin.sf_counters()["logins"] == 2


def test_revoked_tokens_get_a_new_one(sf, world, sandbox_admin):
    sf.query("SELECT Id FROM Order")
    sandbox_admin.revoke_tokens()
    assert len(sf.query("SELECT Id FROM Order")) == 2


def test_a_refused_login_is_sf_auth(sf, world, sandbox_admin):
    sandbox_admin.set_app(approved=False)
    with pytest.raises(AuthError) as caught:
        sf.query("SELECT Id FROM Order")
    assert caught.value.code == "SF_AUTH"
    assert "approve" in caught.value.message


def test_while_logins_fail_a_process_tries_at_most_once_per_backoff(
    app_settings, redis_conn, sandbox_admin
):
    ahead = [0.0]  # the provider's clock runs ahead of the sandbox's (JWT exp within 300 s)
    tokens = TokenProvider(
        app_settings.salesforce, redis_conn, clock=lambda: time.time() + ahead[0]
    )
    assert tokens.login_backoff == 60  # SF_LOGIN_BACKOFF's default
    sandbox_admin.set_app(approved=False)
    for _ in range(5):  # the reaper retrying deliveries, a job, the subscriber reconnecting ...
        with pytest.raises(AuthError) as caught:
            tokens.current()
        assert caught.value.code == "SF_AUTH"
    assert sandbox_admin.sf_counters()["login_refusals"] == 1
    assert "no new login attempt" in caught.value.message

    sandbox_admin.set_app(approved=True)
    ahead[0] = 55
    with pytest.raises(AuthError):
        tokens.current()
    assert sandbox_admin.sf_counters()["login_refusals"] == 1
    ahead[0] = 61
    assert tokens.current().access_token
    assert sandbox_admin.sf_counters()["logins"] == 1


@pytest.mark.parametrize(
    ("fault", "params", "error", "code"),
    [
        ("status", {"status": 503}, HttpStatusError, "503"),
        ("status", {"status": 500}, HttpStatusError, "500"),
        ("status", {"status": 429}, HttpStatusError, "429"),
        ("status", {"status": 403}, HttpStatusError, "403"),  # REQUEST_LIMIT_EXCEEDED
        ("status", {"status": 403, "errorCode": "INSUFFICIENT_ACCESS"}, AuthError, "403"),
        ("status", {"status": 404}, HttpStatusError, "404"),
        ("status", {"status": 400}, HttpStatusError, "400"),
        ("html", {"status": 502}, HttpStatusError, "502"),
        ("nonjson", {}, BadResponse, "EBADRESPONSE"),
        ("hang", {"seconds": 3}, UpstreamTimeout, "ETIMEOUT"),
        ("reset", {}, ConnectionFailed, "ECONNECTION"),
    ],
)
def test_failures_map_to_codes(sf, world, sandbox_admin, fault, params, error, code):
    sf.query("SELECT Id FROM Order")  # the token is minted before the fault
    sandbox_admin.add_fault("sf.query", fault, count=1, **params)
    with pytest.raises(error) as caught:
        sf.query("SELECT Id FROM Order")
    assert caught.value.code == code
    assert caught.value.system == "salesforce"
    assert len(caught.value.message) < 300


def test_a_patch_refused_for_field_access_names_the_problem(sf, world, sandbox_admin):
    oid = order_id(world)
    sandbox_admin.set_field_access("WHMCS_Order_ID__c", updateable=False)
    with pytest.raises(HttpStatusError) as caught:
        sf.update("Order", oid, {"WHMCS_Order_ID__c": "5"})
    assert caught.value.code == "400"
    assert "WHMCS_Order_ID__c" in caught.value.message or "INVALID" in caught.value.message


def test_update_refuses_a_malformed_id(sf):
    with pytest.raises(ValueError):
        sf.update("Order", "801' OR 1=1", {"Activation_Status__c": "Failed"})


DEEP = ("[" * 100_000 + "]" * 100_000).encode()  # json raises RecursionError, not ValueError


@pytest.mark.parametrize("where", ["token", "query"])
def test_json_nested_too_deep_is_a_bad_response(where, tmp_path, monkeypatch, redis_conn):
    material = tls.generate(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(material.ca_path))

    def answer(request: Request) -> Response:
        if request.path == "/services/oauth2/token" and where == "query":
            return Response.json({"access_token": "tok", "instance_url": server.url})
        return Response(200, DEEP, [("Content-Type", "application/json")])

    server = Server(answer, ssl_context=material.server_context()).start()
    settings = SalesforceSettings(
        login_url=server.url,
        client_id="consumer-key",
        username="integration@example.com",
        private_key_path=str(material.app_key_path),
        audience=server.url,
        api_version="59.0",
        timeout=5.0,
        connect_timeout=5.0,
    )
    sf = SalesforceClient(settings, TokenProvider(settings, redis_conn))
    try:
        with pytest.raises(BadResponse) as caught:
            sf.query("SELECT Id FROM Order LIMIT 1")
    finally:
        sf.close()
        server.stop()
    assert caught.value.code == "EBADRESPONSE"
