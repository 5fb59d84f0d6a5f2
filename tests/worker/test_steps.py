"""Step decisions, by table: the guard, the SOQL it builds, finding an earlier WHMCS order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.errors import InvalidEvent, OrderError
from worker import ordering, steps
from worker.records import Attempt

ORDER = "8015g00000AbCdEAAV"
NOW = datetime(2026, 4, 9, 18, 0, tzinfo=UTC)


def order(**changes):
    record = {
        "Id": ORDER,
        "OrderNumber": "00000101",
        "Status": "Draft",
        "AccountId": "0015g00000XYZ12AAH",
        "Pricebook2Id": "01s5g00000PBK01AAA",
        "Activation_Status__c": "Activating",
        "WHMCS_Order_ID__c": None,
        "Activation_Error_Code__c": None,
        "Activation_Error_Message__c": None,
        "Account": {"Name": "Acme", "WHMCS_Client_ID__c": "1"},
        **changes,
    }
    items = [
        {
            "Id": "802b",
            "OrderItemNumber": "0000000202",
            "Quantity": 2.0,
            "Product2": {
                "Name": "Static IP",
                "WH_Product_ID__c": 2.0,
                "Billing_Cycle__c": "Annually",
            },
        },
        {
            "Id": "802a",
            "OrderItemNumber": "0000000201",
            "Quantity": 1.0,
            "Product2": {"Name": "Fibre", "WH_Product_ID__c": 1.0, "Billing_Cycle__c": "Monthly"},
        },
    ]
    return steps.parse_order(record, items, "WHMCS_Client_ID__c")


@pytest.mark.parametrize(
    "raw",
    [
        "801' OR Id != '",
        "8015g00000AbCdEAAA",  # bad checksum
        "0015g00000XYZ12AAH",  # an Account id
        "8015g00000AbCd",
        "8015g00000AbCdE\u00a0",
        None,
        12345,
        ["8015g00000AbCdEAAV"],
        {"Id": ORDER},
    ],
)
def test_validation_refuses_anything_but_an_order_id(raw):
    with pytest.raises(InvalidEvent):
        steps.validate_order_id(raw)


def test_validation_accepts_15_and_18_characters():
    assert steps.validate_order_id(ORDER[:15]) == ORDER
    assert steps.validate_order_id(ORDER) == ORDER
    soql = steps.order_soql(ORDER, "WHMCS_Client_ID__c")
    assert soql.endswith(f"FROM Order WHERE Id = '{ORDER}'")
    assert "Account.WHMCS_Client_ID__c" in soql and "FROM OrderItems" in soql
    with pytest.raises(InvalidEvent):
        steps.order_soql("801' OR Id != '", "WHMCS_Client_ID__c")


@pytest.mark.parametrize(
    ("changes", "skip"),
    [
        ({}, None),
        ({"Activation_Status__c": "Activated"}, "status=Activated"),
        ({"Activation_Status__c": "Failed"}, "status=Failed"),
        ({"Activation_Status__c": None}, "status=empty"),
        ({"WHMCS_Order_ID__c": "12"}, None),  # finished, not skipped (worker/ordering.py)
    ],
)
def test_guard(changes, skip):
    assert steps.guard(order(**changes)) == skip


@pytest.mark.parametrize(
    ("changes", "needed"),
    [
        ({}, False),
        ({"Activation_Error_Code__c": "503"}, True),
        ({"Activation_Error_Message__c": "old"}, True),
        ({"Activation_Status__c": "Failed"}, True),
    ],
)
def test_status_update_only_when_needed(changes, needed):
    assert steps.needs_status_update(order(**changes)) is needed


def test_parse_order_sorts_items_and_reads_the_account_field():
    parsed = order()
    assert [i.number for i in parsed.items] == ["0000000201", "0000000202"]
    assert parsed.account_client_value == "1"
    assert (
        ordering.notes_for(parsed.number, parsed.id)
        == f"Salesforce Order 00000101 SF-ORDER:{ORDER}"
    )


def test_order_details_checks_pricebook_and_items():
    assert steps.order_details(order(), "01s5g00000PBK01AAA").id == ORDER
    with pytest.raises(OrderError) as wrong:
        steps.order_details(order(), "01s5g00000PBK02AAA")
    assert wrong.value.code == "WRONG_PRICEBOOK"
    empty = steps.parse_order({"Id": ORDER, "Pricebook2Id": "01s5g00000PBK01AAA"}, [], "X")
    with pytest.raises(OrderError) as none:
        steps.order_details(empty, "01s5g00000PBK01AAA")
    assert none.value.code == "NO_ITEMS"


def whmcs_order(order_id, notes="", status="Pending", services=(1,)):
    items = [{"type": "product", "relid": s} for s in services]
    return {
        "id": order_id,
        "notes": notes,
        "status": status,
        "invoiceid": 9,
        "lineitems": {"lineitem": items} if items else [],
    }


TAG = f"Salesforce Order 101 SF-ORDER:{ORDER}"


@pytest.mark.parametrize(
    ("orders", "known", "found", "duplicates"),
    [
        ([], [], None, []),
        ([whmcs_order(5, "other")], [], None, []),
        ([whmcs_order(5, TAG)], [], 5, []),
        ([whmcs_order(5, TAG, status="Cancelled")], [], None, []),
        ([whmcs_order(5, TAG, status="Fraud")], [], None, []),
        ([whmcs_order(5, TAG, status="Active")], [], 5, []),
        ([whmcs_order(7, TAG), whmcs_order(5, TAG)], [], 5, [7]),
        ([whmcs_order(7, TAG), whmcs_order(5, TAG)], [7], 7, [5]),
        ([whmcs_order(8, "")], [8], 8, []),
        ([whmcs_order(5, "SF-ORDER:8015g00000AbCdFAAV")], [], None, []),
    ],
)
def test_pick_existing(orders, known, found, duplicates):
    picked, others = ordering.pick_existing(orders, ORDER, known)
    assert (picked.order_id if picked else None) == found
    assert others == duplicates


def dated(day_time: str) -> dict:
    return {"id": 1, "date": f"2026-04-{day_time}"}


@pytest.mark.parametrize(
    ("page", "cutoff", "last"),
    [
        ([], None, True),
        ([dated("09 10:00:00")], None, True),  # shorter than the page: the list ended
        ([dated("09 10:00:00")] * 2, None, False),
        ([dated("09 10:00:00")] * 2, NOW, True),  # the oldest predates the cutoff
        ([dated("09 10:00:00"), dated("09 18:00:01")], NOW, False),
        ([dated("09 10:00:00"), {"id": 1, "date": "0000-00-00 00:00:00"}], NOW, False),
        ([dated("09 10:00:00"), {"id": 1}], NOW, False),  # no date: keep reading
    ],
)
def test_the_lookup_pages_back_to_the_cutoff(page, cutoff, last):
    assert ordering.last_page(page, 2, cutoff) is last


def test_parse_whmcs_order_reads_services_and_empty_lineitems():
    parsed = ordering.parse_whmcs_order(whmcs_order("12", TAG, services=(3, 4)))
    assert (parsed.order_id, parsed.service_ids, parsed.invoice_id) == (12, (3, 4), 9)
    assert ordering.parse_whmcs_order(whmcs_order(13, services=())).service_ids == ()


def attempt(create_started_at=None, whmcs_order_id=None):
    return Attempt(
        1,
        ORDER,
        "evt",
        1,
        "failed",
        "whmcs_create",
        create_started_at=create_started_at,
        whmcs_order_id=whmcs_order_id,
    )


@pytest.mark.parametrize(
    ("earlier", "may_have", "recent"),
    [
        ([], False, None),
        ([attempt()], False, None),
        ([attempt(NOW - timedelta(seconds=10))], True, NOW - timedelta(seconds=10)),
        ([attempt(NOW - timedelta(seconds=200))], True, None),
        ([attempt(NOW - timedelta(seconds=10), whmcs_order_id=5)], True, None),
    ],
)
def test_earlier_attempts_decide_the_lookup(earlier, may_have, recent):
    assert ordering.may_have_ordered(earlier) is may_have
    assert ordering.unknown_create_is_recent(earlier, NOW, timedelta(seconds=90)) == recent


def test_service_count():
    ordering.check_service_count(ordering.WhmcsOrder(1, (1, 2), None), 2)
    with pytest.raises(OrderError) as mismatch:
        ordering.check_service_count(ordering.WhmcsOrder(1, (1,), None), 2)
    assert mismatch.value.code == "SERVICE_COUNT_MISMATCH"
