"""Proof of fidelity: clients we did not write (simple-salesforce, PyJWT) work against the
Salesforce emulator, and so does our TokenProvider, single-flight across threads and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import OrderedDict

import jwt
import pytest
import requests
from simple_salesforce import Salesforce
from simple_salesforce.api import Usage
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

from sandbox import fixtures
from sandbox.fixtures import standard_document
from shared import keys
from shared.connections import redis_client
from shared.errors import AuthError
from shared.sfauth import TokenProvider

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
WORKER_SOQL = (
    "SELECT Id, OrderNumber, Status, AccountId, Pricebook2Id, Activation_Status__c, "
    "Account.Name, Account.WHMCS_Client_ID__c, "
    "(SELECT Id, OrderItemNumber, Quantity, Product2Id, Product2.Name, Product2.ProductCode, "
    "Product2.WH_Product_ID__c, Product2.Billing_Cycle__c FROM OrderItems) "
    "FROM Order WHERE Id = '{}'"
)


def pyjwt_login(env: dict[str, str]) -> dict[str, str]:
    """The JWT bearer flow with PyJWT and plain requests, as Salesforce documents it."""
    with open(env["SF_PRIVATE_KEY_PATH"], "rb") as fh:
        key = fh.read()
    claims = {
        "iss": env["SF_CLIENT_ID"],
        "sub": env["SF_USERNAME"],
        "aud": env["SF_LOGIN_URL"],
        "exp": int(time.time()) + 180,
    }
    assertion = jwt.encode(claims, key, algorithm="RS256")
    reply = requests.post(
        env["SF_LOGIN_URL"] + "/services/oauth2/token",
        data={"grant_type": GRANT, "assertion": assertion},
        timeout=(5, 10),
    )
    reply.raise_for_status()
    return reply.json()


@pytest.fixture
def refs(sandbox_admin) -> dict[str, str]:
    return sandbox_admin.load(standard_document(orders=2))["refs"]


@pytest.fixture
def sf(sandbox, refs) -> Salesforce:
    token = pyjwt_login(sandbox.env)
    session = requests.Session()
    session.verify = sandbox.env["REQUESTS_CA_BUNDLE"]
    return Salesforce(
        instance_url=token["instance_url"],
        session_id=token["access_token"],
        version="59.0",
        session=session,
    )


# --- simple-salesforce ------------------------------------------------------------------------


def test_simple_salesforce_query_with_a_child_subquery(sf, refs):
    result = sf.query(WORKER_SOQL.format(refs["o1"]))
    assert result["totalSize"] == 1 and result["done"] is True
    order = result["records"][0]
    assert isinstance(order, OrderedDict)  # simple-salesforce's default object_pairs_hook
    assert order["Id"] == refs["o1"]
    assert order["Account"]["WHMCS_Client_ID__c"] == "1"
    [item] = order["OrderItems"]["records"]
    assert item["Product2"]["WH_Product_ID__c"] == 1.0
    assert item["Product2"]["Billing_Cycle__c"] == "Monthly"
    assert sf.api_usage["api-usage"] == Usage(1, 15000)


def test_simple_salesforce_query_all_and_get(sf, refs):
    records = sf.query_all("SELECT Id, OrderNumber FROM Order ORDER BY OrderNumber")["records"]
    assert [r["Id"] for r in records] == [refs["o1"], refs["o2"]]
    order = sf.Order.get(refs["o2"])
    assert order["attributes"]["type"] == "Order" and order["Status"] == "Draft"


def test_simple_salesforce_update(sf, refs, sandbox_admin):
    status = sf.Order.update(
        refs["o1"], {"Activation_Status__c": "Activated", "WHMCS_Order_ID__c": "77"}
    )
    assert status == 204
    assert sandbox_admin.order(refs["o1"])["WHMCS_Order_ID__c"] == "77"
    assert (
        sf.restful(f"sobjects/Order/{refs['o2']}", method="PATCH", json={"Status": "Draft"}) is None
    )


def test_simple_salesforce_describe_and_composite(sf, refs):
    fields = {f["name"]: f for f in sf.Order.describe()["fields"]}
    assert fields["Activation_Error_Message__c"]["length"] == 255
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {
                "method": "PATCH",
                "url": f"/services/data/v59.0/sobjects/Order/{refs['o1']}",
                "referenceId": "o1",
                "body": {"Activation_Status__c": "Failed", "Activation_Error_Code__c": "409"},
            }
        ],
    }
    reply = sf.restful("composite", method="POST", json=body)
    assert reply["compositeResponse"][0]["httpStatusCode"] == 204


@pytest.mark.parametrize(
    ("call", "exception", "code"),
    [
        (lambda sf, r: sf.query("SELECT Id, Nope__c FROM Order"), SalesforceMalformedRequest,
         "INVALID_FIELD"),
        (lambda sf, r: sf.query("SELECT Id FROM Order WHERE"), SalesforceMalformedRequest,
         "MALFORMED_QUERY"),
        (lambda sf, r: sf.Order.update(r["o1"], {"Activation_Status__c": "Done"}),
         SalesforceMalformedRequest, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"),
        (lambda sf, r: sf.Order.update(r["o1"], {"Activation_Error_Message__c": "x" * 300}),
         SalesforceMalformedRequest, "STRING_TOO_LONG"),
        (lambda sf, r: sf.Order.update(r["o1"], {"Nope__c": 1}), SalesforceMalformedRequest,
         "INVALID_FIELD"),
        (lambda sf, r: sf.Order.update("8015g00000NOPE1AAA", {"Status": "Draft"}),
         SalesforceResourceNotFound, "NOT_FOUND"),
    ],
)  # fmt: skip
def test_simple_salesforce_maps_our_errors(sf, refs, call, exception, code):
    with pytest.raises(exception) as caught:
        call(sf, refs)
    assert caught.value.content[0]["errorCode"] == code


def test_simple_salesforce_maps_sessions_and_faults(sf, refs, sandbox_admin):
    sandbox_admin.add_fault("sf.query", "status", status=403)
    with pytest.raises(SalesforceRefusedRequest) as refused:
        sf.query("SELECT Id FROM Order")
    assert refused.value.content[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    sandbox_admin.add_fault("sf.query", "status", status=503)
    with pytest.raises(SalesforceGeneralError):
        sf.query("SELECT Id FROM Order")
    sandbox_admin.revoke_tokens()
    with pytest.raises(SalesforceExpiredSession):
        sf.query("SELECT Id FROM Order")


def test_simple_salesforce_follows_pages_of_records_and_of_children(sf, sandbox_admin):
    refs = sandbox_admin.load(fixtures.demo_document())["refs"]
    sandbox_admin.set_query_batch(1)
    stored = len(sandbox_admin.orders())  # the demo's four and the `refs` fixture's two
    everything = sf.query_all("SELECT Id FROM Order")
    assert everything["totalSize"] == stored == 6 and len(everything["records"]) == stored
    first = sf.query("SELECT Id FROM Order ORDER BY OrderNumber")
    assert first["done"] is False and len(first["records"]) == 1
    order = sf.query(
        f"SELECT Id, (SELECT Id FROM OrderItems ORDER BY OrderItemNumber) FROM Order "
        f"WHERE Id = '{refs['o2']}'"
    )["records"][0]
    children = order["OrderItems"]
    assert (children["totalSize"], children["done"], len(children["records"])) == (2, False, 1)
    rest = sf.query_more(children["nextRecordsUrl"], identifier_is_url=True)
    assert rest["done"] is True and len(rest["records"]) == 1
    assert rest["records"][0]["Id"] != children["records"][0]["Id"]
    with pytest.raises(SalesforceMalformedRequest) as caught:
        sf.query_more("01g5g0000000000000-1")
    assert caught.value.content[0]["errorCode"] == "INVALID_QUERY_LOCATOR"


# --- our TokenProvider ------------------------------------------------------------------------


def test_token_provider_logs_in_once_and_shares_the_token(
    app_settings, redis_conn, sandbox_admin, sandbox
):
    first = TokenProvider(app_settings.salesforce, redis_conn).current()
    assert first.instance_url == sandbox.env["SF_LOGIN_URL"]
    second = TokenProvider(app_settings.salesforce, redis_conn).current()
    assert second == first
    assert sandbox_admin.sf_counters()["logins"] == 1
    assert redis_conn.hget(keys.SF_TOKEN, "access_token").decode() == first.access_token


def test_token_provider_refreshes_a_revoked_token(app_settings, redis_conn, sandbox_admin, refs):
    provider = TokenProvider(app_settings.salesforce, redis_conn)
    stale = provider.current()
    sandbox_admin.revoke_tokens()
    fresh = provider.refresh(stale)
    assert fresh != stale
    reply = requests.get(
        fresh.instance_url + "/services/data/v59.0/limits",
        headers={"Authorization": f"Bearer {fresh.access_token}"},
        timeout=(5, 10),
    )
    assert reply.status_code == 200
    assert sandbox_admin.sf_counters()["logins"] == 2


def test_token_provider_refresh_is_single_flight_across_threads(
    app_settings, redis_url, redis_conn, sandbox_admin
):
    stale = TokenProvider(app_settings.salesforce, redis_conn).current()
    sandbox_admin.set_latency("sf.token", 0.3)  # logins overlap for sure
    start = threading.Barrier(6)
    tokens = []
    connections = [redis_client(redis_url) for _ in range(6)]

    def refresh(connection) -> None:
        provider = TokenProvider(app_settings.salesforce, connection)
        start.wait()
        tokens.append(provider.refresh(stale))

    threads = [threading.Thread(target=refresh, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for connection in connections:
        connection.close()
    assert len(tokens) == 6 and len(set(tokens)) == 1 and tokens[0] != stale
    assert sandbox_admin.sf_counters()["logins"] == 2  # the first login, then one refresh


REFRESH_IN_A_PROCESS = """
import json, os, sys
from shared.config import load_settings
from shared.connections import redis_client
from shared.sfauth import Token, TokenProvider
settings = load_settings(os.environ, needs={"salesforce"})
stale = Token(*json.loads(sys.argv[1]))
token = TokenProvider(settings.salesforce, redis_client(settings.redis_url)).refresh(stale)
print(token.access_token)
"""


def test_token_provider_refresh_is_single_flight_across_processes(
    app_env, app_settings, redis_conn, sandbox_admin
):
    stale = TokenProvider(app_settings.salesforce, redis_conn).current()
    sandbox_admin.set_latency("sf.token", 0.3)
    env = {"PATH": os.environ.get("PATH", ""), **app_env}
    argument = json.dumps([stale.access_token, stale.instance_url])
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", REFRESH_IN_A_PROCESS, argument],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=60) for p in processes]
    assert all(p.returncode == 0 for p in processes), outputs
    assert len({out.strip() for out, _ in outputs}) == 1
    assert sandbox_admin.sf_counters()["logins"] == 2


def test_token_provider_reports_a_revoked_app(app_settings, redis_conn, sandbox_admin):
    sandbox_admin.set_app(approved=False)
    with pytest.raises(AuthError) as caught:
        TokenProvider(app_settings.salesforce, redis_conn).current()
    assert "user hasn't approved this consumer" in str(caught.value)
    assert "pre-authorise" in str(caught.value)
