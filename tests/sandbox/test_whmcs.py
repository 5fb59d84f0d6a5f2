"""The WHMCS emulator over real TLS, driven by raw `requests` calls: it must read requests as
WHMCS does (PHP form rules), refuse as WHMCS does, and misbehave exactly when told to."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox import tls
from sandbox.faults import FaultBook
from sandbox.http_server import Server, wait_until
from sandbox.whmcs.emulator import API_PATH, WhmcsEmulator
from tests.whmcs_support import ACCESS_KEY, IDENTIFIER, SECRET, Running, running_whmcs

AUTH = {"identifier": IDENTIFIER, "secret": SECRET}
GATEWAYS = "stripe,banktransfer"  # comma-separated, no spaces, in WHMCS's order


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return tls.generate(tmp_path_factory.mktemp("whmcs-tls"))


@pytest.fixture
def whmcs(material) -> Iterator[Running]:
    with running_whmcs(material) as running:
        yield running


def post(whmcs: Running, data: Any, *, auth: bool = True, json_reply: bool = True, **kwargs):
    """A raw form POST, as any PHP-unaware client would send it."""
    if isinstance(data, dict):
        data = list(data.items())
    extra = [*AUTH.items()] if auth else []
    extra += [("responsetype", "json")] if json_reply else []
    kwargs.setdefault("timeout", 10)
    return requests.post(whmcs.url, data=data + extra, verify=str(whmcs.ca_path), **kwargs)


def add_order(whmcs: Running, *items: tuple[str, Any], **fields: Any) -> requests.Response:
    base = {"action": "AddOrder", "clientid": 1, "paymentmethod": "stripe", **fields}
    return post(whmcs, [*base.items(), *items])


def orders(whmcs: Running) -> list[dict[str, Any]]:
    return whmcs.emulator.admin("orders", {})["orders"]


# --- fidelity: PHP form semantics ---


def test_indexed_pids_order_two_products_but_a_repeated_pid_orders_one(whmcs):
    indexed = add_order(
        whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), ("pid[1]", 2),
        ("billingcycle[1]", "annually"), notes="indexed",
    )  # fmt: skip
    # What `requests.post(data={"pid": [1, 2]})` sends: PHP keeps the last value only.
    repeated = post(
        whmcs,
        {"action": "AddOrder", "clientid": 1, "paymentmethod": "stripe", "pid": [1, 2],
         "billingcycle": "monthly", "notes": "repeated"},
    )  # fmt: skip

    assert indexed.json()["serviceids"].count(",") == 1
    assert repeated.json()["serviceids"].count(",") == 0
    by_notes = {o["notes"]: o for o in orders(whmcs)}
    assert [s["pid"] for s in by_notes["indexed"]["services"]] == [1, 2]
    assert [s["billingcycle"] for s in by_notes["indexed"]["services"]] == ["Monthly", "Annually"]
    assert [s["pid"] for s in by_notes["repeated"]["services"]] == [2]
    logged = [r["params"]["pid"] for r in whmcs.emulator.admin("requests", {})["requests"]]
    assert logged == [{0: "1", 1: "2"}, "2"]


def test_empty_brackets_append_like_explicit_indices(whmcs):
    reply = add_order(
        whmcs, ("pid[]", 1), ("pid[]", 2), ("billingcycle[]", "monthly"),
        ("billingcycle[]", "monthly"),
    )  # fmt: skip
    assert len(reply.json()["serviceids"].split(",")) == 2


def test_a_json_body_is_not_read(whmcs):
    reply = requests.post(
        whmcs.url,
        json={"action": "AddOrder", **AUTH, "clientid": 1, "paymentmethod": "stripe", "pid": [1],
              "responsetype": "json"},
        verify=str(whmcs.ca_path),
        timeout=10,
    )  # fmt: skip
    assert reply.status_code == 403
    assert orders(whmcs) == []
    assert whmcs.emulator.admin("requests", {})["requests"][0]["params"] == {}


def test_without_responsetype_the_reply_is_not_json(whmcs):
    single = post(whmcs, {"action": "GetPayMethods", "clientid": 1}, json_reply=False)
    listing = post(whmcs, {"action": "GetOrders"}, json_reply=False)
    assert single.text.startswith("result=success;clientid=1")
    assert single.headers["Content-Type"].startswith("text/plain")
    assert listing.text.startswith("<?xml") and "<whmcsapi" in listing.text
    for reply in (single, listing):
        with pytest.raises(ValueError):
            json.loads(reply.text)


@pytest.mark.parametrize(
    ("action", "responsetype", "message"),
    [
        ("GetPayMethods", "yaml", 'Unsupported API response type format "yaml"'),
        ("GetOrders", "nvp", "This API action only supports the XML or JSON"),
    ],
)
def test_bad_responsetype_is_an_error(whmcs, action, responsetype, message):
    data = {"action": action, "clientid": 1, "responsetype": responsetype}
    reply = post(whmcs, data, json_reply=False)
    assert reply.status_code == 200
    assert message in reply.text


def test_responsetype_and_action_are_case_insensitive(whmcs):
    reply = post(whmcs, {"action": "get-PAY-methods", "clientid": 1, "responsetype": "JSON"},
                 json_reply=False)  # fmt: skip
    assert reply.json()["result"] == "success"


def test_get_works_and_the_body_wins_over_the_query(whmcs):
    query = {"action": "GetPayMethods", "clientid": 2, **AUTH, "responsetype": "json"}
    got = requests.get(whmcs.url, params=query, verify=str(whmcs.ca_path), timeout=10)
    posted = requests.post(
        whmcs.url, params=query, data={"clientid": 1}, verify=str(whmcs.ca_path), timeout=10
    )
    assert got.json()["clientid"] == "2"
    assert posted.json()["clientid"] == "1"


def test_json_escapes_quotes_like_laminas(whmcs):
    whmcs.emulator.admin("set_role", {"allowed_actions": ["GetOrders"]})
    reply = post(whmcs, {"action": "AcceptOrder", "orderid": 1})
    assert "\\u0022acceptorder\\u0022" in reply.text
    assert reply.json()["message"] == 'Invalid Permissions: API action "acceptorder" is not allowed'
    whmcs.emulator.admin("set_hex_quotes", {"enabled": False})
    assert '\\"acceptorder\\"' in post(whmcs, {"action": "AcceptOrder", "orderid": 1}).text


# --- auth ---


@pytest.mark.parametrize(
    ("credentials", "message"),
    [
        ({"identifier": IDENTIFIER, "secret": "wrong"}, "Authentication Failed"),
        ({"identifier": "nobody", "secret": SECRET}, "Invalid or missing credentials"),
        ({"identifier": "idé", "secret": "sécret"}, "Invalid or missing credentials"),
        ({}, "Invalid or missing credentials"),
        ({"username": "admin", "password": "plain-text"}, "Invalid password provided"),
    ],
)
def test_refused_credentials_are_403_json(whmcs, credentials, message):
    reply = post(whmcs, {"action": "GetOrders", **credentials}, auth=False)
    assert reply.status_code == 403
    assert reply.json() == {"result": "error", "message": message}


def test_legacy_credential_field_names_are_accepted(whmcs):
    data = {"action": "GetOrders", "username": IDENTIFIER, "password": SECRET}
    assert post(whmcs, data, auth=False).json()["result"] == "success"


def test_legacy_admin_login_takes_an_md5_password(material):
    emulator = WhmcsEmulator(
        FaultBook(), identifier=IDENTIFIER, secret=SECRET, admin_username="api", admin_password="pw"
    )
    server = Server(emulator.handle, ssl_context=material.server_context()).start()
    try:
        data = {"action": "GetOrders", "username": "api", "responsetype": "json"}
        good = hashlib.md5(b"pw").hexdigest()
        bad = hashlib.md5(b"other").hexdigest()
        url, ca = server.url + API_PATH, str(material.ca_path)
        accepted = requests.post(url, data={**data, "password": good}, verify=ca, timeout=10)
        refused = requests.post(url, data={**data, "password": bad}, verify=ca, timeout=10)
    finally:
        server.stop()
    assert accepted.json()["result"] == "success"
    assert refused.json() == {"result": "error", "message": "Authentication Failed"}


def test_three_failed_logins_ban_the_ip_until_reset(whmcs):
    for _ in range(3):
        bad = post(whmcs, {"action": "GetOrders", "identifier": IDENTIFIER, "secret": "x"},
                   auth=False)  # fmt: skip
        assert bad.json()["message"] == "Authentication Failed"
    good = post(whmcs, {"action": "GetOrders"})
    assert (good.status_code, good.json()["message"]) == (403, "IP Banned")
    assert whmcs.emulator.admin("bans", {})["banned"] == ["127.0.0.1"]

    whmcs.emulator.reset()
    assert post(whmcs, {"action": "GetOrders"}).json()["result"] == "success"


def test_ip_allow_list_and_access_key(whmcs):
    whmcs.emulator.admin("set_ip_allowlist", {"ips": ["203.0.113.7"]})
    refused = post(whmcs, {"action": "GetOrders"})
    wrong_key = post(whmcs, {"action": "GetOrders", "accesskey": "nope"})
    bypass = post(whmcs, {"action": "GetOrders", "accesskey": ACCESS_KEY})
    assert (refused.status_code, refused.json()["message"]) == (403, "Invalid IP 127.0.0.1")
    assert (wrong_key.status_code, wrong_key.json()["message"]) == (403, "Invalid Access Key")
    assert bypass.json()["result"] == "success"


def test_forwarded_caller_ip_and_the_older_400_status(whmcs):
    whmcs.emulator.admin(
        "set_ip_allowlist", {"ips": ["127.0.0.1"], "trust_forwarded_for": True, "status": 400}
    )
    reply = post(whmcs, {"action": "GetOrders"}, headers={"X-Forwarded-For": "203.0.113.7"})
    assert (reply.status_code, reply.json()["message"]) == (400, "Invalid IP 203.0.113.7")


def test_role_whitelist_refuses_other_actions(whmcs):
    whmcs.emulator.admin("set_role", {"allowed_actions": ["AddOrder", "GetPayMethods"]})
    allowed = post(whmcs, {"action": "GetPayMethods", "clientid": 1})
    refused = post(whmcs, {"action": "AcceptOrder", "orderid": 1})
    assert allowed.json()["result"] == "success"
    assert refused.status_code == 403
    assert refused.json()["message"] == (
        'Invalid Permissions: API action "acceptorder" is not allowed'
    )
    whmcs.emulator.admin("set_role", {"allowed_actions": None})
    assert post(whmcs, {"action": "GetOrders"}).json()["result"] == "success"


def test_unknown_and_empty_actions(whmcs):
    unknown = post(whmcs, {"action": "DropAllTables"})
    empty = post(whmcs, {"action": ""})
    assert unknown.status_code == 403
    assert (
        unknown.json()["message"] == 'Invalid API Action: "dropalltables" is not a valid API action'
    )
    assert (empty.status_code, empty.json()["message"]) == (400, "Empty action request")


def test_request_log_keeps_no_secret(whmcs):
    post(whmcs, {"action": "GetOrders", "accesskey": ACCESS_KEY})
    post(whmcs, {"action": "GetOrders", "username": IDENTIFIER, "password": SECRET}, auth=False)
    log = whmcs.emulator.admin("requests", {"action": "getorders"})["requests"]
    dumped = json.dumps(log)
    assert len(log) == 2
    assert log[0]["auth"] == ["identifier", "secret", "accesskey"]
    for secret in (IDENTIFIER, SECRET, ACCESS_KEY):
        assert secret not in dumped


# --- AddOrder behaviours ---


def test_unknown_pids_are_dropped_and_bad_cycles_substituted_silently(whmcs):
    reply = add_order(
        whmcs,
        ("pid[0]", 1), ("billingcycle[0]", "quarterly"),  # not priced -> Monthly
        ("pid[1]", 999), ("billingcycle[1]", "monthly"),  # no such product -> dropped
        ("pid[2]", 2), ("billingcycle[2]", "Semi-Annually"),  # not an API spelling
        ("pid[3]", 1), ("billingcycle[3]", "ANNUALLY"),  # case does not matter
    )  # fmt: skip
    assert reply.json()["result"] == "success"
    order = orders(whmcs)[0]
    assert [(s["pid"], s["billingcycle"]) for s in order["services"]] == [
        (1, "Monthly"),
        (2, "Monthly"),
        (1, "Annually"),
    ]
    notes = whmcs.emulator.admin("substitutions", {})["substitutions"]
    assert [(n["kind"], n["index"], n["requested"], n["used"]) for n in notes] == [
        ("billing_cycle", 0, "quarterly", "monthly"),
        ("dropped_pid", 1, "999", None),
        ("billing_cycle", 2, "Semi-Annually", "monthly"),
    ]
    assert {n["order_id"] for n in notes} == {order["id"]}


def test_a_string_billingcycle_with_array_pids_is_indexed_as_a_string(whmcs):
    add_order(whmcs, ("pid[0]", 1), ("billingcycle", "annually"))
    order = orders(whmcs)[0]
    assert order["services"][0]["billingcycle"] == "Monthly"  # "annually"[0] is "a"
    (note,) = whmcs.emulator.admin("substitutions", {})["substitutions"]
    assert (note["requested"], note["used"]) == ("a", "monthly")


def test_all_pids_unknown_still_creates_an_empty_order(whmcs):
    reply = add_order(whmcs, ("pid[0]", 999), ("billingcycle[0]", "monthly")).json()
    assert (reply["result"], reply["serviceids"], reply["invoiceid"]) == ("success", "", 0)
    listed = post(whmcs, {"action": "GetOrders", "id": reply["orderid"]}).json()
    assert listed["orders"]["order"][0]["lineitems"] == []


def test_quantities_and_products_that_ignore_them(whmcs):
    reply = add_order(
        whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), ("qty[0]", 3),
        ("pid[1]", 5), ("billingcycle[1]", "monthly"), ("qty[1]", 2),
    ).json()  # fmt: skip
    assert len(reply["serviceids"].split(",")) == 4  # 3 + 1: product 5 does not allow qty
    kinds = [n["kind"] for n in whmcs.emulator.admin("substitutions", {})["substitutions"]]
    assert kinds == ["qty_ignored"]


def test_onetime_products_and_the_response_shape(whmcs):
    reply = add_order(whmcs, ("pid[0]", 3), ("billingcycle[0]", "onetime"), noinvoice=1).json()
    assert list(reply) == ["result", "orderid", "productids", "serviceids", "addonids", "domainids"]
    assert isinstance(reply["orderid"], int)
    assert reply["productids"] == reply["serviceids"]
    assert orders(whmcs)[0]["services"][0]["billingcycle"] == "One Time"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"clientid": 42}, "Client ID Not Found"),
        ({"clientid": 3}, "Unable to add order when client status is Closed"),
        ({"paymentmethod": "paypal"}, f"Invalid Payment Method. Valid options include {GATEWAYS}"),
        ({"clientip": "not-an-ip"}, "Invalid IP address provided for 'clientip'"),
    ],
)  # fmt: skip
def test_add_order_errors(whmcs, fields, message):
    reply = add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), **fields)
    assert (reply.status_code, reply.json()) == (200, {"result": "error", "message": message})
    assert orders(whmcs) == []


def test_no_items_is_an_error(whmcs):
    reply = add_order(whmcs)
    assert reply.json()["message"] == "No items added to cart so order cannot proceed"


def test_notes_are_stored_and_flags_use_php_truthiness(whmcs):
    add_order(
        whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), notes="SF-ORDER:801A", noemail=1
    )
    # Python's False goes out as "False", which PHP reads as true: e-mails are suppressed too.
    add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), noemail=False)
    add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), noemail=0)
    first, second, third = orders(whmcs)
    assert first["notes"] == "SF-ORDER:801A"
    assert first["emails"] == ["Invoice Created"]
    assert second["emails"] == ["Invoice Created"]
    assert third["emails"] == ["Order Confirmation", "Invoice Created"]
    listed = post(whmcs, {"action": "GetOrders", "userid": 1}).json()["orders"]["order"]
    assert listed[-1]["notes"] == "SF-ORDER:801A"


# --- AcceptOrder, CancelOrder, GetOrders ---


def _new_order(whmcs: Running, pid: int = 1) -> int:
    reply = add_order(whmcs, ("pid[0]", pid), ("billingcycle[0]", "monthly"))
    return reply.json()["orderid"]


def test_accept_order_twice(whmcs):
    order_id = _new_order(whmcs)
    first = post(whmcs, {"action": "AcceptOrder", "orderid": order_id, "autosetup": 1,
                         "sendemail": 0})  # fmt: skip
    second = post(whmcs, {"action": "AcceptOrder", "orderid": order_id, "autosetup": 1,
                          "sendemail": 0})  # fmt: skip
    assert first.json() == {"result": "success"}
    assert second.json() == {
        "result": "error",
        "message": "Order ID not found or Status not Pending",
    }
    (order,) = orders(whmcs)
    assert order["status"] == "Active"
    assert [s["status"] for s in order["services"]] == ["Active"]
    assert order["accept_calls"][0] == {"autosetup": True, "sendemail": False, "explicit": True}


def test_accept_order_module_failure_leaves_the_order_pending(whmcs):
    reply = add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"), ("pid[1]", 4),
                      ("billingcycle[1]", "monthly")).json()  # fmt: skip
    accept = {"action": "AcceptOrder", "orderid": reply["orderid"], "autosetup": 1, "sendemail": 0}
    failed = post(whmcs, accept)
    assert failed.json() == {"result": "error", "message": "Firewall panel unreachable"}
    (order,) = orders(whmcs)
    assert order["status"] == "Pending"
    assert [s["status"] for s in order["services"]] == ["Active", "Pending"]
    # Without autosetup the module is not run: the pending service is just marked Active.
    assert post(whmcs, {**accept, "autosetup": 0}).json() == {"result": "success"}
    assert orders(whmcs)[0]["status"] == "Active"


def test_cancel_pending_delete_and_statuses(whmcs):
    order_id = _new_order(whmcs)
    assert post(whmcs, {"action": "DeleteOrder", "orderid": order_id}).json()["message"] == (
        "The order status must be in Cancelled or Fraud to be deleted"
    )
    assert post(whmcs, {"action": "CancelOrder", "orderid": order_id}).json()["result"] == "success"
    again = post(whmcs, {"action": "CancelOrder", "orderid": order_id}).json()
    assert again["message"] == "Order ID not found or Status not Pending"
    statuses = post(whmcs, {"action": "GetOrderStatuses"}).json()["statuses"]["status"]
    assert {s["title"]: s["count"] for s in statuses}["Cancelled"] == 1
    assert post(whmcs, {"action": "DeleteOrder", "orderid": order_id}).json()["result"] == "success"
    assert orders(whmcs) == []


def test_get_orders_filters_sorts_and_omits_empty(whmcs):
    empty = post(whmcs, {"action": "GetOrders", "userid": 1}).json()
    assert empty == {"result": "success", "totalresults": 0, "startnumber": 0, "numreturned": 0}
    ids = [_new_order(whmcs) for _ in range(3)]
    newest_first = post(whmcs, {"action": "GetOrders", "userid": 1, "limitnum": 2}).json()
    assert [o["id"] for o in newest_first["orders"]["order"]] == [ids[2], ids[1]]
    assert (newest_first["totalresults"], newest_first["numreturned"]) == (3, 2)
    one = post(whmcs, {"action": "GetOrders", "id": ids[0]}).json()["orders"]["order"][0]
    line = one["lineitems"]["lineitem"][0]
    assert (line["type"], line["billingcycle"], line["status"]) == ("product", "Monthly", "Pending")
    assert (one["paymentmethodname"], one["paymentstatus"]) == ("Stripe", "Unpaid")
    assert "orders" not in post(whmcs, {"action": "GetOrders", "status": "Fraud"}).json()


# --- read actions ---


def test_get_pay_methods(whmcs):
    reply = post(whmcs, {"action": "GetPayMethods", "clientid": 1}).json()
    assert reply["clientid"] == "1"  # echoed as sent
    assert [m["type"] for m in reply["paymethods"]] == ["RemoteCreditCard", "BankAccount"]
    cards = post(whmcs, {"action": "GetPayMethods", "clientid": 1, "type": "creditcard"}).json()
    assert [m["gateway_name"] for m in cards["paymethods"]] == ["stripe"]
    none = post(whmcs, {"action": "GetPayMethods", "clientid": 2}).json()
    assert none == {"result": "success", "clientid": "2", "paymethods": []}
    missing = post(whmcs, {"action": "GetPayMethods", "clientid": 99}).json()
    assert missing == {"result": "error", "message": "Client Not Found"}
    assert post(whmcs, {"action": "GetPayMethods"}).json()["message"] == "Client ID Is Required"


def test_get_payment_methods_clients_details_and_products(whmcs):
    gateways = post(whmcs, {"action": "GetPaymentMethods"}).json()
    assert [g["module"] for g in gateways["paymentmethods"]["paymentmethod"]] == [
        "stripe",
        "banktransfer",
    ]
    details = post(whmcs, {"action": "GetClientsDetails", "clientid": 1}).json()
    assert (details["client"]["defaultgateway"], details["client"]["status"]) == (
        "stripe",
        "Active",
    )
    assert details["userid"] == 1  # the deprecated top-level copy
    products = post(whmcs, {"action": "GetProducts", "pid": "1,2"}).json()
    assert [p["pid"] for p in products["products"]["product"]] == [1, 2]
    assert products["products"]["product"][0]["pricing"]["USD"]["quarterly"] == "-1.00"
    assert "setup_error" not in products["products"]["product"][0]
    unknown = post(whmcs, {"action": "GetProducts", "pid": 999}).json()
    assert unknown == {"result": "success", "totalresults": 0}


def test_numbers_as_strings(whmcs):
    whmcs.emulator.admin("set_numbers_as_strings", {"enabled": True})
    reply = add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly")).json()
    assert isinstance(reply["orderid"], str) and reply["orderid"].isdigit()
    listed = post(whmcs, {"action": "GetOrders"}).json()
    assert listed["totalresults"] == "1"
    assert isinstance(listed["orders"]["order"][0]["lineitems"]["lineitem"][0]["relid"], str)


def test_admin_set_client_and_counters(whmcs):
    whmcs.emulator.admin(
        "set_client",
        {"id": 2, "paymethods": [{"type": "CreditCard", "gateway_name": "", "description": "x"}]},
    )
    methods = post(whmcs, {"action": "GetPayMethods", "clientid": 2}).json()["paymethods"]
    assert [m["type"] for m in methods] == ["CreditCard"]
    assert whmcs.emulator.admin("counters", {}) == {"GetPayMethods": 1}
    with pytest.raises(ValueError):
        whmcs.emulator.admin("no_such_op", {})


def test_other_paths_are_404(whmcs):
    reply = requests.get(whmcs.server.url + "/admin/", verify=str(whmcs.ca_path), timeout=10)
    assert reply.status_code == 404


def test_every_reply_sets_a_session_cookie_and_the_log_sees_it_sent_back(whmcs):
    with requests.Session() as session:
        session.verify = str(whmcs.ca_path)
        data = {"action": "GetOrders", **AUTH, "responsetype": "json"}
        first = session.post(whmcs.url, data=data, verify=str(whmcs.ca_path), timeout=10)
        session.post(whmcs.url, data=data, verify=str(whmcs.ca_path), timeout=10)
    assert first.headers["Set-Cookie"].startswith("WHMCS")
    log = whmcs.emulator.admin("requests", {})["requests"]
    assert [r["cookie"] for r in log] == [False, True]


def test_concurrent_orders_get_distinct_ids(whmcs):
    replies: list[dict[str, Any]] = []

    def order() -> None:
        reply = add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"))
        replies.append(reply.json())

    threads = [threading.Thread(target=order) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r["orderid"] for r in replies}) == 8
    assert len({r["serviceids"] for r in replies}) == 8
    assert len(orders(whmcs)) == 8


# --- faults ---


@pytest.mark.parametrize(
    ("kind", "params", "status", "content_type", "body_start"),
    [
        ("status", {"status": 429}, 429, "text/html", b"<html>"),
        ("status", {"status": 403}, 403, "text/html", b"<!DOCTYPE html>"),
        ("status", {"status": 500, "body": "empty"}, 500, "text/html", b""),
        ("status", {"status": 503, "body": "json"}, 503, "application/json", b'{"result":"error"'),
        ("html", {"status": 502}, 502, "text/html", b"<html>\r\n<head><title>502 Bad Gateway"),
        ("nonjson", {}, 200, "text/html", b"<!DOCTYPE html>"),
        ("php_warning", {}, 200, "text/html", b"<br />\n<b>Warning</b>"),
        ("error", {}, 200, "application/json", b'{"result":"error","message":"Your license'),
    ],
)
def test_fault_replies(whmcs, kind, params, status, content_type, body_start):
    whmcs.faults.add("whmcs.GetOrders", kind, 1, **params)
    faulty = post(whmcs, {"action": "GetOrders"})
    assert faulty.status_code == status
    assert faulty.headers["Content-Type"].startswith(content_type)
    assert faulty.content.startswith(body_start)
    assert post(whmcs, {"action": "GetOrders"}).json()["result"] == "success"  # one call only


def test_truncated_and_warning_faults_run_the_action(whmcs):
    whmcs.faults.add("whmcs.AddOrder", "truncated", 1)
    whmcs.faults.add("whmcs.AddOrder", "warning", 1, message="Deprecated parameter")
    truncated = add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"))
    warned = add_order(whmcs, ("pid[0]", 1), ("billingcycle[0]", "monthly"))
    with pytest.raises(ValueError):
        truncated.json()
    assert warned.json()["warning"] == "Deprecated parameter"
    assert warned.json()["result"] == "success"
    assert len(orders(whmcs)) == 2


def test_php_warning_precedes_valid_json(whmcs):
    whmcs.faults.add("whmcs.*", "php_warning", 1)
    text = post(whmcs, {"action": "GetPayMethods", "clientid": 1}).text
    assert json.loads(text[text.index("{") :])["result"] == "success"


def test_reset_and_hang_faults_send_nothing(whmcs):
    whmcs.faults.add("whmcs.GetOrders", "reset", 1)
    whmcs.faults.add("whmcs.GetOrders", "hang", 1, seconds=30)
    with pytest.raises(requests.ConnectionError):
        post(whmcs, {"action": "GetOrders"})
    with pytest.raises(requests.ReadTimeout):
        post(whmcs, {"action": "GetOrders"}, timeout=(5, 0.5))
    log = whmcs.emulator.admin("requests", {})["requests"]
    assert [(r["fault"], r["status"]) for r in log] == [("reset", None), ("hang", None)]


@pytest.mark.parametrize("action", ["AddOrder", "AcceptOrder"])
def test_commit_then_hang_really_commits(whmcs, action):
    order_id = _new_order(whmcs) if action == "AcceptOrder" else None
    whmcs.faults.add(f"whmcs.{action}", "commit_then_hang", 1, seconds=30)
    with pytest.raises(requests.ReadTimeout):
        if action == "AddOrder":
            post(whmcs, {"action": "AddOrder", "clientid": 1, "paymentmethod": "stripe",
                         "pid[0]": 1, "billingcycle[0]": "monthly", "notes": "lost reply"},
                 timeout=(5, 0.5))  # fmt: skip
        else:
            post(whmcs, {"action": "AcceptOrder", "orderid": order_id, "autosetup": 1,
                         "sendemail": 0}, timeout=(5, 0.5))  # fmt: skip
    (order,) = orders(whmcs)
    if action == "AddOrder":
        assert (order["notes"], order["status"]) == ("lost reply", "Pending")
    else:
        assert order["status"] == "Active"


def test_late_commit_creates_the_order_after_the_client_gave_up(whmcs):
    whmcs.faults.add("whmcs.AddOrder", "late_commit", 1, delay=0.5, seconds=30)
    with pytest.raises(requests.ReadTimeout):
        post(whmcs, {"action": "AddOrder", "clientid": 1, "paymentmethod": "stripe",
                     "pid[0]": 1, "billingcycle[0]": "monthly"}, timeout=(5, 0.2))  # fmt: skip
    assert wait_until(lambda: len(orders(whmcs)) == 1, timeout=10)


def test_latency_is_applied_per_action(whmcs):
    whmcs.faults.set_latency("whmcs.GetOrders", 0.5)
    with pytest.raises(requests.ReadTimeout):
        post(whmcs, {"action": "GetOrders"}, timeout=(5, 0.1))
    assert post(whmcs, {"action": "GetPayMethods", "clientid": 1}, timeout=(5, 5)).ok


def test_wildcard_faults_and_count_minus_one(whmcs):
    whmcs.faults.add("whmcs.*", "status", -1, status=503)
    statuses = {post(whmcs, {"action": a}).status_code for a in ("GetOrders", "GetProducts")}
    assert statuses == {503}
    assert whmcs.emulator.admin("counters", {}) == {"GetOrders": 1, "GetProducts": 1}
