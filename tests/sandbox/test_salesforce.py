"""The Salesforce emulator over real HTTPS: token endpoint, REST resources, the Flow, faults."""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sandbox.client import SandboxAdminError
from sandbox.fixtures import standard_document

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TIMEOUT = (5, 10)


class Api:
    """A bare-hands client: PyJWT for the assertion, requests for everything else."""

    def __init__(self, sandbox) -> None:
        self.env = sandbox.env
        self.session = requests.Session()
        self.token = ""
        self.base = ""

    def claims(self, **changes: Any) -> dict[str, Any]:
        claims = {
            "iss": self.env["SF_CLIENT_ID"],
            "sub": self.env["SF_USERNAME"],
            "aud": self.env["SF_LOGIN_URL"],
            "exp": int(time.time()) + 180,
        }
        claims.update(changes)
        return {k: v for k, v in claims.items() if v is not None}

    def assertion(self, key: Any = None, algorithm: str = "RS256", **changes: Any) -> str:
        with open(self.env["SF_PRIVATE_KEY_PATH"], "rb") as fh:
            own_key = fh.read()
        return jwt.encode(self.claims(**changes), key or own_key, algorithm=algorithm)

    def token_request(self, **data: str) -> requests.Response:
        return self.session.post(
            self.env["SF_LOGIN_URL"] + "/services/oauth2/token", data=data, timeout=TIMEOUT
        )

    def login(self) -> Api:
        reply = self.token_request(grant_type=GRANT, assertion=self.assertion())
        assert reply.status_code == 200, reply.text
        self.token = reply.json()["access_token"]
        self.base = reply.json()["instance_url"] + "/services/data/v59.0"
        return self

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", TIMEOUT)
        return self.session.request(method, self.base + path, headers=headers, **kwargs)

    def query(self, soql: str, **kwargs: Any) -> requests.Response:
        return self.call("GET", "/query", params={"q": soql}, **kwargs)


@pytest.fixture
def api(sandbox) -> Api:
    return Api(sandbox)


@pytest.fixture
def world(sandbox_admin) -> dict[str, str]:
    return sandbox_admin.load(standard_document(orders=2))["refs"]


def other_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# --- token endpoint ---------------------------------------------------------------------------


def test_jwt_login_grants_a_token_for_the_instance(api, sandbox, sandbox_admin):
    reply = api.token_request(grant_type=GRANT, assertion=api.assertion())
    assert reply.status_code == 200
    body = reply.json()
    assert body["instance_url"] == sandbox.env["SF_LOGIN_URL"]
    assert body["token_type"] == "Bearer" and body["scope"] == "api"
    assert body["access_token"].startswith("00D") and "!" in body["access_token"]
    assert "/id/00D" in body["id"] and "/005" in body["id"]
    again = api.token_request(grant_type=GRANT, assertion=api.assertion()).json()
    assert again["access_token"] != body["access_token"]  # one token per login
    assert sandbox_admin.sf_counters()["logins"] == 2


def test_exp_as_a_string_is_accepted(api):
    # simple-salesforce sends exp as a string of seconds; Salesforce takes it.
    assertion = api.assertion(exp=str(int(time.time()) + 120))
    assert api.token_request(grant_type=GRANT, assertion=assertion).status_code == 200


REFUSALS = [
    ({"grant_type": "password"}, "unsupported_grant_type", "grant type not supported"),
    ({"iss": "someone-else"}, "invalid_client_id", "client identifier invalid"),
    ({"key": "other"}, "invalid_grant", "invalid assertion"),
    ({"algorithm": "HS256"}, "invalid_grant", "invalid assertion"),
    ({"assertion": "not.a.jwt"}, "invalid_grant", "invalid assertion"),
    ({"assertion": ""}, "invalid_grant", "invalid assertion"),
    ({"aud": "https://login.salesforce.com"}, "invalid_grant", "audience is invalid"),
    ({"exp": "past"}, "invalid_grant", "expired authorization code"),
    ({"exp": "far"}, "invalid_grant", "expired authorization code"),
    ({"exp": "missing"}, "invalid_grant", "expired authorization code"),
    ({"sub": "someone@else.example"}, "invalid_grant", "user hasn't approved this consumer"),
]


@pytest.mark.parametrize(("change", "error", "description"), REFUSALS)
def test_token_endpoint_refusals(api, sandbox_admin, change, error, description):
    change = dict(change)
    grant_type = change.pop("grant_type", GRANT)
    key = other_key() if change.pop("key", None) else None
    algorithm = change.pop("algorithm", "RS256")
    if algorithm == "HS256":
        key = b"a-shared-secret-that-is-long-enough-for-hs256"
    exp = {"past": int(time.time()) - 10, "far": int(time.time()) + 3600, "missing": None}
    if "exp" in change:
        change["exp"] = exp[change["exp"]]
    assertion = change.pop("assertion", None)
    if assertion is None:
        assertion = api.assertion(key, algorithm, **change)
    reply = api.token_request(grant_type=grant_type, assertion=assertion)
    assert reply.status_code == 400
    assert reply.json() == {"error": error, "error_description": description}
    assert sandbox_admin.sf_counters()["logins"] == 0


def test_a_json_body_is_not_a_token_request(api):
    url = api.env["SF_LOGIN_URL"] + "/services/oauth2/token"
    reply = api.session.post(
        url, json={"grant_type": GRANT, "assertion": api.assertion()}, timeout=TIMEOUT
    )
    assert reply.json()["error"] == "unsupported_grant_type"


def test_a_revoked_app_refuses_the_user(api, sandbox_admin):
    sandbox_admin.set_app(approved=False)
    reply = api.token_request(grant_type=GRANT, assertion=api.assertion())
    assert reply.json() == {
        "error": "invalid_grant",
        "error_description": "user hasn't approved this consumer",
    }
    sandbox_admin.set_app(approved=True)
    assert api.token_request(grant_type=GRANT, assertion=api.assertion()).status_code == 200


# --- sessions ---------------------------------------------------------------------------------


def test_unknown_and_revoked_tokens_get_invalid_session_id(api, sandbox_admin, world):
    api.login()
    assert api.query("SELECT Id FROM Order").status_code == 200
    sandbox_admin.revoke_tokens()
    reply = api.query("SELECT Id FROM Order")
    assert reply.status_code == 401
    assert reply.json() == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}
    ]
    api.token = "00D000000000001!made-up"
    assert api.query("SELECT Id FROM Order").status_code == 401
    assert api.call("GET", "/limits", headers={"Authorization": ""}).status_code == 401


def test_the_oauth_scheme_is_accepted(api, world):
    api.login()
    reply = api.call("GET", "/limits", headers={"Authorization": f"OAuth {api.token}"})
    assert reply.status_code == 200


def test_versions_need_no_session(api, sandbox):
    reply = api.session.get(sandbox.env["SF_LOGIN_URL"] + "/services/data/", timeout=TIMEOUT)
    versions = {v["version"]: v for v in reply.json()}
    assert versions["59.0"] == {
        "label": "Winter '24",
        "url": "/services/data/v59.0",
        "version": "59.0",
    }
    assert versions["61.0"]["label"] == "Summer '24"


def test_an_unsupported_version_is_not_found(api, world):
    api.login()
    api.base = api.base.replace("v59.0", "v20.0")
    assert api.query("SELECT Id FROM Order").status_code == 404


# --- query ------------------------------------------------------------------------------------


def test_query_answers_with_limit_info_and_counts(api, sandbox_admin, world):
    api.login()
    reply = api.query(
        "SELECT Id, Account.WHMCS_Client_ID__c, (SELECT Quantity FROM OrderItems) FROM Order "
        f"WHERE Id = '{world['o1']}'"
    )
    assert reply.status_code == 200
    assert reply.headers["Sforce-Limit-Info"] == "api-usage=1/15000"
    record = reply.json()["records"][0]
    assert record["Account"]["WHMCS_Client_ID__c"] == "1"
    assert record["OrderItems"]["records"][0]["Quantity"] == 1.0
    assert sandbox_admin.sf_counters()["api_calls"]["query"] == 1


@pytest.mark.parametrize(
    ("soql", "code"),
    [
        ("SELECT Id, Nope__c FROM Order", "INVALID_FIELD"),
        ("SELECT Id FROM Order WHERE", "MALFORMED_QUERY"),
        ("SELECT Id FROM Nope", "INVALID_TYPE"),
        ("SELECT Id FROM Order WHERE Id = 'x'", "INVALID_QUERY_FILTER_OPERATOR"),
        ("", "MALFORMED_QUERY"),
    ],
)
def test_query_errors_are_json_lists(api, world, soql, code):
    api.login()
    reply = api.query(soql)
    assert reply.status_code == 400
    [error] = reply.json()
    assert error["errorCode"] == code and error["message"]


# --- records ----------------------------------------------------------------------------------


def test_get_an_order(api, world):
    api.login()
    reply = api.call("GET", f"/sobjects/Order/{world['o1']}")
    assert reply.status_code == 200
    body = reply.json()
    assert body["attributes"] == {
        "type": "Order",
        "url": f"/services/data/v59.0/sobjects/Order/{world['o1']}",
    }
    assert body["Status"] == "Draft" and body["TotalAmount"] == 50.0
    some = api.call("GET", f"/sobjects/Order/{world['o1']}", params={"fields": "Id,Status"})
    assert set(some.json()) == {"attributes", "Id", "Status"}
    assert api.call("GET", f"/sobjects/Order/{world['o1'][:15]}").status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/sobjects/Order/8015g00000NOPE1AAA", {}, 404, "NOT_FOUND"),
        ("/sobjects/Order/garbage", {}, 404, "NOT_FOUND"),
        ("/sobjects/Nope/8015g00000NOPE1AAA", {}, 404, "NOT_FOUND"),
        ("/sobjects/Order/{o1}", {"fields": "Id,Nope__c"}, 400, "INVALID_FIELD"),
        ("/nope", {}, 404, "NOT_FOUND"),
    ],
)
def test_get_errors(api, world, path, params, status, code):
    api.login()
    reply = api.call("GET", path.format(**world), params=params)
    assert reply.status_code == status
    assert reply.json()[0]["errorCode"] == code


def test_patch_writes_and_answers_204(api, sandbox_admin, world):
    api.login()
    fields = {
        "Activation_Status__c": "Activated",
        "WHMCS_Order_ID__c": "1042",
        "Activation_Error_Code__c": None,
    }
    reply = api.call("PATCH", f"/sobjects/Order/{world['o1']}", json=fields)
    assert reply.status_code == 204 and reply.content == b""
    order = sandbox_admin.order(world["o1"])
    assert order["Activation_Status__c"] == "Activated" and order["WHMCS_Order_ID__c"] == "1042"
    assert sandbox_admin.patches()[0]["fields"] == fields
    assert sandbox_admin.sf_counters()["api_calls"]["patch"] == 1


PATCH_ERRORS = [
    ({"Nope__c": "x"}, 400, "INVALID_FIELD", ["Nope__c"]),
    ({"Activation_Status__c": "Done"}, 400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
     ["Activation_Status__c"]),
    ({"Activation_Status__c": "activated"}, 400, "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
     ["Activation_Status__c"]),
    ({"Activation_Error_Message__c": "x" * 256}, 400, "STRING_TOO_LONG",
     ["Activation_Error_Message__c"]),
    ({"Activation_Error_Message__c": "\U0001f525" * 128}, 400, "STRING_TOO_LONG",
     ["Activation_Error_Message__c"]),  # 128 emoji are 256 UTF-16 units
    ({"Activation_Error_Code__c": "E" * 41}, 400, "STRING_TOO_LONG", ["Activation_Error_Code__c"]),
    ({"WHMCS_Order_ID__c": "1" * 21}, 400, "STRING_TOO_LONG", ["WHMCS_Order_ID__c"]),
    ({"OrderNumber": "1"}, 400, "INVALID_FIELD_FOR_INSERT_UPDATE", ["OrderNumber"]),
    ({"TotalAmount": 1}, 400, "INVALID_FIELD_FOR_INSERT_UPDATE", ["TotalAmount"]),
    ({"Status": None}, 400, "REQUIRED_FIELD_MISSING", ["Status"]),
    ({"AccountId": "garbage"}, 400, "MALFORMED_ID", ["AccountId"]),
    ({"Activation_Error_Code__c": {"a": 1}}, 400, "JSON_PARSER_ERROR", []),
    ([{"Status": "Draft"}], 400, "JSON_PARSER_ERROR", []),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "code", "fields"), PATCH_ERRORS)
def test_patch_errors_like_salesforce(api, sandbox_admin, world, body, status, code, fields):
    api.login()
    reply = api.call("PATCH", f"/sobjects/Order/{world['o1']}", json=body)
    assert reply.status_code == status
    [error] = reply.json()
    assert (error["errorCode"], error["fields"]) == (code, fields)
    assert error["message"]
    assert sandbox_admin.patches() == []


def test_patch_accepts_the_longest_values(api, sandbox_admin, world):
    api.login()
    body = {
        "Activation_Error_Message__c": "\U0001f525" * 127 + "x",  # 255 UTF-16 units
        "Activation_Error_Code__c": "E" * 40,
        "Activation_Status__c": None,
    }
    assert api.call("PATCH", f"/sobjects/Order/{world['o1']}", json=body).status_code == 204
    assert sandbox_admin.order(world["o1"])["Activation_Error_Code__c"] == "E" * 40


def test_patch_of_an_unknown_order_is_404_and_a_bad_body_400(api, world):
    api.login()
    missing = api.call("PATCH", "/sobjects/Order/8015g00000NOPE1AAA", json={"Status": "Draft"})
    assert missing.status_code == 404
    assert missing.json()[0]["errorCode"] == "NOT_FOUND"
    bad = api.call(
        "PATCH",
        f"/sobjects/Order/{world['o1']}",
        data="{not json",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "JSON_PARSER_ERROR"


def test_lost_field_access_shows_in_describe_and_refuses_the_patch(api, sandbox_admin, world):
    api.login()
    sandbox_admin.set_field_access("WHMCS_Order_ID__c", updateable=False)
    reply = api.call("PATCH", f"/sobjects/Order/{world['o1']}", json={"WHMCS_Order_ID__c": "7"})
    assert reply.status_code == 400
    [error] = reply.json()
    assert error["errorCode"] == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert error["fields"] == ["WHMCS_Order_ID__c"]
    described = api.call("GET", "/sobjects/Order/describe").json()
    fields = {f["name"]: f for f in described["fields"]}
    assert fields["WHMCS_Order_ID__c"]["updateable"] is False
    assert fields["Activation_Status__c"]["updateable"] is True


def test_describe_order(api, sandbox_admin, world):
    api.login()
    reply = api.call("GET", "/sobjects/Order/describe")
    assert reply.status_code == 200
    described = reply.json()
    assert described["name"] == "Order" and described["keyPrefix"] == "801"
    fields = {f["name"]: f for f in described["fields"]}
    status = fields["Activation_Status__c"]
    assert status["type"] == "picklist" and status["restrictedPicklist"] is True
    assert [v["value"] for v in status["picklistValues"]] == ["Activating", "Activated", "Failed"]
    assert fields["Activation_Error_Message__c"]["length"] == 255
    assert fields["Activation_Error_Code__c"]["length"] == 40
    assert fields["WHMCS_Order_ID__c"]["length"] == 20
    assert fields["OrderNumber"]["updateable"] is False
    assert fields["AccountId"]["referenceTo"] == ["Account"]
    assert {"childSObject": "OrderItem", "field": "OrderId", "relationshipName": "OrderItems"} in (
        described["childRelationships"]
    )
    assert api.call("GET", "/sobjects/Nope/describe").status_code == 404
    assert sandbox_admin.sf_counters()["api_calls"]["describe"] == 2


def test_limits(api, world):
    api.login()
    api.query("SELECT Id FROM Order")
    limits = api.call("GET", "/limits").json()
    assert limits["DailyApiRequests"] == {"Max": 15000, "Remaining": 15000 - 2}
    assert limits["DailyDeliveredPlatformEvents"]["Max"] == 50000


def test_a_wrong_method_is_405(api, world):
    api.login()
    reply = api.call("DELETE", f"/sobjects/Order/{world['o1']}")
    assert reply.status_code == 405
    assert reply.json()[0]["errorCode"] == "METHOD_NOT_ALLOWED"


# --- platform event and the Flow --------------------------------------------------------------


def test_publish_through_rest(api, sandbox_admin, world):
    api.login()
    reply = api.call(
        "POST", "/sobjects/OrderProvisionRequested__e", json={"OrderId__c": world["o1"]}
    )
    assert reply.status_code == 201
    assert reply.json()["success"] is True and reply.json()["id"].startswith("e00")
    [event] = sandbox_admin.events()
    assert event["payload"]["OrderId__c"] == world["o1"]
    assert event["payload"]["CreatedById"].startswith("005")
    assert event["payload"]["CreatedDate"].endswith("Z")
    bad = api.call("POST", "/sobjects/OrderProvisionRequested__e", json={"Order__c": "x"})
    assert bad.status_code == 400 and bad.json()[0]["errorCode"] == "INVALID_FIELD"
    assert sandbox_admin.sf_counters()["api_calls"]["publish"] == 2


def test_approve_sets_activating_and_publishes(sandbox_admin, world):
    event = sandbox_admin.approve(world["o1"])
    order = sandbox_admin.order(world["o1"])
    # The approval and the Flow's assignments (salesforce/.../Order_Set_Activating_On_Approval).
    assert order["Status"] == "Activated" and order["Activation_Status__c"] == "Activating"
    assert (
        order["Activation_Error_Code__c"] is None and order["Activation_Error_Message__c"] is None
    )
    payload = event["payload"]
    assert payload["OrderId__c"] == world["o1"]
    assert payload["CreatedById"].startswith("005")
    assert time.strptime(payload["CreatedDate"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert event["event"]["replayId"] > 0 and event["event"]["EventUuid"]
    assert sandbox_admin.events() == [event]


def test_retry_follows_the_runbook(api, sandbox_admin, world):
    sandbox_admin.approve(world["o1"])
    assert sandbox_admin.retry(world["o1"]) == {"result": "Already in progress"}
    assert len(sandbox_admin.events()) == 1
    api.login()
    failed = {
        "Activation_Status__c": "Failed",
        "Activation_Error_Code__c": "409",
        "Activation_Error_Message__c": "no pay method",
    }
    assert api.call("PATCH", f"/sobjects/Order/{world['o1']}", json=failed).status_code == 204
    reply = sandbox_admin.retry(world["o1"])
    assert reply["result"] == "published"
    order = sandbox_admin.order(world["o1"])
    assert order["Activation_Status__c"] == "Activating"
    assert (
        order["Activation_Error_Code__c"] is None and order["Activation_Error_Message__c"] is None
    )
    assert [e["payload"]["OrderId__c"] for e in sandbox_admin.events()] == [world["o1"]] * 2
    assert reply["event"]["event"]["replayId"] > sandbox_admin.events()[0]["event"]["replayId"]


def test_approve_of_an_unknown_order_is_refused(sandbox_admin, world):
    with pytest.raises(SandboxAdminError) as caught:
        sandbox_admin.approve("8015g00000NOPE1AAA")
    assert caught.value.status == 400


def test_raw_events_are_published_as_given(sandbox_admin):
    event = sandbox_admin.publish({"OrderId__c": 12345, "Extra": [1]})
    assert event["payload"]["OrderId__c"] == 12345 and event["payload"]["Extra"] == [1]


# --- composite --------------------------------------------------------------------------------


def test_composite_passes_through_with_references(api, sandbox_admin, world):
    api.login()
    soql = f"SELECT+Id+FROM+Order+WHERE+Id='{world['o2']}'"
    body = {
        "allOrNone": False,
        "compositeRequest": [
            {
                "method": "GET",
                "url": f"/services/data/v59.0/query?q={soql}",
                "referenceId": "found",
            },
            {
                "method": "PATCH",
                "url": "/services/data/v59.0/sobjects/Order/@{found.records[0].Id}",
                "referenceId": "write",
                "body": {"Activation_Status__c": "Activated"},
            },
        ],
    }
    reply = api.call("POST", "/composite", json=body)
    assert reply.status_code == 200
    first, second = reply.json()["compositeResponse"]
    assert first["httpStatusCode"] == 200 and first["body"]["totalSize"] == 1
    assert second == {
        "body": None,
        "httpHeaders": {},
        "httpStatusCode": 204,
        "referenceId": "write",
    }
    assert sandbox_admin.order(world["o2"])["Activation_Status__c"] == "Activated"
    calls = sandbox_admin.sf_counters()["api_calls"]
    assert (calls["composite"], calls["query"], calls["patch"]) == (1, 0, 0)


def test_composite_all_or_none_rolls_back(api, sandbox_admin, world):
    api.login()
    url = f"/services/data/v59.0/sobjects/Order/{world['o1']}"
    body = {
        "allOrNone": True,
        "compositeRequest": [
            {"method": "PATCH", "url": url, "referenceId": "a", "body": {"WHMCS_Order_ID__c": "9"}},
            {"method": "PATCH", "url": url, "referenceId": "b", "body": {"Status": "Nope"}},
        ],
    }
    first, second = api.call("POST", "/composite", json=body).json()["compositeResponse"]
    assert first["httpStatusCode"] == 400 and first["body"][0]["errorCode"] == "PROCESSING_HALTED"
    assert second["body"][0]["errorCode"] == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert sandbox_admin.order(world["o1"])["WHMCS_Order_ID__c"] is None


# --- faults -----------------------------------------------------------------------------------

REST_FAULTS = [
    ("sf.query", "status", {"status": 503}, 503, "SERVER_UNAVAILABLE"),
    ("sf.query", "status", {"status": 500}, 500, "UNKNOWN_EXCEPTION"),
    ("sf.rest", "status", {"status": 403}, 403, "REQUEST_LIMIT_EXCEEDED"),
    ("sf.query", "status", {"status": 429}, 429, "REQUEST_LIMIT_EXCEEDED"),
    ("sf.query", "status", {"status": 401}, 401, "INVALID_SESSION_ID"),
    ("sf.query", "invalid_session", {}, 401, "INVALID_SESSION_ID"),
    ("sf.*", "status", {"status": 503}, 503, "SERVER_UNAVAILABLE"),
]


@pytest.mark.parametrize(("target", "kind", "params", "status", "code"), REST_FAULTS)
def test_rest_status_faults(api, sandbox_admin, world, target, kind, params, status, code):
    api.login()
    sandbox_admin.add_fault(target, kind, 1, **params)
    reply = api.query("SELECT Id FROM Order")
    assert reply.status_code == status
    assert reply.json()[0]["errorCode"] == code
    assert "Sforce-Limit-Info" in reply.headers
    if status in (429, 503):
        assert reply.headers["Retry-After"] == "1"
    assert api.query("SELECT Id FROM Order").status_code == 200  # the fault was used up
    assert sandbox_admin.sf_counters()["api_calls"]["query"] == 1  # faulted calls do not count


def test_a_fault_on_one_kind_leaves_the_others_alone(api, sandbox_admin, world):
    api.login()
    sandbox_admin.add_fault("sf.patch", "status", 2, status=503)
    assert api.query("SELECT Id FROM Order").status_code == 200
    url = f"/sobjects/Order/{world['o1']}"
    statuses = [api.call("PATCH", url, json={"Status": "Draft"}).status_code for _ in range(3)]
    assert statuses == [503, 503, 204]
    assert (
        sandbox_admin.fault_history()
        == [{"target": "sf.patch", "kind": "status", "status": 503}] * 2
    )


def test_html_nonjson_and_non_list_401(api, sandbox_admin, world):
    api.login()
    sandbox_admin.add_fault("sf.patch", "html", status=502)
    page = api.call("PATCH", f"/sobjects/Order/{world['o1']}", json={"Status": "Draft"})
    assert page.status_code == 502 and page.headers["Content-Type"].startswith("text/html")
    sandbox_admin.add_fault("sf.get", "nonjson")
    teapot = api.call("GET", f"/sobjects/Order/{world['o1']}")
    assert teapot.status_code == 200 and teapot.text.startswith("<html>")
    sandbox_admin.add_fault("sf.describe", "invalid_session_body")
    odd = api.call("GET", "/sobjects/Order/describe")
    assert odd.status_code == 401 and isinstance(odd.json(), dict)


def test_reset_and_hang_faults(api, sandbox_admin, world):
    api.login()
    sandbox_admin.add_fault("sf.query", "reset")
    with pytest.raises(requests.ConnectionError):
        api.query("SELECT Id FROM Order")
    sandbox_admin.add_fault("sf.query", "hang", seconds=3)
    with pytest.raises(requests.ReadTimeout):
        api.query("SELECT Id FROM Order", timeout=(5, 0.5))
    assert api.query("SELECT Id FROM Order").status_code == 200


def test_token_faults(api, sandbox_admin):
    sandbox_admin.add_fault("sf.token", "status", status=500)
    reply = api.token_request(grant_type=GRANT, assertion=api.assertion())
    assert reply.status_code == 500
    assert reply.json() == {"error": "unknown_error", "error_description": "retry your request"}
    sandbox_admin.add_fault("sf.token", "html", status=503)
    page = api.token_request(grant_type=GRANT, assertion=api.assertion())
    assert page.status_code == 503 and "<html" in page.text
    assert api.token_request(grant_type=GRANT, assertion=api.assertion()).status_code == 200
    assert sandbox_admin.sf_counters()["logins"] == 1


def test_latency_is_added_per_call(api, sandbox_admin, world):
    api.login()
    sandbox_admin.set_latency("sf.query", 0.3)
    started = time.monotonic()
    assert api.query("SELECT Id FROM Order").status_code == 200
    assert time.monotonic() - started >= 0.3  # a lower bound: a sleep is never shorter


# --- CometD routing ---------------------------------------------------------------------------


def test_cometd_shares_the_tokens_and_the_events_of_the_flow(api, sandbox_admin, world):
    api.login()
    url = api.env["SF_LOGIN_URL"] + "/cometd/59.0"
    headers = {"Authorization": f"Bearer {api.token}"}

    def bayeux(*messages: dict[str, Any]) -> list[dict[str, Any]]:
        reply = api.session.post(url, json=list(messages), headers=headers, timeout=TIMEOUT)
        assert reply.status_code == 200
        return reply.json()

    [hello] = bayeux(
        {"channel": "/meta/handshake", "version": "1.0", "id": "1",
         "supportedConnectionTypes": ["long-polling"]}
    )  # fmt: skip
    assert hello["successful"] is True
    client = {"clientId": hello["clientId"]}
    bayeux({"channel": "/meta/connect", "connectionType": "long-polling", "id": "2", **client})
    channel = "/event/OrderProvisionRequested__e"
    [subscribed] = bayeux(
        {"channel": "/meta/subscribe", "subscription": channel, "id": "3",
         "ext": {"replay": {channel: -1}}, **client}
    )  # fmt: skip
    assert subscribed["successful"] is True
    published = sandbox_admin.approve(world["o1"])
    replies = bayeux(
        {"channel": "/meta/connect", "connectionType": "long-polling", "id": "4", **client}
    )
    events = [r["data"] for r in replies if r.get("channel") == channel]
    assert events == [{k: published[k] for k in ("schema", "payload", "event")}]
    assert sandbox_admin.sf_counters()["delivered"] == 1

    sandbox_admin.revoke_tokens()
    [denied] = bayeux(
        {"channel": "/meta/handshake", "version": "1.0", "id": "5",
         "supportedConnectionTypes": ["long-polling"]}
    )  # fmt: skip
    assert denied["successful"] is False
