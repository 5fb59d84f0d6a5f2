"""Our WHMCS client against the emulator over TLS: the calls it makes, and every failure ending
as the right shared.errors class and code, with no credential in any message."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from sandbox import tls
from sandbox.http_server import Response, Server
from shared.config import WhmcsSettings
from shared.errors import (
    AuthError,
    BadResponse,
    ConnectionFailed,
    HttpStatusError,
    IntegrationError,
    MappingError,
    RemoteError,
    UpstreamTimeout,
)
from shared.whmcs import AddOrderResult, OrderLine, WhmcsClient, encode
from tests.whmcs_support import ACCESS_KEY, IDENTIFIER, SECRET, Running, running_whmcs
from worker import ordering

CREDENTIALS = (IDENTIFIER, SECRET, ACCESS_KEY)


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return tls.generate(tmp_path_factory.mktemp("whmcs-client-tls"))


@pytest.fixture
def whmcs(material, monkeypatch) -> Iterator[Running]:
    # How services trust the sandbox CA. (requests lets REQUESTS_CA_BUNDLE, when set, override a
    # session's own `verify`, so setting the variable is the reliable way in tests too.)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(material.ca_path))
    with running_whmcs(material) as running:
        yield running


def settings_for(whmcs: Running, **overrides: Any) -> WhmcsSettings:
    base = WhmcsSettings(
        api_url=whmcs.url,
        identifier=IDENTIFIER,
        secret=SECRET,
        access_key="",
        default_gateway="stripe",
        read_timeout=5.0,
        write_timeout=5.0,
        connect_timeout=5.0,
    )
    return replace(base, **overrides)


@pytest.fixture
def make_client(whmcs) -> Iterator[Callable[..., WhmcsClient]]:
    """Clients with settings overridden per test, all closed afterwards."""
    made: list[WhmcsClient] = []

    def make(**overrides: Any) -> WhmcsClient:
        made.append(WhmcsClient(settings_for(whmcs, **overrides)))
        return made[-1]

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client) -> WhmcsClient:
    return make_client()


def logged(whmcs: Running, action: str) -> list[dict[str, Any]]:
    return whmcs.emulator.admin("requests", {"action": action})["requests"]


LINES = [OrderLine(1, "monthly", 2), OrderLine(2, "annually")]


# --- the calls ---


def test_add_order_sends_indexed_arrays_flags_and_notes(whmcs, client):
    result = client.add_order(1, "stripe", LINES, "SF-ORDER:8015g00000AbCdEAAZ")

    assert isinstance(result, AddOrderResult)
    assert len(result.service_ids) == 3  # one service per unit
    assert all(
        isinstance(i, int) for i in (result.order_id, result.invoice_id, *result.service_ids)
    )
    (call,) = logged(whmcs, "AddOrder")
    assert call["params"] == {
        "action": "AddOrder",
        "responsetype": "json",
        "clientid": "1",
        "paymentmethod": "stripe",
        "pid": {0: "1", 1: "2"},
        "billingcycle": {0: "monthly", 1: "annually"},
        "qty": {0: "2", 1: "1"},
        "noemail": "1",
        "notes": "SF-ORDER:8015g00000AbCdEAAZ",
    }
    assert whmcs.emulator.admin("substitutions", {})["substitutions"] == []


@pytest.mark.parametrize(
    ("allowqty", "pids", "qty", "services", "service_qty"),
    [
        (0, {0: "5", 1: "5", 2: "5"}, None, 3, 1),  # repeated, as WHMCS's cart does
        (1, {0: "5"}, {0: "3"}, 3, 1),  # one service per unit
        (2, {0: "5"}, {0: "3"}, 1, 3),  # scaling: one service holding the quantity
    ],
)
def test_add_order_carries_a_quantity_the_way_the_product_allows(
    whmcs, client, allowqty, pids, qty, services, service_qty
):
    whmcs.emulator.billing.products[5]["allowqty"] = allowqty

    result = client.add_order(1, "stripe", [OrderLine(5, "monthly", 3, allowqty)], "SF-ORDER:Q")

    assert len(result.service_ids) == services
    (call,) = logged(whmcs, "AddOrder")
    assert call["params"]["pid"] == pids
    assert call["params"].get("qty") == qty
    (order,) = whmcs.emulator.admin("orders")["orders"]
    assert [s["qty"] for s in order["services"]] == [service_qty] * services
    assert whmcs.emulator.admin("substitutions", {})["substitutions"] == []


def test_accept_order_sends_both_flags_explicitly(whmcs, client):
    order_id = client.add_order(1, "stripe", LINES[:1], "n").order_id
    client.accept_order(order_id, autosetup=True, sendemail=False)

    (call,) = logged(whmcs, "AcceptOrder")
    assert (call["params"]["autosetup"], call["params"]["sendemail"]) == ("1", "0")
    assert client.get_orders(order_id=order_id)[0]["status"] == "Active"
    with pytest.raises(RemoteError, match="Status not Pending") as caught:
        client.accept_order(order_id)
    assert caught.value.code == "WHMCS_ERROR"


def test_get_orders_finds_an_order_by_client_and_notes(whmcs, client):
    assert client.get_orders(client_id=1) == []  # no `orders` key at all
    earlier = client.add_order(1, "stripe", LINES[:1], "SF-ORDER:A").order_id
    client.add_order(1, "stripe", LINES[:1], "SF-ORDER:B")

    found = [o for o in client.get_orders(client_id=1) if o["notes"] == "SF-ORDER:A"]
    assert [o["id"] for o in found] == [earlier]
    lines = found[0]["lineitems"]["lineitem"]
    assert [type(line["relid"]) for line in lines] == [int, int]
    assert client.get_orders(client_id=1, status="Active") == []
    (call,) = logged(whmcs, "GetOrders")[-1:]
    assert (call["params"]["userid"], call["params"]["status"]) == ("1", "Active")


def test_reads(client):
    methods = client.get_pay_methods(1)
    assert [(m["id"], m["gateway_name"]) for m in methods] == [(1, "stripe"), (2, "")]
    assert client.get_pay_methods(2) == []
    details = client.get_clients_details(1)
    assert (details["id"], details["defaultgateway"]) == (1, "stripe")
    gateways = client.get_payment_methods()
    assert [g["module"] for g in gateways] == ["stripe", "banktransfer"]
    products = client.get_products([2, 1])
    assert [p["pid"] for p in products] == [1, 2]
    assert products[0]["pricing"]["USD"]["quarterly"] == "-1.00"
    assert client.get_products([999]) == []
    assert client.get_products([]) == []
    assert len(client.get_products()) == 5


def test_cancel_order(whmcs, client):
    order_id = client.add_order(1, "stripe", LINES[:1], "dup").order_id
    client.cancel_order(order_id)
    assert whmcs.emulator.admin("orders", {})["orders"][0]["status"] == "Cancelled"
    assert logged(whmcs, "CancelOrder")[0]["params"]["noemail"] == "1"


def test_numbers_as_strings_are_coerced(whmcs, client):
    whmcs.emulator.admin("set_numbers_as_strings", {"enabled": True})
    result = client.add_order(1, "stripe", LINES, "n")
    assert all(isinstance(i, int) for i in (result.order_id, *result.service_ids))
    assert isinstance(result.invoice_id, int)
    order = client.get_orders(order_id=result.order_id)[0]
    assert (type(order["id"]), type(order["userid"]), type(order["invoiceid"])) == (int, int, int)
    assert all(isinstance(m["id"], int) for m in client.get_pay_methods(1))
    assert all(isinstance(p["pid"], int) for p in client.get_products())
    assert isinstance(client.get_clients_details(1)["id"], int)


def test_silently_dropped_products_show_in_the_service_count(whmcs, client):
    result = client.add_order(
        1, "stripe", [OrderLine(1, "monthly"), OrderLine(999, "monthly")], "n"
    )
    assert len(result.service_ids) == 1  # WHMCS said "success"; the count tells the truth


def test_no_invoice_means_none(whmcs, client):
    assert client.add_order(1, "stripe", LINES[:1], "priced").invoice_id is not None
    router = client.add_order(1, "stripe", [OrderLine(3, "onetime")], "zero total")
    assert (len(router.service_ids), router.invoice_id) == (1, None)
    free = client.add_order(1, "stripe", [OrderLine(999, "monthly")], "nothing")
    assert (free.service_ids, free.invoice_id) == ((), None)


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (OrderLine(1, "Semi-Annually"), "INVALID_BILLING_CYCLE"),
        (OrderLine(1, "Monthly"), "INVALID_BILLING_CYCLE"),
        (OrderLine(1, "monthly", 0), "INVALID_QUANTITY"),
        (OrderLine(0, "monthly"), "UNMAPPED_PRODUCT"),
    ],
)
def test_lines_whmcs_would_silently_change_are_refused_before_sending(whmcs, client, line, code):
    with pytest.raises(MappingError) as caught:
        client.add_order(1, "stripe", [line], "n")
    assert caught.value.code == code
    assert logged(whmcs, "AddOrder") == []


def test_no_cookie_is_ever_sent_back(whmcs, client):
    for _ in range(3):
        client.get_pay_methods(1)
    assert [r["cookie"] for r in logged(whmcs, "GetPayMethods")] == [False, False, False]
    assert len(client.session.cookies) == 0


def test_access_key_is_sent_when_configured(whmcs, make_client):
    whmcs.emulator.admin("set_ip_allowlist", {"ips": ["203.0.113.7"]})
    without = make_client()
    with pytest.raises(AuthError, match=r"Invalid IP 127\.0\.0\.1"):
        without.get_pay_methods(1)
    with_key = make_client(access_key=ACCESS_KEY)
    assert len(with_key.get_pay_methods(1)) == 2
    assert logged(whmcs, "GetPayMethods")[-1]["auth"] == ["identifier", "secret", "accesskey"]


# --- failures ---

FAULTS = [
    ("status", {"status": 401}, HttpStatusError, "401"),
    ("status", {"status": 403}, HttpStatusError, "403"),  # a firewall page, not WHMCS
    ("status", {"status": 429}, HttpStatusError, "429"),
    ("status", {"status": 500}, HttpStatusError, "500"),
    ("status", {"status": 500, "body": "empty"}, HttpStatusError, "500"),
    ("status", {"status": 503}, HttpStatusError, "503"),
    ("status", {"status": 503, "body": "json"}, HttpStatusError, "503"),
    ("status", {"status": 403, "body": "json", "message": "Invalid IP 10.0.0.1"}, AuthError, "403"),
    ("status", {"status": 401, "body": "json", "message": "Access Denied"}, AuthError, "401"),
    ("html", {"status": 502}, HttpStatusError, "502"),
    ("html", {"status": 504}, HttpStatusError, "504"),
    ("nonjson", {}, BadResponse, "EBADRESPONSE"),
    ("nonjson", {"body": "empty"}, BadResponse, "EBADRESPONSE"),
    ("truncated", {}, BadResponse, "EBADRESPONSE"),
    ("reset", {}, ConnectionFailed, "ECONNECTION"),
    ("hang", {"seconds": 30}, UpstreamTimeout, "ETIMEOUT"),
    ("error", {}, RemoteError, "WHMCS_ERROR"),
    ("warning", {"replace": True}, RemoteError, "WHMCS_ERROR"),
]


@pytest.mark.parametrize(("kind", "params", "error", "code"), FAULTS)
@pytest.mark.parametrize("action", ["GetPayMethods", "AddOrder"])
def test_every_fault_maps_to_its_error(whmcs, kind, params, error, code, action, make_client):
    client = make_client(read_timeout=0.5, write_timeout=0.5)
    whmcs.faults.add(f"whmcs.{action}", kind, 1, **params)
    with pytest.raises(IntegrationError) as caught:
        if action == "AddOrder":
            client.add_order(1, "stripe", LINES, "n")
        else:
            client.get_pay_methods(1)
    exc = caught.value
    assert type(exc) is error
    assert (exc.code, exc.system) == (code, "whmcs")
    assert action in exc.message and len(exc.message) <= 255
    for secret in CREDENTIALS:
        assert secret not in exc.message
        assert all(secret not in str(arg) for arg in exc.args)


def test_html_errors_name_the_page(whmcs, client):
    whmcs.faults.add("whmcs.GetOrders", "nonjson", 1)
    with pytest.raises(BadResponse, match=r"HTML page \(Down for Maintenance\)"):
        client.get_orders(client_id=1)


def test_php_warning_before_json_is_parsed_and_logged(whmcs, client, caplog):
    whmcs.faults.add("whmcs.AddOrder", "php_warning", 1)
    with caplog.at_level(logging.WARNING, logger="shared.whmcs"):
        result = client.add_order(1, "stripe", LINES, "n")
    assert len(result.service_ids) == 3
    assert "WHMCS printed text before its JSON reply; using the JSON" in caplog.messages


def test_a_warning_key_on_success_is_logged(whmcs, client, caplog):
    whmcs.faults.add("whmcs.GetPayMethods", "warning", 1, message="Deprecated parameter")
    with caplog.at_level(logging.WARNING, logger="shared.whmcs"):
        assert len(client.get_pay_methods(1)) == 2
    (record,) = [r for r in caplog.records if r.getMessage() == "WHMCS reply carried a warning"]
    assert record.warning == "Deprecated parameter"


def test_a_wrong_secret_is_an_auth_error_and_not_retried(whmcs, make_client):
    client = make_client(secret="not-the-secret")
    with pytest.raises(AuthError) as caught:
        client.get_pay_methods(1)
    assert (caught.value.code, caught.value.status) == ("403", 403)
    assert "Authentication Failed" in caught.value.message
    assert "not-the-secret" not in caught.value.message
    assert len(logged(whmcs, "GetPayMethods")) == 1  # one failed login, not three


def test_an_older_whmcs_refusing_the_ip_with_400_is_still_an_auth_error(whmcs, client):
    whmcs.emulator.admin("set_ip_allowlist", {"ips": ["203.0.113.7"], "status": 400})
    with pytest.raises(AuthError, match="Invalid IP") as caught:
        client.get_products()
    assert (caught.value.code, caught.value.status) == ("403", 400)


def test_a_banned_ip_is_an_auth_error(whmcs, client, make_client):
    bad = make_client(secret="wrong-secret")
    for _ in range(3):
        with pytest.raises(AuthError):
            bad.get_orders(client_id=1)
    with pytest.raises(AuthError, match="IP Banned"):
        client.get_orders(client_id=1)


def test_a_missing_role_permission_is_an_auth_error(whmcs, client):
    whmcs.emulator.admin("set_role", {"allowed_actions": ["AddOrder", "GetPayMethods"]})
    order_id = client.add_order(1, "stripe", LINES[:1], "n").order_id
    with pytest.raises(AuthError, match='API action "acceptorder" is not allowed') as caught:
        client.accept_order(order_id)
    assert caught.value.code == "403"


def test_refused_connection(whmcs, make_client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Bound, then closed without listening: nothing answers on that port now.
    client = make_client(api_url=f"https://localhost:{port}/includes/api.php")
    with pytest.raises(ConnectionFailed, match="connection refused") as caught:
        client.get_pay_methods(1)
    assert caught.value.code == "ECONNECTION"
    # Nothing went out: an AddOrder refused like this ordered nothing (a definite refusal).
    with pytest.raises(ConnectionFailed) as refused:
        client.add_order(1, "stripe", LINES, "n")
    assert refused.value.request_sent is False
    assert not ordering.outcome_unknown(refused.value)


@pytest.mark.parametrize(
    ("kind", "params", "unknown"),
    [
        ("reset", {}, True),  # reset after the request went out
        ("hang", {"seconds": 30}, True),
        ("html", {"status": 500}, True),
        ("html", {"status": 502}, True),
        ("html", {"status": 504}, True),
        ("html", {"status": 503}, False),
        ("status", {"status": 429, "body": "json"}, False),
        ("error", {}, False),
    ],
)
def test_which_addorder_failures_leave_the_outcome_unknown(
    whmcs, make_client, kind, params, unknown
):
    client = make_client(write_timeout=0.5)
    whmcs.faults.add("whmcs.AddOrder", kind, 1, **params)
    with pytest.raises(IntegrationError) as caught:
        client.add_order(1, "stripe", LINES, "n")
    assert ordering.outcome_unknown(caught.value) is unknown


def test_reads_use_the_read_timeout_and_writes_the_write_timeout(whmcs, make_client):
    client = make_client(read_timeout=0.2, write_timeout=10.0)
    whmcs.faults.set_latency("whmcs.GetOrders", 1.0)
    whmcs.faults.set_latency("whmcs.AddOrder", 1.0)
    with pytest.raises(UpstreamTimeout):
        client.get_orders(client_id=1)
    assert client.add_order(1, "stripe", LINES[:1], "slow but fine").order_id > 0


def test_a_timed_out_add_order_is_found_again_by_its_notes(whmcs, make_client):
    """commit_then_hang: WHMCS created the order, the reply never came."""
    client = make_client(write_timeout=0.5)
    whmcs.faults.add("whmcs.AddOrder", "commit_then_hang", 1, seconds=30)
    with pytest.raises(UpstreamTimeout):
        client.add_order(1, "stripe", LINES, "SF-ORDER:801TIMEOUT")
    found = [o for o in client.get_orders(client_id=1) if o["notes"] == "SF-ORDER:801TIMEOUT"]
    assert len(found) == 1 and found[0]["status"] == "Pending"


def test_a_timed_out_accept_order_shows_as_active(whmcs, make_client):
    client = make_client(write_timeout=0.5)
    order_id = client.add_order(1, "stripe", LINES[:1], "n").order_id
    whmcs.faults.add("whmcs.AcceptOrder", "commit_then_hang", 1, seconds=30)
    with pytest.raises(UpstreamTimeout):
        client.accept_order(order_id)
    assert client.get_orders(order_id=order_id)[0]["status"] == "Active"


def test_get_orders_pages_with_limitstart(whmcs, client):
    made = [client.add_order(1, "stripe", LINES[:1], f"n{i}").order_id for i in range(5)]
    pages = [client.get_orders(client_id=1, limit=2, offset=start) for start in (0, 2, 4)]
    assert [[o["id"] for o in page] for page in pages] == [made[:2:-1], made[2:0:-1], made[:1]]
    assert [c["params"]["limitstart"] for c in logged(whmcs, "GetOrders")] == ["0", "2", "4"]


@pytest.mark.parametrize(
    "body",
    [
        '{"result": "success", "orders": ' + "[" * 100_000 + "]" * 100_000 + "}",
        "<br />Warning<br />" + '{"result": "success", "x": ' * 50_000,
    ],
)
def test_json_nested_too_deep_for_the_parser_is_a_bad_response(whmcs, body):
    """The json module raises RecursionError, not ValueError, on nesting that deep."""
    server = Server(lambda request: Response.text(body, content_type="application/json")).start()
    try:
        url = f"http://127.0.0.1:{server.port}/includes/api.php"
        client = WhmcsClient(settings_for(whmcs, api_url=url))
        with client, pytest.raises(BadResponse, match="answered HTTP 200 with") as caught:
            client.get_orders(client_id=1)
    finally:
        server.stop()
    assert caught.value.code == "EBADRESPONSE"


def test_remote_errors_carry_the_whmcs_message(client):
    with pytest.raises(RemoteError, match="Client Not Found"):
        client.get_pay_methods(99)
    with pytest.raises(RemoteError, match="client status is Closed") as caught:
        client.add_order(3, "stripe", LINES, "n")
    assert caught.value.code == "WHMCS_ERROR"


# --- encoding ---


@pytest.mark.parametrize(
    ("params", "pairs"),
    [
        ({"pid": [7, 9]}, [("pid[0]", "7"), ("pid[1]", "9")]),
        ({"noemail": True, "sendemail": False}, [("noemail", "1"), ("sendemail", "0")]),
        ({"id": None, "userid": 4}, [("userid", "4")]),
        ({"domainrenewals": {"example.com": 2}}, [("domainrenewals[example.com]", "2")]),
        ([("pid[0]", 7), ("qty[0]", 1)], [("pid[0]", "7"), ("qty[0]", "1")]),
    ],
)
def test_encode(params, pairs):
    assert encode(params) == pairs


def test_encode_refuses_fields_the_client_sets():
    with pytest.raises(ValueError):
        encode({"secret": "x"})
