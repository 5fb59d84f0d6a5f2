"""The sandbox's SOQL: what it parses, what it refuses (Salesforce's codes), what it answers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from sandbox.salesforce import soql
from sandbox.salesforce.loader import SalesforceLoader
from sandbox.salesforce.store import Store
from shared.sfid import new_id

PRICEBOOK = new_id("Pricebook2")


@pytest.fixture
def world() -> tuple[Store, dict[str, str]]:
    """Acme with two orders (two lines, no lines), O'Brien with one, an order without account."""
    store = Store(clock=lambda: 1_775_000_000.0)
    store.insert("Pricebook2", {"Name": "Portal", "IsActive": True}, PRICEBOOK)
    refs: dict[str, str] = {}
    SalesforceLoader(store, PRICEBOOK, refs).load(
        {
            "accounts": [
                {"ref": "acme", "Name": "Acme Ltd", "WHMCS_Client_ID__c": "1"},
                {"ref": "obrien", "Name": "O'Brien", "WHMCS_Client_ID__c": None},
            ],
            "products": [
                {"ref": "fibre", "Name": "Fibre 100", "ProductCode": "FIB-100",
                 "WH_Product_ID__c": 1, "Billing_Cycle__c": "Monthly", "UnitPrice": 50},
                {"ref": "ip", "Name": "Static IP", "ProductCode": "IP-1",
                 "WH_Product_ID__c": 2, "Billing_Cycle__c": "Annually", "IsActive": False},
            ],
            "orders": [
                {"ref": "two", "account": "acme", "items": [
                    {"ref": "line1", "product": "fibre", "Quantity": 2, "UnitPrice": 45.0},
                    {"ref": "line2", "product": "ip", "Quantity": 1, "UnitPrice": 50.0},
                ]},
                {"ref": "none", "account": "acme", "Activation_Status__c": "Failed"},
                {"ref": "brien", "account": "obrien", "Activation_Status__c": "Activating",
                 "items": [{"product": "fibre", "Quantity": 1}]},
                {"ref": "orphan"},
            ],
        }
    )  # fmt: skip
    return store, refs


def run(world: tuple[Store, dict[str, str]], text: str) -> dict[str, Any]:
    store, refs = world
    for ref, record_id in refs.items():
        text = text.replace("{" + ref + "}", record_id)
    return soql.execute(text, store)


def ids(result: dict[str, Any]) -> list[str]:
    return [r["Id"] for r in result["records"]]


# --- syntax -----------------------------------------------------------------------------------

MALFORMED = [
    "",
    "SELECT",
    "SELECT FROM Order",
    "SELECT Id Order",
    "SELECT Id FROM",
    "SELECT Id, FROM Order",
    "SELECT Id FROM Order WHERE",
    "SELECT Id FROM Order WHERE Id",
    "SELECT Id FROM Order WHERE Id =",
    "SELECT Id FROM Order WHERE Id = 'a' OR Id = 'b'",
    "SELECT Id FROM Order WHERE Id => 'a'",
    "SELECT Id FROM Order WHERE LastModifiedDate < 2026-04-01",
    "SELECT Id FROM Order WHERE LastModifiedDate < 2026-04-01T00:00Z",
    "SELECT Id FROM Order WHERE Id LIKE 'a%'",
    "SELECT Id FROM Order WHERE Id IN ()",
    "SELECT Id FROM Order WHERE Id IN ('a'",
    "SELECT Id FROM Order WHERE Id = 'unterminated",
    "SELECT Id FROM Order WHERE Id = Status",
    "SELECT Id FROM Order LIMIT",
    "SELECT Id FROM Order LIMIT x",
    "SELECT Id FROM Order LIMIT 1.5",
    "SELECT Id FROM Order ORDER Id",
    "SELECT Id FROM Order extra",
    "SELECT Id FROM Order; DELETE FROM Order",
    "SELECT COUNT() FROM Order",
    "SELECT Id, (SELECT Id FROM OrderItems FROM Order",
    "SELECT Id, (SELECT Id, (SELECT Id FROM OrderItems) FROM OrderItems) FROM Order",
    "SELECT Account. FROM Order",
    "SELECT Id FROM Order WHERE Status = 'a\\q'",
    "SELECT Id, id FROM Order",
    "SELECT FROM, Id FROM Order",
]


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_queries_are_refused(world, text):
    with pytest.raises(soql.SoqlError) as caught:
        run(world, text)
    assert caught.value.code == "MALFORMED_QUERY"


def test_parse_gives_the_tree():
    query = soql.parse(
        "select Id, Account.Name, (SELECT Id FROM OrderItems LIMIT 2) from Order "
        "where Status != null and Id in ('a', 'b') order by OrderNumber desc, Id limit 10"
    )
    assert [i.text for i in query.items if isinstance(i, soql.Path)] == ["Id", "Account.Name"]
    assert query.items[2].limit == 2
    assert query.sobject.text == "Order"
    assert [(c.path.text, c.op, [v.value for v in c.values]) for c in query.where] == [
        ("Status", "!=", [None]),
        ("Id", "IN", ["a", "b"]),
    ]
    assert [(p.text, desc) for p, desc in query.order_by] == [("OrderNumber", True), ("Id", False)]
    assert query.limit == 10


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'plain'", "plain"),
        ("'O\\'Brien'", "O'Brien"),
        ("'back\\\\slash'", "back\\slash"),
        ("'line\\nbreak'", "line\nbreak"),
        ("'quote\\\"d'", 'quote"d'),
        ("12", 12.0),
        ("-1.5", -1.5),
        ("TRUE", True),
        ("false", False),
        ("NULL", None),
        ("2026-04-09T18:31:40Z", datetime(2026, 4, 9, 18, 31, 40, tzinfo=UTC)),
        ("2026-04-09T18:31:40.517Z", datetime(2026, 4, 9, 18, 31, 40, 517000, tzinfo=UTC)),
        ("2026-04-09T20:31:40+02:00", datetime(2026, 4, 9, 18, 31, 40, tzinfo=UTC)),
    ],
)
def test_literals(literal, value):
    query = soql.parse(f"SELECT Id FROM Order WHERE Status = {literal}")
    assert query.where[0].values[0].value == value


def test_errors_point_at_the_row_and_column(world):
    with pytest.raises(soql.SoqlError) as caught:
        run(world, "SELECT Id,\n  Nope__c\nFROM Order")
    assert caught.value.message.startswith("\n  Nope__c\n  ^\nERROR at Row:2:Column:3\n")


# --- names and literals checked against the schema ---------------------------------------------

REFUSED = [
    ("SELECT Id, Foo__c FROM Order", "INVALID_FIELD", "No such column 'Foo__c' on entity 'Order'"),
    ("SELECT Account.Foo FROM Order", "INVALID_FIELD", "No such column 'Foo' on entity 'Account'"),
    ("SELECT Acount.Name FROM Order", "INVALID_FIELD", "Didn't understand relationship 'Acount'"),
    ("SELECT Account FROM Order", "INVALID_FIELD", "No such column 'Account' on entity 'Order'"),
    ("SELECT Id FROM Order WHERE Foo = 'x'", "INVALID_FIELD", "No such column 'Foo'"),
    ("SELECT Id FROM Order ORDER BY Foo", "INVALID_FIELD", "No such column 'Foo'"),
    ("SELECT Id FROM Orders", "INVALID_TYPE", "sObject type 'Orders' is not supported"),
    ("SELECT Id FROM OrderProvisionRequested__e", "INVALID_TYPE", "is not supported"),
    ("SELECT Id, (SELECT Id FROM Items) FROM Order", "INVALID_TYPE", "relationship 'Items'"),
    ("SELECT Id, (SELECT Foo FROM OrderItems) FROM Order", "INVALID_FIELD", "entity 'OrderItem'"),
    (
        "SELECT Id, (SELECT Id FROM OrderItems WHERE Foo = 1) FROM Order WHERE Id = '{orphan}'",
        "INVALID_FIELD",
        "No such column 'Foo' on entity 'OrderItem'",
    ),
    ("SELECT Id FROM Order WHERE Id = 'abc'", "INVALID_QUERY_FILTER_OPERATOR", "invalid ID field"),
    (
        "SELECT Id FROM Order WHERE Id = '{two}x'",
        "INVALID_QUERY_FILTER_OPERATOR",
        "invalid ID field",
    ),
    (
        "SELECT Id FROM Order WHERE AccountId = '{fibre}'",  # an id, just not an Account's
        None,
        None,
    ),
    (
        "SELECT Id FROM Order WHERE Id = 5",
        "INVALID_QUERY_FILTER_OPERATOR",
        "field 'Id' must be of type id and should be enclosed in quotes",
    ),
    (
        "SELECT Id FROM Order WHERE OrderNumber = 5",
        "INVALID_QUERY_FILTER_OPERATOR",
        "must be of type string and should be enclosed in quotes",
    ),
    (
        "SELECT Id FROM Product2 WHERE IsActive = 'true'",
        "INVALID_QUERY_FILTER_OPERATOR",
        "must be of type boolean and should not be enclosed in quotes",
    ),
    (
        "SELECT Id FROM OrderItem WHERE Quantity = '1'",
        "INVALID_QUERY_FILTER_OPERATOR",
        "must be of type double",
    ),
    (
        "SELECT Id FROM Order WHERE EffectiveDate = '2026-01-01'",
        "INVALID_QUERY_FILTER_OPERATOR",
        "must be of type date",
    ),
    (
        "SELECT Id FROM Order WHERE LastModifiedDate < '2026-04-01T00:00:00Z'",
        "INVALID_QUERY_FILTER_OPERATOR",
        "must be of type datetime and should not be enclosed in quotes",
    ),
    (
        "SELECT Id FROM Order WHERE Status < 2026-04-01T00:00:00Z",
        "INVALID_QUERY_FILTER_OPERATOR",
        "must be of type string and should be enclosed in quotes",
    ),
]


@pytest.mark.parametrize(("text", "code", "fragment"), REFUSED)
def test_names_and_literals_are_checked(world, text, code, fragment):
    if code is None:
        assert run(world, text)["totalSize"] == 0
        return
    with pytest.raises(soql.SoqlError) as caught:
        run(world, text)
    assert caught.value.code == code
    assert fragment in caught.value.message


# --- results ----------------------------------------------------------------------------------


def test_the_workers_query_shape(world):
    _, refs = world
    result = run(
        world,
        "SELECT Id, OrderNumber, Status, Pricebook2Id, TotalAmount, Account.Name, "
        "Account.WHMCS_Client_ID__c, (SELECT Id, OrderItemNumber, Quantity, UnitPrice, "
        "ListPrice, TotalPrice, Product2Id, Product2.WH_Product_ID__c, "
        "PricebookEntry.Product2.ProductCode FROM OrderItems ORDER BY OrderItemNumber) "
        "FROM Order WHERE Id = '{two}'",
    )
    assert result["totalSize"] == 1 and result["done"] is True
    order = result["records"][0]
    assert order["attributes"] == {
        "type": "Order",
        "url": f"/services/data/v59.0/sobjects/Order/{refs['two']}",
    }
    assert list(order) == [
        "attributes", "Id", "OrderNumber", "Status", "Pricebook2Id", "TotalAmount", "Account",
        "OrderItems",
    ]  # fmt: skip
    assert order["Pricebook2Id"] == PRICEBOOK
    assert order["TotalAmount"] == 140.0
    assert order["Account"]["attributes"]["type"] == "Account"
    assert order["Account"]["WHMCS_Client_ID__c"] == "1"
    items = order["OrderItems"]
    assert items["totalSize"] == 2 and items["done"] is True
    first = items["records"][0]
    assert first["attributes"]["type"] == "OrderItem"
    assert (first["Quantity"], first["UnitPrice"], first["ListPrice"], first["TotalPrice"]) == (
        2.0,
        45.0,
        50.0,
        90.0,
    )
    assert first["Product2Id"] == refs["fibre"]
    assert first["Product2"]["WH_Product_ID__c"] == 1.0
    assert first["PricebookEntry"]["attributes"]["type"] == "PricebookEntry"
    assert first["PricebookEntry"]["Product2"]["ProductCode"] == "FIB-100"
    assert first["PricebookEntry"]["Product2"]["attributes"]["type"] == "Product2"


def test_no_children_is_null_and_no_parent_is_null(world):
    result = run(
        world,
        "SELECT Id, Account.Name, (SELECT Id FROM OrderItems) FROM Order "
        "WHERE Id IN ('{none}', '{orphan}') ORDER BY Account.Name",
    )
    orphan, none = result["records"]
    assert orphan["Account"] is None and orphan["OrderItems"] is None
    assert none["Account"]["Name"] == "Acme Ltd" and none["OrderItems"] is None


def test_names_are_case_insensitive_and_answered_canonically(world):
    result = run(world, "select id, ordernumber, ACCOUNT.name from ORDER where ID = '{two}'")
    record = result["records"][0]
    assert set(record) == {"attributes", "Id", "OrderNumber", "Account"}
    assert "Name" in record["Account"]


def test_fifteen_character_ids_match(world):
    _, refs = world
    assert ids(run(world, f"SELECT Id FROM Order WHERE Id = '{refs['two'][:15]}'")) == [refs["two"]]


FILTERS = [
    ("SELECT Id FROM Account WHERE Name = 'acme ltd'", ["acme"]),
    ("SELECT Id FROM Account WHERE Name = 'O\\'Brien'", ["obrien"]),
    ("SELECT Id FROM Account WHERE WHMCS_Client_ID__c = null", ["obrien"]),
    ("SELECT Id FROM Account WHERE WHMCS_Client_ID__c != null", ["acme"]),
    (
        "SELECT Id FROM Order WHERE Activation_Status__c IN ('Failed', 'Activating')",
        ["none", "brien"],
    ),
    (
        "SELECT Id FROM Order WHERE Account.Name = 'Acme Ltd' AND Activation_Status__c = null",
        ["two"],
    ),
    ("SELECT Id FROM Product2 WHERE IsActive = false", ["ip"]),
    ("SELECT Id FROM Product2 WHERE WH_Product_ID__c = 2", ["ip"]),
    ("SELECT Id FROM OrderItem WHERE Quantity != 1 AND Product2.Name = 'Fibre 100'", ["line1"]),
    (
        "SELECT Id FROM Order WHERE Status = 'Draft' ORDER BY OrderNumber DESC LIMIT 2",
        ["orphan", "brien"],
    ),
    (
        "SELECT Id FROM Order ORDER BY Activation_Status__c, OrderNumber",
        ["two", "orphan", "brien", "none"],
    ),
    (
        "SELECT Id FROM Order ORDER BY Activation_Status__c DESC, OrderNumber",
        ["none", "brien", "two", "orphan"],
    ),
    ("SELECT Id FROM Order LIMIT 0", []),
    # The store's clock: every record was last modified at 2026-03-31T23:33:20Z.
    (
        "SELECT Id FROM Order WHERE LastModifiedDate < 2026-04-01T00:00:00Z",
        ["two", "none", "brien", "orphan"],
    ),
    ("SELECT Id FROM Order WHERE LastModifiedDate > 2026-04-01T00:00:00Z", []),
    ("SELECT Id FROM Order WHERE LastModifiedDate < 2026-03-31T23:33:20Z", []),
    (
        "SELECT Id FROM Order WHERE Activation_Status__c = 'Activating' "
        "AND LastModifiedDate <= 2026-03-31T23:33:20.000Z",
        ["brien"],
    ),
    (
        "SELECT Id FROM Order WHERE LastModifiedDate >= 2026-04-01T01:33:20+02:00",
        ["two", "none", "brien", "orphan"],
    ),
    ("SELECT Id FROM OrderItem WHERE Quantity > 1", ["line1"]),
    ("SELECT Id FROM Account WHERE WHMCS_Client_ID__c >= null", []),
]


@pytest.mark.parametrize(("text", "expected"), FILTERS)
def test_filters_sorting_and_limits(world, text, expected):
    _, refs = world
    found = ids(run(world, text))
    if "ORDER BY" in text:
        assert found == [refs[r] for r in expected]
    else:
        assert sorted(found) == sorted(refs[r] for r in expected)


def test_subquery_filters_sorts_and_limits(world):
    result = run(
        world,
        "SELECT Id, (SELECT Id FROM OrderItems WHERE Product2.IsActive = true "
        "ORDER BY OrderItemNumber DESC LIMIT 1) FROM Order WHERE Id = '{two}'",
    )
    _, refs = world
    assert ids(result["records"][0]["OrderItems"]) == [refs["line1"]]


def test_the_version_goes_into_attribute_urls(world):
    store, refs = world
    result = soql.execute(f"SELECT Id FROM Order WHERE Id = '{refs['two']}'", store, "62.0")
    assert result["records"][0]["attributes"]["url"].startswith("/services/data/v62.0/")
