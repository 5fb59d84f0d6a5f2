"""Mapping rules, decided by tables: billing cycle names, pricing, the gap codes."""

from __future__ import annotations

import pytest

from worker import mapping
from worker.mapping import OrderItem

PRODUCT = {
    "pid": 1,
    "paytype": "recurring",
    "pricing": {
        "USD": {
            "monthly": "50.00",
            "quarterly": "-1.00",
            "semiannually": "270.00",
            "annually": "500.00",
            "biennially": "-1.00",
            "triennially": "-1.00",
        }
    },
}
CATALOGUE = {
    1: PRODUCT,
    5: {**PRODUCT, "pid": 5, "allowqty": 1},  # one service per unit
    6: {**PRODUCT, "pid": 6, "allowqty": "2"},  # "scaling": one service holding the quantity
    2: {"pid": 2, "paytype": "onetime", "pricing": {"USD": {"monthly": "99.00"}}},
    3: {"pid": 3, "paytype": "free", "pricing": {}},
    4: {
        "pid": 4,
        "paytype": "recurring",
        "pricing": {"USD": {"monthly": "10.00"}, "EUR": {"monthly": "-1.00"}},
    },
}


def item(pid=1, cycle="Monthly", quantity=1.0, name="Fibre 100", code="FIB-100"):
    return OrderItem("802000000000001", "0000000201", name, code, pid, cycle, quantity)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Monthly", "monthly"),
        ("monthly", "monthly"),
        ("MONTHLY", "monthly"),
        ("Semi-Annually", "semiannually"),
        ("semiannually", "semiannually"),
        ("One Time", "onetime"),
        ("onetime", "onetime"),
        ("  Annually ", "annually"),
        ("Free Account", "free"),
        ("Biennially", "biennially"),
        ("Triennially", "triennially"),
        ("Annual", None),
        ("Semi Annually", None),
        ("", None),
        (None, None),
        (12, None),
    ],
)
def test_billing_cycle_names(value, expected):
    assert mapping.normalize_cycle(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1),
        (1.0, 1),
        ("3", 3),
        (" 2 ", 2),
        ("2.0", 2),
        (1.5, None),
        (0, None),
        (-1, None),
        ("x", None),
        (None, None),
        (True, None),
    ],
)
def test_positive_ints(value, expected):
    assert mapping.parse_positive_int(value) == expected


@pytest.mark.parametrize(
    ("pid", "cycle", "ok"),
    [
        (1, "monthly", True),
        (1, "semiannually", True),
        (1, "quarterly", False),  # -1.00: WHMCS would silently bill monthly instead
        (1, "onetime", False),
        (2, "onetime", True),
        (2, "monthly", False),
        (3, "free", True),
        (3, "monthly", False),
        (4, "monthly", False),  # unpriced in one of the product's currencies
    ],
)
def test_cycle_priced(pid, cycle, ok):
    assert mapping.cycle_priced(CATALOGUE[pid], cycle) is ok


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (item(), ""),
        (item(cycle="Semi-Annually"), ""),
        (item(pid="1"), ""),
        (item(pid=None), "UNMAPPED_PRODUCT"),
        (item(pid=99), "UNKNOWN_WHMCS_PRODUCT"),
        (item(cycle="Annual"), "INVALID_BILLING_CYCLE"),
        (item(cycle=None), "INVALID_BILLING_CYCLE"),
        (item(cycle="Quarterly"), "INVALID_BILLING_CYCLE"),
        (item(quantity=1.5), "INVALID_QUANTITY"),
        (item(quantity=0), "INVALID_QUANTITY"),
        (item(quantity=-2), "INVALID_QUANTITY"),
        (item(quantity="2.5"), "INVALID_QUANTITY"),
        (item(quantity=2), ""),  # product 1 does not allow quantities: repeated per unit
        (item(pid=5, quantity=3), ""),
        (item(pid=6, quantity=3), ""),
    ],
)
def test_map_item(line, code):
    assert mapping.map_item(line, CATALOGUE).gap_code == code


@pytest.mark.parametrize(
    ("pid", "services", "allowqty"), [(1, 3, 0), (5, 3, 1), (6, 1, 2)]
)  # one service per unit, whatever allowqty; "scaling" holds the quantity in one service
def test_services_expected_per_line(pid, services, allowqty):
    mapped = mapping.map_item(item(pid=pid, quantity=3), CATALOGUE)
    assert (mapped.expected_services, mapped.allowqty) == (services, allowqty)


def test_error_names_every_product_to_fix_and_the_most_basic_code():
    mapped = mapping.map_items(
        [item(), item(pid=99, name="Static IP", code="IP-1"), item(pid=None, name="Router")],
        CATALOGUE,
    )
    error = mapping.mapping_error(mapped)
    assert error is not None
    assert error.code == "UNMAPPED_PRODUCT"
    assert "Static IP (IP-1)" in error.message and "Router" in error.message
    assert "Fibre 100" not in error.message
    assert mapping.mapping_error(mapping.map_items([item()], CATALOGUE)) is None


def test_report_has_every_item_with_its_status():
    mapped = mapping.map_items([item(), item(pid=99)], CATALOGUE)
    rows = [m.report() for m in mapped]
    assert rows[0]["status"] == "ok" and rows[0]["whmcs_pid"] == 1
    assert rows[0]["billing_cycle"] == "monthly"
    assert rows[1]["status"].startswith("UNKNOWN_WHMCS_PRODUCT")


@pytest.mark.parametrize(
    ("database", "field", "expected"),
    [(7, "1", 7), (None, "1", 1), (None, 1.0, 1), (None, None, None), (None, "abc", None)],
)
def test_client_id_prefers_the_database_mapping(database, field, expected):
    assert mapping.client_id_for(database, field) == expected


@pytest.mark.parametrize(
    ("methods", "gateway"),
    [
        ([{"gateway_name": "stripe"}], "stripe"),
        ([{"gateway_name": ""}, {"gateway_name": "paypal"}], "paypal"),
        ([{"gateway_name": ""}], ""),
        ([], ""),
    ],
)
def test_gateway_from_pay_methods(methods, gateway):
    assert mapping.gateway_from_pay_methods(methods) == gateway
