"""The demo's parts: order plan, fixtures, display."""

from __future__ import annotations

import io
from collections import Counter

import pytest

from provisioner.demo import plan as demo_plan
from provisioner.demo.plan import (
    NO_PAY_METHOD,
    OK,
    UNMAPPED,
    WHMCS_DOWN,
    Outcome,
    as_expected,
    plan_orders,
    scenarios_for,
)
from provisioner.demo.view import Progress, Row, progress_bar, summary_table, verdict_line
from worker.mapping import OrderItem, map_item

# --- the plan ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (1, [OK]),
        (2, [NO_PAY_METHOD, OK]),
        (3, [OK, NO_PAY_METHOD, UNMAPPED]),
        (4, [OK, NO_PAY_METHOD, UNMAPPED, WHMCS_DOWN]),
        (6, [OK, OK, NO_PAY_METHOD, OK, UNMAPPED, WHMCS_DOWN]),
    ],
)
def test_each_failure_once_while_one_order_still_succeeds(count, expected):
    assert scenarios_for(count) == expected


def test_twenty_orders_fail_three_ways_with_the_outage_last():
    plan = plan_orders(20)
    assert Counter(o.scenario.name for o in plan) == {
        "ok": 17,
        "no_pay_method": 1,
        "unmapped": 1,
        "whmcs_503": 1,
    }
    assert plan[-1].scenario is WHMCS_DOWN
    assert len({o.ref for o in plan}) == 20


def test_no_orders_is_refused():
    with pytest.raises(ValueError):
        scenarios_for(0)


def _catalogue(document):
    return {p["pid"]: p for p in document["whmcs"]["products"]}


def _items(document, order_ref):
    products = {p["ref"]: p for p in document["salesforce"]["products"]}
    order = next(o for o in document["salesforce"]["orders"] if o["ref"] == order_ref)
    return [
        OrderItem(
            item_id="",
            number=str(n),
            product_name=products[i["product"]]["Name"],
            product_code=products[i["product"]]["ProductCode"],
            whmcs_pid=products[i["product"]]["WH_Product_ID__c"],
            billing_cycle=products[i["product"]]["Billing_Cycle__c"],
            quantity=i["Quantity"],
        )
        for n, i in enumerate(order["items"])
    ]


def test_fixture_lines_map_under_the_workers_own_rules():
    """Judged by worker.mapping itself: only the unmapped scenario has a gap, and that gap's code
    is the one the demo expects."""
    plan = plan_orders(20)
    document = demo_plan.fixture_document(plan)
    catalogue = _catalogue(document)
    for order in plan:
        codes = {map_item(i, catalogue).gap_code for i in _items(document, order.ref)} - {""}
        assert codes == ({UNMAPPED.code} if order.scenario is UNMAPPED else set()), order


def test_only_the_409_customer_lacks_a_pay_method():
    document = demo_plan.fixture_document(plan_orders(20))
    accounts = {a["ref"]: int(a["WHMCS_Client_ID__c"]) for a in document["salesforce"]["accounts"]}
    cardless = {c["id"] for c in document["whmcs"]["clients"] if not c["paymethods"]}
    assert cardless == {accounts["northwind"]}
    for order in document["salesforce"]["orders"]:
        planned = next(o for o in plan_orders(20) if o.ref == order["ref"])
        assert (accounts[order["account"]] in cardless) == (planned.scenario is NO_PAY_METHOD)


@pytest.mark.parametrize(
    ("scenario", "status", "whmcs_id", "code", "ok"),
    [
        (OK, "Activated", "17", "", True),
        (OK, "Activated", "", "", False),  # activated without a WHMCS order id
        (OK, "Failed", "", "503", False),
        (OK, "Activating", "", "", False),
        (NO_PAY_METHOD, "Failed", "", "409", True),
        (NO_PAY_METHOD, "Failed", "", "503", False),
        (UNMAPPED, "Failed", "", "UNMAPPED_PRODUCT", True),
        (WHMCS_DOWN, "Failed", "", "503", True),
        (WHMCS_DOWN, "Activated", "18", "", False),
    ],
)
def test_as_expected(scenario, status, whmcs_id, code, ok):
    outcome = Outcome("801", "00000101", status, whmcs_order_id=whmcs_id, error_code=code)
    assert as_expected(scenario, outcome) is ok


def test_outcome_from_a_salesforce_record():
    record = {
        "Id": "801000000000001AAA",
        "OrderNumber": "00000101",
        "Activation_Status__c": "Failed",
        "WHMCS_Order_ID__c": None,
        "Activation_Error_Code__c": "409",
        "Activation_Error_Message__c": "no pay method",
        "LastModifiedDate": "2026-04-09T18:31:41.767+0000",
    }
    approved = demo_plan.sf_time("2026-04-09T18:31:40.517Z")  # the event's CreatedDate
    outcome = demo_plan.outcome_from_record(record, approved)
    assert (outcome.status, outcome.whmcs_order_id, outcome.error_code) == ("Failed", "", "409")
    assert outcome.final and outcome.seconds == 1.25
    pending = {**record, "Activation_Status__c": "Activating"}
    assert demo_plan.outcome_from_record(pending, approved).seconds is None
    assert not demo_plan.outcome_from_record(pending).final


@pytest.mark.parametrize("value", [None, "", "yesterday", 17])
def test_unreadable_times_give_no_seconds(value):
    assert demo_plan.sf_time(value) is None


# --- the display ------------------------------------------------------------------------------


def _rows():
    plan = plan_orders(4)
    outcomes = [
        Outcome("a", "00000100", "Activated", whmcs_order_id="1", seconds=1.234),
        Outcome("b", "00000101", "Failed", error_code="409", seconds=0.5),
        Outcome("c", "00000102", "Failed", error_code="503", seconds=0.7),  # wanted UNMAPPED
        Outcome("d", "00000103", "Activating"),
    ]
    return [Row(p, "Acme Ltd", o) for p, o in zip(plan, outcomes, strict=True)]


def test_summary_table_marks_what_did_not_go_as_expected():
    table = summary_table(_rows()).splitlines()
    assert table[0].split() == [
        "order",
        "customer",
        "outcome",
        "WHMCS",
        "order",
        "error",
        "code",
        "seconds",
        "scenario",
    ]
    assert table[2].split()[:3] == ["00000100", "Acme", "Ltd"]
    assert "1.2" in table[2] and "expected" not in table[2]
    assert table[4].endswith("<- expected Failed UNMAPPED_PRODUCT")
    assert "Activating" in table[5] and table[5].endswith("<- expected Failed 503")
    assert verdict_line(_rows()) == (
        "4 orders: 1 activated, 2 failed, 1 without an outcome. "
        "2 did NOT end as the fixtures expect."
    )


def test_progress_bar_counts_outcomes():
    bar = progress_bar(_rows(), 3.0, width=8)
    assert bar == "[######--]   3/4  activated 1  failed 2    3.0s"


def test_progress_without_a_terminal_prints_each_outcome_once():
    out = io.StringIO()
    progress = Progress(out)
    progress.update(_rows()[:2], 1.0)
    progress.update(_rows()[:2], 2.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[1/2] 00000100   Activated WHMCS order 1")
    assert "409" in lines[1] and "\r" not in out.getvalue()
